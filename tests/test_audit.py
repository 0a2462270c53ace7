"""The audit log: written in the caller's transaction, exported as CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from bot.db import Database
from services import audit
from services.access import Actor
from services.models import AuditEntry, CampaignStatus

ACTOR = Actor(id="U0ANA")


async def test_entries_commit_with_the_change_and_roll_back_with_it(db: Database) -> None:
    async with db.transaction() as session:
        await audit.record(session, ACTOR, "campaign.cancelled", campaign_id=3, reason=None,
                           previous_status=CampaignStatus.scheduled,
                           at=datetime(2030, 1, 1, tzinfo=UTC), ids={4, 5})
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await audit.record(session, "campaign-bot", "campaign.started", campaign_id=3)
            raise RuntimeError("the change failed")
    async with db.transaction() as session:
        entries = (await session.scalars(select(AuditEntry))).all()
    assert len(entries) == 1
    entry = entries[0]
    assert (entry.actor, entry.action, entry.campaign_id) == ("U0ANA", "campaign.cancelled", 3)
    assert entry.details == {  # None dropped; enums, datetimes and sets made plain
        "previous_status": "scheduled", "at": "2030-01-01T00:00:00+00:00", "ids": [4, 5]
    }
    assert entry.at.tzinfo is not None


async def test_export_csv_streams_every_entry_oldest_first(db: Database) -> None:
    async with db.transaction() as session:
        for n in range(5):
            await audit.record(session, ACTOR, "access.granted", user=f"U{n}", note="é, \"q\"")
        await audit.record(session, "cli:root", "campaign.created", campaign_id=9, subject="x")
    out = io.StringIO()
    async with db.transaction() as session:
        assert await audit.export_csv(session, out) == 6
        # Small batches: the log is read in pages, not all at once.
        entries = [e.id async for e in audit.entries(session, batch=2)]
        assert entries == sorted(entries) and len(entries) == 6
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == audit.CSV_COLUMNS
    assert [r["action"] for r in rows] == ["access.granted"] * 5 + ["campaign.created"]
    assert json.loads(rows[0]["details"]) == {"user": "U0", "note": "é, \"q\""}
    assert rows[0]["campaign_id"] == "" and rows[-1]["campaign_id"] == "9"
    assert datetime.fromisoformat(rows[0]["at"]).tzinfo is not None

    only = io.StringIO()
    async with db.transaction() as session:
        assert await audit.export_csv(session, only, campaign_id=9) == 1
        assert await session.scalar(select(func.count()).select_from(AuditEntry)) == 6
