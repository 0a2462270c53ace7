"""The send pipeline: starts due campaigns and works off their deliveries, channel by channel.

One `DeliveryEngine` per `campaign-bot run` process. Each channel has its own worker, rate
limiter and driver (email or SMS); several processes may share one database safely (see
ledger.py for how a delivery is claimed exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select

from bot.db import Database
from services import consent
from services.campaign_summary import QUIET_HOURS_REASON
from services.delivery import ledger
from services.delivery.ledger import CampaignEvent, Claimed, Outcome
from services.delivery.outcomes import Outcome as Result
from services.delivery.outcomes import SendResult
from services.delivery.rate_limit import RateLimiter
from services.models import (
    Campaign,
    CampaignAttachment,
    DeliveryChannel,
    DeliveryStatus,
    Patient,
    utcnow,
)
from services.quiet_hours import QuietHours

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CampaignContent:
    """What every delivery of one campaign shares (loaded once per campaign per process)."""

    id: int
    subject: str
    preview_text: str | None
    message: str
    attachment: CampaignAttachment | None


@dataclass(frozen=True)
class Job:
    """One claimed delivery, ready for a driver."""

    delivery_id: int
    attempts: int
    campaign: CampaignContent
    patient: Patient
    address: str


class ChannelDriver(Protocol):
    """Renders and sends one channel's messages; knows nothing of the ledger."""

    channel: DeliveryChannel
    concurrency: int

    def address_of(self, patient: Patient) -> str | None: ...

    async def send(self, job: Job) -> SendResult: ...

    async def close(self) -> None: ...


