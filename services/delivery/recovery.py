"""Sender processes, and what happens to their claims when one dies (see ledger.py for who
owns each delivery state): heartbeats, the verdict on which processes are dead, the recovery
of their claims, and the health of the work as `/healthz` reports it."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.delivery.ledger import ENGINE_ACTOR, human_duration
from services.models import (
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    SenderProcess,
)


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
                        f"{oldest:%Y-%m-%d %H:%M:%S} UTC (more than {human_duration(stuck_after)})")
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
