"""The audit log: every state-changing action, written in the same transaction as the change.

Append-only by construction: this module can insert and read, nothing else.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services import csv_safe
from services.models import AuditEntry, utcnow

if TYPE_CHECKING:
    from services.access import Actor

CSV_COLUMNS = ["id", "at", "actor", "action", "campaign_id", "details"]


async def record(
    session: AsyncSession,
    actor: Actor | str,
    action: str,
    *,
    campaign_id: int | None = None,
    **details: Any,
) -> AuditEntry:
    """Add one entry to the current transaction (it commits or rolls back with the change)."""
    entry = AuditEntry(
        at=utcnow(),
        actor=actor if isinstance(actor, str) else actor.id,
        action=action,
        campaign_id=campaign_id,
        details={k: _plain(v) for k, v in details.items() if v is not None},
    )
    session.add(entry)
    return entry


async def entries(
    session: AsyncSession,
    *,
    since: datetime | None = None,
    campaign_id: int | None = None,
    batch: int = 1000,
) -> AsyncIterator[AuditEntry]:
    """Entries oldest first, streamed in batches (the log can grow large)."""
    last_id = 0
    while True:
        query = select(AuditEntry).where(AuditEntry.id > last_id)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if campaign_id is not None:
            query = query.where(AuditEntry.campaign_id == campaign_id)
        rows = list((await session.execute(query.order_by(AuditEntry.id).limit(batch))).scalars())
        for row in rows:
            yield row
        if len(rows) < batch:
            return
        last_id = rows[-1].id


async def export_csv(session: AsyncSession, out: TextIO, **filters: Any) -> int:
    """Write the log as CSV (formula cells neutralised); returns the number of entries written."""
    writer = csv_safe.writer(out)
    writer.writerow(CSV_COLUMNS)
    count = 0
    async for entry in entries(session, **filters):
        writer.writerow([
            entry.id,
            entry.at.isoformat(),
            entry.actor,
            entry.action,
            "" if entry.campaign_id is None else entry.campaign_id,
            json.dumps(entry.details, sort_keys=True, ensure_ascii=False),
        ])
        count += 1
    return count


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, int | float | str | bool):
        return value.value
    return value
