"""Twilio's webhooks over real HTTP: status callbacks and patients' replies, signed the way
Twilio signs them, against the real engine, the Twilio stand-in and both databases."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import aiohttp
import pytest
from sqlalchemy import func, select, update
from twilio.request_validator import RequestValidator

from bot.db import Database
from bot.settings import load_settings
from handlers.webhooks import signature_valid
from services import campaigns
from services.models import (
    AuditEntry,
    Campaign,
    CampaignStatus,
    ConsentEvent,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    Patient,
    utcnow,
)
from tests.campaign_fixtures import add_patients
from tests.fakes.twilio_server import FakeTwilio
from tests.handlers.bot_server import (
    FROM,
    SID,
    TOKEN,
    Bot,
    ledger,
    post_signed,
    send_now,
    snapshot,
)


async def sms_campaign(bot: Bot, twilio: FakeTwilio, phones: list[str]) -> int:
    """Patients with these numbers get a campaign by SMS, sent through the Twilio stand-in."""
    ids = await add_patients(bot.db, len(phones), sms_opt_in=True)
    async with bot.db.transaction() as session:
        for pid, phone in zip(ids, phones, strict=True):
            await session.execute(update(Patient).where(Patient.id == pid).values(phone=phone))
    bot.configure(twilio_account_sid=SID, twilio_auth_token=TOKEN, twilio_from_number=FROM,
                  twilio_api_url=twilio.url)
    return await send_now(bot.db, channel="SMS",
                          external_ids=[f"P{n:04d}" for n in range(1, len(phones) + 1)])


# --- the signature ---------------------------------------------------------------------------

def test_twilios_documented_test_vector_validates() -> None:
    """Twilio's RequestValidator docs: token 12345 over this URL and form → this signature."""
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    settings = load_settings(public_base_url="https://mycompany.com", twilio_auth_token="12345",
                             sms_backend="file")
    expected = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert RequestValidator("12345").compute_signature(
        "https://mycompany.com/myapp.php?foo=1&bar=2", params) == expected
    assert signature_valid(settings, "/myapp.php?foo=1&bar=2", params, expected)
    assert not signature_valid(settings, "/myapp.php?foo=1&bar=3", params, expected)
    assert not signature_valid(settings, "/myapp.php?foo=1&bar=2", params | {"Digits": "1235"},
                               expected)
    assert not signature_valid(settings, "/myapp.php?foo=1&bar=2", params, "")
    other_host = load_settings(public_base_url="https://evil.example", twilio_auth_token="12345",
                               sms_backend="file")
    assert not signature_valid(other_host, "/myapp.php?foo=1&bar=2", params, expected)
    unconfigured = load_settings(public_base_url=None, twilio_auth_token="12345",
                                 sms_backend="file")
    assert not signature_valid(unconfigured, "/myapp.php?foo=1&bar=2", params, expected)


async def test_forged_or_missing_signatures_get_403_and_change_nothing(bot: Bot) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, ["+525512340001"])
        await (await bot.engine()).drain()
        [message] = twilio.messages
        before = snapshot(await ledger(bot.db, campaign_id))
        status_url = bot.url("/twilio/status")
        params = {"AccountSid": SID, "MessageSid": message.sid, "MessageStatus": "delivered",
                  "To": message.to, "From": FROM}
        assert await post_signed(status_url, params, signature="") == 403  # missing
        assert await post_signed(status_url, params, token="not-the-token") == 403
        assert await post_signed(status_url, params, signature="0/KCTR6DLpKmkAf8muzZqo1nDgQ=") \
            == 403
        # Signed for "sent", sent as "delivered": altered parameters.
        signature = RequestValidator(TOKEN).compute_signature(
            status_url, params | {"MessageStatus": "sent"})
        assert await post_signed(status_url, params, signature=signature) == 403
        # Signed over another URL (a replay against another service's webhook).
        assert await post_signed(status_url, params,
                                 signed_url="https://other.example/twilio/status") == 403
        stop = {"From": message.to, "To": FROM, "Body": "STOP", "MessageSid": "SM1"}
        assert await post_signed(bot.url("/twilio/inbound"), stop, token="forged") == 403
        # Nothing to verify with: no PUBLIC_BASE_URL, or no auth token.
        bot.configure(public_base_url=None, twilio_auth_token=TOKEN, sms_backend="file")
        assert await post_signed(status_url, params) == 403
        bot.configure(twilio_auth_token=None)
        assert await post_signed(status_url, params) == 403
        assert await post_signed(bot.url("/twilio/inbound"), stop) == 403
    assert snapshot(await ledger(bot.db, campaign_id)) == before
    async with bot.db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(ConsentEvent)) == 0
        patient = (await session.execute(select(Patient))).scalar_one()
        assert patient.sms_opted_out_at is None
    assert bot.notifier.changed == [] and bot.notifier.opt_outs == []


