"""`GET /healthz`: is the process up and can it reach its database."""

from __future__ import annotations

import logging

from aiohttp import web
from sqlalchemy import text

from bot.context import CONTEXT

log = logging.getLogger(__name__)


async def healthz(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    try:
        async with context.db.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("health check: database unreachable: %s", exc)
        return web.json_response({"status": "error", "database": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "database": "ok"})


def register(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
