"""`campaign-bot check`: one line per check, the fix on failure, non-zero when any fails."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bot.db import upgrade_async
from tests.bot.test_settings import clean_env
from tests.fakes.smtp_server import FakeSmtp
from tests.fakes.twilio_server import FakeTwilio

SID, TOKEN = "AC" + "2" * 32, "twilio-token"


async def run_check(tmp_path: Path, **env: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "check",
        cwd=tmp_path, env=clean_env(DATABASE_URL=f"sqlite:///{tmp_path}/c.db", **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=90)
    return int(process.returncode or 0), out.decode()


def smtp_env(port: int, password: str) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "SMTP_SECURITY": "none",
        "SMTP_USERNAME": "clinic", "SMTP_PASSWORD": password,
        "EMAIL_FROM": "Clinic <clinic@example.org>", "CLINIC_POSTAL_ADDRESS": "Calle 1",
        "PUBLIC_BASE_URL": "https://bot.example.org",
    }


async def test_everything_configured_and_accepted(tmp_path: Path) -> None:
    await upgrade_async(f"sqlite:///{tmp_path}/c.db")
    with FakeSmtp(auth=("clinic", "right")) as smtp:
        async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
            code, out = await run_check(
                tmp_path, **smtp_env(smtp.port, "right"), TWILIO_ACCOUNT_SID=SID,
                TWILIO_AUTH_TOKEN=TOKEN, TWILIO_FROM_NUMBER="+15005550006",
                TWILIO_API_URL=twilio.url, CAMPAIGN_BOT_ADMINS="",
            )
        assert smtp.messages == []  # nothing is sent by a check
    assert code == 0, out
    lines = out.strip().splitlines()
    assert any(line.startswith("ok") and "email (SMTP)" in line for line in lines)
    assert any(line.startswith("ok") and "SMS (Twilio)" in line for line in lines)
    assert lines[-1] == "all checks passed"


async def test_an_unmigrated_database_says_how_to_fix_it(tmp_path: Path) -> None:
    code, out = await run_check(tmp_path)
    assert code == 1
    assert "FAIL  database" in out and "campaign-bot db upgrade" in out


async def test_rejected_credentials_fail_with_the_fix(tmp_path: Path) -> None:
    with FakeSmtp(auth=("clinic", "right")) as smtp:
        async with FakeTwilio(account_sid=SID, auth_token=TOKEN) as twilio:
            code, out = await run_check(
                tmp_path, **smtp_env(smtp.port, "wrong"), TWILIO_ACCOUNT_SID=SID,
                TWILIO_AUTH_TOKEN="wrong", TWILIO_FROM_NUMBER="+15005550006",
                TWILIO_API_URL=twilio.url,
            )
    assert code != 0
    failed = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any("email (SMTP)" in line and "SMTP_PASSWORD" in line for line in failed), out
    assert any("SMS (Twilio)" in line and "TWILIO_AUTH_TOKEN" in line for line in failed), out


async def test_unreachable_smtp_server_is_named(tmp_path: Path) -> None:
    code, out = await run_check(tmp_path, **smtp_env(1, "x"))
    assert code != 0
    assert any(line.startswith("FAIL") and "127.0.0.1:1" in line for line in out.splitlines())
