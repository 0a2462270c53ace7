"""Creating campaigns: what is written, the audience rules, idempotency, permissions, atomicity."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.db import Database
from services import campaigns
from services.access import Actor
from services.attachments import AttachmentInput
from services.campaign_validation import CampaignInput
from services.errors import PermissionDenied, ValidationFailed
from services.models import (
    AuditEntry,
    Campaign,
    CampaignAttachment,
    CampaignAudience,
    CampaignStatus,
    Channel,
)
from tests.campaign_fixtures import (
    LATER,
    LIMITS,
    NOW,
    OPERATOR,
    add_patients,
    form,
    grant_level,
    pdf_bytes,
    table_counts,
)


async def create(db: Database, campaign_in: CampaignInput, actor: Actor = OPERATOR) -> Campaign:
    async with db.transaction() as session:
        return await campaigns.create(
            session=session, actor=actor, campaign_in=campaign_in, limits=LIMITS, now=NOW
        )


async def audience_error(db: Database, **overrides: Any) -> str:
    with pytest.raises(ValidationFailed) as failed:
        await create(db, form(**overrides))
    assert list(failed.value.errors) == ["audience"]
    return failed.value.errors["audience"]


async def audit_actions(db: Database) -> list[tuple[str, int | None, dict[str, Any]]]:
    async with db.transaction() as session:
        rows = await session.execute(select(AuditEntry).order_by(AuditEntry.id))
        return [(e.action, e.campaign_id, e.details) for e in rows.scalars()]


async def test_create_writes_the_campaign_its_audience_attachment_and_audit(db: Database) -> None:
    ids = await add_patients(db, 3)
    campaign = await create(db, form(
        subject="  Check-up time, {{ first_name }}  ", preview_text="Book now",
        channel="email_sms", tags="Promo, spring ,PROMO",
        external_ids=["P0002", " P0001 ", "P0002", ""],
        attachment=AttachmentInput("flyer.png", pdf_bytes()),
        slack_channel_id="C123",
    ))
    async with db.transaction() as session:
        stored = await session.get_one(Campaign, campaign.id)
        audience = (await session.scalars(
            select(CampaignAudience.patient_id).where(CampaignAudience.campaign_id == campaign.id)
        )).all()
        attachment = await session.get_one(CampaignAttachment, campaign.id)
    assert stored.status is CampaignStatus.scheduled
    assert stored.subject == "Check-up time, {{ first_name }}"
    assert stored.channel is Channel.EMAIL_SMS
    assert stored.tags == ["promo", "spring"]
    assert (stored.send_at, stored.send_now) == (LATER, False)
    assert (stored.started_at, stored.finished_at) == (None, None)
    assert stored.audience_size == 2
    assert sorted(audience) == sorted(ids[:2])
    assert (stored.created_by, stored.slack_channel_id) == ("cli:test", "C123")
    assert (attachment.filename, attachment.content_type) == ("flyer.pdf", "application/pdf")
    assert attachment.content == pdf_bytes()
    actions = await audit_actions(db)
    assert [(a, c) for a, c, _ in actions] == [
        ("campaign.created", campaign.id), ("campaign.scheduled", campaign.id)
    ]
    created = actions[0][2]
    assert created["audience"] == 2 and created["channel"] == "EMAIL_SMS"
    assert created["attachment"] == "flyer.pdf"
    assert actions[1][2] == {"send_at": LATER.isoformat()}


async def test_send_now_is_scheduled_now_and_queued(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await create(db, form(send_now=True, send_at=None))
    assert campaign.status is CampaignStatus.scheduled
    assert (campaign.send_now, campaign.send_at) == (True, NOW)
    assert [a for a, _, _ in await audit_actions(db)] == ["campaign.created", "campaign.queued"]


async def test_audience_of_a_segment_at_the_limit_and_over_it(db: Database) -> None:
    await add_patients(db, 500, prefix="A", patient_type="adult")
    await add_patients(db, 1, prefix="K", patient_type="child")
    campaign = await create(db, form(external_ids=None, segment_slug="type:adult"))
    assert (campaign.audience_size, campaign.segment_slug) == (500, "type:adult")
    assert await audience_error(db, external_ids=None, segment_slug="all") == (
        "the audience has 501 patients; the limit is 500: pick a narrower segment or "
        "customise the selection"
    )
    assert await audience_error(db, external_ids=None, segment_slug="type:nobody") == (
        "no patients in this audience"
    )
    assert await audience_error(db, external_ids=None, segment_slug="no-such-segment") == (
        "there is no smart segment 'no-such-segment'"
    )


async def test_a_selection_over_the_limit_or_empty(db: Database) -> None:
    await add_patients(db, 1)
    too_many = [f"X{i}" for i in range(501)]
    assert await audience_error(db, external_ids=too_many) == (
        "the audience has 501 patients; the limit is 500: select fewer patients"
    )
    assert await audience_error(db, external_ids=[]) == "no patients in this audience"
    assert await audience_error(db, external_ids=["", "  "]) == "no patients in this audience"
    assert await audience_error(db, patient_ids=[], external_ids=None) == (
        "no patients in this audience"
    )


async def test_unknown_external_ids_are_listed_up_to_five_with_the_count(db: Database) -> None:
    await add_patients(db, 1)
    missing = [f"NOPE{i}" for i in range(7)]
    assert await audience_error(db, external_ids=["P0001", *missing]) == (
        "7 external ids are not in the patients catalog: NOPE0, NOPE1, NOPE2, NOPE3, NOPE4 "
        "and 2 more"
    )
    assert await audience_error(db, external_ids=["NOPE"]) == (
        "1 external id is not in the patients catalog: NOPE"
    )


async def test_a_selection_by_patient_id(db: Database) -> None:
    ids = await add_patients(db, 3)
    campaign = await create(db, form(external_ids=None, patient_ids=[ids[2], ids[0], ids[2]]))
    assert campaign.audience_size == 2
    assert "not in the patients catalog" in await audience_error(
        db, external_ids=None, patient_ids=[ids[0], 999_999]
    )


async def test_the_audience_is_exactly_one_of_segment_or_selection(db: Database) -> None:
    await add_patients(db, 1)
    assert await audience_error(db, external_ids=None) == (
        "pick a smart segment or customise the selection"
    )
    assert "not both" in await audience_error(db, segment_slug="all")


async def test_every_error_at_once_and_nothing_written(db: Database) -> None:
    with pytest.raises(ValidationFailed) as failed:
        await create(db, form(
            subject="Hi", message="Short", channel="PIGEON", external_ids=[],
            send_at=NOW + timedelta(seconds=59), preview_text="x" * 151,
            tags=",".join(f"t{i}" for i in range(11)),
            attachment=AttachmentInput("notes.pdf", b"plain text"),
        ))
    assert list(failed.value.errors) == [
        "subject", "preview_text", "message", "channel", "audience", "send_at", "tags",
        "attachment",
    ]
    assert await table_counts(db) == {"campaigns": 0, "audience": 0, "audit": 0}


async def test_the_same_idempotency_key_creates_one_campaign(db: Database) -> None:
    await add_patients(db, 2)
    first = await create(db, form(idempotency_key="view-123"))
    again = await create(db, form(idempotency_key="view-123", subject="A different subject"))
    assert again.id == first.id
    assert again.subject == first.subject
    other = await create(db, form(idempotency_key="view-456"))
    assert other.id != first.id
    assert (await table_counts(db))["campaigns"] == 2
    assert len(await audit_actions(db)) == 4


async def test_a_concurrent_submission_with_the_same_key_returns_the_first(db: Database) -> None:
    await add_patients(db, 2)

    async def second_submission() -> Campaign:
        return await create(db, form(idempotency_key="view-race"))

    async with db.transaction() as session:
        first = await campaigns.create(
            session=session, actor=OPERATOR, campaign_in=form(idempotency_key="view-race"),
            limits=LIMITS, now=NOW,
        )
        # The second one cannot see the first (uncommitted) and reaches its INSERT, which
        # waits for this transaction on the unique key (PostgreSQL) or the write lock (SQLite).
        racer = asyncio.create_task(second_submission())
        await asyncio.sleep(0.3)
        assert not racer.done()
    second = await asyncio.wait_for(racer, timeout=20)
    assert second.id == first.id
    counts = await table_counts(db)
    assert counts == {"campaigns": 1, "audience": 2, "audit": 2}


async def test_a_read_user_cannot_create_and_nothing_is_written(db: Database) -> None:
    await add_patients(db, 2)
    reader = await grant_level(db, "U0READER", "read")
    with pytest.raises(PermissionDenied) as denied:
        await create(db, form(), actor=reader)
    assert str(denied.value) == (
        "you need write access to create campaigns; ask a campaign-bot admin"
    )
    with pytest.raises(PermissionDenied):
        await create(db, form(), actor=Actor(id="U0NOBODY"))
    assert await table_counts(db) == {"campaigns": 0, "audience": 0, "audit": 0}


async def test_writers_and_admins_can_create(db: Database) -> None:
    await add_patients(db, 2)
    writer = await grant_level(db, "U0WRITER", "write")
    admin = await grant_level(db, "U0ADMIN", "admin")
    env_admin = Actor.slack_user("U0ENV", admins=["U0ENV"])
    for actor in (writer, admin, env_admin):
        campaign = await create(db, form(), actor=actor)
        assert campaign.created_by == actor.id


async def test_a_failure_later_in_the_transaction_leaves_no_campaign_and_no_audit(
    db: Database,
) -> None:
    await add_patients(db, 2)
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as session:
            campaign = await campaigns.create(
                session=session, actor=OPERATOR,
                campaign_in=form(attachment=AttachmentInput("a.pdf", pdf_bytes())),
                limits=LIMITS, now=NOW,
            )
            assert campaign.id is not None
            raise RuntimeError("boom")
    assert await table_counts(db) == {"campaigns": 0, "audience": 0, "audit": 0}
    async with db.transaction() as session:
        assert (await session.scalars(select(CampaignAttachment))).all() == []
