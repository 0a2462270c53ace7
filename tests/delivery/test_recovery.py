"""Every delivery ends and every campaign closes: completion after commit and by the sweep,
recovery of dead processes' claims by a survivor (only what was handed over is in doubt),
fair shares between campaigns. Real databases (SQLite and PostgreSQL), the real engine."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from bot.db import Database
from services.delivery import ledger, recovery
from services.delivery.ledger import Outcome
from services.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    SenderProcess,
    utcnow,
)
from tests.campaign_fixtures import add_patients, claim_as_dead_process
from tests.delivery.test_engine import (
    SID,
    TOKEN,
    deliveries,
    drain,
    engine_for,
    outbox_emails,
    send_now,
    settings_for,
    status_of,
    twilio_campaign,
)
from tests.fakes.twilio_server import FakeTwilio, ReceivedMessage

ELSEWHERE = "elsewhere:4242:gone"


async def add_process(db: Database, sender_id: str, *, heartbeat_age: timedelta) -> None:
    """A process on another host whose last heartbeat is `heartbeat_age` old."""
    host, pid, _ = sender_id.split(":")
    async with db.transaction() as session:
        session.add(SenderProcess(id=sender_id, hostname=host, pid=int(pid),
                                  started_at=utcnow() - timedelta(hours=1),
                                  heartbeat_at=utcnow() - heartbeat_age))


async def claim_as(db: Database, sender_id: str, *, channel: DeliveryChannel, limit: int,
                   handed_over: int = 0) -> list[ledger.Claimed]:
    async with db.transaction() as session:
        claimed = await ledger.claim(session, channel=channel, sender_id=sender_id,
                                     limit=limit, now=utcnow())
        await ledger.mark_attempted(session, ids=[c.id for c in claimed[:handed_over]],
                                    sender_id=sender_id, now=utcnow())
    return claimed


async def test_a_campaign_left_sending_with_every_delivery_final_is_closed_by_the_sweep(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 3, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001", "P0002", "P0003"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    await engine.start_due()
    # What two overlapping batches used to leave: every outcome written, nobody closing.
    async with db.transaction() as session:
        await session.execute(update(Delivery).where(Delivery.campaign_id == campaign_id)
                              .values(status=DeliveryStatus.sent))
    assert await status_of(db, campaign_id) == CampaignStatus.sending
    await engine.tick()
    assert await status_of(db, campaign_id) == CampaignStatus.completed
    await engine.tick()  # idempotent: closed once
    async with db.transaction() as session:
        campaign = await session.get(Campaign, campaign_id)
        assert campaign is not None and campaign.finished_at is not None


async def test_many_campaigns_sent_by_two_engines_all_close_without_a_sweep(
    db: Database, tmp_path: Path
) -> None:
    """Overlapping batches of the same campaigns on two engines: the last to commit closes
    each campaign (the check runs after the outcomes commit), no sweep needed."""
    await add_patients(db, 60, email_opt_in=True)
    ids = [await send_now(db, external_ids=[f"P{n:04d}" for n in range(k, k + 15)])
           for k in range(1, 61, 15)]
    engines = [await engine_for(db, settings_for(db, tmp_path, email_rate=40))
               for _ in range(2)]
    await engines[0].start_due()
    for engine in engines:
        engine.config.max_batch = 4  # many small overlapping batches per campaign
        await engine.start()
    try:
        for _ in range(300):
            if all([await status_of(db, i) == CampaignStatus.completed for i in ids]):
                break
            await asyncio.sleep(0.1)
    finally:
        for engine in engines:
            await engine.stop(grace_seconds=5)
    assert [await status_of(db, i) for i in ids] == [CampaignStatus.completed] * 4
    recipients = [m["To"] for m in outbox_emails(tmp_path)]
    assert len(recipients) == 60 == len(set(recipients))


async def test_a_survivor_recovers_a_dead_process_claims_on_its_heartbeat(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 5, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=[f"P000{n}" for n in range(1, 6)])
    engine = await engine_for(db, settings_for(db, tmp_path))
    engine.config.stale_after = timedelta(seconds=1)
    await engine.start_due()
    # Another host's process claimed three, handed one to the mail server, and went silent.
    await add_process(db, ELSEWHERE, heartbeat_age=timedelta(seconds=30))
    claimed = await claim_as(db, ELSEWHERE, channel=DeliveryChannel.email, limit=3,
                             handed_over=1)
    await engine.heartbeat_now()  # just connected: no verdict on others yet
    await asyncio.sleep(1.1)
    await engine.heartbeat_now()  # connected for a whole stale_after: the verdict holds
    rows = {r.id: r for r in await deliveries(db, campaign_id)}
    assert rows[claimed[0].id].status == DeliveryStatus.unknown
    assert {rows[c.id].status for c in claimed[1:]} == {DeliveryStatus.pending}
    await drain(engine)
    rows = {r.id: r for r in await deliveries(db, campaign_id)}
    assert sorted(r.status for r in rows.values()) == ["sent"] * 4 + ["unknown"]
    assert len(outbox_emails(tmp_path)) == 4
    assert await status_of(db, campaign_id) == CampaignStatus.completed
    async with db.transaction() as session:  # the dead process's entry is gone
        assert await session.get(SenderProcess, ELSEWHERE) is None


async def test_stale_heartbeats_seen_right_after_an_outage_are_not_taken_for_death(
    db: Database, tmp_path: Path
) -> None:
    """After a database outage every heartbeat is old, the living's too: a process that has
    not itself been connected for a whole stale_after recovers nobody's claims."""
    await add_patients(db, 2, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001", "P0002"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    engine.config.stale_after = timedelta(seconds=5)
    await engine.start_due()
    await add_process(db, ELSEWHERE, heartbeat_age=timedelta(seconds=30))
    await claim_as(db, ELSEWHERE, channel=DeliveryChannel.email, limit=2, handed_over=1)
    await engine.heartbeat_now()
    await engine.heartbeat_now()
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.sending}
    assert {r.claimed_by for r in rows} == {ELSEWHERE}


