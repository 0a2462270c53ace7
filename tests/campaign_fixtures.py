"""Shared helpers for the campaign, access and audit tests: patients, forms and real files."""

from __future__ import annotations

import struct
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from bot.db import Database
from services.access import Actor
from services.campaign_validation import CampaignInput
from services.limits import CampaignLimits
from services.models import AccessGrant, AuditEntry, Campaign, CampaignAudience, Patient
from services.search_keys import patient_keys

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=2)
LIMITS = CampaignLimits(max_audience=500, attachment_max_bytes=5 * 1024 * 1024)
OPERATOR = Actor(id="cli:test", is_env_admin=True)
MESSAGE = "Hello {{ first_name }}, it is time for your yearly check-up."


def patient_row(external_id: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "external_id": external_id,
        "first_name": f"Ana{external_id}",
        "last_name": "García",
        "email": f"{external_id.lower()}@example.com",
        "phone": None,
        "patient_type": "adult",
        **values,
    }
    keys = patient_keys(
        first_name=row["first_name"], last_name=row["last_name"], email=row["email"],
        phone=row["phone"], external_id=external_id,
    )
    return {**row, **keys}


async def add_patients(
    db: Database, count: int, *, prefix: str = "P", **values: Any
) -> list[int]:
    """`count` patients with external ids `<prefix>0001`…; their ids in that order."""
    rows = [patient_row(f"{prefix}{n:04d}", **values) for n in range(1, count + 1)]
    async with db.transaction() as session:
        await session.execute(insert(Patient), rows)
        found = await session.execute(
            select(Patient.external_id, Patient.id).where(Patient.external_id.like(f"{prefix}%"))
        )
        by_external_id = dict(found.all())
    return [by_external_id[row["external_id"]] for row in rows]


def form(**overrides: Any) -> CampaignInput:
    """A valid campaign input (scheduled two days after NOW); override any field."""
    values: dict[str, Any] = {
        "subject": "Your check-up, {{ first_name }}",
        "message": MESSAGE,
        "channel": "EMAIL",
        "external_ids": ["P0001", "P0002"],
        "send_at": LATER,
    }
    values.update(overrides)
    return CampaignInput(**values)


async def grant_level(db: Database, user_id: str, level: str) -> Actor:
    async with db.transaction() as session:
        session.add(AccessGrant(slack_user_id=user_id, level=level, granted_by="test"))
    return Actor(id=user_id)


async def table_counts(db: Database) -> dict[str, int]:
    async with db.transaction() as session:
        return {
            name: int(await session.scalar(select(func.count()).select_from(model)) or 0)
            for name, model in (
                ("campaigns", Campaign), ("audience", CampaignAudience), ("audit", AuditEntry)
            )
        }


# --- small but well-formed files of each accepted type -------------------------------------

def pdf_bytes(body: bytes = b"") -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n" + body
        + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bytes() -> bytes:
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1×1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bytes() -> bytes:
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return b"\xff\xd8" + app0 + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12" * 32 + (
        b"\xff\xd9"
    )


# A pid no process can have (above Linux's largest pid_max): a "process" on this host that
# is certainly dead, so recovery needs no stale heartbeat to know it.
DEAD_PID = 4_999_999


async def claim_as_dead_process(
    db: Database, *, channel: Any, limit: int, handed_over: int = 0
) -> list[Any]:
    """A process on this host that claimed `limit` deliveries of `channel`, handed the first
    `handed_over` of them to the provider, and died before recording anything."""
    import socket

    from services.delivery import ledger
    from services.models import SenderProcess

    dead = f"{socket.gethostname()}:{DEAD_PID}:dead"
    now = datetime.now(UTC)
    async with db.transaction() as session:
        session.add(SenderProcess(id=dead, hostname=socket.gethostname(), pid=DEAD_PID,
                                  started_at=now, heartbeat_at=now))
        await session.flush()
        claimed = await ledger.claim(session, channel=channel, sender_id=dead, limit=limit,
                                     now=now)
        await ledger.mark_attempted(session, ids=[c.id for c in claimed[:handed_over]],
                                    sender_id=dead, now=now)
    return claimed
