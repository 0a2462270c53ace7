"""The send pipeline: starts due campaigns and works off their deliveries, channel by channel.

One `DeliveryEngine` per `campaign-bot run` process. Each channel has its own workers, rate
limiter, concurrency slots and driver (email or SMS); several processes may share one
database safely (see ledger.py for how a delivery is claimed exactly once and who moves each
state on).

A delivery's path: claimed in a batch (committed) → consent, address and quiet hours checked
→ a concurrency slot → (an earlier unclear hand-over: ask the provider) → hand-over mark
committed (writer.py) → the channel's rate → the provider → outcome committed → slot freed.
A crash therefore leaves at most the channel's concurrency handed over and unanswered; every
other claim goes back to `pending` and is sent by whichever process recovers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.db import Database
from services.delivery import campaign_runs, ledger, recovery
from services.delivery.campaign_runs import CampaignEvent
from services.delivery.config import EngineConfig
from services.delivery.jobs import ChannelDriver, Job, JobMaker
from services.delivery.ledger import Outcome
from services.delivery.outcomes import Outcome as Result
from services.delivery.outcomes import SendResult
from services.delivery.rate_limit import RateLimiter
from services.delivery.retries import Outages, decide, held_back, not_attempted
from services.delivery.writer import LedgerWriter, OptOut, WriterClosed, is_connection_error
from services.models import (
    DeliveryChannel,
    DeliveryStatus,
    utcnow,
)

log = logging.getLogger(__name__)

READY_FLOOR = 6  # marked messages waiting for the provider, below which marks are urgent


EventListener = Callable[[CampaignEvent], Awaitable[None]]
ProgressListener = Callable[[set[int]], Awaitable[None]]


@dataclass
class DeliveryEngine:
    db: Database
    config: EngineConfig
    drivers: Sequence[ChannelDriver]
    on_event: EventListener | None = None
    # Told after each recorded batch which campaigns moved (the live message; it throttles).
    on_progress: ProgressListener | None = None
    sender_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:"
                                                   f"{uuid.uuid4().hex[:8]}")
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._limiters = {
            d.channel: RateLimiter(self.config.rates.get(d.channel, 1.0)) for d in self.drivers
        }
        self._slots = {d.channel: asyncio.Semaphore(d.concurrency) for d in self.drivers}
        self._jobs = JobMaker(self.config.quiet_hours, self.config.clinic_timezone)
        self._down: dict[DeliveryChannel, list[str]] = {d.channel: [] for d in self.drivers}
        self._in_flight: dict[DeliveryChannel, int] = {d.channel: 0 for d in self.drivers}
        self._outages = Outages()
        self._ready: dict[DeliveryChannel, int] = {d.channel: 0 for d in self.drivers}
        self._turn: dict[DeliveryChannel, int] = {}  # round-robin: the last batch's first
        self._held: set[int] = set()  # deliveries this process has claimed and not recorded
        self._tasks: list[asyncio.Task[None]] = []
        self._writer = LedgerWriter(self.db, sender_id=self.sender_id, clock=self.clock)
        self._connected_since: datetime | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this process, recover from any crash, then run the channel workers
        (bot/scheduler.py calls `tick` and `heartbeat_now`)."""
        await self._heartbeat()
        self._connected_since = self.clock()
        self._writer.start()
        await self.recover()
        self._tasks = [
            asyncio.create_task(self._worker_loop(d), name=f"{d.channel}-worker-{n}")
            for d in self.drivers
            for n in range(self.config.batches_in_flight)
        ]

    async def stop(self, *, grace_seconds: float = 30.0) -> None:
        """Finish the batches in flight (up to `grace_seconds`), then stop; claim nothing new."""
        self._stopping.set()
        self._wake.set()
        if self._tasks:
            _done, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
            for task in pending:  # still sending: recovery sorts out what it held
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._writer.close(grace_seconds=10)
        # Whatever this process still holds is recovered by the others (or the next start):
        # its entry is gone, so its claims belong to nobody.
        try:
            async with self.db.transaction() as session:
                await recovery.forget_process(session, sender_id=self.sender_id)
        except Exception as exc:
            log.warning("could not unregister sender %s: %s", self.sender_id, exc)
        for driver in self.drivers:
            await driver.close()

    @property
    def ledger_writes(self) -> tuple[int, int]:
        """(commits, marks and outcomes written in them) by the group commit so far."""
        return self._writer.rounds, self._writer.items

    def wake(self) -> None:
        """Something changed (a campaign was created, rescheduled, cancelled): look now."""
        self._wake.set()

    async def recover(self) -> None:
        """Take back the claims of dead processes (see ledger.py), and this process's own
        claims that a lost commit answer left behind; close what that finished."""
        now = self.clock()
        trust = (self._connected_since is not None
                 and now - self._connected_since >= self.config.stale_after)
        askable = [d.channel for d in self.drivers if d.can_ask_provider]
        async with self.db.transaction() as session:
            processes = await recovery.judge_processes(
                session, now=now, stale_after=self.config.stale_after,
                hostname=socket.gethostname(), me=self.sender_id, pid_alive=recovery.pid_alive,
                trust_heartbeats=trust,
            )
            recovered = await recovery.recover_orphans(
                session, dead=processes.dead, known=processes.known, now=now,
                stale_after=self.config.stale_after, askable=askable,
                settle=self.config.ask_settle,
            )
            released = await recovery.release_lost_claims(
                session, sender_id=self.sender_id, holding=set(self._held),
                claimed_before=now - timedelta(minutes=1),
            )
            await recovery.forget_dead(session, dead=processes.dead)
        for campaign_id, r in recovered.items():
            log.warning("campaign %s: a sender process stopped mid-send: %d deliveries it had "
                        "not handed over will be sent, %d will be checked with the provider, "
                        "%d are unknown (not re-sent)", campaign_id, r.resent, r.asked,
                        r.unknown)
        if released:
            log.warning("%d claims of this process whose commit answer was lost are pending "
                        "again", released)
        if recovered or released:
            self._wake.set()
        await self._finish(recovered.keys())

    # --- one pass, used by the loops and by tests ------------------------------------------

    async def start_due(self) -> list[CampaignEvent]:
        """Start (or mark missed) every scheduled campaign that is due now."""
        now = self.clock()
        async with self.db.transaction() as session:
            due = await campaign_runs.due_campaigns(session, now=now)
        events: list[CampaignEvent] = []
        for campaign_id, send_at in due:
            async with self.db.transaction() as session:
                event = await campaign_runs.start_campaign(
                    session, campaign_id=campaign_id, send_at=send_at, now=now,
                    grace=self.config.grace,
                )
            if event:
                events.append(event)
        await self._emit(events)
        # A campaign whose audience could not be reached at all finishes at once.
        await self._finish(e.campaign_id for e in events if e.event == "started")
        return events

    async def drain(self) -> None:
        """Send everything that is due now, on every channel, then return (for tests/CLI)."""
        started_here = self._writer.start()
        try:
            await self.start_due()
            await asyncio.gather(*(
                self._work_until_idle(d)
                for d in self.drivers
                for _ in range(self.config.batches_in_flight)
            ))
            async with self.db.transaction() as session:
                cancelled = await campaign_runs.skip_cancelled(session, now=self.clock())
                ids = await campaign_runs.sending_campaign_ids(session)
            await self._finish([*ids, *cancelled])
        finally:
            if started_here:
                await self._writer.close()

    # --- loops ------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One scheduler pass: start what is due, end what was cancelled, close anything
        with nothing left to send (the safety net under every other completion check)."""
        await self.start_due()
        async with self.db.transaction() as session:
            cancelled = await campaign_runs.skip_cancelled(session, now=self.clock())
            events = await campaign_runs.close_finished(session, now=self.clock())
        await self._emit(events)
        if cancelled:
            await self._progress(set(cancelled))
        self._wake.set()  # workers: there may be new deliveries

    async def heartbeat_now(self) -> None:
        """The periodic beat: say this process lives, then recover dead processes' claims."""
        try:
            await self._heartbeat()
        except Exception as exc:
            if self._connected_since is not None:
                log.warning("heartbeat failed (%s): %s", type(exc).__name__, exc)
            self._connected_since = None
            return
        if self._connected_since is None:
            self._connected_since = self.clock()
        try:
            await self.recover()
        except Exception as exc:
            _log_failure("recovery", exc)

    async def _worker_loop(self, driver: ChannelDriver) -> None:
        while not self._stopping.is_set():
            try:
                worked = await self._work_batch(driver)
            except Exception as exc:
                _log_failure(f"{driver.channel} worker: batch", exc)
                worked = False
            if not worked:
                await self._sleep(self._idle_seconds(driver.channel))

    def _idle_seconds(self, channel: DeliveryChannel) -> float:
        outage = self._outages.current(channel)
        if outage is None:
            return self.config.poll_interval
        left = (outage.until - self.clock()).total_seconds()
        return max(0.05, min(self.config.poll_interval, left))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _heartbeat(self) -> None:
        async with self.db.transaction() as session:
            await recovery.heartbeat(session, sender_id=self.sender_id,
                                   hostname=socket.gethostname(), pid=os.getpid(),
                                   now=self.clock())

    async def _emit(self, events: Sequence[CampaignEvent]) -> None:
        for event in events:
            level = logging.WARNING if event.event in {"missed", "failed"} else logging.INFO
            log.log(level, "campaign %s %s%s", event.campaign_id, event.event,
                    f": {event.reason}" if event.reason else "")
        if not self.on_event:
            return
        for event in events:
            try:
                await self.on_event(event)
            except Exception:
                log.exception("campaign %s: notifying %s failed", event.campaign_id, event.event)

    async def _finish(self, campaign_ids: Iterable[int]) -> None:
        """Close those of these campaigns with nothing open left. Runs after the outcomes
        committed, so the last process to record sees everything final; a failure here is
        left to the next sweep (`tick`)."""
        ids = list(campaign_ids)
        if not ids:
            return
        try:
            async with self.db.transaction() as session:
                done = await campaign_runs.without_open_deliveries(session, campaign_ids=ids)
                events = await campaign_runs.finish_campaigns(session, campaign_ids=done,
                                                       now=self.clock())
        except Exception as exc:
            _log_failure("closing finished campaigns", exc)
            return
        await self._emit(events)

    # --- the batch ----------------------------------------------------------------------------

    def _batch_size(self, driver: ChannelDriver) -> int:
        # About half a second of sending per claim: fewer, larger batches mean fewer commits,
        # and a crash sends what it had claimed but not handed over anyway.
        rate = self.config.rates.get(driver.channel, 1.0)
        return max(1, min(self.config.max_batch, int(rate / 2)))

    async def _work_until_idle(self, driver: ChannelDriver) -> None:
        while await self._work_batch(driver):
            pass

    async def _work_batch(self, driver: ChannelDriver) -> bool:
        """Claim, check and send one batch; False when nothing was due (or the channel's
        provider is unreachable for now)."""
        channel = driver.channel
        if self._outages.waiting(channel, self.clock()):
            return False
        now = self.clock()
        async with self.db.transaction() as session:
            claimed = await ledger.claim(session, channel=channel, sender_id=self.sender_id,
                                         limit=self._batch_size(driver), now=now,
                                         after_campaign=self._turn.get(channel))
            if not claimed:
                return False
            jobs, early = await self._jobs.prepare(session, driver, claimed, now)
            await ledger.record(session, early, now=now)
        self._turn[channel] = claimed[0].campaign_id
        held = {job.delivery_id for job in jobs}
        self._held |= held
        self._in_flight[channel] += 1
        try:
            await asyncio.gather(*(self._deliver(driver, job) for job in jobs))
            down = self._down[channel][0] if self._down[channel] else None
        finally:
            self._held -= held
            self._in_flight[channel] -= 1
            if not self._in_flight[channel]:  # the next batch tries the channel again
                self._down[channel].clear()
        campaign_ids = {c.campaign_id for c in claimed}
        if down:
            failed = await self._writer.run(
                lambda session: ledger.fail_remaining(
                    session, campaign_ids=campaign_ids, channel=channel, reason=down,
                    now=self.clock()),
                "the channel's remaining deliveries",
            )
            log.error("%s channel down: %s (%d remaining deliveries failed)", channel, down,
                      failed)
        await self._progress(campaign_ids)
        await self._finish(campaign_ids)
        return True

    async def _deliver(self, driver: ChannelDriver, job: Job) -> None:
        """One message, in one of the channel's concurrency slots from its hand-over mark to
        its recorded outcome."""
        async with self._slots[driver.channel]:
            try:
                written = await self._attempt(driver, job)
                if written is not None:
                    await self._writer.record(*written)
            except WriterClosed:
                log.warning("delivery %s: stopping with the database away; recovery will "
                            "settle it", job.delivery_id)

    async def _attempt(
        self, driver: ChannelDriver, job: Job
    ) -> tuple[Outcome, OptOut | None] | None:
        channel, policy = driver.channel, self.config.retry_policy
        down = self._down[channel]
        if down:
            return not_attempted(job.attempt, down[0]), None
        if self._outages.current(channel) is None:
            return await self._hand_over(driver, job)
        # The provider was unreachable: one message at a time probes it (the others wait
        # here or are held back), so an outage costs an attempt per backoff, not per patient.
        async with self._outages.probe(channel):
            now = self.clock()
            outage = self._outages.waiting(channel, now)
            if outage is not None:
                return held_back(job.attempt, until=outage.until, reason=outage.reason,
                                 now=now, policy=policy), None
            return await self._hand_over(driver, job)

    async def _hand_over(
        self, driver: ChannelDriver, job: Job
    ) -> tuple[Outcome, OptOut | None] | None:
        channel, policy = driver.channel, self.config.retry_policy
        down = self._down[channel]
        result: SendResult | None = None
        if job.attempted_at is not None and driver.can_ask_provider:
            result = await driver.ask_provider(job)
        if result is None and job.skip_reason is not None:
            return Outcome(job.delivery_id, DeliveryStatus.skipped, reason=job.skip_reason,
                           clear_attempt=True), None
        if result is None:
            # Marks are written at once while fewer than a handful of messages stand ready
            # for the provider (it would idle), else grouped with the next commit.
            urgent = self._ready[channel] < READY_FLOOR
            if not await self._writer.mark(job.delivery_id, urgent=urgent):
                log.warning("delivery %s was taken back by recovery; not sending it",
                            job.delivery_id)
                return None
            if down:  # went down while the mark was being written: nothing was handed over
                return not_attempted(job.attempt, down[0]), None
            self._ready[channel] += 1
            try:
                await self._limiters[channel].acquire()
                result = await driver.send(job)
            except Exception as exc:  # a bug or an unclassified error: do not re-send
                log.exception("delivery %s: unexpected error", job.delivery_id)
                result = SendResult(Result.UNKNOWN, reason=f"unexpected error: {exc}")
            finally:
                self._ready[channel] -= 1
        self._learn(channel, result)
        outcome = decide(job.attempt, result, now=self.clock(), policy=policy,
                         can_ask=driver.can_ask_provider)
        opt_out = OptOut(job.patient.id, channel) if result.opted_out else None
        return outcome, opt_out

    def _learn(self, channel: DeliveryChannel, result: SendResult) -> None:
        """What one result says about the channel as a whole."""
        if result.outcome is Result.RETRY and result.retry_after:
            self._limiters[channel].defer(result.retry_after)  # the provider asked to slow down
        if result.outcome is Result.CHANNEL_DOWN:
            self._down[channel].append(result.reason or "the channel is down")
        elif result.outcome is Result.RETRY and result.unreachable:
            if self._outages.unreachable(channel, result.reason or "unreachable",
                                         now=self.clock(), policy=self.config.retry_policy):
                log.warning("%s provider unreachable (%s); retrying", channel, result.reason)
        elif result.outcome is Result.SENT and self._outages.reachable(channel):
            log.warning("%s provider reachable again", channel)

    async def _progress(self, campaign_ids: set[int]) -> None:
        if self.on_progress is None:
            return
        try:
            await self.on_progress(campaign_ids)
        except Exception:
            log.exception("reporting progress of campaigns %s failed", sorted(campaign_ids))


def _log_failure(what: str, exc: Exception) -> None:
    if is_connection_error(exc):
        log.warning("%s failed: the database is unreachable (%s)", what, type(exc).__name__)
    else:
        log.error("%s failed; retrying", what, exc_info=exc)


