"""The campaign domain's tables (SQLAlchemy 2). Times are timezone-aware UTC everywhere."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC (timestamptz on PostgreSQL, ISO text on SQLite); always returns aware UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


# Binary collation on PostgreSQL so that prefix ranges (>= q, < q + U+FFFF) match byte order,
# as they do on SQLite; the search keys are lower-cased and accent-folded before they are stored.
SearchKey = String(200).with_variant(String(200, collation="C"), "postgresql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Channel(enum.StrEnum):
    """What the user picks in `Sending channel`."""

    EMAIL = "EMAIL"
    SMS = "SMS"
    EMAIL_SMS = "EMAIL_SMS"

    @property
    def delivery_channels(self) -> tuple[DeliveryChannel, ...]:
        return {
            Channel.EMAIL: (DeliveryChannel.email,),
            Channel.SMS: (DeliveryChannel.sms,),
            Channel.EMAIL_SMS: (DeliveryChannel.email, DeliveryChannel.sms),
        }[self]


class DeliveryChannel(enum.StrEnum):
    email = "email"
    sms = "sms"


class CampaignStatus(enum.StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    sending = "sending"
    completed = "completed"
    cancelled = "cancelled"
    missed = "missed"
    failed = "failed"


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    sending = "sending"
    sent = "sent"
    delivered = "delivered"
    failed = "failed"
    skipped = "skipped"
    unknown = "unknown"


class AccessLevel(enum.IntEnum):
    read = 1
    write = 2
    admin = 3


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as plain strings (no native ENUM type) so new values need no type migration.
    return Enum(cls, name=name, native_enum=False, length=20, values_callable=_values)


def _values(cls: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in cls]


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(100), unique=True)
    first_name: Mapped[str] = mapped_column(String(100), default="")
    last_name: Mapped[str] = mapped_column(String(100), default="")
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(20), index=True)  # E.164
    birth_date: Mapped[date | None] = mapped_column(Date)
    birth_month: Mapped[int | None] = mapped_column(Integer, index=True)
    patient_type: Mapped[str | None] = mapped_column(String(50), index=True)
    last_study_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    timezone: Mapped[str | None] = mapped_column(String(64))
    email_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    sms_opt_in: Mapped[bool] = mapped_column(Boolean, default=False)
    # Opt-outs come from patients (STOP, unsubscribe), never from an import: an import's
    # "yes" must not undo a patient's "stop". Only an opt-in event clears them.
    email_opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sms_opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Lower-cased, accent-folded keys for the lazy table's search and order.
    sort_key: Mapped[str] = mapped_column(SearchKey, default="")
    first_name_key: Mapped[str] = mapped_column(SearchKey, default="")
    last_name_key: Mapped[str] = mapped_column(SearchKey, default="")
    email_key: Mapped[str | None] = mapped_column(SearchKey)
    phone_key: Mapped[str | None] = mapped_column(SearchKey)  # digits only
    external_id_key: Mapped[str] = mapped_column(SearchKey, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_patients_sort", "sort_key", "id"),
        # With last_name_key: "first last" searches are one range ("maria" + "gar…").
        Index("ix_patients_first_name_key", "first_name_key", "last_name_key", "id"),
        Index("ix_patients_last_name_key", "last_name_key", "id"),
        Index("ix_patients_email_key", "email_key", "id"),
        Index("ix_patients_phone_key", "phone_key", "id"),
        Index("ix_patients_external_id_key", "external_id_key", "id"),
    )


class PatientTag(Base):
    """One row per patient and tag, so that `tag:<tag>` segments are an indexed lookup."""

    __tablename__ = "patient_tags"

    patient_id: Mapped[int] = mapped_column(
        ForeignKey("patients.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(30), primary_key=True)

    __table_args__ = (Index("ix_patient_tags_tag", "tag", "patient_id"),)


class Segment(Base):
    """A smart segment: a saved rule over the patients' columns (built-in or segments.yml)."""

    __tablename__ = "segments"

    slug: Mapped[str] = mapped_column(String(80), primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    description: Mapped[str] = mapped_column(Text, default="")
    definition: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(20), default="builtin")  # builtin | file
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[CampaignStatus] = mapped_column(
        _enum(CampaignStatus, "campaign_status"), default=CampaignStatus.draft, index=True
    )
    channel: Mapped[Channel] = mapped_column(_enum(Channel, "campaign_channel"))
    subject: Mapped[str] = mapped_column(String(200))
    preview_text: Mapped[str | None] = mapped_column(String(150))
    message: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    segment_slug: Mapped[str | None] = mapped_column(String(80))
    audience_size: Mapped[int] = mapped_column(Integer, default=0)
    send_now: Mapped[bool] = mapped_column(Boolean, default=False)
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Where the campaign was started from: its channel message lives there (SPEC §4).
    slack_channel_id: Mapped[str | None] = mapped_column(String(32))
    slack_message_ts: Mapped[str | None] = mapped_column(String(32))
    # The same submission twice (Slack retries, a double click) creates one campaign.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)

    attachment: Mapped[CampaignAttachment | None] = relationship(
        back_populates="campaign", uselist=False, lazy="raise"
    )


