"""Every CSV the bot writes neutralises cells a spreadsheet would run (SPEC §7, issue 9 item 3)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from bot.db import Database
from services import audit, csv_safe
from services.patients import import_patients

FORMULAS = ['=HYPERLINK("https://evil.example/x","clinic")', "+SUM(A1:A9)", "@cmd", "-2+3"]


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2+3", "'-2+3"),
        ("@cmd", "'@cmd"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("P-1", "P-1"),
        ("", ""),
        (7, 7),
        (-7, -7),  # numbers the bot itself writes are not text a spreadsheet would run
    ],
)
def test_neutralised(cell: object, written: object) -> None:
    assert csv_safe.neutralised(cell) == written


def _raw_cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_rejected_rows_report_prefixes_formulas(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "hostile.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["external_id", "email"])
        for formula in FORMULAS:
            writer.writerow([formula, "not an email"])  # rejected: the report quotes it
        writer.writerow(["P1", "=cmd|' /C calc'!A0"])
    summary = await import_patients(
        db, path, actor="cli:test", phone_region="MX", workers=0
    )
    assert summary.rejected == len(FORMULAS) + 1
    assert summary.report_path is not None
    rows = _raw_cells(summary.report_path.read_text(encoding="utf-8-sig"))
    assert rows[0] == ["line", "external_id", "reason"]
    assert [r[1] for r in rows[1:]] == [*(f"'{f}" for f in FORMULAS), "P1"]
    # No cell of the report starts like a formula; the rejected value is still shown.
    for row in rows:
        for cell in row:
            assert not cell.startswith(csv_safe.FORMULA_STARTS), cell
    assert "=cmd|" in rows[-1][2]


async def test_audit_export_prefixes_formulas(db: Database) -> None:
    async with db.transaction() as session:
        for formula in FORMULAS:
            await audit.record(session, formula, "@action", file="=evil.csv")
    out = io.StringIO()
    async with db.transaction() as session:
        assert await audit.export_csv(session, out) == len(FORMULAS)
    rows = _raw_cells(out.getvalue())
    assert rows[0] == audit.CSV_COLUMNS
    assert [r[2] for r in rows[1:]] == [f"'{f}" for f in FORMULAS]
    assert {r[3] for r in rows[1:]} == {"'@action"}
    for row in rows:
        for cell in row:
            assert not cell.startswith(csv_safe.FORMULA_STARTS), cell
