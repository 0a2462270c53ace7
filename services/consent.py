"""Consent: may a patient receive marketing on a channel right now, and opt-outs/opt-ins."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import audit
from services.models import ConsentEvent, DeliveryChannel, Patient, utcnow

# The reasons a delivery is skipped, as the snapshot and `campaigns show` print them.
NO_CONSENT = "no consent"
OPTED_OUT = "opted out"
NO_ADDRESS = "no valid address"

SkipReason = Literal["no consent", "opted out", "no valid address"]


def skip_reason(patient: Patient, channel: DeliveryChannel) -> SkipReason | None:
    """Why `patient` may not get marketing on `channel` now, or None when they may."""
    if channel is DeliveryChannel.email:
        opted_in, opted_out, address = (
            patient.email_opt_in, patient.email_opted_out_at, patient.email
        )
    else:
        opted_in, opted_out, address = patient.sms_opt_in, patient.sms_opted_out_at, patient.phone
    if opted_out is not None:
        return OPTED_OUT
    if not opted_in:
        return NO_CONSENT
    if not address:
        return NO_ADDRESS
    return None


async def record_opt_out(
    session: AsyncSession,
    *,
    patient_ids: Iterable[int],
    channel: DeliveryChannel,
    source: str,
    actor: str,
    campaign_id: int | None = None,
    now: datetime | None = None,
) -> int:
    """Opt these patients out of `channel` (effective for every campaign at once)."""
    return await _record(session, list(patient_ids), channel, "opt_out", source, actor,
                         campaign_id, now or utcnow())


async def record_opt_in(
    session: AsyncSession,
    *,
    patient_ids: Iterable[int],
    channel: DeliveryChannel,
    source: str,
    actor: str,
    now: datetime | None = None,
) -> int:
    """Clear an opt-out (e.g. START): the patient may receive marketing again."""
    return await _record(session, list(patient_ids), channel, "opt_in", source, actor, None,
                         now or utcnow())


async def patients_with_phone(session: AsyncSession, phone: str) -> list[int]:
    result = await session.execute(select(Patient.id).where(Patient.phone == phone))
    return list(result.scalars())


async def _record(
    session: AsyncSession,
    ids: list[int],
    channel: DeliveryChannel,
    action: str,
    source: str,
    actor: str,
    campaign_id: int | None,
    now: datetime,
) -> int:
    if not ids:
        return 0
    column = (
        Patient.email_opted_out_at if channel is DeliveryChannel.email else Patient.sms_opted_out_at
    )
    value = now if action == "opt_out" else None
    await session.execute(update(Patient).where(Patient.id.in_(ids)).values({column: value}))
    await session.execute(
        insert(ConsentEvent),
        [
            {"patient_id": pid, "channel": channel, "action": action, "source": source,
             "campaign_id": campaign_id, "created_at": now}
            for pid in ids
        ],
    )
    # The audit names patients by id only: no contact data, no message text.
    await audit.record(
        session, actor, f"consent.{action.replace('_', '')}", campaign_id=campaign_id,
        channel=channel.value, source=source, patient_ids=ids[:50], patients=len(ids),
    )
    return len(ids)
