"""Unsubscribe links: the signed delivery id in an email's link → that patient's opt-out.

The token carries only the delivery id (signed, never expiring), so a link works for as
long as the delivery is kept. Unsubscribing twice changes nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import consent
from services.models import Delivery, DeliveryChannel, Patient

SOURCE = "unsubscribe"
ACTOR = "patient:unsubscribe-link"


@dataclass(frozen=True)
class UnsubscribeTarget:
    """Who a link unsubscribes, as the page may show it (the address masked)."""

    delivery_id: int
    campaign_id: int
    patient_id: int
    channel: DeliveryChannel
    masked_address: str
    already_unsubscribed: bool


def mask_email(address: str | None) -> str:
    """`jane@example.com` → `j***@example.com`: enough to recognise, not to harvest."""
    if not address:
        return "your address"
    local, at, domain = address.rpartition("@")
    if not at:
        return mask_phone(address)
    return f"{local[:1]}***@{domain}"


def mask_phone(number: str | None) -> str:
    if not number:
        return "your number"
    return "•" * max(len(number) - 2, 3) + number[-2:]


async def target_of(session: AsyncSession, *, delivery_id: int) -> UnsubscribeTarget | None:
    """The delivery a link names, or None when it no longer exists."""
    row = (
        await session.execute(
            select(Delivery.id, Delivery.campaign_id, Delivery.patient_id, Delivery.channel,
                   Delivery.address, Patient.email, Patient.phone, Patient.email_opted_out_at,
                   Patient.sms_opted_out_at)
            .join(Patient, Patient.id == Delivery.patient_id)
            .where(Delivery.id == delivery_id)
        )
    ).one_or_none()
    if row is None:
        return None
    if row.channel is DeliveryChannel.email:
        masked = mask_email(row.address or row.email)
        opted_out = row.email_opted_out_at is not None
    else:
        masked = mask_phone(row.address or row.phone)
        opted_out = row.sms_opted_out_at is not None
    return UnsubscribeTarget(row.id, row.campaign_id, row.patient_id, row.channel, masked,
                             opted_out)


async def unsubscribe(
    session: AsyncSession, *, delivery_id: int, now: datetime
) -> tuple[UnsubscribeTarget, bool] | None:
    """Opt the delivery's patient out of its channel: (target, whether this changed anything),
    or None when the delivery no longer exists."""
    target = await target_of(session, delivery_id=delivery_id)
    if target is None:
        return None
    column = (Patient.email_opted_out_at if target.channel is DeliveryChannel.email
              else Patient.sms_opted_out_at)
    # A conditional UPDATE claims the change, so a provider's one-click POST and the
    # patient's own click arriving together record one opt-out, not two.
    claimed = await session.execute(
        update(Patient).where(Patient.id == target.patient_id, column.is_(None))
        .values({column: now}).execution_options(synchronize_session=False)
    )
    if not claimed.rowcount:
        return replace(target, already_unsubscribed=True), False
    await consent.record_opt_out(
        session, patient_ids=[target.patient_id], channel=target.channel, source=SOURCE,
        actor=ACTOR, campaign_id=target.campaign_id, now=now,
    )
    return replace(target, already_unsubscribed=True), True
