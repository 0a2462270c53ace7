"""What Twilio tells us: delivery status callbacks applied to the ledger, and patients'
STOP / START replies applied to their consent.

Twilio's message states move forward (queued → sending → sent → delivered | undelivered |
failed), but callbacks may repeat or arrive out of order. Each update here is one
conditional UPDATE, so repeats and races change nothing:
- `delivered` wins over `sent`, `unknown` and an earlier `undelivered`/`failed` (the handset
  confirmed receipt: a carrier's late success report beats its earlier failure);
- `undelivered`/`failed` apply to `sent` or `unknown` only: a failure reported after
  `delivered` is ignored (the patient has the message);
- `queued`/`sending`/`sent`/`accepted` never downgrade anything; they only settle an
  `unknown` delivery (Twilio has the message, so it was sent).
A callback for an SID the ledger does not know changes nothing (test sends, other apps).
Beyond that, each webhook is applied once: its (MessageSid, status) is remembered in
`twilio_receipts` in the same transaction, and a repeat — Twilio's retry, or a captured
signed request replayed later — changes nothing. For replies this matters most: a STOP
replayed after the patient's START must not opt them out again.
Known limit: a callback that arrives before the engine has recorded the send (and so the
SID) finds nothing; Twilio's later callbacks for the message still apply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services import consent
from services.delivery.sms_text import ReplyKind, classify_reply
from services.models import Delivery, DeliveryChannel, DeliveryStatus, Patient, TwilioReceipt

DELIVERED = frozenset({"delivered"})
FAILED = frozenset({"undelivered", "failed", "canceled"})
IN_FLIGHT = frozenset({"accepted", "scheduled", "queued", "sending", "sent"})

# Twilio's common delivery error codes, in words a marketing team can act on.
ERROR_WORDS = {
    "30001": "queue overflow",
    "30002": "account suspended",
    "30003": "unreachable",
    "30004": "blocked",
    "30005": "unknown number",
    "30006": "landline",
    "30007": "carrier filtered",
    "30008": "unknown error",
    "21610": "the patient replied STOP",
}
OPTED_OUT_CODE = "21610"


@dataclass(frozen=True)
class StatusUpdate:
    """What one callback changed: the campaign whose numbers moved."""

    campaign_id: int
    delivery_id: int
    status: DeliveryStatus


def failure_reason(twilio_status: str, error_code: str | None) -> str:
    """`Twilio: undelivered (30003 unreachable)`."""
    if not error_code:
        return f"Twilio: {twilio_status}"
    words = ERROR_WORDS.get(error_code)
    return f"Twilio: {twilio_status} ({error_code}{' ' + words if words else ''})"


async def apply_status(
    session: AsyncSession,
    *,
    message_sid: str,
    twilio_status: str,
    error_code: str | None,
    now: datetime,
) -> StatusUpdate | None:
    """Apply one status callback; None when nothing changed (repeat, stale or unknown SID)."""
    twilio_status = twilio_status.strip().lower()
    error_code = (error_code or "").strip() or None
    this = and_(Delivery.provider_id == message_sid, Delivery.channel == DeliveryChannel.sms)
    values: dict[str, object]
    if twilio_status in DELIVERED:
        new = DeliveryStatus.delivered
        allowed = (DeliveryStatus.sent, DeliveryStatus.unknown, DeliveryStatus.failed)
        values = {"delivered_at": now, "reason": None, "error_code": None}
    elif twilio_status in FAILED:
        new = DeliveryStatus.failed
        allowed = (DeliveryStatus.sent, DeliveryStatus.unknown)
        values = {"error_code": error_code, "reason": failure_reason(twilio_status, error_code)}
    elif twilio_status in IN_FLIGHT:
        new = DeliveryStatus.sent
        allowed = (DeliveryStatus.unknown,)
        values = {"reason": None}
    else:  # read, received, …: nothing the ledger tracks
        return None
    if not await first_receipt(session, message_sid=message_sid, status=twilio_status, now=now):
        return None
    result = await session.execute(
        update(Delivery)
        .where(this, Delivery.status.in_(allowed))
        .values(status=new, updated_at=now, **values)
        .returning(Delivery.id, Delivery.campaign_id, Delivery.patient_id)
        .execution_options(synchronize_session=False)
    )
    row = result.first()  # an SID names one message
    if row is None:
        return None
    if error_code == OPTED_OUT_CODE:
        await _opt_out_patient(session, patient_id=row.patient_id, campaign_id=row.campaign_id,
                               now=now)
    return StatusUpdate(row.campaign_id, row.id, new)


async def _opt_out_patient(
    session: AsyncSession, *, patient_id: int, campaign_id: int, now: datetime
) -> None:
    """21610 in a callback: the carrier says the number opted out; record it as ours too."""
    opted_out = await session.scalar(
        select(Patient.sms_opted_out_at).where(Patient.id == patient_id)
    )
    if opted_out is None:
        await consent.record_opt_out(session, patient_ids=[patient_id],
                                     channel=DeliveryChannel.sms, source="twilio_21610",
                                     actor="twilio", campaign_id=campaign_id, now=now)


REPLY_SOURCE = "sms_reply"
REPLY_ACTOR = "patient:sms-reply"


@dataclass(frozen=True)
class ReplyEffect:
    kind: ReplyKind
    patients: int  # how many patients' consent changed


async def apply_reply(
    session: AsyncSession, *, from_number: str, body: str, now: datetime,
    message_sid: str | None = None,
) -> ReplyEffect | None:
    """A patient's SMS reply: STOP-like words opt out, START-like words opt back in, every
    patient with that number (family members often share one). None for any other text,
    and for a reply (by `message_sid`) already applied.

    Only patients whose state changes are recorded, so a repeated STOP is not a new event.
    The message text itself is never stored.
    """
    kind = classify_reply(body)
    if kind is None or not from_number.strip():
        return None
    if message_sid and not await first_receipt(session, message_sid=message_sid,
                                               status=INBOUND, now=now):
        return None
    ids = await consent.patients_with_phone(session, from_number.strip())
    if not ids:
        return ReplyEffect(kind, 0)
    # Claim the change with one conditional UPDATE: two identical replies delivered at once
    # (Twilio may repeat a webhook) record one event, not two.
    still = (
        Patient.sms_opted_out_at.is_(None) if kind == "opt_out"
        else Patient.sms_opted_out_at.is_not(None)
    )
    changing = sorted((await session.execute(
        update(Patient).where(Patient.id.in_(ids), still)
        .values(sms_opted_out_at=now if kind == "opt_out" else None)
        .returning(Patient.id)
        .execution_options(synchronize_session=False)
    )).scalars())
    if kind == "opt_out":
        await consent.record_opt_out(session, patient_ids=changing, channel=DeliveryChannel.sms,
                                     source=REPLY_SOURCE, actor=REPLY_ACTOR, now=now)
    else:
        await consent.record_opt_in(session, patient_ids=changing, channel=DeliveryChannel.sms,
                                    source=REPLY_SOURCE, actor=REPLY_ACTOR, now=now)
    return ReplyEffect(kind, len(changing))


INBOUND = "inbound"  # the receipt status of a patient's reply
_SID_MAX = 64
_STATUS_MAX = 32


async def first_receipt(
    session: AsyncSession, *, message_sid: str, status: str, now: datetime
) -> bool:
    """Remember this (MessageSid, status); False when it was seen before (a repeat).

    One INSERT … ON CONFLICT DO NOTHING: two identical webhooks at once both try it, and
    the second waits for the first's transaction, then inserts nothing.
    """
    sid = message_sid.strip()
    if len(sid) > _SID_MAX:  # not a Twilio SID (34 characters), but keep the key bounded
        sid = hashlib.sha256(sid.encode()).hexdigest()
    dialect = (await session.connection()).dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(TwilioReceipt)
        .values(message_sid=sid, status=status[:_STATUS_MAX], received_at=now)
        .on_conflict_do_nothing(index_elements=["message_sid", "status"])
        .returning(TwilioReceipt.message_sid)
    )
    return (await session.execute(statement)).first() is not None
