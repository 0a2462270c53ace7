"""At most once, proven with real `campaign-bot run` processes: two sharing one database, and
one killed with SIGKILL in the middle of a batch and replaced."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from bot.db import Database
from services import campaigns
from services.models import Campaign, CampaignStatus, Delivery, DeliveryStatus, utcnow
from tests.bot.test_settings import clean_env
from tests.campaign_fixtures import LIMITS, OPERATOR, add_patients, form
from tests.fakes.smtp_server import FakeSmtp

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bot:
    """One `campaign-bot run` process."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout=60)


@contextlib.asynccontextmanager
async def running_bot(tmp_path: Path, name: str, env: dict[str, str]) -> AsyncIterator[Bot]:
    port = free_port()
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "run", "--host", "127.0.0.1",
            cwd=tmp_path, env=clean_env(PORT=str(port), **env), stdout=out, stderr=out,
        )
    bot = Bot(process, port, log)
    try:
        await wait_healthy(bot)
        yield bot
    finally:
        if process.returncode is None:
            bot.kill()
            await process.wait()


async def wait_healthy(bot: Bot) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            if bot.process.returncode is not None:
                raise AssertionError(f"the bot exited:\n{bot.log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{bot.port}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the bot never answered /healthz:\n{bot.log.read_text()}")


def bot_env(db: Database, tmp_path: Path, smtp: FakeSmtp, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": db.url,
        "OUTBOX_DIR": str(tmp_path / "outbox"),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",
        "EMAIL_FROM": "Clinic <clinic@example.org>",
        "CLINIC_POSTAL_ADDRESS": "Calle 1, CDMX",
        "PUBLIC_BASE_URL": "https://bot.example.org",
        "SCHEDULER_SWEEP": "1s",
        "QUIET_HOURS": "off",
        "LOG_LEVEL": "INFO",
        **extra,
    }


async def create_send_now(db: Database, count: int) -> int:
    await add_patients(db, count, email_opt_in=True)
    async with db.transaction() as session:
        campaign = await campaigns.create(
            session=session, actor=OPERATOR, limits=LIMITS,
            campaign_in=form(send_now=True, send_at=None,
                             external_ids=[f"P{n:04d}" for n in range(1, count + 1)]),
        )
        return campaign.id


async def wait_for(db: Database, campaign_id: int, status: CampaignStatus, bots: list[Bot]) -> None:
    for _ in range(1200):
        async with db.transaction() as session:
            campaign = await session.get(Campaign, campaign_id)
            assert campaign is not None
            if campaign.status == status:
                return
        for bot in bots:
            if bot.process.returncode is not None:
                raise AssertionError(f"a bot exited:\n{bot.log.read_text()}")
        await asyncio.sleep(0.1)
    logs = "\n".join(bot.log.read_text()[-3000:] for bot in bots)
    raise AssertionError(f"campaign {campaign_id} never became {status}:\n{logs}")


async def ledger(db: Database, campaign_id: int) -> list[Delivery]:
    async with db.transaction() as session:
        rows = await session.execute(select(Delivery).where(Delivery.campaign_id == campaign_id))
        return list(rows.scalars())


async def test_two_processes_sharing_a_database_send_each_patient_once(
    db: Database, tmp_path: Path
) -> None:
    with FakeSmtp() as smtp:
        env = bot_env(db, tmp_path, smtp, EMAIL_RATE="25")
        async with running_bot(tmp_path, "one", env) as one, \
                running_bot(tmp_path, "two", env) as two:
            campaign_id = await create_send_now(db, 120)
            await wait_for(db, campaign_id, CampaignStatus.completed, [one, two])
            assert await one.stop() == 0 and await two.stop() == 0
        received = Counter(r for m in smtp.messages for r in m.recipients)
    rows = await ledger(db, campaign_id)
    assert len(rows) == 120 and {r.status for r in rows} == {DeliveryStatus.sent}
    assert len(received) == 120 and max(received.values()) == 1
    assert len({r.claimed_by for r in rows}) == 2  # both processes sent some
    async with db.transaction() as session:
        starts = await session.scalar(
            select(func.count()).select_from(Campaign).where(Campaign.id == campaign_id,
                                                             Campaign.started_at.is_not(None)))
    assert starts == 1


