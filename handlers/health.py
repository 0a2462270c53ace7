"""`GET /healthz`: can the process reach its database, and is the work moving.

503 with the reasons in JSON while the database is unreachable, or while work is stuck:
a delivery in flight for minutes, or a campaign due for minutes that has not started.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from sqlalchemy import text

from bot.context import CONTEXT
from services.delivery import recovery
from services.models import utcnow

log = logging.getLogger(__name__)

DATABASE_TIMEOUT = 3.0  # seconds: a health check must answer even when the database hangs


async def healthz(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT), context.db.read() as session:
            await session.execute(text("SELECT 1"))
            problems = await recovery.health_problems(session, now=utcnow())
    except Exception as exc:
        log.warning("health check: database unreachable: %s", type(exc).__name__)
        return web.json_response(
            {"status": "error", "database": "unreachable",
             "problems": [f"the database does not answer ({type(exc).__name__})"]},
            status=503,
        )
    if problems:
        return web.json_response(
            {"status": "stuck", "database": "ok", "problems": problems}, status=503
        )
    return web.json_response({"status": "ok", "database": "ok"})


def register(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
