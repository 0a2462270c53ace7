"""Twilio → us: `POST /twilio/status` (delivery callbacks) and `POST /twilio/inbound` (replies).

Both verify `X-Twilio-Signature` over PUBLIC_BASE_URL + the path (and query) and the form
parameters, with the auth token; without a valid signature (or without the settings needed
to check one) the answer is 403 and nothing changes. Valid requests get an empty TwiML
answer, whatever they changed: Twilio would retry anything else, and its own STOP handling
already sends the patient the confirmation.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Awaitable, Mapping
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from bot.context import CONTEXT
from bot.settings import Settings
from services import callbacks
from services.models import utcnow

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/status"
INBOUND_PATH = "/twilio/inbound"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
FORM_TYPE = "application/x-www-form-urlencoded"
# Twilio's webhooks are a few kB (an SMS body is at most 1,600 characters); anything far
# bigger is not Twilio, and is refused before it is read into memory.
MAX_TWILIO_BODY = 64 * 1024
MAX_FORM_FIELDS = 200


class MalformedBody(ValueError):
    """A request body no legitimate caller sends (bad UTF-8, wrong type, …): answer 400."""


async def after_commit(call: Awaitable[None], what: str) -> None:
    """Tell the notifier; its failure is logged, never turned into an error for the caller."""
    try:
        await call
    except Exception:
        log.exception("notifier failed after %s (the change itself is saved)", what)


def signature_valid(
    settings: Settings, raw_path: str, params: Mapping[str, str], signature: str
) -> bool:
    """Did Twilio sign this request (path with its query, form parameters) for this service?

    HMAC-SHA1 with the auth token, as Twilio signs webhooks; False when PUBLIC_BASE_URL or
    TWILIO_AUTH_TOKEN is not set, since then nothing can be verified.
    """
    if not settings.public_base_url or not settings.twilio_auth_token or not signature:
        return False
    url = settings.public_base_url.rstrip("/") + raw_path
    return bool(RequestValidator(settings.twilio_auth_token).validate(url, params, signature))


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it passes `limit` (declared or actually sent)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
    body = bytearray()
    async for chunk in request.content.iter_any():  # chunked bodies arrive in pieces
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)


def utf8_text(request: web.Request, raw: bytes) -> str:
    """The body as text: UTF-8 only (the charset Slack and Twilio use), decoded strictly."""
    charset = request.charset
    try:
        if charset is not None and codecs.lookup(charset).name != "utf-8":
            raise MalformedBody(f"charset {charset!r} is not UTF-8")
        return raw.decode("utf-8")
    except LookupError:
        raise MalformedBody(f"unknown charset {charset!r}") from None
    except UnicodeDecodeError:
        raise MalformedBody("the body is not valid UTF-8") from None


def strict_form(text: str) -> MultiDict[str]:
    """Form fields, refusing percent-escapes that are not UTF-8 (no silent U+FFFD)."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                          max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise MalformedBody("a form field is not valid UTF-8") from None
    except ValueError as exc:  # too many fields
        raise MalformedBody(str(exc)) from None
    return MultiDict(pairs)


async def _twilio_form(request: web.Request) -> MultiDict[str]:
    """Twilio posts UTF-8 `application/x-www-form-urlencoded`, never multipart or JSON."""
    raw = await read_body(request, MAX_TWILIO_BODY)
    if request.content_type != FORM_TYPE:
        raise MalformedBody(f"content type {request.content_type!r} is not {FORM_TYPE}")
    return strict_form(utf8_text(request, raw))


async def verified_form(request: web.Request) -> MultiDict[str]:
    """The form parameters of a request Twilio signed; 400 for a malformed body, 403 unsigned.

    Each refusal is one WARNING line and no traceback: these are the internet's noise,
    not the bot's errors.
    """
    settings = request.app[CONTEXT].settings
    try:
        form = await _twilio_form(request)
    except MalformedBody as exc:
        log.warning("Twilio webhook %s refused (400): %s", request.path, exc)
        raise web.HTTPBadRequest(text="This request is not a Twilio webhook.") from None
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature_valid(settings, request.raw_path, form, signature):
        log.warning("Twilio webhook %s refused: %s", request.path,
                    "the signature is missing or does not match"
                    if settings.public_base_url and settings.twilio_auth_token
                    else "PUBLIC_BASE_URL and TWILIO_AUTH_TOKEN are needed to verify it")
        raise web.HTTPForbidden(text="This request is not signed by Twilio.")
    return form


def twiml() -> web.Response:
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


async def status_callback(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    form = await verified_form(request)
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    status = form.get("MessageStatus") or form.get("SmsStatus") or ""
    if not sid or not status:
        return twiml()
    async with context.db.transaction() as session:
        change = await callbacks.apply_status(
            session, message_sid=str(sid), twilio_status=str(status),
            error_code=str(form.get("ErrorCode") or "") or None, now=utcnow(),
        )
    if change is not None:
        await after_commit(context.notifier.deliveries_changed({change.campaign_id}),
                           "a delivery callback")
    return twiml()


async def inbound(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    form = await verified_form(request)
    async with context.db.transaction() as session:
        effect = await callbacks.apply_reply(
            session, from_number=str(form.get("From") or ""), body=str(form.get("Body") or ""),
            now=utcnow(),
            message_sid=form.get("MessageSid") or form.get("SmsMessageSid") or form.get("SmsSid"),
        )
    if effect is not None and effect.patients and effect.kind == "opt_out":
        await after_commit(
            context.notifier.opted_out(channel="sms", patients=effect.patients,
                                       source=callbacks.REPLY_SOURCE),
            "an SMS opt-out",
        )
    return twiml()


def register(app: web.Application) -> None:
    app.router.add_post(STATUS_PATH, status_callback)
    app.router.add_post(INBOUND_PATH, inbound)
