"""Outages heal without a restart: a mail server that goes away for a while, and a database
that drops every connection and refuses new ones (through a TCP proxy), while the real
engine sends. Nobody gets a message twice, nothing is lost, no provider-accepted message is
turned into `unknown`."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.db import Database
from modals.snapshot import progress_message
from services import snapshot
from services.delivery.engine import DeliveryEngine
from services.models import CampaignStatus, DeliveryStatus
from tests.campaign_fixtures import add_patients
from tests.delivery.test_engine import deliveries, engine_for, send_now, settings_for, status_of
from tests.fakes.smtp_server import FakeSmtp
from tests.fakes.tcp_proxy import TcpProxy


def smtp_settings(db_url: str, tmp_path: Path, smtp: FakeSmtp, **extra: object) -> dict:
    return {
        "database_url": db_url, "smtp_host": "127.0.0.1", "smtp_port": smtp.port,
        "smtp_security": "none", "email_from": "clinic@example.org",
        "clinic_postal_address": "Calle 1, CDMX", "public_base_url": "https://bot.example.org",
        **extra,
    }


async def wait_until_final(db: Database, campaign_id: int, seconds: float = 60) -> None:
    for _ in range(int(seconds * 10)):
        if await status_of(db, campaign_id) in (CampaignStatus.completed, CampaignStatus.failed):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"campaign {campaign_id} still {await status_of(db, campaign_id)}")


async def test_a_mail_server_away_for_a_while_is_waited_for_and_the_channel_says_so(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 20, email_opt_in=True)
    with FakeSmtp() as smtp:
        smtp.go_away()
        settings = settings_for(db, tmp_path, **smtp_settings(db.url, tmp_path, smtp))
        engine = await engine_for(db, settings)
        engine.config.backoff_base, engine.config.backoff_max = 0.2, 0.5
        campaign_id = await send_now(db, external_ids=[f"P{n:04d}" for n in range(1, 21)])
        await engine.start_due()
        await engine.start()
        try:
            await asyncio.sleep(2)
            async with db.read() as session:
                during = await snapshot.take(session, campaign_id)
            smtp.come_back()
            await wait_until_final(db, campaign_id)
        finally:
            await engine.stop(grace_seconds=5)
        received = Counter(r for m in smtp.messages for r in m.recipients)
    assert during.channels["email"].unreachable > 0
    _text, blocks = progress_message(during)
    assert "email server unreachable, retrying" in str(blocks)
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.sent}
    assert len(received) == 20 and max(received.values()) == 1
    assert await status_of(db, campaign_id) == CampaignStatus.completed


async def test_a_database_outage_heals_without_a_restart_and_loses_nothing(
    database_url: str, tmp_path: Path
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a database outage needs a database server behind a network connection; "
                    "SQLite is a local file")
    target = make_url(database_url)
    async with TcpProxy(target_host=target.host or "127.0.0.1",
                        target_port=target.port or 5432) as proxy:
        proxied = target.set(port=proxy.port).render_as_string(hide_password=False)
        direct = Database(database_url)
        db = Database(proxied)
        engine: DeliveryEngine | None = None
        try:
            await add_patients(direct, 60, email_opt_in=True)
            with FakeSmtp() as smtp:
                settings = settings_for(direct, tmp_path,
                                        **smtp_settings(proxied, tmp_path, smtp, email_rate=20))
                engine = await engine_for(db, settings)
                campaign_id = await send_now(direct,
                                             external_ids=[f"P{n:04d}" for n in range(1, 61)])
                await engine.start_due()
                await engine.start()
                for _ in range(100):
                    if len(smtp.messages) >= 10:
                        break
                    await asyncio.sleep(0.05)
                await proxy.outage(3.0)  # every connection reset, new ones refused, for 3 s
                await wait_until_final(direct, campaign_id, seconds=90)
                await engine.stop(grace_seconds=5)
                engine = None
                received = Counter(r for m in smtp.messages for r in m.recipients)
            rows = await deliveries(direct, campaign_id)
        finally:
            if engine is not None:
                await engine.stop(grace_seconds=1)
            await db.dispose()
            await direct.dispose()
    assert {r.status for r in rows} == {DeliveryStatus.sent}  # none `unknown`, none stuck
    assert len(received) == 60 and max(received.values()) == 1
    assert sorted(r.address for r in rows) == sorted(received)
