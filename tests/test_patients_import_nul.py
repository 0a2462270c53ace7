"""A NUL byte in a patient CSV: the row is rejected naming it (PostgreSQL cannot store it),
never a failed import blaming DATABASE_URL; a NUL near the start marks a binary file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.db import Database
from services.models import Patient
from services.patients import UnusableFile, import_patients
from tests.test_patients_import import read_report


def _rows(count: int) -> list[str]:
    return [f"P{n:04d},Ana{n},López,ana{n}@example.com,yes" for n in range(count)]


async def test_a_nul_in_a_field_rejects_that_row_only(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "patients.csv"
    lines = ["external_id,first_name,last_name,email,email_opt_in", *_rows(300),
             "N1,Be\x00a,Ruiz,bea@example.com,yes", "N2\x00,Carla,Sosa,carla@example.com,yes",
             "N3,Dora,Paz,dora@example.com,yes"]
    path.write_bytes(("\n".join(lines) + "\n").encode())
    assert b"\x00" not in path.read_bytes()[:8192]  # past the binary-file sniff
    summary = await import_patients(db, path, actor="cli:test", phone_region="MX", workers=0)
    assert (summary.inserted, summary.rejected) == (301, 2)
    report = read_report(summary.report_path or Path())
    assert [r["line"] for r in report] == ["302", "303"]
    assert report[0]["reason"].startswith("first_name: contains a NUL character")
    assert report[1]["reason"].startswith("external_id: contains a NUL character")
    assert report[1]["external_id"] == "N2\ufffd"  # shown, not written raw into the report
    async with db.read() as session:
        names = set((await session.execute(select(Patient.first_name))).scalars())
    assert "Dora" in names and not any("\x00" in n for n in names)


async def test_a_nul_near_the_start_is_a_binary_file(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "patients.csv"
    path.write_bytes(b"external_id,first_name\nP1,A\x00na\n")
    with pytest.raises(UnusableFile, match="binary"):
        await import_patients(db, path, actor="cli:test", phone_region="MX", workers=0)


def test_a_refused_value_is_not_blamed_on_database_url() -> None:
    from asyncpg.exceptions import CharacterNotInRepertoireError
    from sqlalchemy.exc import DBAPIError

    from bot.commands.patients import _refused_value

    class AdaptedError(Exception):
        pass

    driver = CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00')
    try:
        try:
            raise AdaptedError(str(driver)) from driver
        except AdaptedError as adapted:
            raise DBAPIError("COPY", None, adapted) from adapted
    except DBAPIError as wrapped:
        assert _refused_value(wrapped)
    assert not _refused_value(ConnectionRefusedError(111, "Connection refused"))