# --- status callbacks ------------------------------------------------------------------------

async def test_status_callbacks_replayed_and_out_of_order(bot: Bot) -> None:
    phones = ["+525512340001", "+525512340002", "+525512340003", "+525512340004"]
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, phones)
        await (await bot.engine()).drain()
        by_to = {m.to: m for m in twilio.messages}
        assert all(m.status_callback == bot.url("/twilio/status") for m in by_to.values())

        async def callback(phone: str, status: str, code: int | None = None) -> None:
            assert await twilio.send_status_callback(by_to[phone], status,
                                                     error_code=code) == 200

        await callback(phones[0], "sent")
        await callback(phones[0], "delivered")
        first = {r.address: r for r in await ledger(bot.db, campaign_id)}[phones[0]]
        assert first.status == DeliveryStatus.delivered and first.delivered_at is not None
        await callback(phones[0], "delivered")  # Twilio repeats itself
        await callback(phones[0], "sent")  # a late "sent" never downgrades
        await callback(phones[0], "undelivered", 30003)  # nor does a failure after delivery
        await callback(phones[1], "undelivered", 30003)
        await callback(phones[1], "undelivered", 30003)
        await callback(phones[2], "failed", 30006)
        await callback(phones[2], "sent")  # out of order: the failure stands
        await callback(phones[3], "delivered")  # "delivered" before "sent"
        await callback(phones[3], "sending")
        rows = {r.address: r for r in await ledger(bot.db, campaign_id)}
    assert rows[phones[0]].status == DeliveryStatus.delivered
    assert rows[phones[0]].delivered_at == first.delivered_at  # kept from the first callback
    assert rows[phones[0]].error_code is None
    assert (rows[phones[1]].status, rows[phones[1]].error_code, rows[phones[1]].reason) == (
        DeliveryStatus.failed, "30003", "Twilio: undelivered (30003 unreachable)")
    assert (rows[phones[2]].status, rows[phones[2]].reason) == (
        DeliveryStatus.failed, "Twilio: failed (30006 landline)")
    assert rows[phones[3]].status == DeliveryStatus.delivered
    # Only the callbacks that changed something told the notifier.
    assert bot.notifier.changed == [{campaign_id}] * 4
    async with bot.db.transaction() as session:
        shown = await campaigns.summary(session=session, campaign_id=campaign_id)
    assert shown["deliveries"]["sms"]["delivered"] == 2
    assert shown["deliveries"]["sms"]["failed"] == 2


async def test_a_late_delivery_report_overrides_an_undelivered_one(bot: Bot) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, ["+525512340001"])
        await (await bot.engine()).drain()
        [message] = twilio.messages
        assert await twilio.send_status_callback(message, "undelivered", error_code=30005) == 200
        [row] = await ledger(bot.db, campaign_id)
        assert row.reason == "Twilio: undelivered (30005 unknown number)"
        assert await twilio.send_status_callback(message, "delivered") == 200
    [row] = await ledger(bot.db, campaign_id)
    assert (row.status, row.reason, row.error_code) == (DeliveryStatus.delivered, None, None)


async def test_a_21610_failure_callback_records_the_opt_out(bot: Bot) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, ["+525512340001"])
        await (await bot.engine()).drain()
        for _ in range(2):
            assert await twilio.send_status_callback(twilio.messages[0], "failed",
                                                     error_code=21610) == 200
    [row] = await ledger(bot.db, campaign_id)
    assert (row.status, row.error_code) == (DeliveryStatus.failed, "21610")
    async with bot.db.transaction() as session:
        events = (await session.execute(select(ConsentEvent.action, ConsentEvent.source,
                                               ConsentEvent.campaign_id))).all()
    assert [tuple(e) for e in events] == [("opt_out", "twilio_21610", campaign_id)]


