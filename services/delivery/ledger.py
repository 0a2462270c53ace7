"""The delivery ledger: one row per campaign × patient × channel, claimed before it is sent.

How "at most once" holds (SPEC §3):
- A campaign is started by one conditional UPDATE (`scheduled` → `sending`); only the process
  whose UPDATE changed the row creates its deliveries, in the same transaction.
- A delivery is claimed by one UPDATE … RETURNING that moves it `pending` → `sending` and
  names the claiming process (PostgreSQL: FOR UPDATE SKIP LOCKED, so processes never wait
  for or take each other's rows; SQLite: the statement runs under the single writer lock).
- Just before the hand-over to the provider, `attempted_at` is committed (`mark_attempted`,
  group-committed by the engine's writer), and only if the row is still this process's claim.
  So after a crash a claim without `attempted_at` certainly was not sent.

Who moves each state on, and what happens when that owner dies:
- `pending`: the channel workers of any live process claim it when due (`next_attempt_at`);
  the scheduler's sweep skips it when its campaign is cancelled.
- `sending`: the claiming process (`claimed_by`) records the outcome. If it dies (its pid is
  gone on this host, or its heartbeat is older than `stale_after` as seen by a process that
  has itself reached the database all that time), any live process recovers the claim
  (`recover_orphans`): not attempted → `pending` again (it is sent); attempted on a channel
  whose provider can be asked (Twilio) → `pending` with `attempted_at` kept, so the next claim
  asks the provider first; attempted elsewhere (SMTP) → `unknown`.
- `unknown`: final, shown to the operator, never re-sent. The one exception is its own
  process's late answer: a process wrongly presumed dead (a network split) may still record
  what the provider said, since `record` accepts rows it claimed that recovery made `unknown`.
- `sent`, `delivered`, `failed`, `skipped`: final (status callbacks may move sent →
  delivered/failed).
- A campaign `sending` with no `pending` or `sending` delivery left is closed (`completed`, or
  `failed` when nothing could be sent) by whichever process sees it first after its own
  outcomes commit, and by every sweep (`close_finished`), so none stays `sending`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.expression import Update

from services.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    UTCDateTime,
)

ENGINE_ACTOR = "campaign-bot"
FINAL = (DeliveryStatus.sent, DeliveryStatus.delivered, DeliveryStatus.failed,
         DeliveryStatus.skipped, DeliveryStatus.unknown)
OPEN = (DeliveryStatus.pending, DeliveryStatus.sending)


@dataclass(frozen=True)
class Claimed:
    id: int
    campaign_id: int
    patient_id: int
    channel: DeliveryChannel
    attempts: int
    # An earlier hand-over whose outcome nobody could tell (a provider's 5xx, a lost answer,
    # a crash): the provider is asked about it before the message goes out again.
    attempted_at: datetime | None = None
    retry_since: datetime | None = None


async def campaigns_with_work(session: AsyncSession, *, channel: DeliveryChannel,
                              now: datetime) -> list[int]:
    """Sending campaigns with a due pending delivery on `channel` (an index probe each)."""
    due = (
        select(Delivery.id)
        .where(
            Delivery.campaign_id == Campaign.id,
            Delivery.status == DeliveryStatus.pending,
            Delivery.channel == channel,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        )
        .exists()
    )
    rows = await session.execute(
        select(Campaign.id)
        .where(Campaign.status == CampaignStatus.sending, due)
        .order_by(Campaign.id)
    )
    return list(rows.scalars())


async def claim(
    session: AsyncSession,
    *,
    channel: DeliveryChannel,
    sender_id: str,
    limit: int,
    now: datetime,
    after_campaign: int | None = None,
) -> list[Claimed]:
    """Atomically take up to `limit` due pending deliveries of `channel` for this process,
    shared fairly (round-robin) among the campaigns that have some: each gets an equal share,
    starting after `after_campaign`, and what one cannot use goes to the others."""
    campaign_ids = await campaigns_with_work(session, channel=channel, now=now)
    if not campaign_ids:
        return []
    if after_campaign is not None:
        turn = next((i for i, c in enumerate(campaign_ids) if c > after_campaign), 0)
        campaign_ids = campaign_ids[turn:] + campaign_ids[:turn]
    claimed: list[Claimed] = []
    hungry = campaign_ids
    while hungry and len(claimed) < limit:
        share = max(1, (limit - len(claimed)) // len(hungry))
        still_hungry = []
        for campaign_id in hungry:
            wanted = min(share, limit - len(claimed))
            if wanted <= 0:
                break
            taken = await _claim_from(session, campaign_id=campaign_id, channel=channel,
                                      sender_id=sender_id, limit=wanted, now=now)
            claimed.extend(taken)
            if len(taken) == wanted:
                still_hungry.append(campaign_id)
        if len(still_hungry) == len(hungry) and share * len(hungry) >= limit:
            break
        hungry = still_hungry
    return claimed


async def _claim_from(
    session: AsyncSession, *, campaign_id: int, channel: DeliveryChannel, sender_id: str,
    limit: int, now: datetime,
) -> list[Claimed]:
    candidates = (
        select(Delivery.id)
        .where(
            Delivery.campaign_id == campaign_id,
            Delivery.status == DeliveryStatus.pending,
            Delivery.channel == channel,
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        )
        .order_by(Delivery.id)
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
                   Delivery.attempts, Delivery.attempted_at, Delivery.retry_since)
        .execution_options(synchronize_session=False)
    )
    rows = [Claimed(*row) for row in result]
    rows.sort(key=lambda c: c.id)
    return rows


# Built once: the group commit runs these several times a second while sending, and
# building an UPDATE (and its cache key) costs more Python time than SQLite takes to run it.
_MARK = (
    update(Delivery)
    .where(Delivery.id.in_(bindparam("b_ids", expanding=True)),
           Delivery.status == DeliveryStatus.sending,
           Delivery.claimed_by == bindparam("b_sender"))
    .values(attempted_at=bindparam("b_now", type_=UTCDateTime()))
    .returning(Delivery.id)
)


async def mark_attempted(
    session: AsyncSession | AsyncConnection, *, ids: Sequence[int], sender_id: str,
    now: datetime,
) -> set[int]:
    """Note that these deliveries are about to be handed over; only rows that are still this
    process's claims are marked (recovery may have taken some back): send only those."""
    if not ids:
        return set()
    result = await session.execute(_MARK, {"b_ids": list(ids), "b_sender": sender_id,
                                           "b_now": now})
    return set(result.scalars())


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
    # Certainly not sent: forget the hand-over mark (nothing to ask the provider about).
    clear_attempt: bool = False
    retry_since: datetime | None = None  # kept if already set


