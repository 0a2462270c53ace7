"""The bot's HTTP side on a real port for the webhook, unsubscribe and tracking tests:
settings as deployed (PUBLIC_BASE_URL is the server's own address), a notifier that records
what it hears, a sender built from the same settings, and small ledger helpers."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from bot.context import AppContext
from bot.db import Database
from bot.senders import build_engine
from bot.server import build_web_app
from bot.settings import Settings, load_settings
from services import campaigns
from services.delivery.engine import DeliveryEngine
from services.models import Delivery
from services.tokens import load_signer
from tests.campaign_fixtures import LIMITS, OPERATOR, form

SID, TOKEN, FROM = "AC" + "2" * 32, "webhook-token", "+15005550006"


@dataclass
class RecordingNotifier:
    """Stands in for the Slack side: records what it was told, or fails when asked to."""

    fail: bool = False
    changed: list[set[int]] = field(default_factory=list)
    opt_outs: list[dict[str, Any]] = field(default_factory=list)

    async def campaign_event(self, event: object) -> None:
        return None

    async def deliveries_changed(self, campaign_ids: set[int]) -> None:
        if self.fail:
            raise RuntimeError("Slack is down")
        self.changed.append(set(campaign_ids))

    async def opted_out(self, *, channel: str, patients: int, source: str) -> None:
        if self.fail:
            raise RuntimeError("Slack is down")
        self.opt_outs.append({"channel": channel, "patients": patients, "source": source})


@dataclass
class Bot:
    """The bot's HTTP side on a real port, its settings and a sender built from them."""

    db: Database
    server: TestServer
    context: AppContext
    notifier: RecordingNotifier
    tmp_path: Path
    engines: list[DeliveryEngine] = field(default_factory=list)

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def url(self, path: str) -> str:
        return self.base + path

    def configure(self, **overrides: object) -> Settings:
        """Settings as deployed: PUBLIC_BASE_URL is this server's address."""
        values: dict[str, object] = {
            "database_url": self.db.url, "outbox_dir": self.tmp_path / "outbox",
            "email_rate": 500, "sms_rate": 500, "quiet_hours": "off",
            "public_base_url": self.base, "clinic_name": "Clínica Roma",
        }
        values.update(overrides)
        self.context.settings = load_settings(**values)
        return self.context.settings

    async def engine(self) -> DeliveryEngine:
        engine = await build_engine(self.context.settings, self.db, signer=self.context.signer)
        engine.config.backoff_base = engine.config.backoff_max = 0.01
        self.engines.append(engine)
        return engine


@asynccontextmanager
async def running_bot(db: Database, tmp_path: Path) -> AsyncIterator[Bot]:
    async with db.transaction() as session:
        signer = await load_signer(session)
    notifier = RecordingNotifier()
    context = AppContext(settings=load_settings(database_url=db.url, outbox_dir=tmp_path),
                         db=db, signer=signer, notifier=notifier)
    server = TestServer(build_web_app(context))
    await server.start_server()
    running = Bot(db, server, context, notifier, tmp_path)
    running.configure()
    try:
        yield running
    finally:
        for engine in running.engines:
            for driver in engine.drivers:
                await driver.close()
        await server.close()


async def send_now(db: Database, **overrides: object) -> int:
    async with db.transaction() as session:
        campaign = await campaigns.create(
            session=session, actor=OPERATOR, limits=LIMITS,
            campaign_in=form(send_now=True, send_at=None, **overrides),
        )
        return campaign.id


async def ledger(db: Database, campaign_id: int) -> list[Delivery]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(Delivery).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id))
        return list(rows.scalars())


def snapshot(rows: list[Delivery]) -> list[tuple[object, ...]]:
    return [(r.id, r.status, r.reason, r.error_code, r.delivered_at) for r in rows]


async def post_signed(url: str, params: dict[str, str], *, signed_url: str | None = None,
                      token: str = TOKEN, signature: str | None = None) -> int:
    """POST a form like Twilio: signed over `signed_url` (default: the URL posted to)."""
    if signature is None:
        signature = RequestValidator(token).compute_signature(signed_url or url, params)
    headers = {"X-Twilio-Signature": signature} if signature else {}
    async with aiohttp.ClientSession() as http, http.post(url, data=params,
                                                          headers=headers) as response:
        return response.status


def outbox(bot: Bot) -> list[EmailMessage]:
    """The emails the file backend wrote, parsed."""
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in sorted((bot.tmp_path / "outbox").glob("*.eml"))
    ]
