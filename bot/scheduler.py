"""Wakes the process when campaigns fall due (APScheduler); the database decides what is due.

Two jobs: a sweep every few seconds (catches campaigns created by other processes or the
CLI, cancellations, and anything a missed wake-up would leave), and a one-off wake-up armed
for the next campaign's exact `send_at`, re-armed after every sweep and on `poke()`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from services.delivery import campaign_runs
from services.delivery.engine import DeliveryEngine
from services.models import utcnow

log = logging.getLogger(__name__)
# "Running job …" / "executed successfully" for every sweep and heartbeat (every few seconds)
# drown the log; APScheduler's warnings and errors (missed or failing jobs) still show.
logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)

WAKE_JOB = "campaign-due"


class CampaignScheduler:
    def __init__(self, engine: DeliveryEngine, *, sweep_seconds: float = 10.0) -> None:
        self.engine = engine
        self.sweep_seconds = sweep_seconds
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._armed_for: datetime | None = None
        self._sweeps: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self._scheduler.add_job(
            self.sweep, IntervalTrigger(seconds=self.sweep_seconds), id="sweep",
            max_instances=1, coalesce=True, next_run_time=utcnow(),
        )
        self._scheduler.add_job(
            self.engine.heartbeat_now,
            IntervalTrigger(seconds=self.engine.config.heartbeat_interval),
            id="heartbeat", max_instances=1, coalesce=True,
        )
        self._scheduler.start()

    async def stop(self, *, grace_seconds: float = 15.0) -> None:
        """No new runs; let a sweep under way finish (shutting down would cancel it midway)."""
        if not self._scheduler.running:
            return
        self._scheduler.pause()
        if self._sweeps:
            await asyncio.wait(set(self._sweeps), timeout=grace_seconds)
        self._scheduler.shutdown(wait=False)

    async def sweep(self) -> None:
        """Start what is due, close cancelled campaigns, and arm the next wake-up."""
        task = asyncio.current_task()
        if task is not None:
            self._sweeps.add(task)
        try:
            await self._sweep()
        finally:
            if task is not None:
                self._sweeps.discard(task)

    async def _sweep(self) -> None:
        try:
            await self.engine.tick()
            async with self.engine.db.transaction() as session:
                next_due = await campaign_runs.next_due_at(session)
        except Exception:
            log.exception("scheduler sweep failed; the next sweep retries")
            return
        self._arm(next_due)

    def poke(self) -> None:
        """A campaign was created or rescheduled here: look again now."""
        self._scheduler.add_job(self.sweep, id="poke", replace_existing=True,
                                max_instances=1, coalesce=True)

    def _arm(self, when: datetime | None) -> None:
        if when is None or when == self._armed_for:
            return
        self._armed_for = when
        self._scheduler.add_job(
            self.sweep, DateTrigger(run_date=max(when, utcnow())), id=WAKE_JOB,
            replace_existing=True, misfire_grace_time=None,
        )