class CampaignAttachment(Base):
    __tablename__ = "campaign_attachments"

    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)

    campaign: Mapped[Campaign] = relationship(back_populates="attachment", lazy="raise")


class CampaignAudience(Base):
    """The audience frozen into the campaign when it is scheduled or sent."""

    __tablename__ = "campaign_audience"

    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), primary_key=True)


class Delivery(Base):
    """The delivery ledger: one row per campaign × patient × channel."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    channel: Mapped[DeliveryChannel] = mapped_column(_enum(DeliveryChannel, "delivery_channel"))
    status: Mapped[DeliveryStatus] = mapped_column(
        _enum(DeliveryStatus, "delivery_status"), default=DeliveryStatus.pending
    )
    reason: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(40))
    address: Mapped[str | None] = mapped_column(String(254))  # what it was sent to
    provider_id: Mapped[str | None] = mapped_column(String(255), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the message was last handed to the provider (committed before the hand-over):
    # after a crash, a claim without it certainly was not sent and goes back to `pending`.
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Since when this delivery has been retried (RETRY_FOR counts from here).
    retry_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    clicked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    open_count: Mapped[int] = mapped_column(Integer, default=0)
    click_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("campaign_id", "patient_id", "channel"),
        Index("ix_deliveries_campaign_status", "campaign_id", "status", "next_attempt_at"),
        # The sender's work queue: due pending deliveries of a channel, oldest first.
        Index("ix_deliveries_queue", "status", "channel", "next_attempt_at"),
        Index("ix_deliveries_claimed_by", "claimed_by", "status"),
    )


class ConsentEvent(Base):
    """Opt-outs and opt-ins, as they happened (the patient's flags are the current state)."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    channel: Mapped[DeliveryChannel] = mapped_column(_enum(DeliveryChannel, "consent_channel"))
    action: Mapped[str] = mapped_column(String(20))  # opt_out | opt_in
    source: Mapped[str] = mapped_column(String(40))  # sms_reply, unsubscribe, twilio_21610, …
    campaign_id: Mapped[int | None] = mapped_column(
        ForeignKey("campaigns.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_consent_events_patient", "patient_id", "created_at"),)


class AccessGrant(Base):
    __tablename__ = "access_grants"

    slack_user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    level: Mapped[str] = mapped_column(String(10))  # read | write | admin
    granted_by: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """Append-only: the code has an insert path for it and nothing else."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(60), index=True)
    campaign_id: Mapped[int | None] = mapped_column(Integer, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModalDraft(Base):
    """Server-side state of an unfinished campaign (Slack's private_metadata holds 3,000 chars)."""

    __tablename__ = "modal_drafts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    slack_user_id: Mapped[str] = mapped_column(String(64), index=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    selected_patient_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class AppSecret(Base):
    """Keys generated once and kept in the database (e.g. for signing unsubscribe links)."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SenderProcess(Base):
    """A running `campaign-bot run` process; its heartbeat tells live claims from dead ones."""

    __tablename__ = "sender_processes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class TwilioReceipt(Base):
    """A Twilio webhook already applied, by MessageSid and status (`inbound` for a reply).

    Twilio repeats webhooks, and a signed request replays as well as it verifies: the
    first receipt of a (MessageSid, status) is applied, every later one changes nothing.
    Kept, not pruned: a signature never expires, so neither may the memory of its use.
    """

    __tablename__ = "twilio_receipts"

    message_sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
