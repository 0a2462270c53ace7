"""The bot as a real aiohttp server with Slack mounted, against the Slack Web API stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bot.context import AppContext
from bot.db import Database
from bot.server import SLACK_EVENTS_PATH, build_web_app
from bot.settings import Settings, load_settings
from bot.slack_app import build_slack_app
from services import segments
from services.tokens import load_signer
from tests.campaign_fixtures import grant_level
from tests.fakes.slack_api import DEFAULT_USER, FakeSlack
from tests.fakes.slack_requests import SlackRequests

SECRET = "test-signing-secret"
ADMIN = "U0ADMIN"
WRITER = DEFAULT_USER
READER = "U0READER"
CHANNEL = "C0CAMPAIGNS"


@dataclass
class Stand:
    """Everything a scenario drives and looks at."""

    slack: FakeSlack
    sr: SlackRequests
    db: Database
    settings: Settings
    outbox: Path
    pokes: list[int] = field(default_factory=list)

    def as_user(self, user_id: str) -> SlackRequests:
        return SlackRequests(self.sr.url, SECRET, slack=self.slack, user_id=user_id,
                             channel_id=self.sr.channel_id)


@asynccontextmanager
async def make_stand(db: Database, tmp_path: Path, **settings: Any) -> AsyncIterator[Stand]:
    """The bot over HTTP against a fresh Slack stand-in; `settings` override the defaults."""
    async with FakeSlack() as slack:
        slack.trigger_ttl = None  # slow CI machines: triggers never expire
        slack.bot_channels = {CHANNEL}
        slack.add_user(WRITER, real_name="Test User", tz="America/Mexico_City",
                       email="tester@clinic.example")
        slack.add_user(ADMIN, real_name="Admin", email="admin@clinic.example")
        slack.add_user(READER, real_name="Reader", email="reader@clinic.example")
        values: dict[str, Any] = {
            "database_url": db.url, "outbox_dir": tmp_path / "outbox",
            "slack_bot_token": "xoxb-test", "slack_signing_secret": SECRET,
            "slack_api_url": slack.url, "campaign_bot_admins": [ADMIN],
            "email_backend": "file", "sms_backend": "file",
            "segments_file": tmp_path / "none.yml", **settings,
        }
        loaded = load_settings(**values)
        async with db.transaction() as session:
            signer = await load_signer(session)
            await segments.sync_segments(session, [])
        await grant_level(db, WRITER, "write")
        await grant_level(db, READER, "read")
        pokes: list[int] = []
        app = build_slack_app(loaded, db, signer=signer,
                              engine_poke=lambda: pokes.append(1))
        server = TestServer(build_web_app(AppContext(loaded, db, signer), slack=app))
        await server.start_server()
        try:
            url = str(server.make_url(SLACK_EVENTS_PATH))
            async with SlackRequests(url, SECRET, slack=slack, channel_id=CHANNEL) as sr:
                yield Stand(slack, sr, db, loaded, tmp_path / "outbox", pokes)
        finally:
            await server.close()


@pytest.fixture
async def stand(db: Database, tmp_path: Path) -> AsyncIterator[Stand]:
    async with make_stand(db, tmp_path) as made:
        yield made
