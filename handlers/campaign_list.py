"""Campaigns in chat: the channel message, `/campaign list`, stats, and their buttons."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from handlers.errors import acknowledged
from handlers.slack_support import SlackDeps, deps, tell, user_id_of
from modals import ids
from modals.messages import created_message, list_message
from modals.snapshot import snapshot_message
from services import access, campaigns, notices, snapshot
from services.delivery.campaign_runs import CampaignEvent
from services.models import AccessLevel, Campaign, CampaignStatus

log = logging.getLogger(__name__)
NOT_THERE = {"not_in_channel", "channel_not_found", "is_archived"}
INVITE = ("I am not in <#{channel}>, so I sent the campaign's message to you here. "
          "To get it in the channel next time, invite me there with `/invite @campaign-bot`.")


async def _load(d: SlackDeps, campaign_id: int) -> Campaign:
    async with d.db.sessions() as session:
        return await campaigns.get(session=session, campaign_id=campaign_id)


async def announce(d: SlackDeps, client: AsyncWebClient, campaign_id: int, *,
                   user_id: str) -> None:
    """Post the new campaign's message where `/campaign` was run (else DM the user)."""
    campaign = await _load(d, campaign_id)
    channel = campaign.slack_channel_id or d.settings.slack_notify_channel
    text, blocks = created_message(campaign)
    posted: dict[str, Any] | None = None
    if channel:
        try:
            posted = dict((await client.chat_postMessage(channel=channel, text=text,
                                                         blocks=blocks)).data)
        except SlackApiError as exc:
            if exc.response.get("error") not in NOT_THERE:
                raise
    if posted is None:
        note = INVITE.format(channel=channel) if channel else None
        text, blocks = created_message(campaign, note=note)
        posted = dict((await client.chat_postMessage(channel=user_id, text=text,
                                                     blocks=blocks)).data)
    async with d.db.transaction() as session:
        await notices.record_announcement(session, campaign_id,
                                          channel_id=posted.get("channel"),
                                          message_ts=posted.get("ts"))


async def refresh(d: SlackDeps, client: AsyncWebClient, campaign: Campaign) -> None:
    """Show the campaign's new state in its channel message, if it has one."""
    place = notices.posted_at(campaign)
    if place is None:
        return
    text, blocks = created_message(campaign)
    try:
        await client.chat_update(channel=place[0], ts=place[1], text=text, blocks=blocks)
    except SlackApiError as exc:
        log.warning("could not update campaign %s's message: %s", campaign.id,
                    exc.response.get("error"))


async def show_list(d: SlackDeps, client: AsyncWebClient, *, user_id: str,
                    channel_id: str | None) -> None:
    actor = d.actor(user_id)
    async with d.db.sessions() as session:
        scheduled = await campaigns.list_campaigns(
            session=session, actor=actor, statuses=[CampaignStatus.scheduled], limit=10)
        recent = await campaigns.list_campaigns(session=session, actor=actor, limit=10)
    seen = {c.id for c in scheduled}
    text, blocks = list_message([*scheduled, *(c for c in recent if c.id not in seen)])
    await tell(client, user_id, text, channel=channel_id, blocks=blocks)


async def post_stats(d: SlackDeps, client: AsyncWebClient, *, user_id: str,
                     channel_id: str | None, campaign_id: int, ephemeral: bool = False) -> None:
    async with d.db.sessions() as session:
        await access.require(session, d.actor(user_id), AccessLevel.read, "see campaigns")
        snap = await snapshot.take(session, campaign_id)
    text, blocks = snapshot_message(snap)
    if ephemeral or not channel_id:
        await tell(client, user_id, text, channel=channel_id, blocks=blocks)
        return
    try:
        await client.chat_postMessage(channel=channel_id, text=text, blocks=blocks)
    except SlackApiError as exc:
        if exc.response.get("error") not in NOT_THERE:
            raise
        await tell(client, user_id, text, blocks=blocks)


def _campaign_id(body: dict[str, Any]) -> int:
    value = str((body.get("actions") or [{}])[0].get("value") or "")
    if not value.isdigit():
        raise ValueError("the button carries no campaign id")
    return int(value)


def _channel(body: dict[str, Any]) -> str | None:
    channel = (body.get("channel") or {}).get("id")
    return channel if isinstance(channel, str) else None


@acknowledged
async def on_cancel(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                    context: AsyncBoltContext) -> None:
    d = deps(context)
    user = user_id_of(body)
    async with d.db.transaction() as session:
        campaign = await campaigns.cancel(session=session, actor=d.actor(user),
                                          campaign_id=_campaign_id(body),
                                          reason=f"cancelled in Slack by {user}")
    d.poke()
    await refresh(d, client, campaign)
    if d.notifier is not None:
        await d.notifier.campaign_event(CampaignEvent(campaign.id, "cancelled",
                                                      campaign.status_reason))
    await tell(client, user, f"Campaign #{campaign.id} is cancelled.", channel=_channel(body))


@acknowledged
async def on_send_now(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                      context: AsyncBoltContext) -> None:
    d = deps(context)
    user = user_id_of(body)
    async with d.db.transaction() as session:
        campaign = await campaigns.send_now(session=session, actor=d.actor(user),
                                            campaign_id=_campaign_id(body))
    d.poke()
    await refresh(d, client, campaign)
    await tell(client, user, f"Campaign #{campaign.id} is being sent now.",
               channel=_channel(body))


@acknowledged
async def on_stats(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient,
                   context: AsyncBoltContext) -> None:
    await post_stats(deps(context), client, user_id=user_id_of(body), channel_id=_channel(body),
                     campaign_id=_campaign_id(body), ephemeral=True)


def register(app: AsyncApp) -> None:
    app.action(ids.CANCEL_ACTION)(on_cancel)
    app.action(ids.SEND_NOW_ACTION)(on_send_now)
    app.action(ids.STATS_ACTION)(on_stats)
