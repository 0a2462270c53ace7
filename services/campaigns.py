"""The campaign service: create, schedule, send now, cancel, read. Keyword-only, async.

Callers pass a session inside `db.transaction()`: a service never commits, so the campaign,
its attachment, its frozen audience and its audit entries are written together or not at all.
Every status change goes through `campaign_status.transition`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services import access, audit
from services.access import Actor
from services.campaign_status import transition
from services.campaign_summary import summary
from services.campaign_validation import (
    CampaignInput,
    ValidCampaign,
    send_at_problem,
    validate,
)
from services.delivery import campaign_runs
from services.errors import NotFound, ValidationFailed
from services.limits import CampaignLimits
from services.models import (
    AccessLevel,
    Campaign,
    CampaignAttachment,
    CampaignAudience,
    CampaignStatus,
    utcnow,
)

__all__ = [
    "CampaignInput",
    "audience_ids",
    "cancel",
    "create",
    "get",
    "list_campaigns",
    "reschedule",
    "schedule",
    "send_now",
    "summary",
    "validate",
]


async def create(
    *,
    session: AsyncSession,
    actor: Actor,
    campaign_in: CampaignInput,
    limits: CampaignLimits,
    now: datetime | None = None,
    clinic_tz: str = "UTC",
) -> Campaign:
    """Validate and register a campaign, scheduled (or queued to send now). Needs write.

    With an `idempotency_key` already used, returns that campaign and creates nothing.
    `clinic_tz` is the clinic's time zone, for date-based segments.
    """
    await access.require(session, actor, AccessLevel.write, "create campaigns")
    now = now or utcnow()
    key = (campaign_in.idempotency_key or "").strip() or None
    if key is not None:
        existing = await _by_idempotency_key(session, key)
        if existing is not None:
            return existing
    valid = await validate(
        session=session, campaign_in=campaign_in, limits=limits, now=now, clinic_tz=clinic_tz
    )
    campaign_id = await _insert_campaign(session, actor, valid)
    if campaign_id is None:
        # The same submission was registered concurrently (a Slack retry, a double click):
        # the database's unique key decided; answer with the winner's campaign.
        assert key is not None
        existing = await _by_idempotency_key(session, key)
        if existing is None:  # pragma: no cover - the conflicting row is committed by now
            raise RuntimeError(f"idempotency key {key!r} conflicted but no campaign has it")
        return existing
    campaign = await session.get_one(Campaign, campaign_id)

    if valid.attachment is not None:
        session.add(
            CampaignAttachment(
                campaign_id=campaign.id,
                filename=valid.attachment.filename,
                content_type=valid.attachment.content_type,
                size=valid.attachment.size,
                sha256=valid.attachment.sha256,
                content=valid.attachment.content,
            )
        )
    await session.execute(
        insert(CampaignAudience),
        [{"campaign_id": campaign.id, "patient_id": pid} for pid in valid.patient_ids],
    )
    await audit.record(
        session,
        actor,
        "campaign.created",
        campaign_id=campaign.id,
        subject=valid.subject,
        channel=valid.channel,
        audience=len(valid.patient_ids),
        segment=valid.segment_slug,
        tags=valid.tags,
        attachment=valid.attachment.filename if valid.attachment else None,
    )
    transition(campaign, CampaignStatus.scheduled, now=now)
    action = "campaign.queued" if valid.send_now else "campaign.scheduled"
    await audit.record(session, actor, action, campaign_id=campaign.id, send_at=valid.send_at)
    await session.flush()
    return campaign


async def _insert_campaign(session: AsyncSession, actor: Actor, valid: ValidCampaign) -> int | None:
    """Insert the campaign as a draft; None when its idempotency key is already taken."""
    values: dict[str, Any] = {
        "status": CampaignStatus.draft,
        "channel": valid.channel,
        "subject": valid.subject,
        "preview_text": valid.preview_text,
        "message": valid.message,
        "tags": valid.tags,
        "segment_slug": valid.segment_slug,
        "audience_size": len(valid.patient_ids),
        "send_now": valid.send_now,
        "send_at": valid.send_at,
        "created_by": actor.id,
        "slack_channel_id": valid.slack_channel_id,
        "idempotency_key": valid.idempotency_key,
    }
    dialect = (await session.connection()).dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(Campaign).values(**values)
    if valid.idempotency_key is not None:
        # ON CONFLICT DO NOTHING instead of catching IntegrityError: the caller's transaction
        # stays usable (PostgreSQL aborts a transaction on an error), and a concurrent insert
        # of the same key waits for the other transaction and then does nothing.
        statement = statement.on_conflict_do_nothing(index_elements=["idempotency_key"])
    result = await session.execute(statement.returning(Campaign.id))
    return result.scalar_one_or_none()


async def _by_idempotency_key(session: AsyncSession, key: str) -> Campaign | None:
    result = await session.execute(select(Campaign).where(Campaign.idempotency_key == key))
    return result.scalar_one_or_none()


async def _locked(session: AsyncSession, campaign_id: int) -> Campaign:
    """The campaign, locked for this transaction so a status change cannot race the sender."""
    if (await session.connection()).dialect.name == "sqlite":
        # SQLite ignores FOR UPDATE: a no-op write takes the database's write lock first
        # (waiting for a sender mid-commit), so the status read below is the current one.
        await session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(status=Campaign.status)
            .execution_options(synchronize_session=False)
        )
    result = await session.execute(
        select(Campaign)
        .where(Campaign.id == campaign_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    campaign = result.scalar_one_or_none()
    if campaign is None:
        raise NotFound("campaign", campaign_id)
    return campaign


async def schedule(
    *,
    session: AsyncSession,
    actor: Actor,
    campaign_id: int,
    send_at: datetime,
    now: datetime | None = None,
) -> Campaign:
    """Schedule a draft, or move a scheduled campaign to `send_at`. Needs write."""
    await access.require(session, actor, AccessLevel.write, "schedule campaigns")
    now = now or utcnow()
    problem = send_at_problem(send_at, now)
    if problem:
        raise ValidationFailed({"send_at": problem})
    campaign = await _locked(session, campaign_id)
    previous_status, previous_send_at = campaign.status, campaign.send_at
    transition(campaign, CampaignStatus.scheduled, now=now)
    campaign.send_now = False
    campaign.send_at = send_at.astimezone(UTC)
    if previous_status is CampaignStatus.scheduled:
        await audit.record(
            session, actor, "campaign.rescheduled", campaign_id=campaign.id,
            send_at=send_at, previous_send_at=previous_send_at,
        )
    else:
        await audit.record(
            session, actor, "campaign.scheduled", campaign_id=campaign.id, send_at=send_at
        )
    await session.flush()
    return campaign


async def reschedule(
    *,
    session: AsyncSession,
    actor: Actor,
    campaign_id: int,
    send_at: datetime,
    now: datetime | None = None,
) -> Campaign:
    """Move a scheduled campaign to `send_at` (audited as `campaign.rescheduled`). Needs write."""
    return await schedule(
        session=session, actor=actor, campaign_id=campaign_id, send_at=send_at, now=now
    )


async def send_now(
    *,
    session: AsyncSession,
    actor: Actor,
    campaign_id: int,
    now: datetime | None = None,
) -> Campaign:
    """Queue the campaign for the sender at once. Needs write.

    A draft or scheduled campaign becomes scheduled with `send_now` and `send_at=now` (the
    sender claims it next); a missed one goes straight to `sending` with its deliveries
    created (the status machine's only way back from `missed`).
    """
    await access.require(session, actor, AccessLevel.write, "send campaigns")
    now = now or utcnow()
    campaign = await _locked(session, campaign_id)
    previous = campaign.status
    if previous is CampaignStatus.missed:
        transition(campaign, CampaignStatus.sending, reason=f"sent late by {actor.id}", now=now)
        await session.flush()
        # What the sender does when it starts a due campaign: its deliveries, in this same
        # transaction, so that a `sending` campaign always has its ledger.
        await campaign_runs.create_deliveries(session, campaign_id=campaign.id, now=now)
    else:
        transition(campaign, CampaignStatus.scheduled, now=now)
    campaign.send_now = True
    campaign.send_at = now
    await audit.record(
        session, actor, "campaign.queued", campaign_id=campaign.id, send_at=now,
        previous_status=previous,
    )
    await session.flush()
    return campaign


async def cancel(
    *,
    session: AsyncSession,
    actor: Actor,
    campaign_id: int,
    reason: str | None = None,
    now: datetime | None = None,
) -> Campaign:
    """Cancel a draft, scheduled or sending campaign (the sender stops). Needs write."""
    await access.require(session, actor, AccessLevel.write, "cancel campaigns")
    campaign = await _locked(session, campaign_id)
    previous = campaign.status
    transition(
        campaign, CampaignStatus.cancelled, reason=reason or f"cancelled by {actor.id}", now=now
    )
    await audit.record(
        session, actor, "campaign.cancelled", campaign_id=campaign.id,
        previous_status=previous, reason=reason,
    )
    await session.flush()
    return campaign


async def get(*, session: AsyncSession, campaign_id: int, actor: Actor | None = None) -> Campaign:
    """The campaign, or NotFound. With an `actor`, needs read (None: a trusted internal caller)."""
    if actor is not None:
        await access.require(session, actor, AccessLevel.read, "see campaigns")
    campaign = await session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound("campaign", campaign_id)
    return campaign


async def list_campaigns(
    *,
    session: AsyncSession,
    statuses: Collection[CampaignStatus] | None = None,
    limit: int = 50,
    actor: Actor | None = None,
) -> list[Campaign]:
    """The newest campaigns first, optionally only those in `statuses`."""
    if actor is not None:
        await access.require(session, actor, AccessLevel.read, "see campaigns")
    query = select(Campaign).order_by(Campaign.id.desc()).limit(limit)
    if statuses is not None:
        query = query.where(Campaign.status.in_([CampaignStatus(s) for s in statuses]))
    return list((await session.execute(query)).scalars())


async def audience_ids(*, session: AsyncSession, campaign_id: int) -> list[int]:
    """The campaign's frozen audience, in patient id order."""
    result = await session.execute(
        select(CampaignAudience.patient_id)
        .where(CampaignAudience.campaign_id == campaign_id)
        .order_by(CampaignAudience.patient_id)
    )
    return list(result.scalars())