async def test_a_restart_on_the_same_host_recovers_at_once_by_pid(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 4, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001", "P0002", "P0003", "P0004"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    await engine.start_due()
    await claim_as_dead_process(db, channel=DeliveryChannel.email, limit=4, handed_over=2)
    await engine.heartbeat_now()  # fresh heartbeat, but its pid is gone: dead for sure
    await drain(engine)
    rows = await deliveries(db, campaign_id)
    assert sorted(r.status for r in rows) == ["sent", "sent", "unknown", "unknown"]
    assert all(r.attempts == 1 for r in rows)  # a claim never handed over is no attempt


async def test_a_dead_process_handed_over_sms_are_asked_about_not_resent_blindly(
    db: Database, tmp_path: Path
) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id, engine = await twilio_campaign(db, tmp_path, twilio, patients=3)
        engine.config.ask_settle = timedelta(0)
        await engine.start_due()
        claimed = await claim_as_dead_process(db, channel=DeliveryChannel.sms, limit=2,
                                              handed_over=2)
        # Twilio took the first of the two before the process died; the second never arrived.
        sms = next(d for d in engine.drivers if d.channel == DeliveryChannel.sms)
        async with db.read() as session:
            from services.models import Patient

            row = await session.get(Delivery, claimed[0].id)
            assert row is not None
            patient = await session.get(Patient, row.patient_id)
            content = await engine._jobs._content(session, campaign_id)
            body = sms.text_for(content, patient)  # type: ignore[attr-defined]
            assert patient is not None and patient.phone is not None
            phone = patient.phone
        twilio.messages.append(ReceivedMessage(
            sid="SM" + "a" * 32, to=phone, from_="+15005550006",
            messaging_service_sid=None, body=body, status_callback=None, form={},
            received_at=0.0, created_at=utcnow(), answered=False))
        await engine.recover()
        await drain(engine)
        received = sorted(m.to for m in twilio.messages)
        posts = len(twilio.posts)
    rows = {r.id: r for r in await deliveries(db, campaign_id)}
    assert {r.status for r in rows.values()} == {DeliveryStatus.sent}
    assert rows[claimed[0].id].provider_id == "SM" + "a" * 32  # found, not sent again
    assert received == [f"+5255123400{n:02d}" for n in range(1, 4)]  # each patient once
    assert posts == 2  # the second claimed one (absent at Twilio) and the unclaimed third


async def test_a_process_wrongly_taken_for_dead_sends_nothing_it_lost_and_keeps_its_answers(
    db: Database, tmp_path: Path
) -> None:
    """A network split: B recovered A's claims while A was cut off but alive."""
    await add_patients(db, 3, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001", "P0002", "P0003"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    await engine.start_due()
    a = "hostA:1:alive"
    claimed = await claim_as(db, a, channel=DeliveryChannel.email, limit=2, handed_over=1)
    async with db.transaction() as session:
        await recovery.recover_orphans(session, dead=[a], known=[a], now=utcnow(),
                                     stale_after=timedelta(seconds=10))
    async with db.transaction() as session:
        # A now tries to hand over its second claim: it is no longer A's, so A must not.
        assert await ledger.mark_attempted(session, ids=[claimed[1].id], sender_id=a,
                                           now=utcnow()) == set()
        # A's first message was accepted: its late answer replaces "unknown".
        await ledger.record(session, [Outcome(claimed[0].id, DeliveryStatus.sent,
                                              provider_id="<a@x>", sent_at=utcnow())],
                            now=utcnow(), sender_id=a)
    rows = {r.id: r for r in await deliveries(db, campaign_id)}
    assert rows[claimed[0].id].status == DeliveryStatus.sent
    assert rows[claimed[1].id].status == DeliveryStatus.pending
    await drain(engine)
    assert sorted(m["To"] for m in outbox_emails(tmp_path)) == [
        "p0002@example.com", "p0003@example.com"]


async def test_a_claim_whose_commit_answer_was_lost_is_released_by_its_own_process(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 2, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=["P0001", "P0002"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    await engine.start_due()
    # The claim committed under this engine's name, but the engine never heard back.
    async with db.transaction() as session:
        await ledger.claim(session, channel=DeliveryChannel.email, sender_id=engine.sender_id,
                           limit=2, now=utcnow() - timedelta(minutes=2))
        await session.execute(update(Delivery).values(claimed_at=utcnow() - timedelta(minutes=2)))
    await engine.recover()
    assert {r.status for r in await deliveries(db, campaign_id)} == {DeliveryStatus.pending}
    await drain(engine)
    assert {r.status for r in await deliveries(db, campaign_id)} == {DeliveryStatus.sent}


async def test_campaigns_on_one_channel_share_each_batch_round_robin(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 60, email_opt_in=True)
    big = await send_now(db, external_ids=[f"P{n:04d}" for n in range(1, 51)])
    small = await send_now(db, external_ids=[f"P{n:04d}" for n in range(51, 54)])
    other = await send_now(db, external_ids=[f"P{n:04d}" for n in range(54, 61)])
    engine = await engine_for(db, settings_for(db, tmp_path))
    await engine.start_due()
    async with db.transaction() as session:
        first = await ledger.claim(session, channel=DeliveryChannel.email, sender_id="me",
                                   limit=12, now=utcnow())
    per = {c: sum(1 for x in first if x.campaign_id == c) for c in (big, small, other)}
    # Equal shares of 4; the small campaign's unused one goes to the others.
    assert per[small] == 3 and per[big] + per[other] == 9 and min(per.values()) >= 3
    async with db.transaction() as session:
        second = await ledger.claim(session, channel=DeliveryChannel.email, sender_id="me",
                                    limit=2, now=utcnow(), after_campaign=big)
    assert [c.campaign_id for c in second] == [other, big]  # the turn moved on, wrapping


async def test_a_delivery_that_certainly_failed_to_send_is_retried_until_retry_for(
    db: Database, tmp_path: Path
) -> None:
    """Nothing listens at the SMTP port: certainly not sent, retried with backoff, then
    failed with the reason once RETRY_FOR is over, and the channel is not hammered."""
    import socket

    with socket.socket() as probe:  # a port with nothing behind it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await add_patients(db, 30, email_opt_in=True)
    campaign_id = await send_now(db, external_ids=[f"P{n:04d}" for n in range(1, 31)])
    settings = settings_for(
        db, tmp_path, smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
        email_from="clinic@example.org", clinic_postal_address="Calle 1, CDMX",
        public_base_url="https://bot.example.org", retry_for="1s",
    )
    engine = await engine_for(db, settings)
    engine.config.backoff_base = engine.config.backoff_max = 0.3
    await drain(engine)
    rows = await deliveries(db, campaign_id)
    assert {r.status for r in rows} == {DeliveryStatus.failed}
    assert all("still failing after 1 s of retries" in (r.reason or "") for r in rows)
    assert all("could not connect" in (r.reason or "") for r in rows)
    # Held back while the server is away: far fewer attempts than patients × rounds.
    assert sum(r.attempts for r in rows) < 30 * 2
    assert await status_of(db, campaign_id) == CampaignStatus.failed


async def test_health_problems_name_stuck_deliveries_and_late_campaigns(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 2, email_opt_in=True)
    stuck = await send_now(db, external_ids=["P0001"])
    late = await send_now(db, external_ids=["P0002"])
    engine = await engine_for(db, settings_for(db, tmp_path))
    async with db.transaction() as session:
        await session.execute(update(Campaign).where(Campaign.id == late)
                              .values(send_at=utcnow() + timedelta(hours=1)))
    await engine.start_due()
    async with db.read() as session:
        assert await recovery.health_problems(session, now=utcnow()) == []
    await claim_as(db, "busy:1:x", channel=DeliveryChannel.email, limit=1)
    async with db.transaction() as session:
        await session.execute(update(Delivery).where(Delivery.campaign_id == stuck)
                              .values(claimed_at=utcnow() - timedelta(minutes=10)))
        await session.execute(update(Campaign).where(Campaign.id == late)
                              .values(send_at=utcnow() - timedelta(minutes=10)))
    async with db.read() as session:
        problems = await recovery.health_problems(session, now=utcnow())
    assert len(problems) == 2
    assert "1 deliveries have been in flight" in problems[0]
    assert "1 campaigns due since" in problems[1]
    rows = (await deliveries(db, stuck))
    assert rows[0].status == DeliveryStatus.sending
    async with db.read() as session:
        assert (await session.execute(select(Campaign.status).where(Campaign.id == late))
                ).scalar_one() == CampaignStatus.scheduled
