"""A campaign's run through the ledger: started when due (its deliveries created) or missed,
cancelled deliveries skipped, and closed once nothing is open (see ledger.py for who moves
each delivery state on)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.campaign_status import can_transition
from services.delivery.ledger import ENGINE_ACTOR, OPEN, human_duration
from services.models import (
    Campaign,
    CampaignAudience,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    UTCDateTime,
)


@dataclass(frozen=True)
class CampaignEvent:
    """Something the scheduler did to a campaign, for notices and notification rules."""

    campaign_id: int
    event: str  # started | missed | completed | failed | cancelled
    reason: str | None = None


async def _compare_and_set(
    session: AsyncSession,
    campaign_id: int,
    current: CampaignStatus,
    to: CampaignStatus,
    **values: object,
) -> bool:
    """Move the campaign `current` → `to` only if it is still `current` (atomic)."""
    if not can_transition(current, to):
        raise ValueError(f"{current} → {to} is not a legal transition")
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status == current)
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)


async def due_campaigns(session: AsyncSession, *, now: datetime) -> list[tuple[int, datetime]]:
    rows = await session.execute(
        select(Campaign.id, Campaign.send_at)
        .where(Campaign.status == CampaignStatus.scheduled, Campaign.send_at <= now)
        .order_by(Campaign.send_at, Campaign.id)
    )
    return [(cid, send_at) for cid, send_at in rows]


async def next_due_at(session: AsyncSession) -> datetime | None:
    """When the next scheduled campaign falls due (for the scheduler's wake-up)."""
    return (
        await session.execute(
            select(func.min(Campaign.send_at)).where(Campaign.status == CampaignStatus.scheduled)
        )
    ).scalar_one_or_none()


async def start_campaign(
    session: AsyncSession, *, campaign_id: int, send_at: datetime, now: datetime,
    grace: timedelta,
) -> CampaignEvent | None:
    """Start a due campaign (creating its deliveries) or mark it missed; None if another
    process got there first."""
    late = now - send_at
    if late > grace:
        reason = (f"it was due at {send_at:%Y-%m-%d %H:%M} UTC, {human_duration(late)} late, "
                  f"beyond the grace period of {human_duration(grace)}; nothing was sent")
        if not await _compare_and_set(session, campaign_id, CampaignStatus.scheduled,
                                      CampaignStatus.missed, finished_at=now,
                                      status_reason=reason, updated_at=now):
            return None
        await audit.record(session, ENGINE_ACTOR, "campaign.missed", campaign_id=campaign_id,
                           due_at=send_at, late_seconds=int(late.total_seconds()))
        return CampaignEvent(campaign_id, "missed", reason)
    if not await _compare_and_set(session, campaign_id, CampaignStatus.scheduled,
                                  CampaignStatus.sending, started_at=now, updated_at=now):
        return None
    created = await create_deliveries(session, campaign_id=campaign_id, now=now)
    await audit.record(session, ENGINE_ACTOR, "campaign.started", campaign_id=campaign_id,
                       deliveries=created, late_seconds=max(0, int(late.total_seconds())))
    return CampaignEvent(campaign_id, "started")


async def create_deliveries(session: AsyncSession, *, campaign_id: int, now: datetime) -> int:
    """One pending delivery per audience patient and channel (set-based; unique per pair)."""
    channel = (
        await session.execute(select(Campaign.channel).where(Campaign.id == campaign_id))
    ).scalar_one()
    created = 0
    for delivery_channel in channel.delivery_channels:
        stamp = literal(now, UTCDateTime())
        source = select(
            literal(campaign_id),
            CampaignAudience.patient_id,
            literal(delivery_channel.value),
            literal(DeliveryStatus.pending.value),
            literal(0),
            literal(0),
            literal(0),
            stamp,
            stamp,
        ).where(CampaignAudience.campaign_id == campaign_id)
        result = await session.execute(
            insert(Delivery).from_select(
                ["campaign_id", "patient_id", "channel", "status", "attempts", "open_count",
                 "click_count", "created_at", "updated_at"],
                source,
            )
        )
        created += max(result.rowcount or 0, 0)
    return created


async def skip_cancelled(session: AsyncSession, *, now: datetime) -> list[int]:
    """Pending deliveries of cancelled campaigns end `skipped` ("campaign cancelled")."""
    cancelled = select(Campaign.id).where(Campaign.status == CampaignStatus.cancelled)
    result = await session.execute(
        update(Delivery)
        .where(Delivery.status == DeliveryStatus.pending, Delivery.campaign_id.in_(cancelled))
        .values(status=DeliveryStatus.skipped, reason="campaign cancelled", updated_at=now)
        .returning(Delivery.campaign_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(set(result.scalars()))


async def without_open_deliveries(
    session: AsyncSession, *, campaign_ids: Iterable[int]
) -> list[int]:
    """Which of these campaigns have no pending or in-flight delivery left (cheap: an index
    probe per campaign, so the full count runs only when a campaign may be done)."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return []
    still_open = set(
        (
            await session.execute(
                select(Delivery.campaign_id)
                .where(Delivery.campaign_id.in_(ids), Delivery.status.in_(OPEN))
                .group_by(Delivery.campaign_id)
            )
        ).scalars()
    )
    return [i for i in ids if i not in still_open]


async def finish_campaigns(
    session: AsyncSession, *, campaign_ids: Iterable[int], now: datetime
) -> list[CampaignEvent]:
    """Close each `sending` campaign whose deliveries are all final: completed, or failed
    when nothing could be sent at all."""
    events: list[CampaignEvent] = []
    for campaign_id in sorted(set(campaign_ids)):
        counts = dict(
            (
                await session.execute(
                    select(Delivery.status, func.count())
                    .where(Delivery.campaign_id == campaign_id)
                    .group_by(Delivery.status)
                )
            ).all()
        )
        if any(counts.get(status, 0) for status in OPEN):
            continue
        reached = sum(counts.get(s, 0) for s in (DeliveryStatus.sent, DeliveryStatus.delivered,
                                                  DeliveryStatus.unknown))
        failed = counts.get(DeliveryStatus.failed, 0)
        to = CampaignStatus.failed if failed and not reached else CampaignStatus.completed
        reason = (
            "no message could be sent; see the failure reasons"
            if to is CampaignStatus.failed else None
        )
        if await _compare_and_set(session, campaign_id, CampaignStatus.sending, to,
                                  finished_at=now, status_reason=reason, updated_at=now):
            await audit.record(session, ENGINE_ACTOR, f"campaign.{to.value}",
                               campaign_id=campaign_id,
                               counts={str(k): v for k, v in counts.items()})
            events.append(CampaignEvent(campaign_id, to.value, reason))
    return events


async def close_finished(session: AsyncSession, *, now: datetime) -> list[CampaignEvent]:
    """The sweep's safety net: close every `sending` campaign that has nothing open left."""
    done = await without_open_deliveries(session, campaign_ids=await sending_campaign_ids(session))
    return await finish_campaigns(session, campaign_ids=done, now=now)


async def sending_campaign_ids(session: AsyncSession) -> list[int]:
    rows = await session.execute(
        select(Campaign.id).where(Campaign.status == CampaignStatus.sending).order_by(Campaign.id)
    )
    return list(rows.scalars())
