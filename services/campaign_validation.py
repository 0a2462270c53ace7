"""Validating a campaign: every field's error at once, as `ValidationFailed({field: reason})`.

The fields are the form's: `subject`, `preview_text`, `message`, `channel`, `audience`,
`send_at`, `tags`, `attachment`. Times must be timezone-aware: a naive `send_at` is rejected
(the edges, Slack and the command line, know the user's time zone; the services do not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services import attachments, personalisation, segments
from services.attachments import AttachmentInput, CheckedAttachment
from services.delivery import sms_text
from services.errors import NotFound, ValidationFailed
from services.limits import MESSAGE_MAX, CampaignLimits
from services.models import Channel, DeliveryChannel, Patient, utcnow

FIELDS = (
    "subject", "preview_text", "message", "channel", "audience", "send_at", "tags", "attachment"
)
SUBJECT_MIN, SUBJECT_MAX = 5, 200
PREVIEW_MAX = 150
MESSAGE_MIN = 20  # MESSAGE_MAX lives in services.limits, next to what it bounds
TAGS_MAX, TAG_MAX_LENGTH = 10, 30
SCHEDULE_MIN_AHEAD = timedelta(minutes=1)
SCHEDULE_MAX_AHEAD = timedelta(days=365)
_LOOKUP_CHUNK = 1000  # ids per IN (…) query, well under every driver's parameter limit
T = TypeVar("T")


@dataclass
class CampaignInput:
    """A campaign as submitted (Slack form or command line), before validation.

    The audience is exactly one of `segment_slug`, `patient_ids`, `external_ids`; the time
    is exactly one of `send_now=True` or `send_at` (timezone-aware).
    """

    subject: str
    message: str
    channel: str
    preview_text: str | None = None
    tags: str | Sequence[str] = ()
    segment_slug: str | None = None
    patient_ids: Sequence[int] | None = None
    external_ids: Sequence[str] | None = None
    attachment: AttachmentInput | None = None
    send_now: bool = False
    send_at: datetime | None = None
    slack_channel_id: str | None = None
    idempotency_key: str | None = None
    # The attachment's link as SMS carry it (or one as long): it counts against the SMS length.
    sms_attachment_link: str | None = None


@dataclass
class ValidCampaign:
    """A campaign that passed validation, with every value normalised."""

    subject: str
    preview_text: str | None
    message: str
    channel: Channel
    tags: list[str]
    segment_slug: str | None
    patient_ids: list[int]
    send_now: bool
    send_at: datetime
    attachment: CheckedAttachment | None = None
    slack_channel_id: str | None = None
    idempotency_key: str | None = None


def normalise_tags(tags: str | Iterable[str] | None) -> list[str]:
    """Split on commas, trim, lower-case, drop empties, de-duplicate keeping the first order."""
    if tags is None:
        return []
    parts = [tags] if isinstance(tags, str) else list(tags)
    seen: dict[str, None] = {}
    for part in parts:
        for tag in str(part).split(","):
            cleaned = " ".join(tag.split()).lower()
            if cleaned:
                seen.setdefault(cleaned, None)
    return list(seen)


def tags_problem(tags: list[str]) -> str | None:
    if len(tags) > TAGS_MAX:
        return f"at most {TAGS_MAX} tags (there are {len(tags)})"
    too_long = [tag for tag in tags if len(tag) > TAG_MAX_LENGTH]
    if too_long:
        return f"each tag is at most {TAG_MAX_LENGTH} characters; {too_long[0]!r} is longer"
    return None


def send_at_problem(send_at: datetime, now: datetime) -> str | None:
    """Why `send_at` cannot be a campaign's scheduled time, or None."""
    if send_at.tzinfo is None or send_at.utcoffset() is None:
        return "must include a time zone (e.g. 2030-01-31T09:00-06:00)"
    ahead = send_at - now
    if ahead <= timedelta(0):
        return "is in the past; pick a time at least 1 minute from now"
    if ahead < SCHEDULE_MIN_AHEAD:
        return "must be at least 1 minute from now"
    if ahead > SCHEDULE_MAX_AHEAD:
        return "must be at most 365 days from now"
    return None


