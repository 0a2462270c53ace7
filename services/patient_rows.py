"""One patient CSV row → normalized values, or the reason it is rejected (SPEC §2). No I/O."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from services.models import Patient
from services.search_keys import patient_keys

COLUMNS = (
    "external_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "birth_date",
    "patient_type",
    "last_study_at",
    "timezone",
    "email_opt_in",
    "sms_opt_in",
    "tags",
)
# Every `Patient` column an import writes, in a fixed order.
VALUE_COLUMNS = (
    "external_id", "first_name", "last_name", "email", "phone", "birth_date", "birth_month",
    "patient_type", "last_study_at", "timezone", "email_opt_in", "sms_opt_in", "tags",
    "sort_key", "first_name_key", "last_name_key", "email_key", "phone_key", "external_id_key",
)
MAX_TAGS = 10
MAX_TAG_LENGTH = 30
_MAX_LENGTHS = {"external_id": 100, "first_name": 100, "last_name": 100, "patient_type": 50}
_MAX_KEY_LENGTH = Patient.__table__.c.sort_key.type.length or 200
_KEY_SOURCES = {
    "sort_key": "first_name and last_name together",
    "first_name_key": "first_name",
    "last_name_key": "last_name",
    "email_key": "email",
    "phone_key": "phone",
    "external_id_key": "external_id",
}
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0", ""})
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# A subset of RFC 5322 dot-atom: a local part email_validator always accepts unchanged.
_PLAIN_LOCAL_PART = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*")
_MAX_KNOWN_DOMAINS = 10_000
_known_domains: dict[str, str] = {}  # domain as written → normalized, once email_validator said so


@dataclass(frozen=True, slots=True)
class PatientRow:
    """A valid row, normalized: E.164 phone, normalized email, aware UTC times, clean tags."""

    external_id: str
    first_name: str = ""
    last_name: str = ""
    email: str | None = None
    phone: str | None = None
    birth_date: date | None = None
    patient_type: str | None = None
    last_study_at: datetime | None = None
    timezone: str | None = None
    email_opt_in: bool = False
    sms_opt_in: bool = False
    tags: tuple[str, ...] = ()
    # Search keys (services.search_keys.patient_keys), computed once by validate_row.
    keys: Mapping[str, str | None] | None = field(default=None, compare=False, repr=False)

    def stored_values(self, dialect: str) -> tuple[Any, ...]:
        """The values in `VALUE_COLUMNS` order, as the `dialect`'s driver takes them.

        SQLAlchemy's own bind processors for these columns do the conversion, so bulk
        writes that skip SQLAlchemy's per-row work store exactly what it would store.
        """
        columns = self.columns()
        values = [columns[name] for name in VALUE_COLUMNS]
        for i, processor in _bind_processors(dialect):
            if values[i] is not None:
                values[i] = processor(values[i])
        return tuple(values)

    def columns(self) -> dict[str, Any]:
        """The `Patient` column values of this row, search keys and birth month included."""
        return {
            "external_id": self.external_id,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "email": self.email,
            "phone": self.phone,
            "birth_date": self.birth_date,
            "birth_month": self.birth_date.month if self.birth_date else None,
            "patient_type": self.patient_type,
            "last_study_at": self.last_study_at,
            "timezone": self.timezone,
            "email_opt_in": self.email_opt_in,
            "sms_opt_in": self.sms_opt_in,
            "tags": list(self.tags),
            **(self.keys if self.keys is not None else _keys(self)),
        }


def validate_row(
    values: Mapping[str, str | None], *, phone_region: str | None, today: date | None = None
) -> PatientRow | str:
    """The normalized row, or one reason naming every bad field (`field: why; field: why`)."""
    errors: list[str] = []
    clean: dict[str, Any] = {}

    def text(column: str) -> str:
        return (values.get(column) or "").strip()

    # PostgreSQL cannot store a NUL in text (the whole import would fail); it is a corrupt
    # field, so the row is rejected naming it, whatever else is wrong with it.
    nul = [column for column in COLUMNS if "\x00" in (values.get(column) or "")]
    if nul:
        return "; ".join(f"{column}: contains a NUL character (byte 0x00), which cannot be "
                         "stored; remove it from the file" for column in nul)

    for column, limit in _MAX_LENGTHS.items():
        value = text(column)
        if len(value) > limit:
            errors.append(f"{column}: longer than {limit} characters")
        clean[column] = value
    if not clean["external_id"]:
        errors.append("external_id: is empty; every row needs one")
    clean["patient_type"] = clean["patient_type"].lower() or None

    for column, parse in (
        ("email", _email),
        ("phone", lambda v: _phone(v, phone_region)),
        ("birth_date", lambda v: _birth_date(v, today or datetime.now(UTC).date())),
        ("last_study_at", _last_study_at),
        ("timezone", _timezone),
        ("email_opt_in", _consent),
        ("sms_opt_in", _consent),
        ("tags", parse_tags),
    ):
        raw = text(column)
        try:
            clean[column] = parse(raw)
        except ValueError as exc:
            errors.append(f"{column}: {exc}")
    if errors:
        return "; ".join(errors)
    row = PatientRow(**clean)
    keys = _keys(row)
    too_long = [name for name, key in keys.items() if key and len(key) > _MAX_KEY_LENGTH]
    if too_long:  # the search index holds 200 characters (e.g. two 100-character names)
        fields = ", ".join(sorted({_KEY_SOURCES[name] for name in too_long}))
        return f"{fields}: too long to index for search ({_MAX_KEY_LENGTH} characters at most)"
    return replace(row, keys=keys)


def _keys(row: PatientRow) -> dict[str, str | None]:
    return patient_keys(
        first_name=row.first_name,
        last_name=row.last_name,
        email=row.email,
        phone=row.phone,
        external_id=row.external_id,
    )


@lru_cache(maxsize=4)
def _bind_processors(dialect_name: str) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql.asyncpg import dialect as driver_dialect
    else:
        from sqlalchemy.dialects.sqlite.aiosqlite import dialect as driver_dialect
    dialect = driver_dialect()
    columns = Patient.__table__.c
    found = []
    for i, name in enumerate(VALUE_COLUMNS):
        processor = columns[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            found.append((i, processor))
    return tuple(found)


def parse_tags(raw: str, separator: str = ";") -> tuple[str, ...]:
    """Trimmed, lower-cased, de-duplicated (first wins); at most 10 of at most 30 characters."""
    tags = tuple(dict.fromkeys(t.strip().lower() for t in raw.split(separator) if t.strip()))
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags; at most {MAX_TAGS} are allowed")
    too_long = [t for t in tags if len(t) > MAX_TAG_LENGTH]
    if too_long:
        raise ValueError(f"{_shown(too_long[0])} is longer than {MAX_TAG_LENGTH} characters")
    return tags


def _shown(value: str, limit: int = 40) -> str:
    """A value quoted for a reason, cut short (the report should not repeat whole rows)."""
    return repr(value if len(value) <= limit else value[: limit - 1] + "…")


def _email(raw: str) -> str | None:
    if not raw:
        return None
    # Fast path, same answer: a plain local part at a domain email_validator already
    # accepted is valid and normalizes to itself @ that domain's normal form.
    local, _, domain = raw.rpartition("@")
    known = _known_domains.get(domain)
    if known is not None and len(local) <= 64 and _PLAIN_LOCAL_PART.fullmatch(local):
        address = f"{local}@{known}"
        if len(address) <= 254:
            return address
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{_shown(raw)} is not a valid email address ({exc})") from None
    if result.domain.isascii() and len(_known_domains) < _MAX_KNOWN_DOMAINS:
        _known_domains[domain] = result.domain
    return str(result.normalized)


def _phone(raw: str, region: str | None) -> str | None:
    if not raw:
        return None
    if region is None and not raw.startswith("+"):
        raise ValueError(
            f"{_shown(raw)} has no country code and DEFAULT_PHONE_REGION is not set; "
            "write it as +52… (E.164) or set DEFAULT_PHONE_REGION (e.g. MX)"
        )
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        raise ValueError(f"{_shown(raw)} is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        where = phonenumbers.region_code_for_country_code(number.country_code)
        country = f" for {where}" if where and where != "ZZ" else ""
        raise ValueError(f"{_shown(raw)} is not a valid phone number{country}")
    # E.164 is "+", the country code and the national significant number: formatting it
    # through format_number costs half of the whole validation.
    return f"+{number.country_code}{phonenumbers.national_significant_number(number)}"


def _birth_date(raw: str, today: date) -> date | None:
    if not raw:
        return None
    try:
        if not _ISO_DATE.fullmatch(raw):
            raise ValueError
        value = date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{_shown(raw)} is not a date in YYYY-MM-DD form") from None
    if value > today:
        raise ValueError(f"{raw} is in the future")
    if value.year < 1900:
        raise ValueError(f"{raw} is before 1900")
    return value


def _last_study_at(raw: str) -> datetime | None:
    if not raw:
        return None
    try:
        if _ISO_DATE.fullmatch(raw):  # a date alone means midnight UTC
            return datetime.combine(date.fromisoformat(raw), time(), tzinfo=UTC)
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{_shown(raw)} is not an ISO date or date-time such as 2024-03-01 "
            "or 2024-03-01T14:30:00-06:00"
        ) from None
    if value.tzinfo is None:  # naive means UTC
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _timezone(raw: str) -> str | None:
    if not raw:
        return None
    name = _canonical_zone(raw)
    if name is None:
        raise ValueError(f"{_shown(raw)} is not an IANA time zone such as America/Mexico_City")
    return name


@lru_cache(maxsize=2048)
def _canonical_zone(name: str) -> str | None:
    try:
        ZoneInfo(name)
        return name
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return _zones_by_lower_name().get(name.lower())


@lru_cache(maxsize=1)
def _zones_by_lower_name() -> dict[str, str]:
    return {zone.lower(): zone for zone in available_timezones()}


def _consent(raw: str) -> bool:
    word = raw.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:  # blank is no consent: marketing needs an explicit yes
        return False
    raise ValueError(f"{_shown(raw)} is not one of true/false, yes/no, 1/0")