async def test_sigkill_mid_batch_leaves_unknown_only_what_was_handed_over(
    db: Database, tmp_path: Path
) -> None:
    with FakeSmtp() as smtp:
        # The server takes the first messages and then hangs before answering: the process is
        # killed while they are handed over but not yet confirmed, with more claimed behind.
        smtp.stall_next(seconds=60, n=4)
        env = bot_env(db, tmp_path, smtp, EMAIL_RATE="50")
        async with running_bot(tmp_path, "doomed", env) as doomed:
            campaign_id = await create_send_now(db, 60)
            for _ in range(300):
                if len(smtp.messages) >= 4:
                    break
                await asyncio.sleep(0.05)
            assert len(smtp.messages) >= 4, doomed.log.read_text()
            await asyncio.sleep(0.5)  # let the claims and marks behind them settle
            doomed.kill()
            await doomed.process.wait()
        at_kill = await ledger(db, campaign_id)
        claimed = {r.id for r in at_kill if r.status == DeliveryStatus.sending}
        handed_over = {r.id for r in at_kill
                       if r.status == DeliveryStatus.sending and r.attempted_at is not None}
        assert claimed - handed_over  # claimed but never handed over: these must be sent
        assert 4 <= len(handed_over) <= 16  # at most the email driver's concurrency
        async with running_bot(tmp_path, "heir", env) as heir:
            await wait_for(db, campaign_id, CampaignStatus.completed, [heir])
            assert await heir.stop() == 0
        received = Counter(r for m in smtp.messages for r in m.recipients)
    rows = {r.id: r for r in await ledger(db, campaign_id)}
    assert max(received.values()) == 1  # nobody got the campaign twice
    unknown = {i for i, r in rows.items() if r.status == DeliveryStatus.unknown}
    assert unknown == handed_over
    assert all(r.status == DeliveryStatus.sent for i, r in rows.items() if i not in unknown)
    assert len(received) == len(rows) - len(unknown) + 4  # the 4 the stalled server kept
    sent_to = {r.address for r in rows.values() if r.status == DeliveryStatus.sent}
    assert set(received) >= sent_to


async def test_a_scheduled_campaign_survives_a_restart_and_is_sent_once_due(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 3, email_opt_in=True)
    async with db.transaction() as session:
        campaign = await campaigns.create(
            session=session, actor=OPERATOR, limits=LIMITS,
            campaign_in=form(send_at=utcnow() + timedelta(minutes=5),
                             external_ids=["P0001", "P0002", "P0003"]),
        )
        # Bring it within reach of a test: due in a few seconds.
        campaign.send_at = utcnow() + timedelta(seconds=4)
    with FakeSmtp() as smtp:
        env = bot_env(db, tmp_path, smtp)
        async with running_bot(tmp_path, "first", env) as first:
            assert await first.stop() == 0  # stopped before it was due
        assert smtp.messages == []
        await asyncio.sleep(5)
        async with running_bot(tmp_path, "second", env) as second:
            await wait_for(db, campaign.id, CampaignStatus.completed, [second])
            assert await second.stop() == 0
        received = sorted(r for m in smtp.messages for r in m.recipients)
    assert received == ["p0001@example.com", "p0002@example.com", "p0003@example.com"]


async def test_a_survivor_takes_over_a_killed_process_claims_without_any_restart(
    db: Database, tmp_path: Path
) -> None:
    with FakeSmtp() as smtp:
        env = bot_env(db, tmp_path, smtp, EMAIL_RATE="40")
        async with running_bot(tmp_path, "one", env) as one, \
                running_bot(tmp_path, "two", env) as two:
            campaign_id = await create_send_now(db, 200)
            for _ in range(300):  # both are sending
                claimers = {r.claimed_by for r in await ledger(db, campaign_id)
                            if r.claimed_by is not None}
                if len(claimers) == 2 and len(smtp.messages) >= 20:
                    break
                await asyncio.sleep(0.05)
            one.kill()
            await one.process.wait()
            # Nobody restarts it: the survivor recovers its claims on its next heartbeat.
            await wait_for(db, campaign_id, CampaignStatus.completed, [two])
            assert await two.stop() == 0
        received = Counter(r for m in smtp.messages for r in m.recipients)
    rows = await ledger(db, campaign_id)
    unknown = [r for r in rows if r.status == DeliveryStatus.unknown]
    assert max(received.values()) == 1  # nobody got the campaign twice
    assert len(unknown) <= 16  # at most the email driver's concurrency
    assert all(r.status == DeliveryStatus.sent for r in rows if r not in unknown)
    assert len(received) >= len(rows) - len(unknown)