def _record_statement(*, owned: bool) -> Update:
    condition = Delivery.status == DeliveryStatus.sending
    if owned:
        # (`or_`, not `in_`: an expanding IN cannot be part of an executemany.)
        condition = and_(
            Delivery.claimed_by == bindparam("b_sender"),
            or_(Delivery.status == DeliveryStatus.sending,
                Delivery.status == DeliveryStatus.unknown),
        )
    return (
        update(Delivery)
        .where(Delivery.id == bindparam("b_id"), condition)
        .values(
            status=bindparam("b_status"),
            reason=bindparam("b_reason"),
            error_code=bindparam("b_code"),
            provider_id=func.coalesce(bindparam("b_provider"), Delivery.provider_id),
            address=func.coalesce(bindparam("b_address"), Delivery.address),
            next_attempt_at=bindparam("b_next", type_=UTCDateTime()),
            sent_at=func.coalesce(bindparam("b_sent", type_=UTCDateTime()), Delivery.sent_at),
            attempts=Delivery.attempts - bindparam("b_undo"),
            attempted_at=case((bindparam("b_clear") == 1, None), else_=Delivery.attempted_at),
            retry_since=func.coalesce(Delivery.retry_since,
                                      bindparam("b_since", type_=UTCDateTime())),
            updated_at=bindparam("b_now", type_=UTCDateTime()),
        )
    )


_RECORD = _record_statement(owned=False)
_RECORD_OWNED = _record_statement(owned=True)


async def record(
    session: AsyncSession | AsyncConnection, outcomes: Sequence[Outcome], *, now: datetime,
    sender_id: str | None = None,
) -> None:
    """Write a batch of outcomes with one executemany (not one commit each).

    With `sender_id`, only rows still claimed by that process are written: `sending` ones,
    and `unknown` ones that recovery gave up on while this process was cut off (its late
    answer is better than "unknown"). Rows recovery put back to `pending` are left alone.
    """
    if not outcomes:
        return
    # Through a Core connection: an executemany of one UPDATE, not the ORM's per-row path.
    connection = session if isinstance(session, AsyncConnection) else await session.connection()
    await connection.execute(
        _RECORD if sender_id is None else _RECORD_OWNED,
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
                "b_clear": 1 if o.clear_attempt else 0,
                "b_since": o.retry_since,
                "b_now": now,
                "b_sender": sender_id,
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


def human_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
