"""Settings: defaults, every variable documented, and configuration mistakes stop start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import time, timedelta
from pathlib import Path

import pytest

from bot.settings import ConfigurationError, Settings, load_settings, parse_duration

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The process environment without any campaign-bot setting, plus `extra`."""
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(extra)
    return env


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_the_embedded_ones(no_env: None) -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///campaign_bot.db"
    assert s.port == 3000
    assert s.effective_email_backend == "file"
    assert s.effective_sms_backend == "file"
    assert not s.slack_enabled
    assert s.schedule_grace == timedelta(hours=1)
    assert s.quiet_hours is not None
    assert (s.quiet_hours.start, s.quiet_hours.end) == (time(8), time(21))
    assert s.max_audience == 500 and s.attachment_max_mb == 5
    assert s.smtp_port == 587 and s.smtp_security == "starttls"
    assert s.slack_api_url == "https://slack.com/api/"
    assert s.twilio_api_url == "https://api.twilio.com"
    assert s.outbox_dir == Path("outbox")


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert documented == {name.upper() for name in Settings.model_fields}


def test_dotenv_file_is_read(no_env: None, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "MAX_AUDIENCE=42\nQUIET_HOURS=off\nCAMPAIGN_BOT_ADMINS=U1A, U2B\n"
    )
    s = load_settings()
    assert s.max_audience == 42
    assert s.quiet_hours is None
    assert s.campaign_bot_admins == ["U1A", "U2B"]


def test_smtp_configured_makes_smtp_the_backend(no_env: None) -> None:
    s = load_settings(
        smtp_host="mail.example.org", email_from="Clinic <c@example.org>",
        clinic_postal_address="Av. Siempre Viva 742", public_base_url="https://bot.example.org",
    )
    assert s.effective_email_backend == "smtp"


@pytest.mark.parametrize("value, expected", [
    ("1h", timedelta(hours=1)), ("30m", timedelta(minutes=30)), ("90", timedelta(seconds=90)),
    ("1h30m", timedelta(minutes=90)), ("45s", timedelta(seconds=45)),
])
def test_durations(value: str, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("overrides, variable", [
    ({"smtp_host": "mail.example.org"}, "EMAIL_FROM"),
    ({"email_backend": "smtp"}, "SMTP_HOST"),
    ({"smtp_username": "u", "smtp_host": "h", "email_from": "a@b.org",
      "clinic_postal_address": "x", "public_base_url": "https://x.org"}, "SMTP_PASSWORD"),
    ({"smtp_host": "h", "email_from": "a@b.org", "clinic_postal_address": "x"},
     "PUBLIC_BASE_URL"),
    ({"twilio_account_sid": "AC123"}, "TWILIO_AUTH_TOKEN"),
    ({"twilio_account_sid": "AC1", "twilio_auth_token": "t"}, "TWILIO_FROM_NUMBER"),
    ({"slack_bot_token": "xoxb-1"}, "SLACK_SIGNING_SECRET"),
    ({"slack_app_token": "xapp-1"}, "SLACK_BOT_TOKEN"),
    ({"quiet_hours": "8-21"}, "QUIET_HOURS"),
    ({"clinic_timezone": "Mars/Olympus"}, "CLINIC_TIMEZONE"),
    ({"default_phone_region": "XX"}, "DEFAULT_PHONE_REGION"),
    ({"database_url": "mysql://x"}, "DATABASE_URL"),
    ({"email_from": "not an address"}, "EMAIL_FROM"),
    ({"schedule_grace": "soon"}, "SCHEDULE_GRACE"),
])
def test_half_configured_or_invalid_settings_are_named(
    no_env: None, overrides: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**overrides)
    assert any(p.variable.startswith(variable) for p in info.value.problems), info.value


@pytest.mark.parametrize("env, variable", [
    ({"SMTP_PORT": "abc"}, "SMTP_PORT"),
    ({"SMTP_HOST": "mail.example.org"}, "EMAIL_FROM"),
    ({"MAX_AUDIENCE": "0"}, "MAX_AUDIENCE"),
    ({"SMS_RATE": "-1"}, "SMS_RATE"),
])
def test_run_exits_2_with_one_line_and_no_traceback(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"],
        cwd=tmp_path, env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and "Traceback" not in result.stderr
    assert "fix" in lines[0] or "set" in lines[0]


def test_a_bad_segments_file_stops_start_up_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "segments.yml").write_text(
        "- slug: vip\n  name: VIP\n  conditions:\n    - nonsense_column: {eq: 1}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run"], cwd=tmp_path,
        env=clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/x.db"),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "SEGMENTS_FILE" in last and "line 4" in last and "Traceback" not in result.stderr
