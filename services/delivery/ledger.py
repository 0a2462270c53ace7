"""The delivery ledger: one row per campaign × patient × channel, claimed before it is sent.

How "at most once" holds (SPEC §3):
- A campaign is started by one conditional UPDATE (`scheduled` → `sending`); only the process
  whose UPDATE changed the row creates its deliveries, in the same transaction.
- A delivery is claimed by one UPDATE … RETURNING that moves it `pending` → `sending` and
  names the claiming process (PostgreSQL: FOR UPDATE SKIP LOCKED, so processes never wait
  for or take each other's rows; SQLite: the statement runs under the single writer lock).
  The claim is committed before the provider is called.
- After the call the outcome is written; a delivery left `sending` by a process that died is
  marked `unknown` by `mark_orphans_unknown`, never sent again automatically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.campaign_status import can_transition
from services.models import (
    Campaign,
    CampaignAudience,
    CampaignStatus,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    SenderProcess,
    UTCDateTime,
)

ENGINE_ACTOR = "campaign-bot"
FINAL = (DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.failed,
         DeliveryStatus.skipped, DeliveryStatus.unknown)
OPEN = (DeliveryStatus.pending, DeliveryStatus.sending)


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
        reason = (f"it was due at {send_at:%Y-%m-%d %H:%M} UTC, {_human(late)} late, "
                  f"beyond the grace period of {_human(grace)}; nothing was sent")
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


@dataclass(frozen=True)
class Claimed:
    id: int
    campaign_id: int
    patient_id: int
    channel: DeliveryChannel
    attempts: int


async def claim(
    session: AsyncSession,
    *,
    channel: DeliveryChannel,
    sender_id: str,
    limit: int,
    now: datetime,
) -> list[Claimed]:
    """Atomically take up to `limit` due pending deliveries of `channel` for this process."""
    sending_campaigns = select(Campaign.id).where(Campaign.status == CampaignStatus.sending)
    candidates = (
        select(Delivery.id)
        .where(
            Delivery.status == DeliveryStatus.pending,
            Delivery.channel == channel,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            Delivery.campaign_id.in_(sending_campaigns),
        )
        .order_by(Delivery.campaign_id, Delivery.id)
        .limit(limit)
    )
    if session.bind.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    # A CTE, not `IN (subquery)`: PostgreSQL may re-run a LIMIT … SKIP LOCKED subquery per
    # row and claim more than `limit`; a locking CTE is evaluated exactly once.
    batch = candidates.cte("claim_batch")
    result = await session.execute(
        update(Delivery)
        .where(
            Delivery.id.in_(select(batch.c.id)),
            Delivery.status == DeliveryStatus.pending,
        )
        .values(
            status=DeliveryStatus.sending,
            claimed_by=sender_id,
            claimed_at=now,
            attempts=Delivery.attempts + 1,
            updated_at=now,
        )
        .returning(Delivery.id, Delivery.campaign_id, Delivery.patient_id, Delivery.channel,
                   Delivery.attempts)
        .execution_options(synchronize_session=False)
    )
    rows = [Claimed(*row) for row in result]
    rows.sort(key=lambda c: (c.campaign_id, c.id))
    return rows


@dataclass(frozen=True)
class Outcome:
    """The new state of one delivery, written by `record`."""

    id: int
    status: DeliveryStatus
    reason: str | None = None
    error_code: str | None = None
    provider_id: str | None = None
    address: str | None = None
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    undo_attempt: bool = False  # deferred before any attempt (quiet hours): not an attempt


async def record(session: AsyncSession, outcomes: Sequence[Outcome], *, now: datetime) -> None:
    """Write a batch of outcomes with one executemany per shape (not one commit each)."""
    if not outcomes:
        return
    statement = (
        update(Delivery)
        .where(Delivery.id == bindparam("b_id"), Delivery.status == DeliveryStatus.sending)
        .values(
            status=bindparam("b_status"),
            reason=bindparam("b_reason"),
            error_code=bindparam("b_code"),
            provider_id=func.coalesce(bindparam("b_provider"), Delivery.provider_id),
            address=func.coalesce(bindparam("b_address"), Delivery.address),
            next_attempt_at=bindparam("b_next", type_=UTCDateTime()),
            sent_at=func.coalesce(bindparam("b_sent", type_=UTCDateTime()), Delivery.sent_at),
            attempts=Delivery.attempts - bindparam("b_undo"),
            updated_at=bindparam("b_now", type_=UTCDateTime()),
        )
        .execution_options(synchronize_session=False)
    )
    # Through the Core connection: an executemany of one UPDATE, not the ORM's per-row path.
    connection = await session.connection()
    await connection.execute(
        statement,
        [
            {
                "b_id": o.id,
                "b_status": o.status.value,
                "b_reason": o.reason,
                "b_code": o.error_code,
                "b_provider": o.provider_id,
                "b_address": o.address,
                "b_next": o.next_attempt_at,
                "b_sent": o.sent_at,
                "b_undo": 1 if o.undo_attempt else 0,
                "b_now": now,
            }
            for o in outcomes
        ],
    )


async def fail_remaining(
    session: AsyncSession, *, campaign_ids: Iterable[int], channel: DeliveryChannel,
    reason: str, now: datetime,
) -> int:
    """The channel is down: every still-pending delivery of these campaigns fails now."""
    result = await session.execute(
        update(Delivery)
        .where(Delivery.campaign_id.in_(list(campaign_ids)), Delivery.channel == channel,
               Delivery.status == DeliveryStatus.pending)
        .values(status=DeliveryStatus.failed, reason=reason, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


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


async def sending_campaign_ids(session: AsyncSession) -> list[int]:
    rows = await session.execute(
        select(Campaign.id).where(Campaign.status == CampaignStatus.sending).order_by(Campaign.id)
    )
    return list(rows.scalars())


# --- processes and orphaned claims ---------------------------------------------------------

async def heartbeat(
    session: AsyncSession, *, sender_id: str, hostname: str, pid: int, now: datetime
) -> None:
    result = await session.execute(
        update(SenderProcess).where(SenderProcess.id == sender_id).values(heartbeat_at=now)
    )
    if not result.rowcount:
        session.add(SenderProcess(id=sender_id, hostname=hostname, pid=pid, started_at=now,
                                  heartbeat_at=now))


async def mark_orphans_unknown(
    session: AsyncSession, *, alive: Iterable[str], now: datetime
) -> dict[int, int]:
    """Deliveries left `sending` by processes not in `alive` become `unknown`.

    Returns {campaign_id: count}. They are listed for the operator and never re-sent
    automatically: the process may have handed the message over before it died.
    """
    alive = list(alive)
    condition = and_(Delivery.status == DeliveryStatus.sending,
                     or_(Delivery.claimed_by.is_(None), Delivery.claimed_by.not_in(alive)))
    result = await session.execute(
        update(Delivery)
        .where(condition)
        .values(
            status=DeliveryStatus.unknown,
            reason="the sending process stopped mid-send; it may or may not have been sent",
            updated_at=now,
        )
        .returning(Delivery.campaign_id)
        .execution_options(synchronize_session=False)
    )
    per_campaign: dict[int, int] = {}
    for campaign_id in result.scalars():
        per_campaign[campaign_id] = per_campaign.get(campaign_id, 0) + 1
    for campaign_id, count in per_campaign.items():
        await audit.record(session, ENGINE_ACTOR, "deliveries.unknown", campaign_id=campaign_id,
                           deliveries=count)
    return per_campaign


async def live_processes(
    session: AsyncSession, *, now: datetime, stale_after: timedelta, hostname: str, me: str,
    pid_alive: Callable[[int], bool],
) -> list[str]:
    """Ids of sender processes that are alive: a fresh heartbeat and, on this host, a pid
    that still runs (a restarted process does not wait for its old heartbeat to go stale;
    another entry with this process's own pid is an earlier life of a recycled pid)."""
    rows = (await session.execute(select(SenderProcess))).scalars().all()
    alive: list[str] = []
    for process in rows:
        if process.id == me:
            alive.append(process.id)
            continue
        if now - process.heartbeat_at > stale_after:
            continue
        if process.hostname == hostname and (
            process.pid == os.getpid() or not pid_alive(process.pid)
        ):
            continue
        alive.append(process.id)
    return alive


async def forget_process(session: AsyncSession, *, sender_id: str) -> None:
    process = await session.get(SenderProcess, sender_id)
    if process is not None:
        await session.delete(process)


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
