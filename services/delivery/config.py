"""How one process's delivery engine is tuned: rates, grace, retries, heartbeats, batches
(built from the settings in bot/senders.py; tests shorten the waits)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from services.delivery.retries import RetryPolicy
from services.models import DeliveryChannel
from services.quiet_hours import QuietHours


@dataclass
class EngineConfig:
    rates: dict[DeliveryChannel, float]
    grace: timedelta = timedelta(hours=1)
    quiet_hours: QuietHours | None = None
    clinic_timezone: str = "UTC"
    retry_for: timedelta = timedelta(minutes=30)  # RETRY_FOR
    backoff_base: float = 1.0  # seconds; doubled per attempt, capped at backoff_max
    backoff_max: float = 30.0
    poll_interval: float = 2.0  # how often idle workers look for work from other processes
    heartbeat_interval: float = 2.0
    # A process whose heartbeat is this old is dead (as judged by one that has itself reached
    # the database all that time); its claims are recovered by whoever sees it first.
    stale_after: timedelta = timedelta(seconds=10)
    # How long after a dead process's hand-over its request has surely ended (Twilio client:
    # 10 s connect + 30 s read), before the provider is asked whether it took the message.
    ask_settle: timedelta = timedelta(seconds=45)
    max_batch: int = 100
    # Batches per channel overlap, so the connections stay busy while one batch is being
    # claimed; the channel's concurrency slots, shared by them, bound what is in flight.
    batches_in_flight: int = 3

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_for, self.backoff_base, self.backoff_max)