async def test_unknown_sids_are_answered_200_and_change_nothing(bot: Bot) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, ["+525512340001"])
        await (await bot.engine()).drain()
        before = snapshot(await ledger(bot.db, campaign_id))
        params = {"AccountSid": SID, "MessageSid": "SM" + "f" * 32, "MessageStatus": "delivered",
                  "To": "+525512340001", "From": FROM}
        assert await post_signed(bot.url("/twilio/status"), params) == 200
        async with aiohttp.ClientSession() as http:
            signature = RequestValidator(TOKEN).compute_signature(
                bot.url("/twilio/status"), params)
            async with http.post(bot.url("/twilio/status"), data=params,
                                 headers={"X-Twilio-Signature": signature}) as response:
                assert response.content_type == "text/xml"
                assert "<Response/>" in await response.text()
    assert snapshot(await ledger(bot.db, campaign_id)) == before
    assert bot.notifier.changed == []


async def test_a_callback_settles_an_unknown_delivery_whose_sid_is_known(bot: Bot) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, ["+525512340001", "+525512340002"])
        await (await bot.engine()).drain()
        first, second = twilio.messages
        async with bot.db.transaction() as session:  # as if recorded, then found ambiguous
            await session.execute(update(Delivery).where(Delivery.campaign_id == campaign_id)
                                  .values(status=DeliveryStatus.unknown, reason="mid-send"))
        assert await twilio.send_status_callback(first, "sent") == 200
        assert await twilio.send_status_callback(second, "delivered") == 200
    rows = {r.address: r for r in await ledger(bot.db, campaign_id)}
    assert (rows[first.to].status, rows[first.to].reason) == (DeliveryStatus.sent, None)
    assert rows[second.to].status == DeliveryStatus.delivered


async def test_a_failing_notifier_never_loses_the_update(bot: Bot) -> None:
    bot.notifier.fail = True
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, ["+525512340001"])
        await (await bot.engine()).drain()
        assert await twilio.send_status_callback(twilio.messages[0], "delivered") == 200
        assert await twilio.send_inbound(bot.url("/twilio/inbound"), from_="+525512340001",
                                         body="STOP") == 200
    [row] = await ledger(bot.db, campaign_id)
    assert row.status == DeliveryStatus.delivered
    async with bot.db.transaction() as session:
        patient = (await session.execute(select(Patient))).scalar_one()
    assert patient.sms_opted_out_at is not None


# --- replies: STOP and START -----------------------------------------------------------------

SHARED = "+525512349999"


async def _family(bot: Bot) -> list[int]:
    """Two patients sharing one number (a parent and a child), one with another number."""
    ids = await add_patients(bot.db, 3, sms_opt_in=True)
    async with bot.db.transaction() as session:
        await session.execute(update(Patient).where(Patient.id.in_(ids[:2])).values(phone=SHARED))
        await session.execute(update(Patient).where(Patient.id == ids[2])
                              .values(phone="+525512340003"))
    return ids


async def _opted_out(db: Database) -> dict[int, bool]:
    async with db.transaction() as session:
        rows = await session.execute(select(Patient.id, Patient.sms_opted_out_at))
        return {pid: at is not None for pid, at in rows}


@pytest.mark.parametrize("body", [" stop! ", "Stop.", "STOPALL", "unsubscribe"])
async def test_stop_opts_out_every_patient_with_that_number(bot: Bot, body: str) -> None:
    ids = await _family(bot)
    bot.configure(twilio_auth_token=TOKEN, sms_backend="file")
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        assert await twilio.send_inbound(bot.url("/twilio/inbound"), from_=SHARED,
                                         body=body) == 200
        assert await twilio.send_inbound(bot.url("/twilio/inbound"), from_=SHARED,
                                         body=body) == 200  # a second STOP: no new event
    assert await _opted_out(bot.db) == {ids[0]: True, ids[1]: True, ids[2]: False}
    async with bot.db.transaction() as session:
        events = (await session.execute(select(ConsentEvent).order_by(ConsentEvent.id))
                  ).scalars().all()
        audit = (await session.execute(select(AuditEntry).where(
            AuditEntry.action == "consent.optout"))).scalars().all()
    assert [(e.patient_id, e.channel, e.action, e.source) for e in events] == [
        (ids[0], DeliveryChannel.sms, "opt_out", "sms_reply"),
        (ids[1], DeliveryChannel.sms, "opt_out", "sms_reply"),
    ]
    assert len(audit) == 1 and audit[0].details["patients"] == 2
    assert body.strip() not in str(audit[0].details)  # no message text
    assert SHARED not in str(audit[0].details)  # no phone number
    assert bot.notifier.opt_outs == [{"channel": "sms", "patients": 2, "source": "sms_reply"}]


