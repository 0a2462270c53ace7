"""App Home: the user's scheduled and recent campaigns, with status and headline numbers."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from handlers.slack_support import deps
from modals.messages import home_view
from services import access, campaigns
from services.models import AccessLevel, CampaignStatus


async def on_home_opened(event: dict[str, Any], client: AsyncWebClient,
                         context: AsyncBoltContext) -> None:
    if event.get("tab", "home") != "home":
        return
    d = deps(context)
    user = str(event.get("user") or "")
    actor = d.actor(user)
    async with d.db.sessions() as session:
        level = await access.level_of(session, actor)
        allowed = level is not None and level >= AccessLevel.read
        mine = []
        numbers: dict[int, dict[str, Any]] = {}
        if allowed:
            found = await campaigns.list_campaigns(session=session, actor=actor, limit=200)
            mine = [c for c in found if c.created_by == user][:30]
            for campaign in [c for c in mine if c.status is not CampaignStatus.scheduled][:10]:
                summary = await campaigns.summary(session=session, campaign_id=campaign.id)
                numbers[campaign.id] = summary["deliveries"]
    await client.views_publish(user_id=user,
                               view=home_view(mine, allowed=allowed, numbers=numbers))


EVENT = "app_home_opened"


def register(app: AsyncApp) -> None:
    app.event(EVENT)(on_home_opened)
