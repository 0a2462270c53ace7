"""A campaign's performance snapshot (SPEC §4): its numbers, from the ledger's GROUP BYs.

The counts come from `campaign_summary.delivery_counts` (one source of truth with
`campaigns show --json`); this module adds what the channel and the rules need on top:
reachable, opted out since the send, duration, the achieved rate and the failure rate.
Counts only: nothing here names a patient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.campaign_summary import (
    QUIET_HOURS_REASON,
    delivery_counts,
    waiting_for_quiet_hours,
)
from services.delivery.outcomes import UNREACHABLE
from services.errors import NotFound
from services.models import (
    Campaign,
    Channel,
    ConsentEvent,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
    utcnow,
)

# The names a notification rule's condition may use (per channel too: `email_failed`, …).
CHANNEL_NUMBERS = ("audience", "reachable", "skipped", "sent", "delivered", "failed", "unknown",
                   "pending", "waiting", "opened", "clicked", "opted_out", "done")
TOTAL_NUMBERS = (*CHANNEL_NUMBERS, "failed_pct", "duration_seconds", "rate")
NUMBER_NAMES = frozenset(
    (*TOTAL_NUMBERS, *(f"{c.value}_{n}" for c in DeliveryChannel for n in CHANNEL_NUMBERS))
)


@dataclass(frozen=True)
class ChannelNumbers:
    """One channel of one campaign. `sent` counts every message handed to the provider
    (`delivered` ones too: delivered is what a provider later confirmed of the sent)."""

    channel: str
    audience: int  # deliveries on this channel: one per audience patient
    skipped: int
    skipped_reasons: dict[str, int]
    sent: int
    delivered: int
    failed: int
    failed_reasons: dict[str, int]
    unknown: int
    pending: int  # not yet final: pending (waiting included) or being sent
    waiting: int  # pending until the patient's quiet hours end
    opened: int
    clicked: int
    opted_out: int
    retrying: int = 0  # pending again after an attempt that certainly (or perhaps) failed
    unreachable: int = 0  # of those, waiting because the provider could not be reached

    @property
    def reachable(self) -> int:
        return self.audience - self.skipped

    @property
    def done(self) -> int:
        """Deliveries in a final state."""
        return self.audience - self.pending

    def numbers(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in CHANNEL_NUMBERS}


@dataclass(frozen=True)
class Snapshot:
    campaign_id: int
    subject: str
    status: str
    status_reason: str | None
    channel: str  # EMAIL | SMS | EMAIL_SMS
    audience: int  # patients selected, before consent and reachability
    send_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    taken_at: datetime
    channels: dict[str, ChannelNumbers] = field(default_factory=dict)
    waiting_until: datetime | None = None

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.channels.values())

    @property
    def deliveries(self) -> int:
        return self.total("audience")

    @property
    def attempted(self) -> int:
        """Deliveries that were tried: sent, failed or unknown (skipped ones never were)."""
        return self.total("sent") + self.total("failed") + self.total("unknown")

    @property
    def failed_pct(self) -> float:
        """Failed, as a percentage of the deliveries that were tried (0 when none was)."""
        attempted = self.attempted
        return round(100.0 * self.total("failed") / attempted, 1) if attempted else 0.0

    @property
    def duration_seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at or self.taken_at
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def rate(self) -> float:
        """Messages handed to the providers per second, start to end (or to now)."""
        duration = self.duration_seconds
        return round(self.total("sent") / duration, 2) if duration > 0 else 0.0

    @property
    def progress(self) -> float:
        """Share of deliveries in a final state, 0…1."""
        total = self.deliveries
        return self.total("done") / total if total else (1.0 if self.finished_at else 0.0)

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "failed", "cancelled", "missed")

    def numbers(self) -> dict[str, float]:
        """Every number a notification rule may test, by its name (see NUMBER_NAMES)."""
        values: dict[str, float] = {n: self.total(n) for n in CHANNEL_NUMBERS}
        values.update(audience=self.audience, failed_pct=self.failed_pct,
                      duration_seconds=round(self.duration_seconds, 1), rate=self.rate)
        for channel in DeliveryChannel:
            numbers = self.channels.get(channel.value)
            for name in CHANNEL_NUMBERS:
                values[f"{channel.value}_{name}"] = numbers.numbers()[name] if numbers else 0
        return values


async def opted_out_counts(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """Patients who opted out in answer to this campaign, per channel."""
    rows = await session.execute(
        select(ConsentEvent.channel, func.count(func.distinct(ConsentEvent.patient_id)))
        .where(ConsentEvent.campaign_id == campaign_id, ConsentEvent.action == "opt_out")
        .group_by(ConsentEvent.channel)
    )
    return {DeliveryChannel(channel).value: int(count) for channel, count in rows}


async def take(
    session: AsyncSession, campaign_id: int, *, now: datetime | None = None
) -> Snapshot:
    """The campaign's numbers as the ledger has them now."""
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound("campaign", campaign_id)
    used = Channel(campaign.channel).delivery_channels
    counts = await delivery_counts(session, campaign_id, used)
    waiting = await waiting_per_channel(session, campaign_id)
    retrying = await retrying_per_channel(session, campaign_id)
    opted_out = await opted_out_counts(session, campaign_id)
    until = (await waiting_for_quiet_hours(session, campaign_id))["until"]
    channels = {name: _channel(name, c, waiting.get(name, 0), opted_out.get(name, 0),
                               retrying.get(name, (0, 0)))
                for name, c in counts.items()}
    return Snapshot(
        campaign_id=campaign.id, subject=campaign.subject, status=campaign.status.value,
        status_reason=campaign.status_reason, channel=Channel(campaign.channel).value,
        audience=int(campaign.audience_size), send_at=campaign.send_at,
        started_at=campaign.started_at, finished_at=campaign.finished_at,
        taken_at=now or utcnow(), channels=channels,
        waiting_until=datetime.fromisoformat(until) if until else None,
    )