def audience_size_problem(size: int, limits: CampaignLimits, *, segment: bool) -> str | None:
    if size == 0:
        return "no patients in this audience"
    if size > limits.max_audience:
        fix = "pick a narrower segment or customise the selection" if segment else (
            "select fewer patients"
        )
        return f"the audience has {size} patients; the limit is {limits.max_audience}: {fix}"
    return None


def _length_problem(text: str, minimum: int, maximum: int) -> str | None:
    if len(text) < minimum:
        return f"must be at least {minimum} characters (it has {len(text)})"
    if len(text) > maximum:
        return f"must be at most {maximum} characters (it has {len(text)})"
    return None


def check_form(
    campaign_in: CampaignInput, limits: CampaignLimits, now: datetime
) -> tuple[ValidCampaign, dict[str, str]]:
    """The form's fields without the audience: the cleaned values and every field error."""
    errors: dict[str, str] = {}

    subject = (campaign_in.subject or "").strip()
    problem = _length_problem(subject, SUBJECT_MIN, SUBJECT_MAX)
    if problem is None and ("\n" in subject or "\r" in subject):
        problem = "must be one line"
    if problem is None:
        problem = personalisation.template_problem(subject)
    if problem:
        errors["subject"] = problem

    preview = (campaign_in.preview_text or "").strip() or None
    if preview is not None and len(preview) > PREVIEW_MAX:
        errors["preview_text"] = f"must be at most {PREVIEW_MAX} characters (it has {len(preview)})"

    message = (campaign_in.message or "").strip()
    problem = _length_problem(message, MESSAGE_MIN, MESSAGE_MAX)
    if problem is None:
        problem = personalisation.template_problem(message)
    if problem:
        errors["message"] = problem

    channel_text = str(campaign_in.channel or "").strip().upper()
    channel = Channel(channel_text) if channel_text in Channel.__members__ else Channel.EMAIL
    if channel_text not in Channel.__members__:
        errors["channel"] = "must be EMAIL, SMS or EMAIL_SMS"

    send_at = now
    if campaign_in.send_now and campaign_in.send_at is not None:
        errors["send_at"] = "choose Send now or a date and time, not both"
    elif not campaign_in.send_now:
        if campaign_in.send_at is None:
            errors["send_at"] = "choose Send now, or a date and time to schedule it"
        else:
            problem = send_at_problem(campaign_in.send_at, now)
            if problem:
                errors["send_at"] = problem
            else:
                send_at = campaign_in.send_at.astimezone(UTC)

    sms = DeliveryChannel.sms in channel.delivery_channels
    if "message" not in errors and "channel" not in errors and sms:
        link = campaign_in.sms_attachment_link if campaign_in.attachment is not None else None
        problem = sms_length_problem(message, limits.sms_opt_out_text, attachment_link=link)
        if problem:
            errors["message"] = problem

    tags = normalise_tags(campaign_in.tags)
    problem = tags_problem(tags)
    if problem:
        errors["tags"] = problem

    checked: CheckedAttachment | None = None
    if campaign_in.attachment is not None:
        try:
            checked = attachments.check(campaign_in.attachment, limits.attachment_max_bytes)
        except attachments.AttachmentRejected as exc:
            errors["attachment"] = str(exc)

    valid = ValidCampaign(
        subject=subject,
        preview_text=preview,
        message=message,
        channel=channel,
        tags=tags,
        segment_slug=None,
        patient_ids=[],
        send_now=bool(campaign_in.send_now),
        send_at=send_at,
        attachment=checked,
        slack_channel_id=campaign_in.slack_channel_id,
        idempotency_key=(campaign_in.idempotency_key or "").strip() or None,
    )
    return valid, errors


def sms_length_problem(
    message: str, opt_out_text: str, *, attachment_link: str | None = None
) -> str | None:
    """Why the SMS (personalised for a typical patient, with the attachment link and the
    opt-out line, composed as sending composes it) is too long."""
    body = personalisation.render_text(message, personalisation.SAMPLE_VALUES)
    return sms_text.check_length(
        sms_text.compose(body, opt_out_text=opt_out_text, attachment_link=attachment_link)
    )


class AudienceProblem(ValueError):
    """Why the audience cannot be used (the `audience` field's error)."""


