"""Builds the Bolt app: one Web API client (SLACK_API_URL, rate-limit retries), every handler."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.context import Notifier
from bot.db import Database
from bot.settings import Settings
from handlers import (
    audience,
    campaign_form,
    campaign_list,
    campaign_preview,
    commands,
    errors,
    home,
)
from handlers.slack_support import DEPS_KEY, SlackDeps
from services.tokens import TokenSigner

log = logging.getLogger(__name__)
HANDLERS = (commands, audience, campaign_form, campaign_preview, campaign_list, home, errors)
# What the app listens to, for manifest.yml's check (every command and event handled).
COMMANDS = (commands.COMMAND,)
EVENTS = (home.EVENT,)


def web_client(settings: Settings) -> AsyncWebClient:
    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    return client


def build_slack_app(
    settings: Settings, db: Database, *, signer: TokenSigner | None = None,
    engine_poke: Callable[[], None] | None = None, notifier: Notifier | None = None,
) -> AsyncApp:
    """The Bolt app for `settings` (Slack must be configured: SLACK_BOT_TOKEN set)."""
    if not settings.slack_bot_token:
        raise ValueError("SLACK_BOT_TOKEN is not set: Slack is off")
    app = AsyncApp(  # the token is the client's (Bolt warns when both are given)
        signing_secret=settings.slack_signing_secret,
        # Socket Mode needs no signing secret (its requests are not HTTP); HTTP mode does.
        request_verification_enabled=settings.slack_signing_secret is not None,
        client=web_client(settings),
        process_before_response=False,
        logger=logging.getLogger("campaign_bot.slack"),
    )
    slack_deps = SlackDeps(settings=settings, db=db, signer=signer, engine_poke=engine_poke,
                           notifier=notifier)

    @app.middleware
    async def add_deps(context: AsyncBoltContext, next: Callable[[], Awaitable[Any]]) -> Any:
        context[DEPS_KEY] = slack_deps
        return await next()

    for module in HANDLERS:
        module.register(app)
    return app
