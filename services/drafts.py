"""Server-side drafts of unfinished campaigns (the Slack modal's state; no Slack import).

A draft is keyed by a random uuid, which the modal carries in its private_metadata; only
the user who started it may read or change it. It holds the audience (a segment or the
selected patient ids) and, later, the form's values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy import update as sql_update
from sqlalchemy.ext.asyncio import AsyncSession

from services import consent, segments
from services.errors import NotFound, PermissionDenied
from services.models import DeliveryChannel, ModalDraft, Patient, utcnow

DRAFT_TTL = timedelta(hours=24)


async def create(
    session: AsyncSession, *, user_id: str, data: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ModalDraft:
    """A new, empty draft owned by `user_id`."""
    now = now or utcnow()
    draft = ModalDraft(
        id=str(uuid.uuid4()), slack_user_id=user_id, data=dict(data or {}),
        selected_patient_ids=[], created_at=now, updated_at=now, expires_at=now + DRAFT_TTL,
    )
    session.add(draft)
    await session.flush()
    return draft


async def get(
    session: AsyncSession, draft_id: str, *, user_id: str, for_update: bool = False,
    now: datetime | None = None,
) -> ModalDraft:
    """The user's draft; NotFound when it is unknown or expired, PermissionDenied if not theirs."""
    try:
        uuid.UUID(str(draft_id))
    except ValueError:
        raise NotFound("campaign draft", draft_id) from None
    if for_update and (await session.connection()).dialect.name == "sqlite":
        # SQLite ignores FOR UPDATE: a no-op write takes the write lock before the read, so
        # two quick clicks on the same draft change it one after the other.
        await session.execute(
            sql_update(ModalDraft).where(ModalDraft.id == str(draft_id))
            .values(updated_at=ModalDraft.updated_at)
            .execution_options(synchronize_session=False)
        )
    draft = await session.get(ModalDraft, str(draft_id), with_for_update=for_update,
                              populate_existing=for_update)
    if draft is None or draft.expires_at <= (now or utcnow()):
        raise NotFound("campaign draft", draft_id)
    if draft.slack_user_id != user_id:
        raise PermissionDenied("owner", "use another person's campaign draft")
    return draft


def update(
    draft: ModalDraft, *, data: dict[str, Any] | None = None,
    selected: Iterable[int] | None = None, now: datetime | None = None,
) -> ModalDraft:
    """Merge `data` into the draft and/or replace its selection; extends its life."""
    now = now or utcnow()
    if data:
        draft.data = {**(draft.data or {}), **data}
    if selected is not None:
        draft.selected_patient_ids = list(dict.fromkeys(int(i) for i in selected))
    draft.updated_at = now
    draft.expires_at = now + DRAFT_TTL
    return draft


async def expire(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Delete drafts past their expiry; how many."""
    result = await session.execute(
        delete(ModalDraft).where(ModalDraft.expires_at <= (now or utcnow()))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def audience_ids(
    session: AsyncSession, draft: ModalDraft, *, limit: int, clinic_tz: str = "UTC",
) -> list[int]:
    """The draft's audience (segment members or the selection), at most `limit` ids."""
    slug = (draft.data or {}).get("segment")
    if slug:
        return await segments.resolve(session, str(slug), limit=limit, clinic_tz=clinic_tz)
    return list(draft.selected_patient_ids or [])[:limit]


@dataclass
class Reach:
    """Who on a channel may get the campaign now, and why the others may not."""

    reachable: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


async def reachability(
    session: AsyncSession, patient_ids: Sequence[int], channels: Iterable[DeliveryChannel],
) -> tuple[dict[DeliveryChannel, Reach], Patient | None]:
    """Per channel, the reachable count and skipped counts by reason; and a sample patient
    (the first reachable one, else the first)."""
    wanted = list(channels)
    reach = {channel: Reach() for channel in wanted}
    sample: Patient | None = None
    ids = list(patient_ids)
    for start in range(0, len(ids), 500):
        rows = await session.execute(select(Patient).where(Patient.id.in_(ids[start:start + 500])))
        for patient in rows.scalars():
            reasons = [consent.skip_reason(patient, channel) for channel in wanted]
            if sample is None or (all(r is None for r in reasons) and _skipped(sample, wanted)):
                sample = patient
            for channel, reason in zip(wanted, reasons, strict=True):
                if reason is None:
                    reach[channel].reachable += 1
                else:
                    reach[channel].skipped[reason] = reach[channel].skipped.get(reason, 0) + 1
    return reach, sample


def _skipped(patient: Patient, channels: list[DeliveryChannel]) -> bool:
    return any(consent.skip_reason(patient, channel) is not None for channel in channels)
