"""The campaign's live channel message, its snapshot and chart, and notification rules, seen
on the Slack stand-in while the real engine sends through a real SMTP server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select, update

from bot.context import AppContext
from bot.db import Database
from bot.notifier import SlackNotifier
from bot.senders import build_engine
from bot.server import SLACK_EVENTS_PATH, build_web_app
from bot.settings import Settings, load_settings
from bot.slack_app import build_slack_app, web_client
from modals import ids
from services import rules, segments
from services.delivery.engine import DeliveryEngine
from services.models import AuditEntry, Campaign, Delivery, DeliveryStatus, Patient
from services.tokens import load_signer
from tests.campaign_fixtures import add_patients, grant_level
from tests.delivery.test_engine import drain, send_now
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_requests import SlackRequests
from tests.fakes.smtp_server import FakeSmtp
from tests.slack.conftest import ADMIN, CHANNEL, READER, SECRET, WRITER, Stand
from tests.slack.helpers import texts, until
from tests.slack.test_campaign_list import _scheduled_via_slack

INTERVAL = 0.4  # the notifier's throttle here (3 s in production)
PATIENTS = 30
FAILING = ("p0004@example.com", "p0009@example.com", "p0017@example.com", "p0023@example.com")


@dataclass
class Live:
    slack: FakeSlack
    db: Database
    settings: Settings
    notifier: SlackNotifier


def _settings(db: Database, tmp_path: Path, slack: FakeSlack, **extra: Any) -> Settings:
    return load_settings(
        database_url=db.url, outbox_dir=tmp_path / "outbox", slack_bot_token="xoxb-test",
        slack_signing_secret=SECRET, slack_api_url=slack.url, slack_notify_channel=CHANNEL,
        campaign_bot_admins=[ADMIN], email_backend="file", sms_backend="file",
        segments_file=tmp_path / "none.yml", quiet_hours="off", email_rate=15, sms_rate=15,
        **extra,
    )


@pytest.fixture
async def live(db: Database, tmp_path: Path) -> AsyncIterator[Live]:
    async with FakeSlack() as slack:
        slack.bot_channels = {CHANNEL}
        slack.add_user(ADMIN, real_name="Admin")
        settings = _settings(db, tmp_path, slack)
        notifier = SlackNotifier(db=db, settings=settings, client=web_client(settings),
                                 interval=INTERVAL)
        yield Live(slack, db, settings, notifier)
        await notifier.flush()


async def _send(live: Live, smtp: FakeSmtp, *, channel: str = "EMAIL") -> tuple[int, float]:
    """A CLI campaign (no Slack message yet) sent by the real engine through `smtp`."""
    settings = live.settings.model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "smtp_security": "none",
        "email_backend": "smtp", "email_from": "clinic@example.org",
        "clinic_postal_address": "Calle 1, CDMX"})
    campaign_id = await send_now(live.db, channel=channel,
                                 external_ids=[f"P{n:04d}" for n in range(1, PATIENTS + 1)])
    engine: DeliveryEngine = await build_engine(settings, live.db,
                                                on_event=live.notifier.campaign_event)
    engine.on_progress = live.notifier.deliveries_changed
    try:
        started = time.monotonic()
        await drain(engine)
        elapsed = time.monotonic() - started
    finally:
        for driver in engine.drivers:
            await driver.close()
    await live.notifier.flush()
    return campaign_id, elapsed


def _updates_of(slack: FakeSlack, ts: str) -> list[dict[str, Any]]:
    return [c.params for c in slack.calls_to("chat.update")
            if c.params.get("ts") == ts and c.response.get("ok")]


async def _patient_values(db: Database) -> list[str]:
    async with db.sessions() as session:
        patients = (await session.execute(select(Patient))).scalars().all()
    return [v for p in patients for v in (p.first_name, p.last_name, p.email, p.phone,
                                          p.external_id) if v]


def _everything_said_in_chat(slack: FakeSlack) -> str:
    said = [c.params for c in slack.calls if c.method in (
        "chat.postMessage", "chat.update", "chat.postEphemeral",
        "files.completeUploadExternal", "files.getUploadURLExternal")]
    return json.dumps(said, ensure_ascii=False) + json.dumps(
        [{k: u[k] for k in ("filename", "title", "initial_comment")} for u in slack.uploads],
        ensure_ascii=False)


async def test_the_message_updates_live_then_becomes_the_snapshot_with_its_chart(
    live: Live,
) -> None:
    await add_patients(live.db, PATIENTS, email_opt_in=True)
    with FakeSmtp() as smtp:
        for address in FAILING:
            smtp.fail_recipient(address, 550, at="rcpt")
        campaign_id, elapsed = await _send(live, smtp)

    async with live.db.sessions() as session:
        campaign = await session.get(Campaign, campaign_id)
    assert campaign is not None and campaign.status.value == "completed"
    # A CLI campaign: its message was posted in SLACK_NOTIFY_CHANNEL when it started.
    message = next(m for m in live.slack.messages(CHANNEL) if m["ts"] == campaign.slack_message_ts)
    assert campaign.slack_channel_id == CHANNEL

    updates = _updates_of(live.slack, message["ts"])
    # Throttled: a couple of progress updates over ~2 s of sending, far fewer than deliveries.
    assert 2 <= len(updates) <= elapsed / INTERVAL + 3, (len(updates), elapsed)
    assert len(updates) < PATIENTS / 3
    progress = [u for u in updates if "sending" in u["text"]]
    assert progress and "▓" in json.dumps(progress[-1]["blocks"], ensure_ascii=False) + "▓"
    final = updates[-1]
    assert final["text"].startswith(f"Campaign #{campaign_id} snapshot: completed")
    shown = texts(message)
    for needle in (f"{PATIENTS - len(FAILING)} sent", f"{len(FAILING)} failed",
                   f"{PATIENTS} of {PATIENTS} reachable", "550", "*Duration:*", "*Rate:*"):
        assert needle in shown, needle

    [upload] = live.slack.uploads
    assert (upload["channel"], upload["thread_ts"]) == (CHANNEL, message["ts"])
    assert upload["content"][:8] == b"\x89PNG\r\n\x1a\n" and len(upload["content"]) > 10_000

    # Default rules: completed → the campaign's channel; 4 of 30 failed (13%) → the notify
    # channel (the same channel here); both audited.
    notices = [m for m in live.slack.messages(CHANNEL) if m["ts"] != message["ts"]
               and "files" not in m]
    assert any("completed: 26 sent, 4 failed" in m["text"] for m in notices)
    assert any("4 failed (13.3%)" in m["text"] for m in notices)
    async with live.db.sessions() as session:
        fired = (await session.execute(select(AuditEntry).where(
            AuditEntry.action == "rule.fired"))).scalars().all()
    assert sorted(e.details["notify"] for e in fired) == ["campaign_channel", "notify_channel"]
    assert all(e.campaign_id == campaign_id and e.details["posted"] for e in fired)

    said = _everything_said_in_chat(live.slack)
    for value in await _patient_values(live.db):
        assert value not in said, value


async def test_late_callbacks_refresh_the_snapshot(live: Live) -> None:
    await add_patients(live.db, PATIENTS, email_opt_in=True)
    with FakeSmtp() as smtp:
        campaign_id, _ = await _send(live, smtp)
    async with live.db.sessions() as session:
        campaign = await session.get(Campaign, campaign_id)
    assert campaign is not None
    before = len(_updates_of(live.slack, str(campaign.slack_message_ts)))
    async with live.db.transaction() as session:  # receipts and opens arrive later
        rows = (await session.execute(select(Delivery.id).where(
            Delivery.campaign_id == campaign_id).limit(3))).scalars().all()
        await session.execute(update(Delivery).where(Delivery.id.in_(rows)).values(
            status=DeliveryStatus.delivered))
    for _ in range(20):  # a burst of callbacks: coalesced into one or two updates
        await live.notifier.deliveries_changed({campaign_id})
    await live.notifier.flush()
    after = _updates_of(live.slack, str(campaign.slack_message_ts))
    assert 1 <= len(after) - before <= 2
    assert "3 delivered" in texts(after[-1])
    assert len(live.slack.uploads) == 1  # the chart is not uploaded again


async def test_the_throttle_coalesces_a_burst(live: Live) -> None:
    await add_patients(live.db, 3, email_opt_in=True)
    campaign_id = await send_now(live.db, external_ids=["P0001", "P0002", "P0003"])
    posted = await live.notifier.client.chat_postMessage(channel=CHANNEL, text="campaign")
    async with live.db.transaction() as session:
        await session.execute(update(Campaign).where(Campaign.id == campaign_id).values(
            slack_channel_id=CHANNEL, slack_message_ts=posted["ts"]))
    started = time.monotonic()
    await live.notifier.deliveries_changed({campaign_id})
    await until(lambda: _updates_of(live.slack, posted["ts"]))  # the first goes at once
    for _ in range(200):
        await live.notifier.deliveries_changed({campaign_id})
    await live.notifier.flush()
    assert len(_updates_of(live.slack, posted["ts"])) == 2  # the 200 others: one, later
    assert time.monotonic() - started >= INTERVAL


async def test_slack_rate_limits_are_waited_out(live: Live) -> None:
    await add_patients(live.db, 2, email_opt_in=True)
    campaign_id = await send_now(live.db, external_ids=["P0001", "P0002"])
    posted = await live.notifier.client.chat_postMessage(channel=CHANNEL, text="campaign")
    async with live.db.transaction() as session:
        await session.execute(update(Campaign).where(Campaign.id == campaign_id).values(
            slack_channel_id=CHANNEL, slack_message_ts=posted["ts"]))
    live.slack.rate_limit("chat.update", n=1, retry_after=1)
    await live.notifier.deliveries_changed({campaign_id})
    await live.notifier.flush()
    calls = [c for c in live.slack.calls_to("chat.update") if c.params.get("ts") == posted["ts"]]
    assert [c.status for c in calls] == [429, 200]


async def test_rules_fire_on_opt_outs_to_a_user(live: Live) -> None:
    live.notifier.rules = rules.parse_rules(
        "- on: opt_out\n  if: patients >= 2\n  notify: U0ADMIN\n"
        "  message: '{patients} patients opted out of {channel} ({source})'\n")
    await live.notifier.opted_out(channel="sms", patients=1, source="sms_reply")
    await live.notifier.opted_out(channel="sms", patients=2, source="sms_reply")
    await live.notifier.flush()
    [dm] = live.slack.messages(ADMIN)
    assert dm["text"] == "2 patients opted out of sms (sms_reply)"
    async with live.db.sessions() as session:
        [entry] = (await session.execute(select(AuditEntry).where(
            AuditEntry.action == "rule.fired"))).scalars().all()
    assert entry.details["event"] == "opt_out" and entry.details["channel"] == ADMIN


# --- Slack handlers: scheduled / cancelled, and /campaign stats --------------------------------

@pytest.fixture
async def stand_with_notifier(db: Database, tmp_path: Path) -> AsyncIterator[Stand]:
    """tests/slack/conftest.py's stand, with the notifier `campaign-bot run` wires in."""
    async with FakeSlack() as slack:
        slack.trigger_ttl = None
        slack.bot_channels = {CHANNEL}
        slack.add_user(WRITER, real_name="Test User", tz="America/Mexico_City",
                       email="tester@clinic.example")
        slack.add_user(ADMIN, real_name="Admin", email="admin@clinic.example")
        slack.add_user(READER, real_name="Reader")
        settings = _settings(db, tmp_path, slack)
        async with db.transaction() as session:
            signer = await load_signer(session)
            await segments.sync_segments(session, [])
        await grant_level(db, WRITER, "write")
        await grant_level(db, READER, "read")
        notifier = SlackNotifier(db=db, settings=settings, interval=INTERVAL, rule_list=[
            rules.make_rule(on="scheduled", notify="U0ADMIN",
                            message="#{campaign_id} “{subject}” is scheduled"),
            rules.make_rule(on="cancelled", notify="campaign_channel",
                            message="#{campaign_id} was cancelled: {reason}"),
        ])
        app = build_slack_app(settings, db, signer=signer, notifier=notifier)
        notifier.attach(app.client)
        server = TestServer(build_web_app(AppContext(settings, db, signer, notifier), slack=app))
        await server.start_server()
        try:
            url = str(server.make_url(SLACK_EVENTS_PATH))
            async with SlackRequests(url, SECRET, slack=slack, channel_id=CHANNEL) as sr:
                stand = Stand(slack, sr, db, settings, tmp_path / "outbox")
                stand.notifier = notifier  # type: ignore[attr-defined]
                yield stand
        finally:
            await notifier.flush()
            await server.close()


