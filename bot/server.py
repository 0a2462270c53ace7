"""The HTTP side of `campaign-bot run`: one port (`PORT`) for Slack, webhooks and /healthz."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.context import CONTEXT, AppContext
from handlers import health, media, tracking, unsubscribe, webhooks

SLACK_EVENTS_PATH = "/slack/events"


def _slack_shaped(body: Any) -> bool:
    """A body Slack could have sent: a command, an interaction or an Events API envelope."""
    if not isinstance(body, dict) or not body:
        return False
    if isinstance(body.get("command"), str) or body.get("ssl_check"):
        return True
    return isinstance(body.get("type"), str) and bool(body["type"])


def slack_endpoint(slack: AsyncApp, signing_secret: str) -> web.RequestHandler:
    """`POST /slack/events` through Bolt: it checks the signature (401) and dispatches.

    A correctly signed body Slack would never send is refused here with 400 before Bolt
    sees it (Bolt answers some of them with 500 or 404); a bad signature is always 401.
    """
    verifier = SignatureVerifier(signing_secret)

    async def slack_events(request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        try:
            bolt_request = await to_bolt_request_from(request, raw)
            shaped = _slack_shaped(bolt_request.body)
        except (ValueError, TypeError, AttributeError, KeyError):  # Bolt's parsing
            shaped = False
        if not shaped:
            if not verifier.is_valid_request(raw, dict(request.headers)):
                return web.json_response({"error": "invalid request"}, status=401)
            return web.json_response({"error": "not a Slack request body"}, status=400)
        return await to_aiohttp_response(await slack.async_dispatch(bolt_request))

    return slack_events


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
