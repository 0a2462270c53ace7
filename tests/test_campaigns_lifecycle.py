"""After creation: cancel, reschedule, send now, list, and the summary `show --json` prints."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from bot.db import Database
from services import campaigns
from services.access import Actor
from services.attachments import AttachmentInput
from services.campaign_status import transition
from services.errors import IllegalTransition, NotFound, PermissionDenied, ValidationFailed
from services.models import (
    AuditEntry,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryChannel,
    DeliveryStatus,
)
from tests.campaign_fixtures import (
    LATER,
    LIMITS,
    NOW,
    OPERATOR,
    add_patients,
    form,
    grant_level,
    png_bytes,
)

S = CampaignStatus


async def new_campaign(db: Database, **overrides: Any) -> Campaign:
    async with db.transaction() as session:
        return await campaigns.create(
            session=session, actor=OPERATOR, campaign_in=form(**overrides), limits=LIMITS, now=NOW
        )


async def force_status(db: Database, campaign_id: int, *path: CampaignStatus) -> None:
    async with db.transaction() as session:
        campaign = await session.get_one(Campaign, campaign_id)
        for status in path:
            transition(campaign, status, now=NOW)


async def last_audit(db: Database) -> AuditEntry:
    async with db.transaction() as session:
        entry = await session.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
        assert entry is not None
        return entry


async def test_cancel_a_scheduled_campaign(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await new_campaign(db)
    writer = await grant_level(db, "U0WRITER", "write")
    async with db.transaction() as session:
        cancelled = await campaigns.cancel(
            session=session, actor=writer, campaign_id=campaign.id, now=NOW
        )
    assert cancelled.status is S.cancelled
    assert cancelled.status_reason == "cancelled by U0WRITER"
    assert (cancelled.started_at, cancelled.finished_at) == (None, NOW)
    entry = await last_audit(db)
    assert (entry.action, entry.actor, entry.campaign_id) == (
        "campaign.cancelled", "U0WRITER", campaign.id
    )
    assert entry.details == {"previous_status": "scheduled"}
    async with db.transaction() as session:
        with pytest.raises(IllegalTransition, match="is cancelled; it cannot become cancelled"):
            await campaigns.cancel(session=session, actor=writer, campaign_id=campaign.id)


async def test_cancel_while_sending_is_allowed_but_not_once_completed(db: Database) -> None:
    await add_patients(db, 2)
    sending = await new_campaign(db)
    done = await new_campaign(db)
    await force_status(db, sending.id, S.sending)
    await force_status(db, done.id, S.sending, S.completed)
    async with db.transaction() as session:
        result = await campaigns.cancel(session=session, actor=OPERATOR, campaign_id=sending.id)
        assert result.status is S.cancelled and result.started_at == NOW
    async with db.transaction() as session:
        with pytest.raises(IllegalTransition):
            await campaigns.cancel(session=session, actor=OPERATOR, campaign_id=done.id)
        with pytest.raises(NotFound, match="campaign 999 was not found"):
            await campaigns.cancel(session=session, actor=OPERATOR, campaign_id=999)


async def test_a_reader_cannot_cancel(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await new_campaign(db)
    reader = await grant_level(db, "U0READER", "read")
    async with db.transaction() as session:
        with pytest.raises(PermissionDenied, match="write access to cancel campaigns"):
            await campaigns.cancel(session=session, actor=reader, campaign_id=campaign.id)
    async with db.transaction() as session:
        assert (await session.get_one(Campaign, campaign.id)).status is S.scheduled


async def test_reschedule(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await new_campaign(db)
    moved_to = NOW + timedelta(days=10)
    async with db.transaction() as session:
        moved = await campaigns.reschedule(
            session=session, actor=OPERATOR, campaign_id=campaign.id, send_at=moved_to, now=NOW
        )
    assert (moved.status, moved.send_at, moved.send_now) == (S.scheduled, moved_to, False)
    entry = await last_audit(db)
    assert entry.action == "campaign.rescheduled"
    assert entry.details == {
        "send_at": moved_to.isoformat(), "previous_send_at": LATER.isoformat()
    }
    async with db.transaction() as session:
        with pytest.raises(ValidationFailed) as failed:
            await campaigns.reschedule(
                session=session, actor=OPERATOR, campaign_id=campaign.id,
                send_at=NOW + timedelta(seconds=30), now=NOW,
            )
    assert failed.value.errors == {"send_at": "must be at least 1 minute from now"}


async def test_send_now_a_scheduled_campaign(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await new_campaign(db)
    async with db.transaction() as session:
        queued = await campaigns.send_now(
            session=session, actor=OPERATOR, campaign_id=campaign.id, now=NOW
        )
    assert (queued.status, queued.send_now, queued.send_at) == (S.scheduled, True, NOW)
    assert (await last_audit(db)).action == "campaign.queued"


async def test_send_now_a_missed_campaign_starts_it_with_its_deliveries(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await new_campaign(db, channel="EMAIL_SMS")
    await force_status(db, campaign.id, S.missed)
    async with db.transaction() as session:
        sending = await campaigns.send_now(
            session=session, actor=OPERATOR, campaign_id=campaign.id, now=NOW
        )
        assert (sending.status, sending.started_at, sending.finished_at) == (S.sending, NOW, None)
    async with db.transaction() as session:
        count = await session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.campaign_id == campaign.id)
        )
    assert count == 4  # 2 patients × 2 channels, pending


async def test_get_and_list(db: Database) -> None:
    await add_patients(db, 2)
    first = await new_campaign(db)
    second = await new_campaign(db, send_now=True, send_at=None)
    await force_status(db, first.id, S.cancelled)
    reader = await grant_level(db, "U0READER", "read")
    async with db.transaction() as session:
        assert (await campaigns.get(session=session, campaign_id=second.id, actor=reader)).id
        listed = await campaigns.list_campaigns(session=session, actor=reader)
        assert [c.id for c in listed] == [second.id, first.id]
        only = await campaigns.list_campaigns(session=session, statuses=[S.scheduled])
        assert [c.id for c in only] == [second.id]
        assert await campaigns.list_campaigns(session=session, limit=1) == [listed[0]]
        with pytest.raises(PermissionDenied, match="read access to see campaigns"):
            await campaigns.list_campaigns(session=session, actor=Actor(id="U0STRANGER"))
        with pytest.raises(NotFound):
            await campaigns.get(session=session, campaign_id=12345)


def deliveries(campaign_id: int, patient_ids: list[int], channel: DeliveryChannel,
               spec: list[tuple[DeliveryStatus, str | None, bool, bool]]) -> list[dict[str, Any]]:
    return [
        {"campaign_id": campaign_id, "patient_id": pid, "channel": channel, "status": status,
         "reason": reason, "opened_at": NOW if opened else None,
         "clicked_at": NOW if clicked else None}
        for pid, (status, reason, opened, clicked) in zip(patient_ids, spec, strict=True)
    ]


async def test_summary_counts_hand_inserted_deliveries(db: Database) -> None:
    ids = await add_patients(db, 9)
    campaign = await new_campaign(
        db, channel="EMAIL_SMS", tags="Promo,Spring", preview_text="Book today",
        external_ids=None, segment_slug="all",
        attachment=AttachmentInput("logo.png", png_bytes()),
    )
    D = DeliveryStatus
    email = deliveries(campaign.id, ids, DeliveryChannel.email, [
        (D.sent, None, True, True), (D.sent, None, True, False), (D.delivered, None, False, False),
        (D.failed, "550 mailbox unavailable", False, False),
        (D.failed, "550 mailbox unavailable", False, False),
        (D.skipped, "no consent", False, False), (D.skipped, "opted out", False, False),
        (D.skipped, "no consent", False, False), (D.pending, None, False, False),
    ])
    sms = deliveries(campaign.id, ids[:3], DeliveryChannel.sms, [
        (D.unknown, None, False, False), (D.failed, None, False, False),
        (D.sending, None, False, False),
    ])
    async with db.transaction() as session:
        await session.execute(insert(Delivery), email + sms)
        data = await campaigns.summary(session=session, campaign_id=campaign.id, actor=OPERATOR)

    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert data["id"] == campaign.id
    assert (data["status"], data["channel"], data["audience"]) == ("scheduled", "EMAIL_SMS", 9)
    assert data["tags"] == ["promo", "spring"]
    assert data["send_at"] == LATER.isoformat()
    assert data["started_at"] is None and data["finished_at"] is None
    assert (data["segment"], data["preview_text"]) == ("all", "Book today")
    assert data["created_by"] == "cli:test" and data["status_reason"] is None
    assert data["attachment"] == {"filename": "logo.png", "type": "image/png",
                                  "size": len(png_bytes())}
    assert set(data["deliveries"]) == {"email", "sms"}
    mail = data["deliveries"]["email"]
    assert {k: mail[k] for k in ("pending", "sending", "sent", "delivered", "failed", "skipped",
                                 "unknown", "opened", "clicked")} == {
        "pending": 1, "sending": 0, "sent": 2, "delivered": 1, "failed": 2, "skipped": 3,
        "unknown": 0, "opened": 2, "clicked": 1,
    }
    assert mail["skipped_reasons"] == {"no consent": 2, "opted out": 1}
    assert mail["failed_reasons"] == {"550 mailbox unavailable": 2}
    text = data["deliveries"]["sms"]
    assert (text["unknown"], text["failed"], text["sending"], text["sent"]) == (1, 1, 1, 0)
    assert text["failed_reasons"] == {"no reason given": 1}
    assert text["skipped_reasons"] == {}


async def test_summary_lists_only_the_channels_used_with_zero_counts(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await new_campaign(db, channel="SMS")
    async with db.transaction() as session:
        data = await campaigns.summary(session=session, campaign_id=campaign.id)
        with pytest.raises(NotFound):
            await campaigns.summary(session=session, campaign_id=campaign.id + 1)
    assert list(data["deliveries"]) == ["sms"]
    assert all(data["deliveries"]["sms"][status] == 0 for status in
               ("pending", "sending", "sent", "delivered", "failed", "skipped", "unknown"))
    assert data["attachment"] is None and data["segment"] is None


async def test_a_status_change_waits_for_the_sender_and_sees_its_change(db: Database) -> None:
    await add_patients(db, 2)
    campaign = await new_campaign(db)

    async def reschedule() -> Campaign:
        async with db.transaction() as session:
            return await campaigns.reschedule(
                session=session, actor=OPERATOR, campaign_id=campaign.id,
                send_at=NOW + timedelta(days=5), now=NOW,
            )

    async with db.transaction() as sender:  # the sender starts the campaign meanwhile
        started = await sender.get_one(Campaign, campaign.id)
        transition(started, S.sending, now=NOW)
        await sender.flush()
        racer = asyncio.create_task(reschedule())
        await asyncio.sleep(0.3)
        assert not racer.done()  # waiting for the sender's transaction
    with pytest.raises(IllegalTransition, match="is sending; it cannot become scheduled"):
        await asyncio.wait_for(racer, timeout=20)
    async with db.transaction() as session:
        assert (await session.get_one(Campaign, campaign.id)).status is S.sending
