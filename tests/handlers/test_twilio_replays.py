"""Twilio webhooks are applied once per (MessageSid, status): a repeat or a replay of a
captured signed request changes nothing (issue 9; SPEC §7)."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from services.models import ConsentEvent, DeliveryStatus, TwilioReceipt
from tests.fakes.twilio_server import FakeTwilio
from tests.handlers.bot_server import FROM, SID, TOKEN, Bot, ledger, post_signed, snapshot
from tests.handlers.test_twilio_webhooks import SHARED, _family, _opted_out, sms_campaign


def reply(sid: str, body: str) -> dict[str, str]:
    return {"AccountSid": SID, "MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid,
            "From": SHARED, "To": FROM, "Body": body, "NumMedia": "0"}


async def test_a_replayed_stop_after_start_does_not_opt_out_again(bot: Bot) -> None:
    ids = await _family(bot)
    bot.configure(twilio_auth_token=TOKEN, sms_backend="file")
    inbound = bot.url("/twilio/inbound")
    stop, start = reply("SM" + "a" * 32, "STOP"), reply("SM" + "b" * 32, "START")
    assert await post_signed(inbound, stop) == 200
    assert await post_signed(inbound, start) == 200
    assert await _opted_out(bot.db) == dict.fromkeys(ids, False)
    # The same signed STOP again (Twilio's retry, or someone who captured it): answered
    # like any valid webhook, applied never.
    assert await post_signed(inbound, stop) == 200
    assert await post_signed(inbound, start) == 200
    assert await _opted_out(bot.db) == dict.fromkeys(ids, False)
    async with bot.db.transaction() as session:
        events = (await session.execute(select(ConsentEvent.patient_id, ConsentEvent.action)
                                        .order_by(ConsentEvent.id))).all()
    assert [tuple(e) for e in events] == [
        (ids[0], "opt_out"), (ids[1], "opt_out"), (ids[0], "opt_in"), (ids[1], "opt_in")]
    assert [o["patients"] for o in bot.notifier.opt_outs] == [2]


async def test_the_same_reply_arriving_at_once_is_applied_once(bot: Bot) -> None:
    ids = await _family(bot)
    bot.configure(twilio_auth_token=TOKEN, sms_backend="file")
    stop = reply("SM" + "c" * 32, "STOP")
    statuses = await asyncio.gather(*(post_signed(bot.url("/twilio/inbound"), stop)
                                      for _ in range(4)))
    assert statuses == [200] * 4
    assert await _opted_out(bot.db) == {ids[0]: True, ids[1]: True, ids[2]: False}
    async with bot.db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(ConsentEvent)) == 2
        assert await session.scalar(select(func.count()).select_from(TwilioReceipt)) == 1


async def test_a_replayed_status_callback_changes_nothing(bot: Bot) -> None:
    async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
        campaign_id = await sms_campaign(bot, twilio, ["+525512340001"])
        await (await bot.engine()).drain()
        [message] = twilio.messages
        status_url = bot.url("/twilio/status")

        def callback(status: str, code: str | None = None) -> dict[str, str]:
            params = {"AccountSid": SID, "MessageSid": message.sid, "SmsSid": message.sid,
                      "MessageStatus": status, "To": message.to, "From": FROM}
            return params | ({"ErrorCode": code} if code else {})

        assert await post_signed(status_url, callback("undelivered", "21610")) == 200
        [row] = await ledger(bot.db, campaign_id)
        assert row.status == DeliveryStatus.failed
        assert await post_signed(bot.url("/twilio/inbound"), {
            **reply("SM" + "d" * 32, "START"), "From": message.to}) == 200
        after_start = snapshot(await ledger(bot.db, campaign_id))
        changed = list(bot.notifier.changed)
        for _ in range(2):  # replayed later: no second opt-out, no notification
            assert await post_signed(status_url, callback("undelivered", "21610")) == 200
        assert snapshot(await ledger(bot.db, campaign_id)) == after_start
        assert bot.notifier.changed == changed
    async with bot.db.transaction() as session:
        actions = (await session.execute(select(ConsentEvent.action).order_by(ConsentEvent.id))
                   ).scalars().all()
        receipts = (await session.execute(
            select(TwilioReceipt.status).where(TwilioReceipt.message_sid == message.sid))
        ).scalars().all()
    assert actions == ["opt_out", "opt_in"]
    assert receipts == ["undelivered"]
