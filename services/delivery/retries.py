"""What one attempt's result means for its delivery: the ledger outcome (SPEC §3).

- Certainly not sent (RETRY): tried again with capped exponential backoff for up to
  RETRY_FOR from the first such failure, then `failed` with the last reason.
- Perhaps sent (UNKNOWN): where the provider can be asked, the delivery waits (`pending`, its
  hand-over mark kept) and the next claim asks before anything is re-sent, again for up to
  RETRY_FOR; elsewhere, or once that time is up, it ends `unknown`.
- Sent, or failed for good: final at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.delivery.ledger import Outcome
from services.delivery.outcomes import UNREACHABLE, SendResult
from services.delivery.outcomes import Outcome as Result
from services.models import DeliveryStatus


@dataclass(frozen=True)
class RetryPolicy:
    retry_for: timedelta = timedelta(minutes=30)
    backoff_base: float = 1.0  # seconds; doubled per attempt
    backoff_max: float = 30.0

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th attempt."""
        return min(self.backoff_max, self.backoff_base * 2 ** max(0, min(attempts - 1, 30)))

    def gave_up(self, retry_since: datetime | None, now: datetime) -> bool:
        return retry_since is not None and now - retry_since >= self.retry_for


@dataclass(frozen=True)
class Attempt:
    """The delivery an attempt was for, as far as the decision needs it."""

    delivery_id: int
    address: str
    attempts: int
    retry_since: datetime | None  # when retrying began, if it has
    attempted_at: datetime | None  # an earlier hand-over nobody could tell the fate of


def decide(
    attempt: Attempt, result: SendResult, *, now: datetime, policy: RetryPolicy, can_ask: bool
) -> Outcome:
    """The ledger outcome of one attempt's `result`."""
    since = attempt.retry_since or now
    match result.outcome:
        case Result.SENT:
            return Outcome(attempt.delivery_id, DeliveryStatus.sent,
                           provider_id=result.provider_id, address=attempt.address, sent_at=now)
        case Result.RETRY if not policy.gave_up(since, now):
            wait = result.retry_after or policy.backoff(attempt.attempts)
            return Outcome(attempt.delivery_id, DeliveryStatus.pending, reason=result.reason,
                           error_code=UNREACHABLE if result.unreachable else result.error_code,
                           address=attempt.address, next_attempt_at=now + timedelta(seconds=wait),
                           clear_attempt=True, retry_since=since)
        case Result.RETRY:
            return Outcome(attempt.delivery_id, DeliveryStatus.failed,
                           reason=f"{result.reason} (still failing after "
                                  f"{_minutes(policy.retry_for)} of retries)",
                           error_code=result.error_code, address=attempt.address,
                           clear_attempt=True)
        case Result.UNKNOWN if can_ask and not policy.gave_up(since, now):
            wait = policy.backoff(attempt.attempts)
            return Outcome(attempt.delivery_id, DeliveryStatus.pending, reason=result.reason,
                           error_code=result.error_code, address=attempt.address,
                           next_attempt_at=now + timedelta(seconds=wait), retry_since=since)
        case Result.UNKNOWN:
            return Outcome(attempt.delivery_id, DeliveryStatus.unknown, reason=result.reason,
                           error_code=result.error_code, address=attempt.address,
                           provider_id=result.provider_id)
        case _:  # FAILED, CHANNEL_DOWN
            return Outcome(attempt.delivery_id, DeliveryStatus.failed, reason=result.reason,
                           error_code=result.error_code, address=attempt.address)


def not_attempted(attempt: Attempt, reason: str) -> Outcome:
    """The channel went down before this message's turn: failed, and it was no attempt."""
    return Outcome(attempt.delivery_id, DeliveryStatus.failed, reason=reason,
                   address=attempt.address, undo_attempt=True, clear_attempt=True)


def held_back(
    attempt: Attempt, *, until: datetime, reason: str, now: datetime, policy: RetryPolicy
) -> Outcome:
    """The provider is unreachable (another message just found out): wait without trying,
    or give up once RETRY_FOR has passed."""
    since = attempt.retry_since or now
    if policy.gave_up(since, now):
        if attempt.attempted_at is not None:  # an earlier hand-over nobody could check
            return Outcome(attempt.delivery_id, DeliveryStatus.unknown, address=attempt.address,
                           reason=f"{reason}; could not ask the provider whether an earlier "
                                  "attempt was sent")
        return Outcome(attempt.delivery_id, DeliveryStatus.failed, address=attempt.address,
                       reason=f"{reason} (still failing after {_minutes(policy.retry_for)} of "
                              "retries)", undo_attempt=True)
    return Outcome(attempt.delivery_id, DeliveryStatus.pending, reason=reason,
                   error_code=UNREACHABLE, address=attempt.address, next_attempt_at=until,
                   undo_attempt=True, retry_since=since)


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:g} min" if minutes >= 1 else f"{delta.total_seconds():g} s"


@dataclass
class Outage:
    until: datetime
    reason: str
    failures: int


class Outages:
    """Channels whose provider cannot be reached (connection refused, mail server away): the
    channel waits out a growing backoff, then one message at a time probes it (`probe`), so an
    outage costs an attempt per backoff rather than one per waiting patient."""

    def __init__(self) -> None:
        self._outages: dict[str, Outage] = {}
        self._probes: dict[str, asyncio.Lock] = {}

    def current(self, channel: str) -> Outage | None:
        return self._outages.get(channel)

    def waiting(self, channel: str, now: datetime) -> Outage | None:
        """The outage if the channel is inside its backoff now."""
        outage = self._outages.get(channel)
        return outage if outage is not None and outage.until > now else None

    def probe(self, channel: str) -> asyncio.Lock:
        return self._probes.setdefault(channel, asyncio.Lock())

    def unreachable(self, channel: str, reason: str, *, now: datetime,
                    policy: RetryPolicy) -> bool:
        """Note a failed attempt to reach the provider; True if it was reachable until now."""
        previous = self._outages.get(channel)
        failures = previous.failures + 1 if previous else 1
        until = now + timedelta(seconds=policy.backoff(failures))
        self._outages[channel] = Outage(until, reason, failures)
        return previous is None

    def reachable(self, channel: str) -> bool:
        """Note a message got through; True if the channel was in an outage."""
        return self._outages.pop(channel, None) is not None