async def waiting_per_channel(session: AsyncSession, campaign_id: int) -> dict[str, int]:
    """SMS (or email) held back until quiet hours end, per channel."""
    rows = await session.execute(
        select(Delivery.channel, func.count())
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.pending,
               Delivery.reason == QUIET_HOURS_REASON)
        .group_by(Delivery.channel)
    )
    return {DeliveryChannel(channel).value: int(count) for channel, count in rows}


async def retrying_per_channel(
    session: AsyncSession, campaign_id: int
) -> dict[str, tuple[int, int]]:
    """Per channel: deliveries waiting to be tried again, and how many of them wait for an
    unreachable provider (mail server or Twilio down)."""
    rows = await session.execute(
        select(Delivery.channel, func.count(),
               func.count(case((Delivery.error_code == UNREACHABLE, 1))))
        .where(Delivery.campaign_id == campaign_id, Delivery.status == DeliveryStatus.pending,
               Delivery.retry_since.is_not(None))
        .group_by(Delivery.channel)
    )
    return {DeliveryChannel(channel).value: (int(total), int(unreachable))
            for channel, total, unreachable in rows}


def _channel(
    name: str, c: dict[str, Any], waiting: int, opted_out: int, retrying: tuple[int, int]
) -> ChannelNumbers:
    return ChannelNumbers(
        channel=name, audience=c["total"], skipped=c["skipped"],
        skipped_reasons=dict(c["skipped_reasons"]), sent=c["sent"] + c["delivered"],
        delivered=c["delivered"], failed=c["failed"], failed_reasons=dict(c["failed_reasons"]),
        unknown=c["unknown"], pending=c["pending"] + c["sending"], waiting=waiting,
        opened=c["opened"], clicked=c["clicked"], opted_out=opted_out,
        retrying=retrying[0], unreachable=retrying[1],
    )
