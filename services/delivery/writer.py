"""The engine's one path to the ledger while sending: group commit, retried until it lands.

Every message is handed over only after its `attempted_at` mark has committed, and its
outcome is committed before its concurrency slot is freed; so at any moment at most the
driver's concurrency per channel is "handed over, outcome not yet written" (what a crash can
leave `unknown`). Marks and outcomes waiting at the same time share one transaction, which
keeps commits to a few per batch instead of two per message.

When the database does not answer (an outage, a failover), the writer keeps what waits in
memory, bounded by those same slots, and tries again with capped backoff until it lands: a
message a provider accepted is never turned into `unknown` by a database blip, and sending
pauses by itself, since no new mark can commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bot.db import Database
from services import consent
from services.delivery import ledger
from services.delivery.ledger import Outcome
from services.models import DeliveryChannel

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class OptOut:
    """The provider says this patient opted out of this channel (Twilio 21610)."""

    patient_id: int
    channel: DeliveryChannel


def is_connection_error(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (not a bug of ours)."""
    if isinstance(exc, OSError | ConnectionError | TimeoutError | sa_exc.DisconnectionError
                  | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sa_exc.OperationalError | sa_exc.InterfaceError
        ) or isinstance(exc.orig, OSError | ConnectionError | TimeoutError)
    name = type(exc).__name__  # asyncpg's own, when it escapes SQLAlchemy's wrapping
    return "Connection" in name or "CannotConnectNow" in name


class WriterClosed(Exception):
    """The write will not happen: the engine is stopping and the database did not answer in
    time, or the write itself is wrong (an error that is not an outage, repeated)."""