async def resolve_audience(
    session: AsyncSession,
    campaign_in: CampaignInput,
    limits: CampaignLimits,
    now: datetime,
    clinic_tz: str = "UTC",
) -> list[int]:
    """The audience's patient ids (segment members or the selection), checked against limits.

    `clinic_tz` is the clinic's time zone, for segments such as `birthday-this-month`.
    """
    slug = (campaign_in.segment_slug or "").strip() or None
    given = [x is not None for x in (slug, campaign_in.patient_ids, campaign_in.external_ids)]
    if sum(given) == 0:
        raise AudienceProblem("pick a smart segment or customise the selection")
    if sum(given) > 1:
        raise AudienceProblem("give a smart segment or a selection of patients, not both")
    if slug is not None:
        return await _segment_members(session, slug, limits, now, clinic_tz)
    if campaign_in.patient_ids is not None:
        return await _known_ids(session, campaign_in.patient_ids, limits)
    assert campaign_in.external_ids is not None
    return await _ids_of_external_ids(session, campaign_in.external_ids, limits)


async def _segment_members(
    session: AsyncSession, slug: str, limits: CampaignLimits, now: datetime, clinic_tz: str
) -> list[int]:
    try:
        ids = await segments.resolve(
            session, slug, limit=limits.max_audience + 1, now=now, clinic_tz=clinic_tz
        )
        size = len(ids)
        if size > limits.max_audience:
            size = await segments.count(session, slug, now=now, clinic_tz=clinic_tz)
    except NotFound:
        raise AudienceProblem(f"there is no smart segment {slug!r}") from None
    problem = audience_size_problem(size, limits, segment=True)
    if problem:
        raise AudienceProblem(problem)
    return list(dict.fromkeys(ids))


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), _LOOKUP_CHUNK):
        yield items[start : start + _LOOKUP_CHUNK]


async def _known_ids(
    session: AsyncSession, patient_ids: Sequence[int], limits: CampaignLimits
) -> list[int]:
    ids = list(dict.fromkeys(int(i) for i in patient_ids))
    problem = audience_size_problem(len(ids), limits, segment=False)
    if problem:
        raise AudienceProblem(problem)
    found: set[int] = set()
    for chunk in _chunks(ids):
        found.update(await session.scalars(select(Patient.id).where(Patient.id.in_(chunk))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise AudienceProblem(_missing_text(missing, "selected patient id", "selected patient ids"))
    return ids


async def _ids_of_external_ids(
    session: AsyncSession, external_ids: Sequence[str], limits: CampaignLimits
) -> list[int]:
    wanted = list(dict.fromkeys(e.strip() for e in external_ids if e and e.strip()))
    problem = audience_size_problem(len(wanted), limits, segment=False)
    if problem:
        raise AudienceProblem(problem)
    by_external_id: dict[str, int] = {}
    for chunk in _chunks(wanted):
        rows = await session.execute(
            select(Patient.external_id, Patient.id).where(Patient.external_id.in_(chunk))
        )
        by_external_id.update((external_id, pid) for external_id, pid in rows)
    missing = [e for e in wanted if e not in by_external_id]
    if missing:
        raise AudienceProblem(_missing_text(missing, "external id", "external ids"))
    return list(dict.fromkeys(by_external_id[e] for e in wanted))


def _missing_text(missing: Sequence[object], singular: str, plural: str) -> str:
    shown = ", ".join(str(m) for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    what = f"1 {singular} is" if len(missing) == 1 else f"{len(missing)} {plural} are"
    return f"{what} not in the patients catalog: {shown}{more}"


async def validate(
    *,
    session: AsyncSession,
    campaign_in: CampaignInput,
    limits: CampaignLimits,
    now: datetime | None = None,
    clinic_tz: str = "UTC",
) -> ValidCampaign:
    """The campaign normalised and its audience resolved, or ValidationFailed with every error."""
    now = now or utcnow()
    # Rendering the templates is CPU work: off the event loop, which serves every other request.
    valid, errors = await asyncio.to_thread(check_form, campaign_in, limits, now)
    try:
        valid.patient_ids = await resolve_audience(session, campaign_in, limits, now, clinic_tz)
        valid.segment_slug = (campaign_in.segment_slug or "").strip() or None
    except AudienceProblem as exc:
        errors["audience"] = str(exc)
    if errors:
        raise ValidationFailed({f: errors[f] for f in FIELDS if f in errors})
    return valid