@dataclass
class EngineConfig:
    rates: dict[DeliveryChannel, float]
    grace: timedelta = timedelta(hours=1)
    quiet_hours: QuietHours | None = None
    clinic_timezone: str = "UTC"
    max_attempts: int = 5
    backoff_base: float = 1.0  # seconds; doubled per attempt, capped at backoff_max
    backoff_max: float = 30.0
    poll_interval: float = 2.0  # how often idle workers look for work from other processes
    heartbeat_interval: float = 5.0
    stale_after: timedelta = timedelta(seconds=30)
    max_batch: int = 100
    # Batches per channel overlap, so the connections stay busy while one batch is being
    # recorded and the next claimed (a crash then leaves at most that many batches, each
    # about half a second of sending, `unknown`). Three measured best for email (0.76 → 0.84
    # of smtp-source's rate); the rate limiter keeps SMS to SMS_RATE whatever the overlap.
    batches_in_flight: int = 3


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
        self._contents: dict[int, CampaignContent] = {}
        self._down: dict[DeliveryChannel, list[str]] = {d.channel: [] for d in self.drivers}
        self._in_flight: dict[DeliveryChannel, int] = {d.channel: 0 for d in self.drivers}
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register this process, recover from any crash, then run the channel workers
        (bot/scheduler.py calls `tick` and `heartbeat_now`)."""
        await self._heartbeat()
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
            for task in pending:  # still sending: what it claimed becomes `unknown` on restart
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Anything still claimed by this process is found by the next recovery (its id is
        # no longer among the live ones) and becomes `unknown`.
        async with self.db.transaction() as session:
            await ledger.forget_process(session, sender_id=self.sender_id)
        for driver in self.drivers:
            await driver.close()

    def wake(self) -> None:
        """Something changed (a campaign was created, rescheduled, cancelled): look now."""
        self._wake.set()

    async def recover(self) -> None:
        """Claims of dead processes become `unknown`; finished campaigns are closed."""
        now = self.clock()
        async with self.db.transaction() as session:
            alive = await ledger.live_processes(
                session, now=now, stale_after=self.config.stale_after,
                hostname=socket.gethostname(), me=self.sender_id, pid_alive=_pid_alive,
            )
            orphans = await ledger.mark_orphans_unknown(session, alive=alive, now=now)
        for campaign_id, count in orphans.items():
            log.warning("campaign %s: %d deliveries were in flight when a process stopped; "
                        "marked unknown (not re-sent)", campaign_id, count)
        await self._finish(orphans.keys())

    # --- one pass, used by the loops and by tests ------------------------------------------

    async def start_due(self) -> list[CampaignEvent]:
        """Start (or mark missed) every scheduled campaign that is due now."""
        now = self.clock()
        async with self.db.transaction() as session:
            due = await ledger.due_campaigns(session, now=now)
        events: list[CampaignEvent] = []
        for campaign_id, send_at in due:
            async with self.db.transaction() as session:
                event = await ledger.start_campaign(
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
        await self.start_due()
        await asyncio.gather(*(
            self._work_until_idle(d)
            for d in self.drivers
            for _ in range(self.config.batches_in_flight)
        ))
        async with self.db.transaction() as session:
            cancelled = await ledger.skip_cancelled(session, now=self.clock())
            ids = await ledger.sending_campaign_ids(session)
        await self._finish([*ids, *cancelled])

    # --- loops ------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One scheduler pass: start what is due, end what was cancelled."""
        await self.start_due()
        async with self.db.transaction() as session:
            cancelled = await ledger.skip_cancelled(session, now=self.clock())
        await self._finish(cancelled)
        if cancelled:
            await self._progress(set(cancelled))
        self._wake.set()  # workers: there may be new deliveries

    async def heartbeat_now(self) -> None:
        try:
            await self._heartbeat()
        except Exception:
            log.exception("heartbeat failed")

    async def _worker_loop(self, driver: ChannelDriver) -> None:
        while not self._stopping.is_set():
            try:
                worked = await self._work_batch(driver)
            except Exception:
                log.exception("%s worker: batch failed; retrying", driver.channel)
                worked = False
            if not worked:
                await self._sleep(self.config.poll_interval)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _heartbeat(self) -> None:
        async with self.db.transaction() as session:
            await ledger.heartbeat(session, sender_id=self.sender_id,
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

    async def _finish(self, campaign_ids: object) -> None:
        ids = list(campaign_ids)  # type: ignore[call-overload]
        if not ids:
            return
        async with self.db.transaction() as session:
            events = await ledger.finish_campaigns(session, campaign_ids=ids, now=self.clock())
        await self._emit(events)

    # --- the batch ----------------------------------------------------------------------------

    def _batch_size(self, driver: ChannelDriver) -> int:
        # At most half a second of sending per claim: a crash leaves at most that many
        # `unknown`, and fewer, larger batches mean fewer commits.
        rate = self.config.rates.get(driver.channel, 1.0)
        return max(1, min(self.config.max_batch, int(rate / 2)))

    async def _work_until_idle(self, driver: ChannelDriver) -> None:
        while await self._work_batch(driver):
            pass

    async def _work_batch(self, driver: ChannelDriver) -> bool:
        """Claim, check, send and record one batch; False when nothing was due."""
        now = self.clock()
        async with self.db.transaction() as session:
            claimed = await ledger.claim(session, channel=driver.channel,
                                         sender_id=self.sender_id,
                                         limit=self._batch_size(driver), now=now)
            if not claimed:
                return False
            jobs, early = await self._prepare(session, driver, claimed, now)
            await ledger.record(session, early, now=now)
        # The claim is committed: from here a crash leaves these deliveries `unknown`.
        self._in_flight[driver.channel] += 1
        try:
            outcomes, results, channel_down = await self._send_all(driver, jobs)
        finally:
            self._in_flight[driver.channel] -= 1
            if not self._in_flight[driver.channel]:  # the next batch tries the channel again
                self._down[driver.channel].clear()
        now = self.clock()
        campaign_ids = {c.campaign_id for c in claimed}
        async with self.db.transaction() as session:
            await ledger.record(session, outcomes, now=now)
            opted_out = [job.patient.id for job, result in zip(jobs, results, strict=True)
                         if result is not None and result.opted_out]
            if opted_out:
                await consent.record_opt_out(session, patient_ids=opted_out,
                                             channel=driver.channel, source="provider",
                                             actor=ledger.ENGINE_ACTOR)
            if channel_down:
                failed = await ledger.fail_remaining(session, campaign_ids=campaign_ids,
                                                     channel=driver.channel,
                                                     reason=channel_down, now=now)
                log.error("%s channel down: %s (%d remaining deliveries failed)",
                          driver.channel, channel_down, failed)
            done = await ledger.without_open_deliveries(session, campaign_ids=campaign_ids)
        await self._progress(campaign_ids)
        await self._finish(done)
        return True

    async def _progress(self, campaign_ids: set[int]) -> None:
        if self.on_progress is None:
            return
        try:
            await self.on_progress(campaign_ids)
        except Exception:
            log.exception("reporting progress of campaigns %s failed", sorted(campaign_ids))

    async def _prepare(
        self, session: object, driver: ChannelDriver, claimed: list[Claimed], now: datetime
    ) -> tuple[list[Job], list[Outcome]]:
        """Consent, address and quiet hours, checked now (at send time): jobs to send, and
        outcomes for the rest (skipped, or deferred to the SMS window)."""
        patient_ids = {c.patient_id for c in claimed}
        rows = await session.execute(select(Patient).where(Patient.id.in_(patient_ids)))  # type: ignore[attr-defined]
        patients = {p.id: p for p in rows.scalars()}
        jobs: list[Job] = []
        early: list[Outcome] = []
        for item in claimed:
            patient = patients[item.patient_id]
            reason = consent.skip_reason(patient, driver.channel)
            address = driver.address_of(patient) if reason is None else None
            if reason is None and not address:
                reason = consent.NO_ADDRESS
            if reason is not None:
                early.append(Outcome(item.id, DeliveryStatus.skipped, reason=reason,
                                     undo_attempt=True))
                continue
            opening = self._window_opening(driver.channel, patient, now)
            if opening is not None:
                early.append(Outcome(item.id, DeliveryStatus.pending,
                                     reason=QUIET_HOURS_REASON,
                                     next_attempt_at=opening, undo_attempt=True))
                continue
            content = await self._content(session, item.campaign_id)
            jobs.append(Job(item.id, item.attempts, content, patient, address))  # type: ignore[arg-type]
        return jobs, early

    def _window_opening(
        self, channel: DeliveryChannel, patient: Patient, now: datetime
    ) -> datetime | None:
        quiet = self.config.quiet_hours
        if channel is not DeliveryChannel.sms or quiet is None:
            return None
        zone = _zone(patient.timezone) or _zone(self.config.clinic_timezone) or ZoneInfo("UTC")
        opening = quiet.next_opening(now, zone)
        return None if opening <= now else opening

    async def _content(self, session: object, campaign_id: int) -> CampaignContent:
        cached = self._contents.get(campaign_id)
        if cached is not None:
            return cached
        campaign = await session.get(Campaign, campaign_id)  # type: ignore[attr-defined]
        attachment = await session.get(CampaignAttachment, campaign_id)  # type: ignore[attr-defined]
        content = CampaignContent(campaign.id, campaign.subject, campaign.preview_text,
                                  campaign.message, attachment)
        if len(self._contents) > 32:
            self._contents.clear()
        self._contents[campaign_id] = content
        return content

    async def _send_all(
        self, driver: ChannelDriver, jobs: list[Job]
    ) -> tuple[list[Outcome], list[SendResult | None], str | None]:
        """Send a batch with the driver's concurrency under the channel's rate limit."""
        limiter = self._limiters[driver.channel]
        semaphore = asyncio.Semaphore(driver.concurrency)
        # Shared by the batches in flight on this channel: once one learns the channel is
        # down (a refused login), none of them tries another message.
        down = self._down[driver.channel]
        results: list[SendResult | None] = [None] * len(jobs)

        async def one(index: int, job: Job) -> None:
            async with semaphore:
                if down:
                    return
                await limiter.acquire()
                if down:
                    return
                try:
                    result = await driver.send(job)
                except Exception as exc:  # a bug or an unclassified error: do not re-send
                    log.exception("delivery %s: unexpected error", job.delivery_id)
                    result = SendResult(Result.UNKNOWN, reason=f"unexpected error: {exc}")
                results[index] = result
                if result.outcome is Result.RETRY and result.retry_after:
                    limiter.defer(result.retry_after)  # the provider asked us to slow down
                if result.outcome is Result.CHANNEL_DOWN:
                    down.append(result.reason or "the channel is down")

        await asyncio.gather(*(one(i, job) for i, job in enumerate(jobs)))
        now = self.clock()
        outcomes = [self._outcome(job, result, down[0] if down else None, now)
                    for job, result in zip(jobs, results, strict=True)]
        return outcomes, results, (down[0] if down else None)

    def _outcome(
        self, job: Job, result: SendResult | None, down: str | None, now: datetime
    ) -> Outcome:
        if result is None:  # not attempted: the channel went down first
            return Outcome(job.delivery_id, DeliveryStatus.failed, reason=down,
                           address=job.address, undo_attempt=True)
        match result.outcome:
            case Result.SENT:
                return Outcome(job.delivery_id, DeliveryStatus.sent, provider_id=result.provider_id,
                               address=job.address, sent_at=now)
            case Result.RETRY if job.attempts < self.config.max_attempts:
                wait = result.retry_after or min(
                    self.config.backoff_max, self.config.backoff_base * 2 ** (job.attempts - 1)
                )
                return Outcome(job.delivery_id, DeliveryStatus.pending, reason=result.reason,
                               error_code=result.error_code, address=job.address,
                               next_attempt_at=now + timedelta(seconds=wait))
            case Result.RETRY:
                return Outcome(job.delivery_id, DeliveryStatus.failed,
                               reason=f"gave up after {job.attempts} attempts: {result.reason}",
                               error_code=result.error_code, address=job.address)
            case Result.UNKNOWN:
                return Outcome(job.delivery_id, DeliveryStatus.unknown, reason=result.reason,
                               error_code=result.error_code, address=job.address,
                               provider_id=result.provider_id)
            case _:  # FAILED, CHANNEL_DOWN
                return Outcome(job.delivery_id, DeliveryStatus.failed, reason=result.reason,
                               error_code=result.error_code, address=job.address)


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except Exception:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