class LedgerWriter:
    """Group-commits hand-over marks and outcomes for one process (see the module doc)."""

    def __init__(
        self, db: Database, *, sender_id: str, clock: Callable[[], datetime],
        backoff_max: float = 5.0, max_errors: int = 5, linger: float = 0.004, group: int = 8,
    ) -> None:
        self.max_errors = max_errors
        self.linger, self.group = linger, group
        self.rounds = self.items = 0  # how well commits are grouped (benchmarks print it)
        self.db = db
        self.sender_id = sender_id
        self.clock = clock
        self.backoff_max = backoff_max
        self._marks: list[tuple[int, asyncio.Future[bool]]] = []
        self._outcomes: list[tuple[Outcome, OptOut | None, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._give_up_at: float | None = None
        self._connection: AsyncConnection | None = None  # the group commit's own
        self._idle = asyncio.Event()  # nothing waiting and nothing being written
        self._idle.set()
        self.failing_since: float | None = None  # monotonic; None while writes land

    def start(self) -> bool:
        """Start writing (if not already); True if this call started it."""
        if self._task is not None:
            return False
        self._give_up_at = None
        self._task = asyncio.create_task(self._run(), name="ledger-writer")
        return True

    @property
    def failing_for(self) -> float | None:
        """Seconds the writes have been failing, None while they land."""
        if self.failing_since is None:
            return None
        return time.monotonic() - self.failing_since

    async def close(self, *, grace_seconds: float = 15.0) -> None:
        """Write what waits (for up to `grace_seconds` if the database is away), then stop."""
        self._give_up_at = time.monotonic() + grace_seconds
        self._wake.set()
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=grace_seconds + 5)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        """Give the connection back (after an error it may be broken: a fresh one next)."""
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                await connection.close()

    async def mark(self, delivery_id: int, *, urgent: bool = False) -> bool:
        """Commit that this delivery is about to be handed over; False if it is no longer
        this process's claim (recovery took it back while this process was cut off).
        `urgent`: the provider is about to run out of messages to take, so write now."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._marks.append((delivery_id, future))
        self._idle.clear()
        if urgent:
            self._urgent.set()
        self._wake.set()
        return await future

    async def record(self, outcome: Outcome, opt_out: OptOut | None = None) -> None:
        """Commit one delivery's outcome (and an opt-out the provider reported with it)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes.append((outcome, opt_out, future))
        self._idle.clear()
        self._wake.set()
        await future

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]], what: str) -> T:
        """One transaction of other engine bookkeeping, retried like the group commit."""
        return await self._until_it_lands(work, what)

    async def _run(self) -> None:
        last_round = -1.0
        while True:
            await self._wake.wait()
            # Busy (the last round was moments ago): let a few more marks and outcomes join
            # this round. A commit per one or two messages costs more than the provider's
            # own work; the concurrency slots (16 for email) give the pipeline room for it.
            if time.monotonic() - last_round < self.linger and (
                len(self._marks) + len(self._outcomes) < self.group
            ) and not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.linger)
            self._wake.clear()
            self._urgent.clear()
            last_round = time.monotonic()
            marks, self._marks = self._marks, []
            outcomes, self._outcomes = self._outcomes, []
            if marks or outcomes:
                self.rounds += 1
                self.items += len(marks) + len(outcomes)
                await self._write_round(marks, outcomes)
            if self._marks or self._outcomes:
                self._wake.set()
            else:
                self._idle.set()

    async def _write_round(
        self, marks: list[tuple[int, asyncio.Future[bool]]],
        outcomes: list[tuple[Outcome, OptOut | None, asyncio.Future[None]]],
    ) -> None:
        try:
            marked = await self._until_it_lands(
                functools.partial(self._write, marks=marks, outcomes=outcomes),
                f"{len(outcomes)} outcomes and {len(marks)} hand-overs",
                # Opt-outs go through the ORM (consent events, audit); the rest is Core.
                core=not any(opt_out for _, opt_out, _ in outcomes),
            )
        except Exception as exc:  # WriterClosed, or a bug: never leave a waiter hanging
            failure = exc if isinstance(exc, WriterClosed) else WriterClosed(str(exc))
            for future in [f for _, f in marks] + [f for _, _, f in outcomes]:
                if not future.done():
                    future.set_exception(failure)
            return
        for delivery_id, mark in marks:
            if not mark.done():
                mark.set_result(delivery_id in marked)
        for _, _, done in outcomes:
            if not done.done():
                done.set_result(None)

    async def _write(
        self, session: AsyncSession | AsyncConnection, *, marks: list[tuple[int, Any]],
        outcomes: list[tuple[Outcome, OptOut | None, Any]],
    ) -> set[int]:
        now = self.clock()
        if outcomes:
            await ledger.record(session, [o for o, _, _ in outcomes], now=now,
                                sender_id=self.sender_id)
            by_channel: dict[DeliveryChannel, list[int]] = {}
            for _, opt_out, _ in outcomes:
                if opt_out is not None:
                    by_channel.setdefault(opt_out.channel, []).append(opt_out.patient_id)
            for channel, patient_ids in by_channel.items():
                await consent.record_opt_out(session, patient_ids=patient_ids, channel=channel,
                                             source="provider", actor=ledger.ENGINE_ACTOR)
        if not marks:
            return set()
        return await ledger.mark_attempted(session, ids=[i for i, _ in marks],
                                           sender_id=self.sender_id, now=now)

    async def _until_it_lands(
        self, work: Callable[[Any], Awaitable[T]], what: str, *, core: bool = False
    ) -> T:
        delay = 0.1
        errors = 0
        while True:
            try:
                if core:
                    if self._connection is None:
                        self._connection = await self.db.core_connection()
                    async with self._connection.begin():
                        result = await work(self._connection)
                else:
                    async with self.db.transaction() as session:
                        result = await work(session)
            except Exception as exc:
                await self._drop_connection()
                if not is_connection_error(exc):
                    errors += 1
                    if errors >= self.max_errors:  # not an outage: a bug, retrying won't help
                        log.exception("writing %s failed %d times; giving up", what, errors)
                        raise WriterClosed(f"writing {what} failed: {exc}") from exc
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    if is_connection_error(exc):
                        log.warning("database unreachable while writing %s (%s); keeping them "
                                    "and retrying", what, type(exc).__name__)
                    else:
                        log.exception("writing %s failed; retrying", what)
                if self._give_up_at is not None and time.monotonic() > self._give_up_at:
                    raise WriterClosed(f"the database did not answer: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(self.backoff_max, delay * 2)
                continue
            if self.failing_since is not None:
                log.warning("database answers again after %.1f s; %s written",
                            time.monotonic() - self.failing_since, what)
                self.failing_since = None
            return result
