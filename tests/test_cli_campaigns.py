"""The command line in a real subprocess: campaigns, access and audit (SPEC §2)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.cli import build_parser, main
from bot.commands.campaigns import parse_at
from bot.db import Database
from services.models import Campaign, CampaignStatus
from tests.campaign_fixtures import add_patients, pdf_bytes

ROOT = Path(__file__).resolve().parent.parent
CLINIC_TZ = "America/Mexico_City"
STATUSES = ("pending", "sending", "sent", "delivered", "failed", "skipped", "unknown")


def environment(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "OUTBOX_DIR": str(tmp_path / "outbox"),
        "SEGMENTS_FILE": str(tmp_path / "segments.yml"),
        "RULES_FILE": str(tmp_path / "rules.yml"),
        "CLINIC_TIMEZONE": CLINIC_TZ,
        "SLACK_NOTIFY_CHANNEL": "C0NOTIFY",
        "CAMPAIGN_BOT_ADMINS": "U0BOSS",
    }


def cli(db: Database, tmp_path: Path, *args: str, **extra_env: str
        ) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "PYTHONIOENCODING": "utf-8",
        **environment(db.url, tmp_path),
        **extra_env,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )


async def campaign_count(db: Database) -> int:
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(Campaign)) or 0)


async def test_create_list_show_and_cancel(db: Database, tmp_path: Path) -> None:
    await add_patients(db, 3)
    patients = tmp_path / "patients.txt"
    patients.write_text("P0001\n\n  P0003  \nP0001\n", encoding="utf-8")
    flyer = tmp_path / "flyer.png"
    flyer.write_bytes(pdf_bytes())  # a PDF with the wrong name: accepted as a PDF
    at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    at_text = at.astimezone(ZoneInfo("Europe/Madrid")).isoformat()

    created = cli(
        db, tmp_path, "campaigns", "create", "--patients", str(patients),
        "--subject", "Check-up time, {{ first_name }}", "--message",
        "Dear {{ first_name }}, your yearly check-up is due.", "--channel", "EMAIL_SMS",
        "--preview-text", "Book now", "--tags", "Promo, spring,promo",
        "--attachment", str(flyer), "--at", at_text,
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().isdigit() and created.stdout == created.stdout.strip() + "\n"
    campaign_id = int(created.stdout)

    listed = cli(db, tmp_path, "campaigns", "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "CHANNEL", "AUDIENCE", "WHEN", "SUBJECT"]
    assert row.split()[:4] == [str(campaign_id), "scheduled", "EMAIL_SMS", "2"]
    assert "Check-up time, {{ first_name }}" in row

    shown = cli(db, tmp_path, "campaigns", "show", str(campaign_id), "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    for key, kind in {"id": int, "status": str, "channel": str, "subject": str, "tags": list,
                      "audience": int, "send_at": str, "deliveries": dict}.items():
        assert isinstance(data[key], kind), key
    assert data["started_at"] is None and data["finished_at"] is None
    assert (data["id"], data["status"], data["channel"]) == (campaign_id, "scheduled", "EMAIL_SMS")
    assert (data["audience"], data["tags"]) == (2, ["promo", "spring"])
    assert datetime.fromisoformat(data["send_at"]) == at
    assert data["attachment"]["filename"] == "flyer.pdf"
    assert data["attachment"]["type"] == "application/pdf"
    assert set(data["deliveries"]) == {"email", "sms"}
    for counts in data["deliveries"].values():
        assert all(counts[status] == 0 for status in STATUSES)
        assert counts["skipped_reasons"] == {} and counts["failed_reasons"] == {}
    assert data["slack_channel_id"] == "C0NOTIFY"

    human = cli(db, tmp_path, "campaigns", "show", str(campaign_id))
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"Campaign {campaign_id}: scheduled")
    assert "Audience:    2 patients (selected patients)" in human.stdout

    cancelled = cli(db, tmp_path, "campaigns", "cancel", str(campaign_id))
    assert (cancelled.returncode, cancelled.stdout) == (0, f"campaign {campaign_id} cancelled\n")
    async with db.transaction() as session:
        stored = await session.get_one(Campaign, campaign_id)
    assert stored.status is CampaignStatus.cancelled and stored.finished_at is not None


async def test_invalid_input_exits_2_with_one_line_per_field(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 1)
    result = cli(
        db, tmp_path, "campaigns", "create", "--patients", str(tmp_path / "missing.txt"),
        "--subject", "Hey", "--message", "Too short", "--channel", "FAX",
        "--tags", ",".join(f"t{i}" for i in range(11)), "--at", "2001-01-01T09:00",
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "subject", "message", "channel", "patients", "send_at", "tags"
    ]
    assert lines[0] == "subject: must be at least 5 characters (it has 3)"
    assert lines[3].startswith("patients: cannot read ")
    assert lines[4] == "send_at: is in the past; pick a time at least 1 minute from now"

    unknown = cli(
        db, tmp_path, "campaigns", "create", "--segment", "nope", "--subject", "Hello there",
        "--message", "A message long enough to pass.", "--channel", "SMS",
        "--at", "2001-01-01T09:00",
    )
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "audience: there is no smart segment 'nope'",
        "send_at: is in the past; pick a time at least 1 minute from now",
    ]
    assert await campaign_count(db) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["campaigns", "create", "--segment", "all", "--subject", "Hello", "--message", "m",
         "--channel", "SMS", "--send-now", "--at", "2030-01-01"],
        ["campaigns", "create", "--segment", "all", "--patients", "f.txt", "--subject", "Hello",
         "--message", "m", "--channel", "SMS", "--send-now"],
        ["campaigns", "create", "--segment", "all", "--subject", "Hello", "--message", "m",
         "--channel", "SMS"],
        ["campaigns", "show", "seven"],
        ["access", "grant", "U0ANA", "owner"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(args)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_at_without_an_offset_is_clinic_time() -> None:
    assert parse_at("2030-01-31T09:00", CLINIC_TZ) == datetime(
        2030, 1, 31, 9, 0, tzinfo=ZoneInfo(CLINIC_TZ)
    )
    assert parse_at("2030-01-31T09:00Z", CLINIC_TZ) == datetime(2030, 1, 31, 9, 0, tzinfo=UTC)


async def test_send_now_and_a_local_time_without_offset(db: Database, tmp_path: Path) -> None:
    await add_patients(db, 2)
    common = ("--segment", "all", "--subject", "Hello {{ first_name }}", "--message",
              "A message that is long enough.", "--channel", "EMAIL")
    now = cli(db, tmp_path, "campaigns", "create", *common, "--send-now")
    assert now.returncode == 0, now.stderr
    local = (datetime.now(ZoneInfo(CLINIC_TZ)) + timedelta(days=1)).replace(
        second=0, microsecond=0, tzinfo=None
    )
    later = cli(db, tmp_path, "campaigns", "create", *common, "--at", local.isoformat())
    assert later.returncode == 0, later.stderr
    async with db.transaction() as session:
        queued = await session.get_one(Campaign, int(now.stdout))
        scheduled = await session.get_one(Campaign, int(later.stdout))
    assert (queued.status, queued.send_now, queued.segment_slug) == (
        CampaignStatus.scheduled, True, "all"
    )
    assert queued.slack_channel_id == "C0NOTIFY"
    assert scheduled.send_at == local.replace(tzinfo=ZoneInfo(CLINIC_TZ))
    assert scheduled.audience_size == 2


def test_access_and_audit_export(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """In-process (`main(argv)`), to keep the suite fast; the subprocess tests cover the entry."""
    monkeypatch.chdir(tmp_path)
    for name, value in environment(database_url, tmp_path).items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        errors.append(captured.err)
        return code, captured.out

    errors: list[str] = []

    assert run("access", "grant", "U0ANA", "write") == (0, "U0ANA now has write access\n")
    assert run("access", "revoke", "U0ANA", "write") == (0, "U0ANA now has read access\n")
    code, listed = run("access", "list")
    assert code == 0
    assert [line.split()[:2] for line in listed.splitlines()[1:]] == [
        ["U0ANA", "read"], ["U0BOSS", "admin"]
    ]
    assert run("access", "grant", "nobody", "read")[0] == 2
    assert "user: 'nobody' is not a Slack user id" in errors[-1]

    code, exported = run("audit", "export")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [r["action"] for r in rows] == ["access.granted", "access.revoked"]
    assert json.loads(rows[1]["details"]) == {"user": "U0ANA", "previous": "write", "level": "read"}
    assert rows[0]["actor"].startswith("cli:")
    out = tmp_path / "audit.csv"
    assert run("audit", "export", "--out", str(out)) == (0, "")
    assert out.read_bytes().decode("utf-8") == exported


async def test_the_sms_length_check_counts_the_attachment_link_sms_will_carry(
    db: Database, tmp_path: Path
) -> None:
    await add_patients(db, 1, sms_opt_in=True, phone="+525512345678")
    (tmp_path / "patients.txt").write_text("P0001\n")
    (tmp_path / "flyer.pdf").write_bytes(pdf_bytes())
    message = "Hola " + "a" * 1540  # fits in an SMS alone, not with the opt-out line and link
    common = ["campaigns", "create", "--patients", str(tmp_path / "patients.txt"),
              "--subject", "Hello there", "--message", message, "--channel", "SMS",
              "--send-now"]
    with_link = cli(db, tmp_path, *common, "--attachment", str(tmp_path / "flyer.pdf"),
                    PUBLIC_BASE_URL="https://bot.example.org")
    assert with_link.returncode == 2, with_link.stderr
    assert with_link.stderr.startswith("message: ")
    without = cli(db, tmp_path, *common)
    assert without.returncode == 0, without.stderr
