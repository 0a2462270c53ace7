"""Where a campaign's channel message lives, and who may post it (no Slack import).

The confirmation can arrive twice (a Slack retry, a double click) and both requests see
the one campaign; only the one that claims the announcement posts the channel message.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from services.models import Campaign

CLAIMED = "posting"


async def claim_announcement(session: AsyncSession, campaign_id: int) -> bool:
    """True for exactly one caller per campaign: that one posts its channel message."""
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.slack_message_ts.is_(None))
        .values(slack_message_ts=CLAIMED)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


async def record_announcement(
    session: AsyncSession, campaign_id: int, *, channel_id: str | None, message_ts: str | None
) -> None:
    """The channel message's place (None, None: posting failed; it may be claimed again)."""
    values: dict[str, str | None] = {"slack_message_ts": message_ts}
    if channel_id is not None:
        values["slack_channel_id"] = channel_id
    await session.execute(
        update(Campaign).where(Campaign.id == campaign_id).values(**values)
        .execution_options(synchronize_session=False)
    )


def posted_at(campaign: Campaign) -> tuple[str, str] | None:
    """(channel, ts) of the campaign's channel message, once posted."""
    if campaign.slack_channel_id and campaign.slack_message_ts not in (None, CLAIMED):
        return campaign.slack_channel_id, str(campaign.slack_message_ts)
    return None
