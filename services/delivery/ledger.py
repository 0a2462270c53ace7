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

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
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


async def mark_attempted(
    session: AsyncSession, *, ids: Sequence[int], sender_id: str, now: datetime
) -> set[int]:
    """Note that these deliveries are about to be handed over; only rows that are still this
    process's claims are marked (recovery may have taken some back): send only those."""
    if not ids:
        return set()
    result = await session.execute(
        update(Delivery)
        .where(Delivery.id.in_(list(ids)), Delivery.status == DeliveryStatus.sending,
               Delivery.claimed_by == sender_id)
        .values(attempted_at=now)
        .returning(Delivery.id)
        .execution_options(synchronize_session=False)
    )
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


async def record(
    session: AsyncSession, outcomes: Sequence[Outcome], *, now: datetime,
    sender_id: str | None = None,
) -> None:
    """Write a batch of outcomes with one executemany (not one commit each).

    With `sender_id`, only rows still claimed by that process are written: `sending` ones,
    and `unknown` ones that recovery gave up on while this process was cut off (its late
    answer is better than "unknown"). Rows recovery put back to `pending` are left alone.
    """
    if not outcomes:
        return
    condition = Delivery.status == DeliveryStatus.sending
    if sender_id is not None:
        # (`or_`, not `in_`: an expanding IN cannot be part of an executemany.)
        condition = and_(
            Delivery.claimed_by == sender_id,
            or_(Delivery.status == DeliveryStatus.sending,
                Delivery.status == DeliveryStatus.unknown),
        )
    statement = (
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
                "b_clear": 1 if o.clear_attempt else 0,
                "b_since": o.retry_since,
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


async def close_finished(session: AsyncSession, *, now: datetime) -> list[CampaignEvent]:
    """The sweep's safety net: close every `sending` campaign that has nothing open left."""
    done = await without_open_deliveries(session, campaign_ids=await sending_campaign_ids(session))
    return await finish_campaigns(session, campaign_ids=done, now=now)


async def health_problems(
    session: AsyncSession, *, now: datetime, stuck_after: timedelta = timedelta(minutes=5),
    late_after: timedelta = timedelta(minutes=2),
) -> list[str]:
    """Work that should have moved and has not, in words for `/healthz`."""
    problems: list[str] = []
    in_flight, oldest = (
        await session.execute(
            select(func.count(), func.min(Delivery.claimed_at)).where(
                Delivery.status == DeliveryStatus.sending,
                Delivery.claimed_at < now - stuck_after,
            )
        )
    ).one()
    if in_flight:
        problems.append(f"{in_flight} deliveries have been in flight since "
                        f"{oldest:%Y-%m-%d %H:%M:%S} UTC (more than {_human(stuck_after)})")
    late, first_due = (
        await session.execute(
            select(func.count(), func.min(Campaign.send_at)).where(
                Campaign.status == CampaignStatus.scheduled,
                Campaign.send_at < now - late_after,
            )
        )
    ).one()
    if late:
        problems.append(f"{late} campaigns due since {first_due:%Y-%m-%d %H:%M:%S} UTC "
                        "have not started")
    return problems


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


UNKNOWN_AFTER_CRASH = (
    "the sending process stopped after handing the message over; it may or may not have "
    "been sent"
)
ASK_PROVIDER = "the sending process stopped mid-send; asking the provider whether it was sent"


@dataclass(frozen=True)
class Recovered:
    """What recovery did with one campaign's orphaned claims."""

    resent: int = 0  # never handed over: pending again
    asked: int = 0  # handed over, the provider will be asked (pending, `attempted_at` kept)
    unknown: int = 0  # handed over, nobody can tell: `unknown`


async def recover_orphans(
    session: AsyncSession, *, dead: Iterable[str], known: Iterable[str], now: datetime,
    stale_after: timedelta, askable: Iterable[DeliveryChannel] = (),
    settle: timedelta = timedelta(seconds=45),
) -> dict[int, Recovered]:
    """Claims of `dead` processes (and claims older than `stale_after` of processes not
    `known` at all: stopped ones, which drop their entry): back to `pending` if they were
    never handed over; handed over on an `askable` channel: `pending` again, due after
    `settle` (the dead process's request has surely ended by then), to ask the provider
    before any re-send; otherwise `unknown`, never re-sent automatically.

    Returns {campaign_id: Recovered}."""
    askable = list(askable)
    unowned = and_(or_(Delivery.claimed_by.is_(None), Delivery.claimed_by.not_in(list(known))),
                   Delivery.claimed_at < now - stale_after)
    orphan = and_(Delivery.status == DeliveryStatus.sending,
                  or_(Delivery.claimed_by.in_(list(dead)), unowned))
    counts: dict[int, dict[str, int]] = {}

    def tally(rows: Iterable[int], kind: str) -> None:
        for campaign_id in rows:
            per = counts.setdefault(campaign_id, {"resent": 0, "asked": 0, "unknown": 0})
            per[kind] += 1

    back = await session.execute(
        update(Delivery)
        .where(orphan, Delivery.attempted_at.is_(None))
        .values(status=DeliveryStatus.pending, claimed_by=None, attempts=Delivery.attempts - 1,
                updated_at=now)
        .returning(Delivery.campaign_id)
        .execution_options(synchronize_session=False)
    )
    tally(back.scalars(), "resent")
    if askable:
        asked = await session.execute(
            update(Delivery)
            .where(orphan, Delivery.attempted_at.is_not(None), Delivery.channel.in_(askable))
            .values(status=DeliveryStatus.pending, claimed_by=None, reason=ASK_PROVIDER,
                    next_attempt_at=now + settle,
                    retry_since=func.coalesce(Delivery.retry_since, now), updated_at=now)
            .returning(Delivery.campaign_id)
            .execution_options(synchronize_session=False)
        )
        tally(asked.scalars(), "asked")
    lost = await session.execute(
        update(Delivery)
        .where(orphan)
        .values(status=DeliveryStatus.unknown, reason=UNKNOWN_AFTER_CRASH, updated_at=now)
        .returning(Delivery.campaign_id)
        .execution_options(synchronize_session=False)
    )
    tally(lost.scalars(), "unknown")
    for campaign_id, per in counts.items():
        await audit.record(session, ENGINE_ACTOR, "deliveries.recovered",
                           campaign_id=campaign_id, **per)
    return {campaign_id: Recovered(**per) for campaign_id, per in counts.items()}


@dataclass(frozen=True)
class Processes:
    alive: list[str]
    dead: list[str]

    @property
    def known(self) -> list[str]:
        return [*self.alive, *self.dead]


async def judge_processes(
    session: AsyncSession, *, now: datetime, stale_after: timedelta, hostname: str, me: str,
    pid_alive: Callable[[int], bool], trust_heartbeats: bool = True,
) -> Processes:
    """Which sender processes are alive: a fresh heartbeat and, on this host, a pid that
    still runs (a restarted process does not wait for its old heartbeat to go stale; another
    entry with this process's own pid is an earlier life of a recycled pid).

    `trust_heartbeats=False` (this process has not itself reached the database for a whole
    `stale_after`: just after an outage everybody's heartbeat is old) counts a stale
    heartbeat as alive; only a pid seen gone on this host is then taken as proof of death."""
    rows = (await session.execute(select(SenderProcess))).scalars().all()
    alive: list[str] = []
    dead: list[str] = []
    for process in rows:
        gone = process.hostname == hostname and (
            process.pid == os.getpid() or not pid_alive(process.pid)
        )
        stale = trust_heartbeats and now - process.heartbeat_at > stale_after
        if process.id != me and (gone or stale):
            dead.append(process.id)
        else:
            alive.append(process.id)
    return Processes(alive, dead)


async def release_lost_claims(
    session: AsyncSession, *, sender_id: str, holding: Collection[int], claimed_before: datetime,
) -> int:
    """This process's own claims that it does not hold (the claim committed but its answer
    was lost to a dropped connection) and never handed over: `pending` again."""
    condition = and_(Delivery.claimed_by == sender_id, Delivery.status == DeliveryStatus.sending,
                     Delivery.attempted_at.is_(None), Delivery.claimed_at < claimed_before)
    if holding:
        condition = and_(condition, Delivery.id.not_in(list(holding)))
    result = await session.execute(
        update(Delivery)
        .where(condition)
        .values(status=DeliveryStatus.pending, claimed_by=None, attempts=Delivery.attempts - 1)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0


async def forget_dead(session: AsyncSession, *, dead: Iterable[str]) -> None:
    """Drop the entries of processes found dead (their claims were just recovered)."""
    dead = list(dead)
    if dead:
        await session.execute(
            delete(SenderProcess).where(SenderProcess.id.in_(dead))
            .execution_options(synchronize_session=False)
        )


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
