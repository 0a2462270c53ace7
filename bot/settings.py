"""Settings: read once from the environment and `.env` into one typed object (SPEC §2)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.limits import CampaignLimits
from services.quiet_hours import QuietHours

# Where plain http is acceptable for PUBLIC_BASE_URL: links that never leave this machine.
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Printable ASCII in the path, without what would end a `<URL>` header or start a query.
_PUBLIC_URL = re.compile(r"(?:https://[a-z0-9.-]+|http://(?:localhost|127\.0\.0\.1|\[::1\]))"
                         r"(?::\d{1,5})?(?:/[!#-;=@-\[\]-~]*)?")
_DURATION = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?\s*$", re.IGNORECASE)


def parse_duration(value: Any) -> timedelta:
    """`1h`, `30m`, `90s`, `1h30m` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    text = str(value).strip()
    if text.isdigit():
        return timedelta(seconds=int(text))
    match = _DURATION.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError("must be a duration such as 30m, 1h or 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def parse_quiet_hours(value: Any) -> QuietHours | None:
    """`HH:MM-HH:MM` (the window in which SMS may be sent) or `off`."""
    if value is None or isinstance(value, QuietHours):
        return value
    text = str(value).strip().lower()
    if text in {"off", "none", "false", "0", ""}:
        return None
    match = re.fullmatch(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", text)
    if not match:
        raise ValueError("must be a window such as 08:00-21:00, or off")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    try:
        start, end = time(h1, m1), time(h2, m2)
    except ValueError:
        raise ValueError("must use real times of day, such as 08:00-21:00") from None
    if start == end:
        raise ValueError("start and end are the same; use off to disable quiet hours")
    return QuietHours(start=start, end=end)


def _csv_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


OptionalStr = Annotated[str | None, BeforeValidator(_blank_to_none)]
Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Settings(BaseSettings):
    """Every setting of SPEC §2, with its default. Field names are the variables, lower-cased."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    database_url: str = "sqlite:///campaign_bot.db"
    port: int = Field(default=3000, ge=1, le=65535)

    slack_bot_token: OptionalStr = None
    slack_signing_secret: OptionalStr = None
    slack_app_token: OptionalStr = None
    slack_api_url: str = "https://slack.com/api/"
    slack_notify_channel: OptionalStr = None
    campaign_bot_admins: Annotated[list[str], NoDecode, BeforeValidator(_csv_list)] = []

    email_backend: Annotated[Literal["smtp", "file"] | None, BeforeValidator(_blank_to_none)] = None
    smtp_host: OptionalStr = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: OptionalStr = None
    smtp_password: OptionalStr = None
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout: Annotated[timedelta, BeforeValidator(parse_duration)] = timedelta(seconds=30)
    email_from: OptionalStr = None
    clinic_postal_address: OptionalStr = None
    clinic_name: str = "Our clinic"
    email_tracking: bool = True

    sms_backend: Annotated[Literal["twilio", "file"] | None, BeforeValidator(_blank_to_none)] = None
    twilio_account_sid: OptionalStr = None
    twilio_auth_token: OptionalStr = None
    twilio_from_number: OptionalStr = None
    twilio_messaging_service_sid: OptionalStr = None
    twilio_api_url: str = "https://api.twilio.com"
    sms_opt_out_text: str = "Reply STOP to opt out"

    public_base_url: OptionalStr = None
    email_rate: float = Field(default=10.0, gt=0, le=10_000)
    sms_rate: float = Field(default=1.0, gt=0, le=1_000)
    schedule_grace: Duration = timedelta(hours=1)
    scheduler_sweep: Duration = timedelta(seconds=10)
    retry_for: Duration = timedelta(minutes=30)
    quiet_hours: Annotated[QuietHours | None, NoDecode, BeforeValidator(parse_quiet_hours)] = (
        QuietHours(start=time(8, 0), end=time(21, 0))
    )
    clinic_timezone: str = "UTC"
    default_phone_region: Annotated[str | None, BeforeValidator(_blank_to_none)] = None

    max_audience: int = Field(default=500, ge=1, le=100_000)
    attachment_max_mb: float = Field(default=5, gt=0, le=25)
    outbox_dir: Path = Path("outbox")
    segments_file: Path = Path("segments.yml")
    rules_file: Path = Path("rules.yml")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^(sqlite(\+aiosqlite)?:///|postgres(ql)?(\+asyncpg)?://)", value):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value

    @field_validator("slack_api_url", "twilio_api_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str | None) -> str | None:
        """https only: unsubscribe, tracking and media links carry signed tokens, and Twilio
        signs its webhooks over this URL; plain http is for a developer's own machine.

        Checked as strictly as the email sender checks the unsubscribe link built from it,
        so a URL accepted here never fails a campaign's emails at send time.
        """
        if value is None:
            return None
        try:
            parts = urlsplit(value.strip())
        except ValueError:
            parts = urlsplit("")
        scheme, host = parts.scheme.lower(), (parts.hostname or "")
        if scheme == "http" and host and host not in _LOCAL_HOSTS:
            raise ValueError("must start with https:// (http:// is only allowed for "
                             "localhost, 127.0.0.1 or ::1); put the bot behind TLS and set "
                             "its https URL, e.g. https://campaigns.example.org")
        url = f"{scheme}://{parts.netloc.lower()}{parts.path}"
        if parts.query or parts.fragment or not _PUBLIC_URL.fullmatch(url):
            raise ValueError("must be this service's public https:// URL (a host name, an "
                             "optional port and path; no user, query or fragment), e.g. "
                             "https://campaigns.example.org")
        return url

    @field_validator("clinic_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value.strip())
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not an IANA time zone such as America/Mexico_City") from None
        return value.strip()

    @field_validator("default_phone_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is None:
            return None
        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("is not a two-letter region code such as MX or US")
        return region

    @field_validator("email_from")
    @classmethod
    def _email_from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        address = value.strip()
        match = re.fullmatch(r"\s*(.*?)\s*<([^<>]+)>\s*", address)
        bare = match.group(2) if match else address
        try:
            validate_email(bare, check_deliverability=False)
        except EmailNotValidError:
            raise ValueError("must be an email address such as clinic@example.com") from None
        return address

    # Derived values: what the composition root actually uses.
    @property
    def effective_email_backend(self) -> str:
        return self.email_backend or ("smtp" if self.smtp_host else "file")

    @property
    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid or self.twilio_auth_token)

    @property
    def effective_sms_backend(self) -> str:
        return self.sms_backend or ("twilio" if self.twilio_configured else "file")

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_bot_token)

    @property
    def socket_mode(self) -> bool:
        return bool(self.slack_app_token)

    @property
    def link_base_url(self) -> str:
        """Where links in messages point: PUBLIC_BASE_URL, else this machine (file outbox)."""
        return (self.public_base_url or f"http://localhost:{self.port}").rstrip("/")

    @property
    def limits(self) -> CampaignLimits:
        return CampaignLimits(
            max_audience=self.max_audience,
            attachment_max_bytes=int(self.attachment_max_mb * 1024 * 1024),
            sms_opt_out_text=self.sms_opt_out_text,
        )


@dataclass(frozen=True)
class ConfigProblem:
    variable: str
    fix: str

    def __str__(self) -> str:
        return f"configuration error: {self.variable} {self.fix}"


_HINTS = {
    "port": "must be a port number between 1 and 65535",
    "smtp_port": "must be a port number between 1 and 65535 (587 for STARTTLS, 465 for TLS)",
    "smtp_security": "must be one of none, starttls, tls",
    "email_backend": "must be smtp or file",
    "sms_backend": "must be twilio or file",
    "email_rate": "must be a number of messages per second greater than 0, such as 10",
    "sms_rate": "must be a number of messages per second greater than 0, such as 1",
    "max_audience": "must be a whole number between 1 and 100000",
    "attachment_max_mb": "must be a number of megabytes greater than 0 and at most 25",
    "log_level": "must be one of DEBUG, INFO, WARNING, ERROR",
}


def _problem_from_error(error: dict[str, Any]) -> ConfigProblem:
    field = str(error["loc"][0]) if error.get("loc") else "configuration"
    variable = field.upper()
    raw = error.get("input")
    shown = f"={raw!r}" if isinstance(raw, str | int | float) else ""
    message = str(error.get("msg", "is invalid"))
    message = message.removeprefix("Value error, ")
    hint = _HINTS.get(field, message)
    return ConfigProblem(f"{variable}{shown}", f"{hint}; fix it in the environment or .env")


def cross_checks(settings: Settings) -> list[ConfigProblem]:
    """Half-configured services: a setting that makes no sense without another."""
    problems: list[ConfigProblem] = []

    def need(condition: bool, variable: str, fix: str) -> None:
        if condition:
            problems.append(ConfigProblem(variable, fix))

    s = settings
    need(s.email_backend == "smtp" and not s.smtp_host, "SMTP_HOST",
         "is required when EMAIL_BACKEND=smtp; set it to your SMTP server's host name")
    smtp = s.effective_email_backend == "smtp"
    need(smtp and not s.email_from, "EMAIL_FROM",
         "is required when SMTP is configured; set it to the clinic's sender address")
    need(smtp and not s.clinic_postal_address, "CLINIC_POSTAL_ADDRESS",
         "is required when SMTP is configured: every marketing email must carry it")
    need(smtp and not s.public_base_url, "PUBLIC_BASE_URL",
         "is required when SMTP is configured: every marketing email carries an unsubscribe "
         "link to it; set it to this service's public https URL")
    need(bool(s.smtp_username) != bool(s.smtp_password),
         "SMTP_PASSWORD" if s.smtp_username else "SMTP_USERNAME",
         "must be set together with "
         + ("SMTP_USERNAME" if s.smtp_username else "SMTP_PASSWORD") + " (or neither)")
    twilio = s.effective_sms_backend == "twilio"
    need(twilio and not s.twilio_account_sid, "TWILIO_ACCOUNT_SID",
         "is required for Twilio; copy it from the Twilio console (it starts with AC)")
    need(twilio and not s.twilio_auth_token, "TWILIO_AUTH_TOKEN",
         "is required for Twilio; copy it from the Twilio console")
    need(twilio and not (s.twilio_from_number or s.twilio_messaging_service_sid),
         "TWILIO_FROM_NUMBER",
         "or TWILIO_MESSAGING_SERVICE_SID is required for Twilio; set one of them")
    need(bool(s.twilio_from_number and s.twilio_messaging_service_sid),
         "TWILIO_MESSAGING_SERVICE_SID",
         "and TWILIO_FROM_NUMBER are both set; keep only one of them")
    if s.twilio_from_number:
        try:
            number = phonenumbers.parse(s.twilio_from_number, None)
            valid = phonenumbers.is_possible_number(number)
        except phonenumbers.NumberParseException:
            valid = False
        need(not valid, "TWILIO_FROM_NUMBER", "must be an E.164 phone number, e.g. +15551234567")
    need(bool(s.twilio_account_sid) and not str(s.twilio_account_sid).startswith("AC"),
         "TWILIO_ACCOUNT_SID", "must start with AC; copy it from the Twilio console")
    need(bool(s.slack_app_token) and not s.slack_bot_token, "SLACK_BOT_TOKEN",
         "is required with SLACK_APP_TOKEN; copy the Bot User OAuth Token (xoxb-…)")
    need(bool(s.slack_signing_secret) and not s.slack_bot_token, "SLACK_BOT_TOKEN",
         "is required with SLACK_SIGNING_SECRET; copy the Bot User OAuth Token (xoxb-…)")
    need(bool(s.slack_bot_token) and not s.slack_app_token and not s.slack_signing_secret,
         "SLACK_SIGNING_SECRET",
         "is required in HTTP mode (or set SLACK_APP_TOKEN for Socket Mode); "
         "copy it from Basic Information")
    need(bool(s.slack_bot_token) and not str(s.slack_bot_token).startswith("xoxb-"),
         "SLACK_BOT_TOKEN", "must be a bot token starting with xoxb-")
    need(bool(s.slack_app_token) and not str(s.slack_app_token).startswith("xapp-"),
         "SLACK_APP_TOKEN", "must be an app-level token starting with xapp-")
    return problems


class ConfigurationError(Exception):
    """Raised by `load_settings`; each problem is one line naming a variable and its fix."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems

    def one_line(self) -> str:
        """The first problem, and the names of any others, on one line."""
        first, rest = self.problems[0], self.problems[1:]
        if not rest:
            return str(first)
        others = ", ".join(p.variable.split("=")[0] for p in rest)
        return f"{first} (also to fix: {others})"


def load_settings(**overrides: Any) -> Settings:
    """Read and check the settings; raise ConfigurationError with one problem per variable."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError([_problem_from_error(e) for e in exc.errors()]) from None
    problems = cross_checks(settings)
    if problems:
        raise ConfigurationError(problems)
    return settings
