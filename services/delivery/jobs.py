"""A claimed delivery made ready for a driver: the campaign's shared content, the patient,
and the send-time checks (consent, address, the SMS quiet hours) that decide whether it goes
out now, later, or not at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services import consent
from services.campaign_summary import QUIET_HOURS_REASON
from services.delivery.ledger import Claimed, Outcome
from services.delivery.outcomes import SendResult
from services.delivery.retries import Attempt
from services.models import (
    Campaign,
    CampaignAttachment,
    DeliveryChannel,
    DeliveryStatus,
    Patient,
)
from services.quiet_hours import QuietHours


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
    attempted_at: datetime | None = None  # an earlier hand-over whose fate is unknown
    retry_since: datetime | None = None
    # Why it may not be sent now (consent withdrawn since an unclear hand-over, which is
    # still asked about): if the provider does not have it, it ends skipped.
    skip_reason: str | None = None

    @property
    def attempt(self) -> Attempt:
        return Attempt(self.delivery_id, self.address, self.attempts, self.retry_since,
                       self.attempted_at)


class ChannelDriver(Protocol):
    """Renders and sends one channel's messages; knows nothing of the ledger."""

    channel: DeliveryChannel
    concurrency: int  # messages between hand-over mark and recorded outcome (≤ 16)

    @property
    def can_ask_provider(self) -> bool: ...

    def address_of(self, patient: Patient) -> str | None: ...

    async def ask_provider(self, job: Job) -> SendResult | None:
        """Whether the provider holds `job`'s message from its earlier hand-over: SENT, None
        (certainly not: send it), UNKNOWN (cannot tell now), CHANNEL_DOWN."""
        ...

    async def send(self, job: Job) -> SendResult: ...

    async def close(self) -> None: ...


@dataclass
class JobMaker:
    """Turns claims into jobs, with the checks that must hold at the moment of sending."""

    quiet_hours: QuietHours | None
    clinic_timezone: str
    _contents: dict[int, CampaignContent] = field(default_factory=dict)

    async def prepare(
        self, session: AsyncSession, driver: ChannelDriver, claimed: list[Claimed],
        now: datetime,
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
            if reason is not None and item.attempted_at is None:
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
            # An earlier hand-over is asked about even if the patient opted out since: the
            # answer settles what happened; nothing is sent again without consent.
            jobs.append(Job(item.id, item.attempts, content, patient,
                            address or (patient.phone or patient.email or ""),
                            item.attempted_at, item.retry_since, reason))
        return jobs, early

    def _window_opening(
        self, channel: DeliveryChannel, patient: Patient, now: datetime
    ) -> datetime | None:
        quiet = self.quiet_hours
        if channel is not DeliveryChannel.sms or quiet is None:
            return None
        zone = _zone(patient.timezone) or _zone(self.clinic_timezone) or ZoneInfo("UTC")
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


def _zone(name: str | None) -> ZoneInfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except Exception:
        return None
