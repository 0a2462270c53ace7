"""Twilio → us: `POST /twilio/status` (delivery callbacks) and `POST /twilio/inbound` (replies).

Both verify `X-Twilio-Signature` over PUBLIC_BASE_URL + the path (and query) and the form
parameters, with the auth token; without a valid signature (or without the settings needed
to check one) the answer is 403 and nothing changes. Valid requests get an empty TwiML
answer, whatever they changed: Twilio would retry anything else, and its own STOP handling
already sends the patient the confirmation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping

from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy
from twilio.request_validator import RequestValidator

from bot.context import CONTEXT
from bot.settings import Settings
from services import callbacks
from services.models import utcnow

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/status"
INBOUND_PATH = "/twilio/inbound"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


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


async def verified_form(request: web.Request) -> MultiDictProxy[str | FileField]:
    """The form parameters of a request Twilio signed; 403 for anything else."""
    settings = request.app[CONTEXT].settings
    form = await request.post()
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature_valid(settings, request.raw_path, form, signature):  # type: ignore[arg-type]
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
