"""What every Slack handler shares: its dependencies, the acting user, small Web API helpers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.context import Notifier
from bot.db import Database
from bot.settings import Settings
from services import access
from services.access import Actor
from services.models import AccessLevel
from services.tokens import TokenSigner

log = logging.getLogger(__name__)
DEPS_KEY = "campaign_bot"


@dataclass
class SlackDeps:
    """Made once by bot/slack_app.py and put in every request's context by a middleware."""

    settings: Settings
    db: Database
    signer: TokenSigner | None = None
    engine_poke: Callable[[], None] | None = None
    notifier: Notifier | None = None  # the live message and notification rules (bot/notifier)
    _timezones: dict[str, str | None] = field(default_factory=dict)

    def actor(self, user_id: str) -> Actor:
        return Actor.slack_user(user_id, self.settings.campaign_bot_admins)

    async def require(self, user_id: str, level: AccessLevel, action: str) -> Actor:
        """The user as an Actor, or PermissionDenied (the error handler tells them)."""
        actor = self.actor(user_id)
        async with self.db.sessions() as session:
            await access.require(session, actor, level, action)
        return actor

    def poke(self) -> None:
        if self.engine_poke is not None:
            try:
                self.engine_poke()
            except Exception:  # the sweep finds it anyway
                log.exception("waking the sender failed; the next sweep starts the campaign")


def deps(context: AsyncBoltContext | dict[str, Any]) -> SlackDeps:
    found = context[DEPS_KEY]
    assert isinstance(found, SlackDeps)
    return found


def user_id_of(body: dict[str, Any]) -> str:
    """The acting user of a command, action or view payload."""
    user = body.get("user")
    if isinstance(user, dict) and isinstance(user.get("id"), str):
        return str(user["id"])
    if isinstance(body.get("user_id"), str):
        return str(body["user_id"])
    raise ValueError("the payload names no user")


async def user_info(client: AsyncWebClient, user_id: str) -> dict[str, Any]:
    """users.info's user object ({} when Slack does not answer)."""
    try:
        response = await client.users_info(user=user_id)
    except SlackApiError as exc:
        log.warning("users.info %s failed: %s", user_id, exc.response.get("error"))
        return {}
    user = response.get("user")
    return user if isinstance(user, dict) else {}


async def user_timezone(deps_: SlackDeps, client: AsyncWebClient, user_id: str) -> str | None:
    if user_id not in deps_._timezones:
        info = await user_info(client, user_id)
        tz = info.get("tz")
        deps_._timezones[user_id] = tz if isinstance(tz, str) and tz else None
    return deps_._timezones[user_id]


async def tell(
    client: AsyncWebClient, user_id: str, text: str, *, channel: str | None = None,
    blocks: list[dict[str, Any]] | None = None,
) -> None:
    """An ephemeral message in `channel` when possible, else a direct message."""
    kwargs: dict[str, Any] = {"text": text}
    if blocks:
        kwargs["blocks"] = blocks
    if channel:
        try:
            await client.chat_postEphemeral(channel=channel, user=user_id, **kwargs)
            return
        except SlackApiError as exc:
            log.info("ephemeral to %s in %s failed (%s); sending a DM", user_id, channel,
                     exc.response.get("error"))
    try:
        await client.chat_postMessage(channel=user_id, **kwargs)
    except SlackApiError as exc:
        log.warning("could not tell %s: %s", user_id, exc.response.get("error"))
