"""The SMS senders: the real twilio client over real HTTP to FakeTwilio, and the outbox file."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from services.delivery.outcomes import Outcome
from services.delivery.sms_outbox import FileSmsSender
from services.delivery.sms_sender import CREDENTIALS_REJECTED, TwilioSmsSender
from tests.fakes.twilio_server import FakeTwilio

PATIENT = "+5215512345678"
BODY = "Hola Ana, tu estudio está listo.\nReply STOP to opt out"


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio() as fake:
        yield fake


def twilio_sender(fake: FakeTwilio, **options: Any) -> TwilioSmsSender:
    settings: dict[str, Any] = {
        "account_sid": fake.account_sid, "auth_token": fake.auth_token,
        "from_number": fake.phone_numbers[0], "api_url": fake.url,
    } | options
    return TwilioSmsSender(**settings)


@pytest.fixture
async def sender(twilio: FakeTwilio) -> AsyncIterator[TwilioSmsSender]:
    async with twilio_sender(twilio) as real:
        yield real


async def test_a_sent_message_reaches_twilio_as_sent(
    twilio: FakeTwilio, sender: TwilioSmsSender
) -> None:
    result = await sender.send(to=PATIENT, body=BODY)

    assert result.outcome is Outcome.SENT
    [message] = twilio.messages
    assert result.provider_id == message.sid and re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert message.form == {"To": PATIENT, "From": twilio.phone_numbers[0], "Body": BODY}


async def test_status_callback_and_messaging_service_are_sent_when_configured(
    twilio: FakeTwilio,
) -> None:
    service = twilio.messaging_service_sids[0]
    async with twilio_sender(twilio, from_number=None, messaging_service_sid=service,
                             public_base_url="https://bot.clinic.example/") as sender:
        result = await sender.send(to=PATIENT, body=BODY)

    assert result.outcome is Outcome.SENT
    assert twilio.messages[0].form == {
        "To": PATIENT, "MessagingServiceSid": service, "Body": BODY,
        "StatusCallback": "https://bot.clinic.example/twilio/status",
    }


@pytest.mark.parametrize(
    ("code", "opted_out"), [(21211, False), (21614, False), (21610, True), (21612, False),
                            (21408, False)],
)
async def test_recipient_errors_fail_that_delivery_only(
    twilio: FakeTwilio, sender: TwilioSmsSender, code: int, opted_out: bool
) -> None:
    twilio.fail_for(PATIENT, code)

    result = await sender.send(to=PATIENT, body=BODY)
    other = await sender.send(to="+5215587654321", body=BODY)

    assert (result.outcome, result.error_code, result.opted_out) == (
        Outcome.FAILED, str(code), opted_out)
    assert result.reason and "Unable to create record" not in result.reason
    assert "5512345678" not in result.reason  # reasons go to Slack: no patient numbers
    assert other.outcome is Outcome.SENT


async def test_invalid_to_is_refused_by_twilio_itself(sender: TwilioSmsSender) -> None:
    result = await sender.send(to="5512345678", body=BODY)
    assert (result.outcome, result.error_code) == (Outcome.FAILED, "21211")
    assert result.reason == "Invalid 'To' Phone Number: [number]"


@pytest.mark.parametrize(("retry_after", "expected"), [(3, 3.0), (None, None)])
async def test_429_is_retried_later_and_never_by_the_client(
    twilio: FakeTwilio, sender: TwilioSmsSender, retry_after: float | None,
    expected: float | None,
) -> None:
    twilio.fail_next(429, retry_after=retry_after)

    result = await sender.send(to=PATIENT, body=BODY)

    assert (result.outcome, result.error_code, result.retry_after) == (
        Outcome.RETRY, "20429", expected)
    assert len(twilio.posts) == 1 and twilio.messages == []


async def test_retry_after_belongs_to_the_task_that_got_the_429(
    twilio: FakeTwilio, sender: TwilioSmsSender
) -> None:
    twilio.fail_for(PATIENT, 429, retry_after=7)
    others = [f"+52155000000{i:02d}" for i in range(20)]

    results = await asyncio.gather(
        *(sender.send(to=to, body=BODY) for to in [*others[:10], PATIENT, *others[10:]])
    )

    assert [r.outcome for r in results].count(Outcome.SENT) == 20
    [limited] = [r for r in results if r.outcome is Outcome.RETRY]
    assert limited.retry_after == 7.0
    assert len({r.provider_id for r in results if r.provider_id}) == 20


async def test_a_500_is_unknown_and_not_retried(
    twilio: FakeTwilio, sender: TwilioSmsSender
) -> None:
    twilio.fail_next(500)

    result = await sender.send(to=PATIENT, body=BODY)

    assert (result.outcome, result.error_code) == (Outcome.UNKNOWN, "20500")
    assert len(twilio.posts) == 1


async def test_rejected_credentials_take_the_channel_down(twilio: FakeTwilio) -> None:
    async with twilio_sender(twilio, auth_token="wrong") as sender:
        result = await sender.send(to=PATIENT, body=BODY)

    assert (result.outcome, result.reason, result.error_code) == (
        Outcome.CHANNEL_DOWN, CREDENTIALS_REJECTED, "20003")
    assert twilio.posts[0].status == 401 and twilio.messages == []


async def test_a_sender_twilio_refuses_takes_the_channel_down(twilio: FakeTwilio) -> None:
    async with twilio_sender(twilio, from_number=None, messaging_service_sid="MG" + "0" * 32
                             ) as sender:
        result = await sender.send(to=PATIENT, body=BODY)

    assert result.outcome is Outcome.CHANNEL_DOWN
    assert result.reason and "TWILIO_MESSAGING_SERVICE_SID" in result.reason


async def test_a_redirecting_api_url_takes_the_channel_down() -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("https://api.twilio.com" + request.path)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with TwilioSmsSender(account_sid="AC" + "0" * 32, auth_token="t",
                                   from_number="+15005550006",
                                   api_url=f"http://127.0.0.1:{runner.addresses[0][1]}") as sender:
            result = await sender.send(to=PATIENT, body=BODY)
    finally:
        await runner.cleanup()

    assert result.outcome is Outcome.CHANNEL_DOWN
    assert result.reason and "redirect to https://api.twilio.com/" in result.reason


async def test_a_dropped_connection_after_acceptance_is_unknown(
    twilio: FakeTwilio, sender: TwilioSmsSender
) -> None:
    twilio.fail_next("drop")

    result = await sender.send(to=PATIENT, body=BODY)

    assert result.outcome is Outcome.UNKNOWN
    assert result.reason and "may have been sent" in result.reason
    [message] = twilio.messages
    assert message.to == PATIENT and not message.answered
    assert len(twilio.posts) == 1
    assert (await sender.send(to=PATIENT, body=BODY)).outcome is Outcome.SENT  # pool recovers


async def test_a_read_timeout_is_unknown(twilio: FakeTwilio) -> None:
    twilio.delay = 1.0
    async with twilio_sender(twilio, read_timeout=0.2) as sender:
        result = await sender.send(to=PATIENT, body=BODY)

    assert result.outcome is Outcome.UNKNOWN
    assert len(twilio.messages) == 1  # Twilio had it


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connection_refused_is_retried(twilio: FakeTwilio) -> None:
    async with twilio_sender(twilio, api_url=f"http://127.0.0.1:{_closed_port()}") as sender:
        result = await sender.send(to=PATIENT, body=BODY)

    assert result.outcome is Outcome.RETRY
    assert result.reason and "could not connect" in result.reason


async def test_an_unresolvable_host_is_retried(twilio: FakeTwilio) -> None:
    async with twilio_sender(twilio, api_url="http://twilio.invalid", connect_timeout=2) as sender:
        result = await sender.send(to=PATIENT, body=BODY)

    assert result.outcome is Outcome.RETRY


async def test_twilio_region_in_the_environment_does_not_redirect_requests(
    twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    async with twilio_sender(twilio) as sender:
        assert (await sender.send(to=PATIENT, body=BODY)).outcome is Outcome.SENT


async def test_a_body_over_1600_characters_fails_without_a_request(
    twilio: FakeTwilio, sender: TwilioSmsSender
) -> None:
    result = await sender.send(to=PATIENT, body="a" * 1601)
    assert (result.outcome, result.error_code) == (Outcome.FAILED, "21617")
    assert twilio.requests == []


async def test_check_accepts_a_good_configuration(
    twilio: FakeTwilio, sender: TwilioSmsSender
) -> None:
    lines = await sender.check()

    assert all(ok for ok, _ in lines), lines
    assert any(twilio.phone_numbers[0] in line for _, line in lines)
    assert twilio.messages == [] and not twilio.posts


async def test_check_finds_a_messaging_service(twilio: FakeTwilio) -> None:
    service = twilio.messaging_service_sids[0]
    async with twilio_sender(twilio, from_number=None, messaging_service_sid=service) as sender:
        lines = await sender.check()
    assert all(ok for ok, _ in lines) and any(service in line for _, line in lines)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"auth_token": "wrong"}, CREDENTIALS_REJECTED),
        ({"from_number": "+15005550001"}, "TWILIO_FROM_NUMBER +15005550001 is not a phone number"),
        ({"from_number": None, "messaging_service_sid": "MG" + "1" * 32},
         "TWILIO_MESSAGING_SERVICE_SID MG111"),
        ({"api_url": f"http://127.0.0.1:{_closed_port()}"}, "Twilio: cannot reach"),
    ],
)
async def test_check_names_what_is_wrong(
    twilio: FakeTwilio, options: dict[str, Any], expected: str
) -> None:
    async with twilio_sender(twilio, **options) as sender:
        lines = await sender.check()
    assert any(not ok and line.startswith(expected) for ok, line in lines), lines


async def test_the_fake_posts_signed_webhooks(twilio: FakeTwilio, sender: TwilioSmsSender) -> None:
    received: list[tuple[str, str, dict[str, str]]] = []

    async def webhook(request: web.Request) -> web.Response:
        signature = request.headers["X-Twilio-Signature"]
        received.append((str(request.url), signature, dict(await request.post())))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/twilio/{kind}", webhook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}/twilio"
    try:
        await sender.send(to=PATIENT, body=BODY)
        status = await twilio.send_status_callback(
            twilio.messages[0], "delivered", url=f"{base}/status")
        inbound = await twilio.send_inbound(f"{base}/inbound", from_=PATIENT, body="Stop!")
    finally:
        await runner.cleanup()

    assert (status, inbound) == (204, 204)
    [(_, _, callback), (_, _, reply)] = received
    assert (callback["MessageSid"], callback["MessageStatus"]) == (
        twilio.messages[0].sid, "delivered")
    assert (reply["From"], reply["Body"]) == (PATIENT, "Stop!")
    validator = RequestValidator(twilio.auth_token)
    assert all(validator.validate(url, params, signature) for url, signature, params in received)


async def test_the_file_sender_writes_one_json_line_per_message(tmp_path: Path) -> None:
    sender = FileSmsSender(tmp_path / "outbox", from_number="+15005550006",
                           public_base_url="https://bot.clinic.example")
    recipients = [f"+52155000000{i:02d}" for i in range(25)]

    results = await asyncio.gather(*(sender.send(to=to, body=BODY) for to in recipients))
    await sender.close()

    path = tmp_path / "outbox" / "sms.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["to"] for r in records) == recipients
    assert {r["sid"] for r in records} == {r.provider_id for r in results}
    assert all(r.outcome is Outcome.SENT for r in results)
    record = records[0]
    assert re.fullmatch(r"SMfile[0-9a-f]{28}", record["sid"])
    assert (record["from"], record["body"], record["status_callback"]) == (
        "+15005550006", BODY, "https://bot.clinic.example/twilio/status")
    assert record["created_at"].endswith("+00:00")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_the_file_sender_appends_across_instances(tmp_path: Path) -> None:
    for _ in range(2):
        sender = FileSmsSender(tmp_path, from_number="+15005550006")
        assert (await sender.send(to=PATIENT, body="uno")).outcome is Outcome.SENT
        await sender.close()
    assert len((tmp_path / "sms.jsonl").read_text(encoding="utf-8").splitlines()) == 2


async def test_an_unwritable_outbox_takes_the_file_channel_down(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x", encoding="utf-8")
    sender = FileSmsSender(blocker, from_number="+15005550006")

    result = await sender.send(to=PATIENT, body=BODY)
    [(ok, line)] = await sender.check()

    assert result.outcome is Outcome.CHANNEL_DOWN
    assert not ok and "OUTBOX_DIR" in line
