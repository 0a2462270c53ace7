"""Unsigned, forged or malformed requests get 4xx, never 500, and log no traceback (SPEC §7).

Posted over real HTTP to the running bot, with the bodies an attacker (or a broken proxy)
sends: bad UTF-8, nameless multipart fields, multipart files, odd charsets, huge bodies.
"""

from __future__ import annotations

import logging

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from services.delivery.channels import (
    ATTACHMENT_PURPOSE,
    CLICK_PURPOSE,
    OPEN_PURPOSE,
    UNSUBSCRIBE_PURPOSE,
)
from tests.handlers.bot_server import SID, TOKEN, Bot

FORM = "application/x-www-form-urlencoded"
BOUNDARY = "x-boundary-x"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
HUGE = b"Body=" + b"a" * (3 * 1024 * 1024)


def multipart(*parts: bytes) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return body + b"--" + BOUNDARY.encode() + b"--\r\n"


NAMELESS = multipart(b"Content-Disposition: form-data\r\n\r\nSTOP")
FILE_FIELD = multipart(
    b'Content-Disposition: form-data; name="Body"; filename="stop.txt"\r\n'
    b"Content-Type: text/plain\r\n\r\nSTOP",
    b'Content-Disposition: form-data; name="From"\r\n\r\n+525512340001',
)
# (body, content type, signature or None): each is refused, none is a server error.
TWILIO_BODIES = {
    "bad utf-8 bytes": (b"From=%2B525512340001&Body=\xff\xfeSTOP", FORM, "c2lnbmF0dXJl"),
    "bad utf-8 escapes": (b"From=%2B525512340001&Body=%FF%FESTOP", FORM, "c2lnbmF0dXJl"),
    "unknown charset": (b"Body=STOP", FORM + "; charset=x-no-such-charset", "c2ln"),
    "nameless multipart": (NAMELESS, MULTIPART, "c2lnbmF0dXJl"),
    "multipart file": (FILE_FIELD, MULTIPART, "c2lnbmF0dXJl"),
    "multipart file, unsigned": (FILE_FIELD, MULTIPART, None),
    "no content type": (b"\x00\x01\x02", "", None),
    "json": (b'{"Body": "STOP"}', "application/json", "c2lnbmF0dXJl"),
    "missing signature": (b"From=%2B525512340001&Body=STOP", FORM, None),
    "forged signature": (b"From=%2B525512340001&Body=STOP", FORM, "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
    "huge": (HUGE, FORM, "c2lnbmF0dXJl"),
}


async def send(method: str, url: str, body: bytes = b"", content_type: str = "",
               headers: dict[str, str] | None = None) -> int:
    headers = dict(headers or {})
    if content_type:
        headers["Content-Type"] = content_type
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http, \
            http.request(method, url, data=body, headers=headers) as response:
        await response.read()
        return response.status


def assert_quiet(caplog: pytest.LogCaptureFixture, requests: int = 1) -> None:
    """No error, no traceback; at most one warning a request."""
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= requests, [r.getMessage() for r in warnings]


@pytest.mark.parametrize("path", ["/twilio/inbound", "/twilio/status"])
@pytest.mark.parametrize("case", list(TWILIO_BODIES))
async def test_twilio_webhooks_refuse_malformed_bodies(
    bot: Bot, caplog: pytest.LogCaptureFixture, path: str, case: str
) -> None:
    bot.configure(twilio_account_sid=SID, twilio_auth_token=TOKEN, sms_backend="file")
    body, content_type, signature = TWILIO_BODIES[case]
    headers = {"X-Twilio-Signature": signature} if signature else {}
    caplog.set_level(logging.INFO)
    status = await send("POST", bot.url(path), body, content_type, headers)
    expected = {413} if case == "huge" else {403} if "signature" in case else {400, 403}
    assert status in expected, (case, status)
    assert_quiet(caplog)


async def test_a_validly_signed_but_malformed_form_is_400(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    """Signed over the text Twilio would have signed, but the body cannot be read: 400."""
    bot.configure(twilio_account_sid=SID, twilio_auth_token=TOKEN, sms_backend="file")
    url = bot.url("/twilio/inbound")
    signature = RequestValidator(TOKEN).compute_signature(url, {"Body": "\ufffd"})
    caplog.set_level(logging.INFO)
    status = await send("POST", url, b"Body=%FF", FORM, {"X-Twilio-Signature": signature})
    assert status == 400
    assert_quiet(caplog)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/unsubscribe/{token}"), ("POST", "/unsubscribe/{token}"),
        ("GET", "/t/o/{token}"), ("GET", "/t/c/{token}"), ("GET", "/media/{token}"),
    ],
)
@pytest.mark.parametrize(
    "token",
    ["AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAA", "x", "%FF%FE", "..%2F..%2Fetc", "A" * 5000,
     "AAAA====", "\u202eabc"],
)
async def test_forged_tokens_get_404(
    bot: Bot, caplog: pytest.LogCaptureFixture, method: str, path: str, token: str
) -> None:
    caplog.set_level(logging.INFO)
    status = await send(method, bot.url(path.format(token=token)), b"List-Unsubscribe=One-Click",
                        FORM)
    assert status == 404, (method, path, token, status)
    assert_quiet(caplog)


async def test_a_huge_unsubscribe_post_is_413_or_404(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    token = bot.context.signer.sign(UNSUBSCRIBE_PURPOSE, 987654)
    caplog.set_level(logging.INFO)
    status = await send("POST", bot.url(f"/unsubscribe/{token}"), HUGE, FORM)
    assert status == 413  # refused before it is read, whatever the token
    assert await send("POST", bot.url("/unsubscribe/forged"), HUGE, FORM) == 404
    assert_quiet(caplog, requests=2)


@pytest.mark.parametrize("purpose", [UNSUBSCRIBE_PURPOSE, OPEN_PURPOSE, ATTACHMENT_PURPOSE])
async def test_valid_tokens_of_missing_rows_are_404(
    bot: Bot, caplog: pytest.LogCaptureFixture, purpose: str
) -> None:
    token = bot.context.signer.sign(purpose, 987654)
    path = {UNSUBSCRIBE_PURPOSE: "/unsubscribe/", OPEN_PURPOSE: "/t/o/",
            ATTACHMENT_PURPOSE: "/media/"}[purpose]
    caplog.set_level(logging.INFO)
    assert await send("GET", bot.url(path + token)) == 404
    click = bot.context.signer.sign(CLICK_PURPOSE, 987654, 0)
    assert await send("GET", bot.url("/t/c/" + click)) == 404
    assert_quiet(caplog, requests=2)
