"""The delivery engine end to end: real databases, real file outbox, real SMTP and Twilio
stand-ins. Asserts on what patients receive and on what the ledger says."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bot.db import Database
from bot.senders import build_engine
from bot.settings import Settings, load_settings
from services import campaigns, consent
from services.delivery.engine import DeliveryEngine
from services.models import (
    Campaign,
    CampaignStatus,
    ConsentEvent,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    Patient,
    utcnow,
)
from tests.campaign_fixtures import LIMITS, OPERATOR, add_patients, claim_as_dead_process, form
from tests.fakes.smtp_server import FakeSmtp
from tests.fakes.twilio_server import FakeTwilio

SID, TOKEN = "AC" + "1" * 32, "secret-token"


def settings_for(db: Database, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db.url,
        "outbox_dir": tmp_path / "outbox",
        "email_rate": 200,
        "sms_rate": 200,
        "quiet_hours": "off",
    }
    values.update(overrides)
    return load_settings(**values)


async def send_now(db: Database, **overrides: object) -> int:
    async with db.transaction() as session:
        campaign = await campaigns.create(
            session=session, actor=OPERATOR, limits=LIMITS,
            campaign_in=form(send_now=True, send_at=None, **overrides),
        )
        return campaign.id


async def deliveries(db: Database, campaign_id: int) -> list[Delivery]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(Delivery).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)
        )
        return list(rows.scalars())


async def status_of(db: Database, campaign_id: int) -> CampaignStatus:
    async with db.transaction() as session:
        return (await session.get(Campaign, campaign_id)).status  # type: ignore[union-attr]


def outbox_emails(tmp_path: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for p in sorted((tmp_path / "outbox").glob("*.eml"))
    ]


def outbox_sms(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "outbox" / "sms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


_ENGINES: list[DeliveryEngine] = []


@pytest.fixture(autouse=True)
async def _close_engines() -> AsyncIterator[None]:
    yield
    while _ENGINES:
        for driver in _ENGINES.pop().drivers:
            await driver.close()


async def engine_for(db: Database, settings: Settings) -> DeliveryEngine:
    engine = await build_engine(settings, db)
    engine.config.backoff_base = 0.01
    engine.config.backoff_max = 0.05
    _ENGINES.append(engine)
    return engine


async def drain(engine: DeliveryEngine) -> None:
    """Work until nothing is pending (retries with tiny backoff included)."""
    for _ in range(200):
        await engine.drain()
        async with engine.db.transaction() as session:
            open_ = await session.scalar(
                select(func.count()).select_from(Delivery).where(
                    Delivery.status.in_([DeliveryStatus.pending, DeliveryStatus.sending]),
                    Delivery.next_attempt_at.is_(None) | (Delivery.next_attempt_at
                                                          < utcnow() + timedelta(seconds=1)),
                )
            )
        if not open_:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("deliveries still pending")


async def test_send_now_reaches_every_consenting_patient_once_and_skips_the_rest(
    db: Database, tmp_path: Path
) -> None:
    ids = await add_patients(db, 6, phone=None, email_opt_in=True, sms_opt_in=True)
    async with db.transaction() as session:
        await session.execute(update(Patient).where(Patient.id == ids[1])
                              .values(email_opt_in=False))
        await session.execute(update(Patient).where(Patient.id == ids[2]).values(email=None))
        await session.execute(update(Patient).where(Patient.id.in_(ids[3:]))
                              .values(phone="+525512345678"))
    campaign_id = await send_now(
        db, channel="EMAIL_SMS", external_ids=[f"P{n:04d}" for n in range(1, 7)],
        preview_text="Book before June",
    )
    # Opted out after the campaign was created: checked when sending, not only at creation.
    async with db.transaction() as session:
        await consent.record_opt_out(session, patient_ids=[ids[4]], channel=DeliveryChannel.sms,
                                     source="sms_reply", actor="test")

    engine = await engine_for(db, settings_for(db, tmp_path))
    await drain(engine)
    await drain(engine)  # a second pass sends nothing more

    assert await status_of(db, campaign_id) == CampaignStatus.completed
    rows = await deliveries(db, campaign_id)
    assert len(rows) == 12  # one per patient and channel
    by = {(r.patient_id, r.channel): r for r in rows}
    assert by[(ids[1], DeliveryChannel.email)].status == DeliveryStatus.skipped
    assert by[(ids[1], DeliveryChannel.email)].reason == "no consent"
    assert by[(ids[2], DeliveryChannel.email)].reason == "no valid address"
    assert by[(ids[0], DeliveryChannel.sms)].reason == "no valid address"
    assert by[(ids[4], DeliveryChannel.sms)].reason == "opted out"
    assert by[(ids[3], DeliveryChannel.sms)].status == DeliveryStatus.sent

    mails = outbox_emails(tmp_path)
    assert sorted(m["To"] for m in mails) == sorted(
        f"p{n:04d}@example.com" for n in (1, 4, 5, 6)
    )
    first = next(m for m in mails if m["To"] == "p0001@example.com")
    assert first["Subject"] == "Your check-up, AnaP0001"
    assert first["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "/unsubscribe/" in first["List-Unsubscribe"]
    assert first["Message-ID"] == by[(ids[0], DeliveryChannel.email)].provider_id
    text = first.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Hello AnaP0001, it is time for your yearly check-up." in text
    sms = outbox_sms(tmp_path)
    assert len(sms) == 2
    assert all(s["body"].endswith("Reply STOP to opt out") for s in sms)


async def test_a_dead_process_claims_are_sent_unless_handed_over_which_become_unknown(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 3, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001", "P0002", "P0003"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    await engine.start_due()
    # A process claimed two emails, handed the first to the mail server, and died.
    claimed = await claim_as_dead_process(db, channel=DeliveryChannel.email, limit=2,
                                          handed_over=1)
    assert len(claimed) == 2

    await engine.recover()
    await drain(engine)

    rows = {r.id: r for r in await deliveries(db, campaign_id)}
    assert rows[claimed[0].id].status == DeliveryStatus.unknown  # the server may have it
    assert rows[claimed[1].id].status == DeliveryStatus.sent  # certainly never sent: sent now
    assert sorted(r.status for r in rows.values()) == ["sent", "sent", "unknown"]
    assert sorted(m["To"] for m in outbox_emails(tmp_path)) == [
        "p0002@example.com", "p0003@example.com"]
    assert await status_of(db, campaign_id) == CampaignStatus.completed
    async with db.transaction() as session:
        shown = await campaigns.summary(session=session, campaign_id=campaign_id)
    assert shown["deliveries"]["email"]["unknown"] == 1
    assert [u["external_id"] for u in shown["unknown_deliveries"]] == ["P0001"]


async def test_two_engines_on_one_database_send_each_message_once(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 40, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=[f"P{n:04d}" for n in range(1, 41)])
    first = await engine_for(db, settings_for(db, tmp_path))
    second = await engine_for(db, settings_for(db, tmp_path))
    await asyncio.gather(drain(first), drain(second))
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.sent}
    assert all(r.attempts == 1 for r in rows)
    recipients = [m["To"] for m in outbox_emails(tmp_path)]
    assert len(recipients) == 40 == len(set(recipients))


async def test_a_campaign_due_longer_ago_than_the_grace_is_missed(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 2, email_opt_in=True)
    campaign_id = await send_now(db)
    async with db.transaction() as session:
        await session.execute(update(Campaign).where(Campaign.id == campaign_id)
                              .values(send_at=utcnow() - timedelta(hours=2)))
    engine = await engine_for(db, settings_for(db, tmp_path, schedule_grace="1h"))
    events = await engine.start_due()
    assert [(e.campaign_id, e.event) for e in events] == [(campaign_id, "missed")]
    assert await status_of(db, campaign_id) == CampaignStatus.missed
    assert await deliveries(db, campaign_id) == []
    assert outbox_emails(tmp_path) == []


async def test_sms_outside_quiet_hours_waits_for_the_window(
    db: Database, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    # A window that is closed right now in UTC: it opens in two hours, for one hour.
    opens = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    window = f"{opens:%H:%M}-{(opens + timedelta(hours=1)):%H:%M}"
    await add_patients(db, 2, sms_opt_in=True, phone="+525512345678", timezone="UTC")
    campaign_id = await send_now(db, channel="SMS")
    engine = await engine_for(db, settings_for(db, tmp_path, quiet_hours=window))
    await engine.drain()
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.pending}
    assert all(r.reason == "waiting for quiet hours to end" for r in rows)
    assert all(r.next_attempt_at is not None and r.next_attempt_at >= opens for r in rows)
    assert all(r.attempts == 0 for r in rows)
    assert outbox_sms(tmp_path) == []
    async with db.transaction() as session:
        waiting = (await campaigns.summary(session=session, campaign_id=campaign_id))["waiting"]
    assert waiting["count"] == 2 and waiting["until"] >= opens.isoformat()
    assert await status_of(db, campaign_id) == CampaignStatus.sending


async def test_cancelling_while_sending_skips_what_is_left(db: Database, tmp_path: Path) -> None:
    await add_patients(db, 3, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001", "P0002", "P0003"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    await engine.start_due()
    async with db.transaction() as session:
        await campaigns.cancel(session=session, actor=OPERATOR, campaign_id=campaign_id)
    await engine.drain()
    rows = await deliveries(db, campaign_id)
    assert {(r.status, r.reason) for r in rows} == {(DeliveryStatus.skipped, "campaign cancelled")}
    assert outbox_emails(tmp_path) == []


async def test_smtp_faults_are_retried_failed_or_stop_the_channel(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 4, email_opt_in=True)
    with FakeSmtp() as smtp:
        smtp.fail_recipient("p0002@example.com", 550, at="rcpt")
        smtp.fail_next(451, n=1, at="rcpt")
        settings = settings_for(
            db, tmp_path, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none",
            email_from="Clinic <clinic@example.org>", clinic_postal_address="Calle 1, CDMX",
            public_base_url="https://bot.example.org",
        )
        campaign_id = await send_now(db, external_ids=["P0001", "P0002", "P0003", "P0004"])
        engine = await engine_for(db, settings)
        await drain(engine)
        received = sorted(r for m in smtp.messages for r in m.recipients)
    rows = {r.address: r for r in await deliveries(db, campaign_id)}
    assert received == ["p0001@example.com", "p0003@example.com", "p0004@example.com"]
    assert rows["p0002@example.com"].status == DeliveryStatus.failed
    assert rows["p0002@example.com"].reason.startswith("550")  # type: ignore[union-attr]
    assert sum(r.attempts for r in rows.values()) == 5  # one 451 retried once
    assert await status_of(db, campaign_id) == CampaignStatus.completed


async def test_rejected_smtp_login_fails_the_channel_at_once(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 30, email_opt_in=True)
    with FakeSmtp(auth=("clinic", "right")) as smtp:
        settings = settings_for(
            db, tmp_path, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none",
            smtp_username="clinic", smtp_password="wrong",
            email_from="clinic@example.org", clinic_postal_address="Calle 1, CDMX",
            public_base_url="https://bot.example.org",
        )
        campaign_id = await send_now(db, external_ids=[f"P{n:04d}" for n in range(1, 31)])
        engine = await engine_for(db, settings)
        await drain(engine)
        assert smtp.messages == []
        attempts = smtp.connections
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.failed}
    assert all("SMTP_PASSWORD" in (r.reason or "") for r in rows)
    assert attempts <= 5  # a handful, never one per patient
    assert await status_of(db, campaign_id) == CampaignStatus.failed


async def test_twilio_faults_are_classified_and_21610_records_the_opt_out(
    db: Database, tmp_path: Path
) -> None:
    phones = ["+525512340001", "+525512340002", "+525512340003", "+525512340004"]
    ids = await add_patients(db, 4, sms_opt_in=True)
    async with db.transaction() as session:
        for pid, phone in zip(ids, phones, strict=True):
            await session.execute(update(Patient).where(Patient.id == pid).values(phone=phone))
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        twilio.fail_for(phones[1], 21610)
        twilio.fail_for(phones[2], 21211)
        twilio.fail_next(429, n=1)
        settings = settings_for(
            db, tmp_path, twilio_account_sid=SID, twilio_auth_token=TOKEN,
            twilio_from_number="+15005550006", twilio_api_url=twilio.url,
        )
        campaign_id = await send_now(db, channel="SMS", external_ids=["P0001", "P0002", "P0003",
                                                                     "P0004"])
        engine = await engine_for(db, settings)
        await drain(engine)
        accepted = sorted(m.to for m in twilio.messages)
    rows = {r.address: r for r in await deliveries(db, campaign_id)}
    assert accepted == [phones[0], phones[3]]
    assert rows[phones[1]].status == DeliveryStatus.failed
    assert rows[phones[1]].error_code == "21610"
    assert rows[phones[2]].error_code == "21211"
    assert rows[phones[0]].provider_id.startswith("SM")  # type: ignore[union-attr]
    async with db.transaction() as session:
        patient = await session.get(Patient, ids[1])
        assert patient is not None and patient.sms_opted_out_at is not None
        events = (await session.execute(select(ConsentEvent))).scalars().all()
        assert [(e.patient_id, e.action) for e in events] == [(ids[1], "opt_out")]


async def test_twilio_401_fails_the_channel_without_trying_every_patient(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 20, sms_opt_in=True, phone="+525512345678")
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        settings = settings_for(
            db, tmp_path, twilio_account_sid=SID, twilio_auth_token="wrong",
            twilio_from_number="+15005550006", twilio_api_url=twilio.url,
        )
        campaign_id = await send_now(db, channel="SMS",
                                     external_ids=[f"P{n:04d}" for n in range(1, 21)])
        engine = await engine_for(db, settings)
        await drain(engine)
        posts = len(twilio.posts)
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.failed}
    assert all("TWILIO_AUTH_TOKEN" in (r.reason or "") for r in rows)
    assert posts <= 5
    assert await status_of(db, campaign_id) == CampaignStatus.failed


@pytest.mark.parametrize("late_minutes, expected", [(30, "started"), (90, "missed")])
async def test_grace_period_boundary(
    db: Database, tmp_path: Path, late_minutes: int, expected: str
) -> None:
    await add_patients(db, 1, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001"])
    async with db.transaction() as session:
        await session.execute(update(Campaign).where(Campaign.id == campaign_id)
                              .values(send_at=utcnow() - timedelta(minutes=late_minutes)))
    engine = await engine_for(db, settings_for(db, tmp_path))
    events = await engine.start_due()
    assert [e.event for e in events] == [expected]


async def test_connections_dropped_before_and_after_the_handover(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 2, email_opt_in=True)
    with FakeSmtp() as smtp:
        smtp.drop_next(n=1, at="rcpt")  # nothing handed over yet: retried, then sent
        settings = settings_for(
            db, tmp_path, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none",
            email_from="clinic@example.org", clinic_postal_address="Calle 1, CDMX",
            public_base_url="https://bot.example.org",
        )
        campaign_id = await send_now(db, external_ids=["P0001"])
        await drain(await engine_for(db, settings))
        first = await deliveries(db, campaign_id)
        assert [(r.status, r.attempts) for r in first] == [(DeliveryStatus.sent, 2)]

        smtp.drop_next(n=1, at="data")  # the message was taken: ambiguous, never re-sent
        campaign_id = await send_now(db, external_ids=["P0002"])
        await drain(await engine_for(db, settings))
        received = [r for m in smtp.messages for r in m.recipients]
    [row] = await deliveries(db, campaign_id)
    assert (row.status, row.attempts) == (DeliveryStatus.unknown, 1)
    assert received.count("p0002@example.com") == 1


async def twilio_campaign(
    db: Database, tmp_path: Path, twilio: FakeTwilio, patients: int = 1, **overrides: object
) -> tuple[int, DeliveryEngine]:
    """A send-now SMS campaign to `patients` patients (+52551234000N), and an engine."""
    ids = await add_patients(db, patients, sms_opt_in=True)
    async with db.transaction() as session:
        for n, pid in enumerate(ids, start=1):
            await session.execute(update(Patient).where(Patient.id == pid)
                                  .values(phone=f"+5255123400{n:02d}"))
    settings = settings_for(
        db, tmp_path, twilio_account_sid=SID, twilio_auth_token=TOKEN,
        twilio_from_number="+15005550006", twilio_api_url=twilio.url, **overrides,
    )
    campaign_id = await send_now(db, channel="SMS",
                                 external_ids=[f"P{n:04d}" for n in range(1, patients + 1)])
    return campaign_id, await engine_for(db, settings)


async def test_twilio_accepting_then_dropping_the_connection_is_asked_and_found_sent(
    db: Database, tmp_path: Path
) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        twilio.fail_next("drop")
        campaign_id, engine = await twilio_campaign(db, tmp_path, twilio)
        await drain(engine)
        posts = len(twilio.posts)
        [message] = twilio.messages
        lists = [r for r in twilio.requests if r.method == "GET"]
    [row] = await deliveries(db, campaign_id)
    assert (row.status, row.provider_id) == (DeliveryStatus.sent, message.sid)
    assert posts == 1 and len(lists) == 1  # asked once, never posted again
    assert await status_of(db, campaign_id) == CampaignStatus.completed


async def test_twilio_5xx_with_nothing_stored_is_asked_then_sent_once(
    db: Database, tmp_path: Path
) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        twilio.fail_next(500, n=3)  # three patients' POSTs: Twilio stored nothing
        campaign_id, engine = await twilio_campaign(db, tmp_path, twilio, patients=4)
        await drain(engine)
        received = sorted(m.to for m in twilio.messages)
        posts = len(twilio.posts)
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.sent}
    assert received == [f"+5255123400{n:02d}" for n in range(1, 5)]  # each exactly once
    assert posts == 7  # four, and the three that were answered 500 once more
    assert sorted(r.provider_id for r in rows) == sorted(m.sid for m in twilio.messages)


async def test_twilio_5xx_after_storing_the_message_is_found_and_not_sent_again(
    db: Database, tmp_path: Path
) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        twilio.fail_next(503, n=2, stored=True)
        campaign_id, engine = await twilio_campaign(db, tmp_path, twilio, patients=3)
        await drain(engine)
        received = sorted(m.to for m in twilio.messages)
        posts = len(twilio.posts)
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.sent}
    assert received == [f"+5255123400{n:02d}" for n in range(1, 4)]  # nobody twice
    assert posts == 3
    assert sorted(r.provider_id for r in rows) == sorted(m.sid for m in twilio.messages)


async def test_an_sms_twilio_cannot_be_asked_about_ends_unknown_after_retry_for(
    db: Database, tmp_path: Path
) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        twilio.fail_next("drop")
        twilio.fail_lists(500, n=1000)  # Twilio's list stays down
        campaign_id, engine = await twilio_campaign(db, tmp_path, twilio, retry_for="2s")
        await drain(engine)
        posts = len(twilio.posts)
        asked = len([r for r in twilio.requests if r.method == "GET"])
    [row] = await deliveries(db, campaign_id)
    assert row.status == DeliveryStatus.unknown
    assert "could not ask Twilio" in (row.reason or "")
    assert posts == 1 and asked >= 2  # asked again and again, never re-sent
    assert await status_of(db, campaign_id) == CampaignStatus.completed


def test_the_channel_gate_shuts_on_a_refused_channel_and_reopens() -> None:
    from services.delivery.outcomes import ChannelGate, Outcome, SendResult

    gate = ChannelGate(hold=0.05)
    assert gate.refusal() is None
    gate.note(SendResult(Outcome.FAILED, reason="550 no such user"))  # one patient's problem
    assert gate.refusal() is None
    down = SendResult(Outcome.CHANNEL_DOWN, reason="535 login refused")
    assert gate.note(down) is down
    assert gate.refusal() is down
    import time

    time.sleep(0.06)
    assert gate.refusal() is None
