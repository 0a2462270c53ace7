"""`/campaign [new|list|stats <id>|access …|help]`: ack at once, then route."""

from __future__ import annotations

import re
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from handlers import audience, campaign_list
from handlers.errors import acknowledged
from handlers.slack_support import deps, tell
from modals.common import escape
from modals.messages import HELP
from services import access
from services.errors import ValidationFailed

COMMAND = "/campaign"
_ACCESS = re.compile(r"^(grant|revoke)\s+(\S+)\s+(read|write|admin)$", re.IGNORECASE)


@acknowledged
async def on_campaign(
    ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext
) -> None:
    d = deps(context)
    user, channel = str(body.get("user_id", "")), str(body.get("channel_id", "")) or None
    words = str(body.get("text") or "").strip().split(maxsplit=1)
    verb = words[0].lower() if words else "new"
    rest = words[1].strip() if len(words) > 1 else ""
    if verb == "new":
        await audience.start(d, client, user_id=user, channel_id=channel,
                             trigger_id=str(body.get("trigger_id", "")))
    elif verb == "list":
        await campaign_list.show_list(d, client, user_id=user, channel_id=channel)
    elif verb == "stats":
        if not rest.lstrip("#").isdigit():
            raise ValidationFailed({"stats": "give a campaign id, e.g. `/campaign stats 12`"})
        await campaign_list.post_stats(d, client, user_id=user, channel_id=channel,
                                       campaign_id=int(rest.lstrip("#")))
    elif verb == "access":
        await _access(d, client, user, channel, rest)
    elif verb == "help":
        await tell(client, user, HELP, channel=channel)
    else:
        await tell(client, user, f"I don't know `/campaign {escape(verb)}`.\n\n{HELP}",
                   channel=channel)


async def _access(d: Any, client: AsyncWebClient, user: str, channel: str | None,
                  rest: str) -> None:
    match = _ACCESS.match(rest)
    if not match:
        raise ValidationFailed({"access": "use `/campaign access grant|revoke <@user> "
                                          "read|write|admin`"})
    verb, target, level_text = match.group(1).lower(), match.group(2), match.group(3)
    level = access.parse_level(level_text)
    actor = d.actor(user)
    async with d.db.transaction() as session:
        if verb == "grant":
            target_id = await access.grant(session=session, actor=actor, user_id=target,
                                           level=level)
            text = f"<@{target_id}> now has {level.name} access."
        else:
            result = await access.revoke(session=session, actor=actor, user_id=target,
                                         level=level)
            if result.previous is None:
                text = f"<@{result.user_id}> had no access; nothing changed."
            elif not result.changed:
                text = (f"<@{result.user_id}> has {result.previous.name} access, below "
                        f"{level.name}; nothing changed.")
            elif result.remaining is None:
                text = f"<@{result.user_id}> no longer has any access."
            else:
                text = f"<@{result.user_id}> now has {result.remaining.name} access."
    await tell(client, user, text, channel=channel)


def register(app: AsyncApp) -> None:
    app.command(COMMAND)(on_campaign)
