"""The performance snapshot: its numbers against the ledger's after a real send with
injected failures (FakeSmtp, FakeTwilio), and the chart as a real PNG."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from bot.db import Database
from bot.senders import build_engine
from modals.snapshot import progress_bar, progress_message, snapshot_message
from services import chart, consent, snapshot
from services.delivery.engine import DeliveryEngine
from services.models import Campaign, Delivery, DeliveryChannel, DeliveryStatus, Patient, utcnow
from tests.campaign_fixtures import add_patients
from tests.delivery.test_engine import SID, TOKEN, drain, send_now, settings_for
from tests.fakes.smtp_server import FakeSmtp
from tests.fakes.twilio_server import FakeTwilio

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def engines() -> AsyncIterator[list[DeliveryEngine]]:
    made: list[DeliveryEngine] = []
    yield made
    for engine in made:
        for driver in engine.drivers:
            await driver.close()


async def _campaign_with_failures(
    db: Database, tmp_path: Path, engines: list[DeliveryEngine]
) -> tuple[int, list[int]]:
    """10 patients by email and SMS: consent gaps, a 550, a 21211, an unknown, opt-outs."""
    ids = await add_patients(db, 10, email_opt_in=True, sms_opt_in=True)
    async with db.transaction() as session:
        for n, pid in enumerate(ids, start=1):
            await session.execute(update(Patient).where(Patient.id == pid)
                                  .values(phone=f"+5255123400{n:02d}"))
        await session.execute(update(Patient).where(Patient.id == ids[1])
                              .values(email_opt_in=False))
        await session.execute(update(Patient).where(Patient.id == ids[2]).values(phone=None))
    campaign_id = await send_now(db, channel="EMAIL_SMS",
                                 external_ids=[f"P{n:04d}" for n in range(1, 11)])
    with FakeSmtp() as smtp:
        smtp.fail_recipient("p0004@example.com", 550, at="rcpt")
        smtp.fail_recipient("p0005@example.com", 554, at="rcpt")
        async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
            twilio.fail_for("+525512340006", 21211)
            # Twilio takes this one and drops the connection; asking cannot settle it in
            # time (RETRY_FOR 0): it ends `unknown`, never re-sent.
            twilio.fail_for("+525512340001", "drop")
            settings = settings_for(
                db, tmp_path, smtp_host="127.0.0.1", smtp_port=smtp.port,
                smtp_security="none", email_from="clinic@example.org",
                clinic_postal_address="Calle 1, CDMX", public_base_url="https://bot.example.org",
                twilio_account_sid=SID, twilio_auth_token=TOKEN,
                twilio_from_number="+15005550006", twilio_api_url=twilio.url,
            )
            engine = await build_engine(settings, db)
            engine.config.backoff_base = engine.config.backoff_max = 0.01
            engine.config.retry_for = timedelta(0)
            engines.append(engine)
            await drain(engine)
    async with db.transaction() as session:
        # Two opens and a click came back; two patients opted out in answer, one of them
        # twice (a second STOP), and one opted out of another campaign's message.
        await session.execute(update(Delivery).where(
            Delivery.campaign_id == campaign_id, Delivery.channel == DeliveryChannel.email,
            Delivery.patient_id.in_([ids[0], ids[2]])).values(opened_at=utcnow()))
        await session.execute(update(Delivery).where(
            Delivery.campaign_id == campaign_id, Delivery.channel == DeliveryChannel.email,
            Delivery.patient_id == ids[0]).values(clicked_at=utcnow()))
        for patient in (ids[6], ids[7], ids[7]):
            await consent.record_opt_out(session, patient_ids=[patient],
                                         channel=DeliveryChannel.sms, source="sms_reply",
                                         actor="test", campaign_id=campaign_id)
        await consent.record_opt_out(session, patient_ids=[ids[8]],
                                     channel=DeliveryChannel.email, source="unsubscribe",
                                     actor="test", campaign_id=campaign_id)
        await consent.record_opt_out(session, patient_ids=[ids[9]],
                                     channel=DeliveryChannel.email, source="unsubscribe",
                                     actor="test", campaign_id=None)
    return campaign_id, ids


async def test_snapshot_numbers_equal_the_ledgers(
    db: Database, tmp_path: Path, engines: list[DeliveryEngine]
) -> None:
    campaign_id, _ids = await _campaign_with_failures(db, tmp_path, engines)
    async with db.transaction() as session:
        snap = await snapshot.take(session, campaign_id)
        rows = list((await session.execute(
            select(Delivery).where(Delivery.campaign_id == campaign_id))).scalars())
        campaign = await session.get(Campaign, campaign_id)
    assert campaign is not None and snap.status == "completed"
    assert snap.audience == 10 and snap.deliveries == 20

    for channel in ("email", "sms"):
        mine = [r for r in rows if r.channel.value == channel]
        status = Counter(r.status.value for r in mine)
        numbers = snap.channels[channel]
        assert numbers.audience == len(mine) == 10
        assert numbers.skipped == status["skipped"]
        assert numbers.reachable == len(mine) - status["skipped"]
        assert numbers.sent == status["sent"] + status["delivered"]
        assert numbers.delivered == status["delivered"]
        assert numbers.failed == status["failed"]
        assert numbers.unknown == status["unknown"]
        assert numbers.pending == 0 and numbers.done == len(mine)
        assert numbers.opened == sum(r.opened_at is not None for r in mine)
        assert numbers.clicked == sum(r.clicked_at is not None for r in mine)
        assert numbers.skipped_reasons == dict(Counter(
            r.reason for r in mine if r.status is DeliveryStatus.skipped))
        assert numbers.failed_reasons == dict(Counter(
            r.reason for r in mine if r.status is DeliveryStatus.failed))

    email, sms = snap.channels["email"], snap.channels["sms"]
    # What the injected faults make of it, spelled out.
    assert (email.skipped, email.failed, email.sent) == (1, 2, 7)
    assert email.skipped_reasons == {"no consent": 1}
    assert sorted(r[:3] for r in email.failed_reasons) == ["550", "554"]
    assert (sms.skipped, sms.failed, sms.unknown, sms.sent) == (1, 1, 1, 7)
    assert sms.skipped_reasons == {"no valid address": 1}
    assert (email.opened, email.clicked) == (2, 1)
    assert (email.opted_out, sms.opted_out) == (1, 2)  # distinct patients, this campaign only

    attempted = 7 + 2 + 7 + 1 + 1
    assert snap.failed_pct == round(100 * 3 / attempted, 1)
    assert snap.started_at == campaign.started_at and snap.finished_at == campaign.finished_at
    assert snap.duration_seconds == (campaign.finished_at - campaign.started_at).total_seconds()
    if snap.duration_seconds:
        assert snap.rate == round(14 / snap.duration_seconds, 2)
    numbers = snap.numbers()
    assert numbers["sent"] == 14 and numbers["failed"] == 3 and numbers["unknown"] == 1
    assert numbers["sms_unknown"] == 1 and numbers["email_opened"] == 2
    assert numbers["opted_out"] == 3


async def test_the_snapshot_message_shows_counts_and_reasons_never_patients(
    db: Database, tmp_path: Path, engines: list[DeliveryEngine]
) -> None:
    campaign_id, ids = await _campaign_with_failures(db, tmp_path, engines)
    async with db.transaction() as session:
        # Some servers quote the recipient in their answer: never shown in chat.
        await session.execute(update(Delivery).where(
            Delivery.campaign_id == campaign_id, Delivery.patient_id == ids[4],
            Delivery.channel == DeliveryChannel.email).values(
            reason="550 5.1.1 <p0005@example.com>: no such user (+52 55 1234 0005)"))
        snap = await snapshot.take(session, campaign_id)
        patients = list((await session.execute(select(Patient))).scalars())
    text, blocks = snapshot_message(snap)
    shown = text + repr(blocks)
    for needle in ("7 sent", "2 failed", "1 unknown", "2 opened", "1 clicked", "no consent",
                   "no valid address", "9 of 10 reachable", "opted out",
                   "550 5.1.1 &lt;address&gt;: no such user (&lt;number&gt;)"):
        assert needle in shown, needle
    for p in patients:
        for value in (p.first_name, p.last_name, p.email, p.phone, p.external_id):
            if value:
                assert value not in shown, value


async def test_the_chart_is_a_real_png(
    db: Database, tmp_path: Path, engines: list[DeliveryEngine]
) -> None:
    campaign_id, _ = await _campaign_with_failures(db, tmp_path, engines)
    async with db.transaction() as session:
        snap = await snapshot.take(session, campaign_id)
    png = await chart.render(snap)
    assert png[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", png[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert width >= 400 and height >= 200 and depth == 8 and colour in (2, 6)
    assert png.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82")
    assert len(png) > 10_000  # matplotlib drew bars and labels, not an empty canvas
    path = tmp_path / "chart.png"
    path.write_bytes(png)
    assert path.stat().st_size == len(png)


def test_progress_bar() -> None:
    assert progress_bar(0) == "░" * 20 + " 0%"
    assert progress_bar(0.5) == "▓" * 10 + "░" * 10 + " 50%"
    assert progress_bar(1.2) == "▓" * 20 + " 100%"


async def test_a_campaign_not_started_has_zero_rate_and_no_duration(db: Database) -> None:
    await add_patients(db, 2, email_opt_in=True)
    campaign_id = await send_now(db)
    async with db.transaction() as session:
        snap = await snapshot.take(session, campaign_id, now=utcnow() + timedelta(hours=1))
    assert snap.status == "scheduled" and snap.deliveries == 0
    assert (snap.duration_seconds, snap.rate, snap.failed_pct, snap.progress) == (0, 0, 0, 0)


def test_the_progress_message_shows_the_bar_counts_waiting_and_rate() -> None:
    start = utcnow() - timedelta(seconds=10)
    sms = snapshot.ChannelNumbers(
        channel="sms", audience=40, skipped=2, skipped_reasons={"no consent": 2}, sent=10,
        delivered=4, failed=3, failed_reasons={"21211 invalid number": 3}, unknown=0,
        pending=25, waiting=20, opened=0, clicked=0, opted_out=1)
    snap = snapshot.Snapshot(
        campaign_id=9, subject="Flu shots", status="sending", status_reason=None,
        channel="SMS", audience=40, send_at=start, started_at=start, finished_at=None,
        taken_at=start + timedelta(seconds=10), channels={"sms": sms},
        waiting_until=start + timedelta(hours=8))
    text, blocks = progress_message(snap)
    shown = text + repr(blocks)
    assert text == "Campaign #9 sending: 37% (10 sent, 3 failed)"
    assert "▓▓▓▓▓▓▓░░░░░░░░░░░░░ 37%" in shown and "15 of 40 deliveries done" in shown
    assert "10 sent, 3 failed, 2 skipped, 20 waiting for quiet hours" in shown
    assert "1 messages/s" in shown and "quiet hours hold some SMS until" in shown
    assert snap.numbers()["sms_waiting"] == 20 and snap.numbers()["waiting"] == 20
    assert blocks[-1]["elements"][0]["action_id"] == "campaign_stats"
