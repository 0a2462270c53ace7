"""`GET /healthz` over real HTTP: 200 while work moves, 503 with the reasons when the
database is unreachable or work is stuck."""

from __future__ import annotations

import socket
from datetime import timedelta

import aiohttp
from sqlalchemy import update

from bot.db import Database
from services.models import Campaign, Delivery, DeliveryStatus, utcnow
from tests.campaign_fixtures import add_patients
from tests.handlers.bot_server import Bot, send_now


async def get_health(bot: Bot) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(bot.url("/healthz")) as response:
        return response.status, await response.json()


async def test_healthy_while_work_moves(bot: Bot, db: Database) -> None:
    await add_patients(db, 1, email_opt_in=True)
    await send_now(db, external_ids=["P0001"])
    assert await get_health(bot) == (200, {"status": "ok", "database": "ok"})


async def test_503_while_a_delivery_is_stuck_in_flight_or_a_due_campaign_has_not_started(
    bot: Bot, db: Database
) -> None:
    await add_patients(db, 2, email_opt_in=True)
    stuck = await send_now(db, external_ids=["P0001"])
    engine = await bot.engine()
    await engine.start_due()
    late = await send_now(db, external_ids=["P0002"])
    async with db.transaction() as session:
        await session.execute(update(Delivery).where(Delivery.campaign_id == stuck).values(
            status=DeliveryStatus.sending, claimed_by="gone:1:x",
            claimed_at=utcnow() - timedelta(minutes=20)))
        await session.execute(update(Campaign).where(Campaign.id == late)
                              .values(send_at=utcnow() - timedelta(minutes=20)))
    status, body = await get_health(bot)
    assert status == 503
    assert body["status"] == "stuck" and body["database"] == "ok"
    problems = body["problems"]
    assert isinstance(problems, list) and len(problems) == 2
    assert "in flight since" in problems[0] and "have not started" in problems[1]


async def test_503_while_the_database_is_unreachable(bot: Bot, db: Database) -> None:
    with socket.socket() as probe:  # a PostgreSQL address where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    healthy_db = bot.context.db
    bot.context.db = Database(f"postgresql://postgres@127.0.0.1:{port}/gone")
    try:
        status, body = await get_health(bot)
    finally:
        await bot.context.db.dispose()
        bot.context.db = healthy_db
    assert status == 503
    assert body["database"] == "unreachable" and body["status"] == "error"
    assert body["problems"]
