"""A campaign's summary: the object `campaigns show --json` prints (SPEC §2), from GROUP BYs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services import access
from services.access import Actor
from services.errors import NotFound
from services.models import (
    AccessLevel,
    Campaign,
    CampaignAttachment,
    Channel,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    Patient,
)

QUIET_HOURS_REASON = "waiting for quiet hours to end"
COUNTED = (*(s.value for s in DeliveryStatus), "opened", "clicked")
NO_REASON = "no reason given"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def delivery_counts(
    session: AsyncSession, campaign_id: int, channels: tuple[DeliveryChannel, ...]
) -> dict[str, dict[str, Any]]:
    """Per channel: a count for every delivery status, opened, clicked, and reasons."""
    counts: dict[str, dict[str, Any]] = {
        channel.value: {
            **dict.fromkeys(COUNTED, 0),
            "total": 0,
            "skipped_reasons": {},
            "failed_reasons": {},
        }
        for channel in channels
    }
    by_status = await session.execute(
        select(
            Delivery.channel,
            Delivery.status,
            func.count(),
            func.count(Delivery.opened_at),
            func.count(Delivery.clicked_at),
        )
        .where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.channel, Delivery.status)
    )
    for channel, status, total, opened, clicked in by_status:
        bucket = counts.get(DeliveryChannel(channel).value)
        if bucket is None:  # deliveries on a channel the campaign no longer uses
            continue
        bucket[DeliveryStatus(status).value] += total
        bucket["total"] += total
        bucket["opened"] += opened
        bucket["clicked"] += clicked
    by_reason = await session.execute(
        select(Delivery.channel, Delivery.status, Delivery.reason, func.count())
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status.in_([DeliveryStatus.skipped, DeliveryStatus.failed]),
        )
        .group_by(Delivery.channel, Delivery.status, Delivery.reason)
    )
    for channel, status, reason, total in by_reason:
        bucket = counts.get(DeliveryChannel(channel).value)
        if bucket is None:
            continue
        reasons = bucket[f"{DeliveryStatus(status).value}_reasons"]
        key = reason or NO_REASON
        reasons[key] = reasons.get(key, 0) + total
    for bucket in counts.values():
        for name in ("skipped_reasons", "failed_reasons"):
            bucket[name] = dict(sorted(bucket[name].items(), key=lambda kv: (-kv[1], kv[0])))
    return counts


async def summary(
    *, session: AsyncSession, campaign_id: int, actor: Actor | None = None
) -> dict[str, Any]:
    """The campaign and its delivery counts as plain JSON-ready data. With an actor, needs read."""
    if actor is not None:
        await access.require(session, actor, AccessLevel.read, "see campaigns")
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound("campaign", campaign_id)
    # The attachment's description only: its content can be megabytes.
    a = CampaignAttachment
    attachment = (
        await session.execute(
            select(a.filename, a.content_type, a.size).where(a.campaign_id == campaign_id)
        )
    ).first()
    channel = Channel(campaign.channel)
    return {
        "id": campaign.id,
        "status": campaign.status.value,
        "status_reason": campaign.status_reason,
        "channel": channel.value,
        "subject": campaign.subject,
        "preview_text": campaign.preview_text,
        "tags": list(campaign.tags or []),
        "segment": campaign.segment_slug,
        "audience": int(campaign.audience_size),
        "send_now": bool(campaign.send_now),
        "send_at": _iso(campaign.send_at),
        "started_at": _iso(campaign.started_at),
        "finished_at": _iso(campaign.finished_at),
        "created_by": campaign.created_by,
        "created_at": _iso(campaign.created_at),
        "attachment": (
            {"filename": attachment.filename, "type": attachment.content_type,
             "size": attachment.size}
            if attachment is not None
            else None
        ),
        "slack_channel_id": campaign.slack_channel_id,
        "deliveries": await delivery_counts(session, campaign.id, channel.delivery_channels),
        "waiting": await waiting_for_quiet_hours(session, campaign.id),
        "unknown_deliveries": await unknown_deliveries(session, campaign.id),
    }


async def unknown_deliveries(
    session: AsyncSession, campaign_id: int, *, limit: int = 500
) -> list[dict[str, str]]:
    """Deliveries that may or may not have gone out, for the operator to check by hand
    (patients by their clinic id only; never re-sent automatically)."""
    rows = await session.execute(
        select(Patient.external_id, Delivery.channel, Delivery.reason)
        .join(Patient, Patient.id == Delivery.patient_id)
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.unknown)
        .order_by(Delivery.id)
        .limit(limit)
    )
    return [
        {"external_id": external_id, "channel": DeliveryChannel(channel).value,
         "reason": reason or NO_REASON}
        for external_id, channel, reason in rows
    ]


async def waiting_for_quiet_hours(session: AsyncSession, campaign_id: int) -> dict[str, Any]:
    """SMS held back until the patient's quiet hours end: how many, and until when."""
    count, until = (
        await session.execute(
            select(func.count(), func.max(Delivery.next_attempt_at)).where(
                Delivery.campaign_id == campaign_id,
                Delivery.status == DeliveryStatus.pending,
                Delivery.reason == QUIET_HOURS_REASON,
            )
        )
    ).one()
    return {"count": int(count), "until": _iso(until) if count else None}
