"""Channel and ephemeral messages, and the App Home view (pure). Counts only, never patients."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from modals import ids
from modals.common import Block, View, button, context, escape, section
from services.models import Campaign, CampaignStatus

_SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,30}")
CHANNEL_NAMES = {"EMAIL": "email", "SMS": "SMS", "EMAIL_SMS": "email and SMS"}
STATUS_EMOJI = {
    "draft": ":memo:", "scheduled": ":calendar:", "sending": ":outbox_tray:",
    "completed": ":white_check_mark:", "cancelled": ":no_entry_sign:", "missed": ":warning:",
    "failed": ":x:",
}
HELP = """*campaign-bot* sends email and SMS campaigns to the clinic's patients.
• `/campaign` or `/campaign new`: start a campaign (audience, message, preview, confirm)
• `/campaign list`: scheduled and recent campaigns, with Cancel / Send now / Stats
• `/campaign stats <id>`: post a campaign's performance snapshot here
• `/campaign access grant|revoke <@user> read|write|admin`: who may do what (admins)
• `/campaign help`: this message
Starting a campaign needs write access; ask a campaign-bot admin. If I am not in a channel,
invite me with `/invite @campaign-bot`."""


def slack_time(value: datetime | None, tz: str = "UTC") -> str:
    """A date Slack shows in each reader's own time zone (with a UTC fallback)."""
    if value is None:
        return "—"
    fallback = value.astimezone(ZoneInfo(tz) if tz else UTC).strftime("%Y-%m-%d %H:%M ") + tz
    return f"<!date^{int(value.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _when(campaign: Campaign) -> str:
    if campaign.send_now and campaign.status is CampaignStatus.scheduled:
        return "now"
    return slack_time(campaign.send_at)


def campaign_line(campaign: Campaign) -> str:
    status = campaign.status.value
    return (f"{STATUS_EMOJI.get(status, '')} *#{campaign.id}* {escape(campaign.subject)} — "
            f"{status}, {campaign.audience_size:,} patients by "
            f"{CHANNEL_NAMES.get(campaign.channel.value, campaign.channel.value)}, "
            f"{_when(campaign)}")


def campaign_buttons(campaign: Campaign, *, send_now: bool = False) -> Block:
    value = str(campaign.id)
    elements = []
    if campaign.status in (CampaignStatus.scheduled, CampaignStatus.draft):
        elements.append(button("Cancel", ids.CANCEL_ACTION, value, style="danger"))
        if send_now and not campaign.send_now:
            elements.append(button("Send now", ids.SEND_NOW_ACTION, value))
    elif send_now and campaign.status is CampaignStatus.missed:
        elements.append(button("Send now", ids.SEND_NOW_ACTION, value))
    elements.append(button("Stats", ids.STATS_ACTION, value))
    return {"type": "actions", "block_id": f"{ids.CAMPAIGN_ACTIONS_BLOCK}:{campaign.id}",
            "elements": elements}


def created_message(campaign: Campaign, *, note: str | None = None) -> tuple[str, list[Block]]:
    """The channel message for a new campaign: what, to how many, which channel, when, by whom."""
    channel = channel_text(campaign)
    when = "now" if campaign.send_now else slack_time(campaign.send_at)
    status = campaign.status.value
    verb = {"scheduled": "sending now" if campaign.send_now else "scheduled",
            "cancelled": "cancelled"}.get(status, status)
    # `text` is read as mrkdwn too (and pushed in notifications): escaped like the blocks.
    text = (f"Campaign #{campaign.id} “{escape(campaign.subject)}”: {campaign.audience_size} "
            f"patients by {channel}, {verb}")
    lines = [
        f"{STATUS_EMOJI.get(status, '')} *Campaign #{campaign.id}: {escape(campaign.subject)}*",
        f"*Audience:* {campaign.audience_size:,} patients"
        + (f" (segment `{escape(campaign.segment_slug)}`)" if campaign.segment_slug else
           " (custom selection)"),
        f"*Channel:* {channel}   *When:* {when}   *Status:* {verb}",
        f"*By:* {_person(campaign.created_by)}",
    ]
    blocks: list[Block] = [section("\n".join(lines))]
    if note:
        blocks.append(context(note))
    blocks.append(campaign_buttons(campaign))
    return text, blocks


def _person(user_id: str) -> str:
    """A mention for a Slack user id; anything else (a CLI actor) shown as inert text."""
    return f"<@{user_id}>" if _SLACK_USER_ID.fullmatch(user_id) else escape(user_id)


def channel_text(campaign: Campaign) -> str:
    return CHANNEL_NAMES.get(campaign.channel.value, campaign.channel.value)


def list_message(campaigns: Sequence[Campaign]) -> tuple[str, list[Block]]:
    """`/campaign list`: scheduled first, then recent, each with its buttons."""
    if not campaigns:
        return "No campaigns yet.", [section("No campaigns yet. Start one with `/campaign`.")]
    scheduled = [c for c in campaigns if c.status is CampaignStatus.scheduled]
    recent = [c for c in campaigns if c.status is not CampaignStatus.scheduled]
    blocks: list[Block] = []
    for title, group in (("Scheduled", scheduled), ("Recent", recent)):
        if not group:
            continue
        blocks.append(section(f"*{title}*"))
        for campaign in group:
            if len(blocks) >= 48:
                break
            blocks.append(section(campaign_line(campaign)))
            blocks.append(campaign_buttons(campaign, send_now=True))
    return f"{len(campaigns)} campaigns", blocks


def headline(deliveries: dict[str, Any]) -> str:
    """`email: 120 sent, 3 failed, 40 opened · sms: …` (only the counts that are not zero)."""
    parts = []
    for channel, counts in deliveries.items():
        shown = [f"{counts[k]:,} {k}" for k in ("sent", "delivered", "failed", "skipped",
                                                 "opened", "clicked") if counts.get(k)]
        parts.append(f"{channel}: {', '.join(shown) or 'nothing sent yet'}")
    return " · ".join(parts)


def home_view(campaigns: Sequence[Campaign], *, allowed: bool,
              numbers: dict[int, dict[str, Any]] | None = None) -> View:
    blocks: list[Block] = [section("*Your campaigns*")]
    if not allowed:
        blocks.append(section("You have no campaign-bot access yet; ask a campaign-bot admin."))
    elif not campaigns:
        blocks.append(section("You have no campaigns yet. Start one with `/campaign`."))
    scheduled = [c for c in campaigns if c.status is CampaignStatus.scheduled]
    recent = [c for c in campaigns if c.status is not CampaignStatus.scheduled]
    for title, group in (("Scheduled", scheduled), ("Recent", recent)):
        if group:
            blocks.append({"type": "header", "text": {"type": "plain_text", "text": title}})
            for campaign in group[:20]:
                blocks.append(section(campaign_line(campaign)))
                if numbers and campaign.id in numbers:
                    blocks.append(context(headline(numbers[campaign.id])))
    blocks.append(context("`/campaign help` lists every command."))
    return {"type": "home", "callback_id": ids.HOME_VIEW, "blocks": blocks[:100]}