async def test_a_repeated_stop_arriving_at_once_records_each_patient_once(bot: Bot) -> None:
    ids = await _family(bot)
    bot.configure(twilio_auth_token=TOKEN, sms_backend="file")
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        statuses = await asyncio.gather(*(
            twilio.send_inbound(bot.url("/twilio/inbound"), from_=SHARED, body="STOP")
            for _ in range(4)))
    assert statuses == [200] * 4
    async with bot.db.transaction() as session:
        events = (await session.execute(select(ConsentEvent.patient_id))).scalars().all()
    assert sorted(events) == ids[:2]


async def test_start_opts_back_in_and_other_replies_change_nothing(bot: Bot) -> None:
    ids = await _family(bot)
    bot.configure(twilio_auth_token=TOKEN, sms_backend="file")
    inbound = bot.url("/twilio/inbound")
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        for text in ("stop please", "Yes, please call me", "Thanks!", ""):
            assert await twilio.send_inbound(inbound, from_=SHARED, body=text) == 200
        assert await _opted_out(bot.db) == dict.fromkeys(ids, False)
        assert await twilio.send_inbound(inbound, from_=SHARED, body="STOP") == 200
        assert await twilio.send_inbound(inbound, from_=SHARED, body=" Start ") == 200
        assert await _opted_out(bot.db) == dict.fromkeys(ids, False)
        assert await twilio.send_inbound(inbound, from_=SHARED, body="quit") == 200
        assert await twilio.send_inbound(inbound, from_=SHARED, body="UNSTOP") == 200
        assert await twilio.send_inbound(inbound, from_="+525500000000", body="STOP") == 200
    async with bot.db.transaction() as session:
        events = (await session.execute(select(ConsentEvent.patient_id, ConsentEvent.action)
                                        .order_by(ConsentEvent.id))).all()
    assert [tuple(e) for e in events] == [
        (ids[0], "opt_out"), (ids[1], "opt_out"), (ids[0], "opt_in"), (ids[1], "opt_in"),
    ] * 2
    assert await _opted_out(bot.db) == dict.fromkeys(ids, False)


async def test_stop_during_a_running_campaign_skips_that_patients_remaining_sms(
    bot: Bot
) -> None:
    phones = ["+525512340001", "+525512340002", "+525512340003"]
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, phones)
        engine = await bot.engine()
        await engine.start_due()
        # The first message goes out; the other two are still waiting their turn.
        _first, *rest = await ledger(bot.db, campaign_id)
        await _hold(bot.db, [r.id for r in rest])
        await engine.drain()
        assert [m.to for m in twilio.messages] == [phones[0]]
        async with bot.db.transaction() as session:
            campaign = await session.get(Campaign, campaign_id)
            assert campaign is not None and campaign.status == CampaignStatus.sending
        # The second patient replies STOP to another message while this campaign is sending.
        assert await twilio.send_inbound(bot.url("/twilio/inbound"), from_=phones[1],
                                         body="Stop") == 200
        await _release(bot.db, [r.id for r in rest])
        await engine.drain()
        sent_to = [m.to for m in twilio.messages]
    assert sent_to == [phones[0], phones[2]]
    rows = {r.address or "": r for r in await ledger(bot.db, campaign_id)}
    skipped = [r for r in await ledger(bot.db, campaign_id) if r.status == DeliveryStatus.skipped]
    assert [(r.patient_id, r.reason) for r in skipped] == [(rest[0].patient_id, "opted out")]
    assert rows[phones[0]].status == rows[phones[2]].status == DeliveryStatus.sent


async def _hold(db: Database, delivery_ids: list[int]) -> None:
    async with db.transaction() as session:
        await session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids))
                              .values(next_attempt_at=utcnow() + timedelta(hours=1)))


async def _release(db: Database, delivery_ids: list[int]) -> None:
    async with db.transaction() as session:
        await session.execute(update(Delivery).where(Delivery.id.in_(delivery_ids))
                              .values(next_attempt_at=None))
