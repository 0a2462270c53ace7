"""The HTTP side of `campaign-bot run`: one port (`PORT`) for Slack, webhooks and /healthz."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest

from bot.context import CONTEXT, AppContext
from handlers import health, media, tracking, unsubscribe, webhooks

SLACK_EVENTS_PATH = "/slack/events"
SIGNATURE_MAX_AGE = 5 * 60  # seconds, as Slack's own verifiers allow

log = logging.getLogger(__name__)


def _slack_shaped(body: Any) -> bool:
    """A body Slack could have sent: a command, an interaction or an Events API envelope."""
    if not isinstance(body, dict) or not body:
        return False
    if isinstance(body.get("command"), str) or body.get("ssl_check"):
        return True
    return isinstance(body.get("type"), str) and bool(body["type"])


def slack_endpoint(slack: AsyncApp, signing_secret: str) -> web.RequestHandler:
    """`POST /slack/events` through Bolt, once the request is known to be Slack's own.

    Checked here, before Bolt (which answers some malformed bodies with 500 or 404, and
    whose verifier raises on a non-numeric timestamp): the signature over the raw bytes
    (401, as Bolt answers), then the body — UTF-8, a form or JSON, a shape Slack sends
    (400). A body past the server's size limit is 413. One WARNING line at most, and no
    traceback: such requests are noise from the internet, not the bot's errors. Slack's
    `ssl_check` ping passes unsigned, as with Bolt alone: Bolt answers it and runs nothing.
    """

    async def slack_events(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if not slack_signed(signing_secret, raw, request.headers) and not _ssl_check(
                request, raw):
            log.warning("Slack request refused (401): the signature is missing, stale or "
                        "does not match SLACK_SIGNING_SECRET")
            return web.json_response({"error": "invalid request"}, status=401)
        try:
            text = webhooks.utf8_text(request, raw)
            if request.content_type == webhooks.FORM_TYPE:
                webhooks.strict_form(text)  # Bolt decodes leniently; refuse what it would mangle
            elif request.content_type != "application/json":
                raise webhooks.MalformedBody(f"content type {request.content_type!r}")
            bolt_request = await to_bolt_request_from(request, text)
            shaped = _slack_shaped(bolt_request.body)
        except webhooks.MalformedBody as exc:
            log.warning("Slack request refused (400): %s", exc)
            return web.json_response({"error": "malformed request"}, status=400)
        except (ValueError, TypeError, AttributeError, KeyError):  # Bolt's parsing
            shaped = False
        if not shaped:
            log.warning("Slack request refused (400): not a body Slack sends")
            return web.json_response({"error": "not a Slack request body"}, status=400)
        return await to_aiohttp_response(await slack.async_dispatch(bolt_request))

    return slack_events


def _ssl_check(request: web.Request, raw: bytes) -> bool:
    """Slack's `ssl_check=1` form, sent when a request URL is saved in the app's settings."""
    if request.content_type != webhooks.FORM_TYPE:
        return False
    try:
        return webhooks.strict_form(webhooks.utf8_text(request, raw)).get("ssl_check") == "1"
    except webhooks.MalformedBody:
        return False


def slack_signed(signing_secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Slack's v0 signature over the raw bytes, with a timestamp at most 5 minutes off.

    Computed here rather than with slack_sdk's verifier, which decodes the body as UTF-8 and
    parses the timestamp as an integer, raising on the bytes and headers a forger sends;
    a signed body that is not UTF-8 is then refused as malformed (400), not as forged."""
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not signing_secret or not (timestamp.isascii() and timestamp.isdigit()):
        return False
    if abs(time.time() - int(timestamp)) > SIGNATURE_MAX_AGE or not signature.isascii():
        return False
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())


async def to_bolt_request_from(request: web.Request, raw: str) -> AsyncBoltRequest:
    return AsyncBoltRequest(body=raw, query=request.query_string,
                            headers=request.headers)  # type: ignore[arg-type]


def build_web_app(context: AppContext, *, slack: AsyncApp | None = None) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app[CONTEXT] = context
    health.register(app)
    media.register(app)
    webhooks.register(app)
    unsubscribe.register(app)
    tracking.register(app)
    if slack is not None:
        app.router.add_post(SLACK_EVENTS_PATH, slack_endpoint(
            slack, context.settings.slack_signing_secret or ""))
    return app


async def start(app: web.Application, *, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host=host, port=port)
    await site.start()
    return runner