async def test_scheduled_and_cancelled_in_slack_fire_rules(stand_with_notifier: Stand) -> None:
    stand = stand_with_notifier
    campaign, message = await _scheduled_via_slack(stand)
    [dm] = await until(lambda: stand.slack.messages(ADMIN))
    assert dm["text"] == f"#{campaign.id} “{campaign.subject}” is scheduled"

    await stand.sr.click(message, ids.CANCEL_ACTION)
    said = await until(lambda: [m for m in stand.slack.messages(CHANNEL)
                                if "was cancelled" in m.get("text", "")])
    assert said[0]["text"].startswith(f"#{campaign.id} was cancelled: cancelled in Slack by")
    await stand.notifier.flush()  # type: ignore[attr-defined]
    async with stand.db.sessions() as session:
        fired = (await session.execute(select(AuditEntry).where(
            AuditEntry.action == "rule.fired").order_by(AuditEntry.id))).scalars().all()
    assert [e.details["event"] for e in fired] == ["scheduled", "cancelled"]
    # Never started: the channel message stays the campaign's card (no snapshot, no chart).
    assert "cancelled" in texts(stand.slack.messages(CHANNEL)[0])
    assert stand.slack.uploads == []


async def test_stats_command_and_button_post_the_snapshot(stand_with_notifier: Stand) -> None:
    stand = stand_with_notifier
    await add_patients(stand.db, 5, email_opt_in=True)
    campaign_id = await send_now(stand.db, external_ids=[f"P{n:04d}" for n in range(1, 6)])
    engine = await build_engine(stand.settings, stand.db)
    try:
        await drain(engine)
    finally:
        for driver in engine.drivers:
            await driver.close()
    await stand.sr.slash_command(text=f"stats {campaign_id}")
    [posted] = await until(lambda: [m for m in stand.slack.messages(CHANNEL)
                                    if "snapshot" in m.get("text", "")])
    shown = texts(posted)
    assert f"Campaign #{campaign_id}" in shown and "5 sent" in shown
    assert "5 of 5 reachable" in shown and "*Rate:*" in shown
    await stand.sr.click(posted, ids.STATS_ACTION)
    [ephemeral] = await until(lambda: stand.slack.ephemerals(WRITER))
    assert "5 sent" in texts(ephemeral)
    said = _everything_said_in_chat(stand.slack)
    for value in await _patient_values(stand.db):
        assert value not in said, value
