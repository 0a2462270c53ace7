"""`patients import`: validation, upsert, the rejected-rows report, unusable files (SPEC §2)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update

from bot.db import Database
from services.models import AuditEntry, Patient, PatientTag
from services.patient_csv import Layout, PatientCsv, check_records
from services.patient_rows import COLUMNS, PatientRow, validate_row
from services.patients import ImportSummary, PatientImportError, UnusableFile, import_patients
from services.search_keys import patient_keys
from services.seed import synthetic_patients

ROOT = Path(__file__).resolve().parent.parent
TODAY = date(2025, 6, 1)


# --- helpers ---------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    columns = columns or list(COLUMNS)
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(external_id: str, **values: str) -> dict[str, str]:
    base = {
        "external_id": external_id,
        "first_name": "José",
        "last_name": "Núñez",
        "email": f"{external_id.lower()}@example.com",
        "phone": "+52 55 1234 5678",
        "email_opt_in": "yes",
        "sms_opt_in": "no",
    }
    return {**base, **values}


async def do_import(db: Database, path: Path, **kwargs: Any) -> ImportSummary:
    kwargs.setdefault("phone_region", "MX")
    kwargs.setdefault("workers", 0)
    return await import_patients(db, path, actor="cli:test", **kwargs)


async def catalog(db: Database) -> dict[str, Patient]:
    async with db.transaction() as session:
        found = (await session.execute(select(Patient).order_by(Patient.id))).scalars()
        return {p.external_id: p for p in found}


async def tags_of(db: Database) -> dict[str, set[str]]:
    async with db.transaction() as session:
        rows = await session.execute(
            select(Patient.external_id, PatientTag.tag).join(
                PatientTag, PatientTag.patient_id == Patient.id
            )
        )
        found: dict[str, set[str]] = {}
        for external_id, tag in rows:
            found.setdefault(external_id, set()).add(tag)
        return found


async def audit_entries(db: Database, action: str) -> list[AuditEntry]:
    async with db.transaction() as session:
        query = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        return list((await session.execute(query)).scalars())


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as report:
        return list(csv.DictReader(report))


def cli(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path,
        env=clean_env(database_url, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def leftovers(folder: Path) -> list[Path]:
    """Reports or half-written reports."""
    return [*folder.glob("*rejected*"), *folder.glob(".*")]


def clean_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "PYTHONIOENCODING": "utf-8",
        "DATABASE_URL": database_url,
        "DEFAULT_PHONE_REGION": "MX",
    }


# --- validation of one row (pure) ------------------------------------------------------------


def check(phone_region: str | None = "MX", **values: str) -> PatientRow | str:
    return validate_row({"external_id": "P1", **values}, phone_region=phone_region, today=TODAY)


def test_a_valid_row_is_normalized() -> None:
    result = check(
        email="Jose.Nunez@Example.COM",
        phone="55 1234 5678",
        birth_date="1980-02-29",
        patient_type=" Oncology ",
        last_study_at="2024-03-01T10:00:00-06:00",
        timezone="america/mexico_city",
        email_opt_in="YES",
        sms_opt_in="1",
        tags=" VIP; diabetes ;vip;;",
    )
    assert isinstance(result, PatientRow)
    assert result.email == "Jose.Nunez@example.com"
    assert result.phone == "+525512345678"
    assert result.birth_date == date(1980, 2, 29)
    assert result.patient_type == "oncology"
    assert result.last_study_at == datetime(2024, 3, 1, 16, 0, tzinfo=UTC)
    assert result.timezone == "America/Mexico_City"
    assert (result.email_opt_in, result.sms_opt_in) == (True, True)
    assert result.tags == ("vip", "diabetes")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),  # a date: midnight UTC
        ("2024-03-01T10:30:00", datetime(2024, 3, 1, 10, 30, tzinfo=UTC)),  # naive: UTC
        ("2024-03-01 10:30:00Z", datetime(2024, 3, 1, 10, 30, tzinfo=UTC)),
        ("2024-03-01T23:30:00-06:00", datetime(2024, 3, 2, 5, 30, tzinfo=UTC)),
    ],
)
def test_last_study_at_is_stored_as_utc(raw: str, expected: datetime) -> None:
    result = check(last_study_at=raw)
    assert isinstance(result, PatientRow)
    assert result.last_study_at == expected
    assert result.last_study_at.utcoffset() is not None


@pytest.mark.parametrize("word", ["true", "TRUE", "Yes", "YES", "1"])
def test_consent_words_meaning_yes(word: str) -> None:
    result = check(email_opt_in=word, sms_opt_in=f" {word} ")
    assert isinstance(result, PatientRow) and result.email_opt_in and result.sms_opt_in


@pytest.mark.parametrize("word", ["false", "No", "0", "", "  "])
def test_consent_words_meaning_no_and_blank_is_no(word: str) -> None:
    result = check(email_opt_in=word, sms_opt_in=word)
    assert isinstance(result, PatientRow)
    assert (result.email_opt_in, result.sms_opt_in) == (False, False)


@pytest.mark.parametrize(
    ("values", "region", "reason"),
    [
        ({"external_id": "  "}, "MX", "external_id: is empty"),
        ({"external_id": "x" * 101}, "MX", "external_id: longer than 100"),
        ({"email": "jose@"}, "MX", "email: 'jose@' is not a valid email address"),
        ({"email": "jose@@example.com"}, "MX", "is not a valid email address"),
        ({"phone": "+52 55 1234"}, "MX", "phone: '+52 55 1234' is not a valid phone number"),
        ({"phone": "hello"}, "MX", "phone: 'hello' is not a phone number"),
        ({"phone": "55 1234 5678"}, None, "has no country code and DEFAULT_PHONE_REGION"),
        ({"birth_date": "01/02/1980"}, "MX", "birth_date: '01/02/1980' is not a date in YYYY"),
        ({"birth_date": "1981-02-29"}, "MX", "is not a date in YYYY-MM-DD form"),
        ({"birth_date": "2025-06-02"}, "MX", "birth_date: 2025-06-02 is in the future"),
        ({"last_study_at": "yesterday"}, "MX", "last_study_at: 'yesterday' is not an ISO date"),
        ({"timezone": "Mars/Olympus"}, "MX", "timezone: 'Mars/Olympus' is not an IANA time"),
        ({"email_opt_in": "maybe"}, "MX", "email_opt_in: 'maybe' is not one of true/false"),
        ({"sms_opt_in": "si"}, "MX", "sms_opt_in: 'si' is not one of"),
        ({"tags": ";".join(f"t{i}" for i in range(11))}, "MX", "tags: 11 tags; at most 10"),
        ({"tags": "ok;" + "x" * 31}, "MX", "is longer than 30 characters"),
        ({"first_name": "a" * 100, "last_name": "b" * 100}, "MX",
         "first_name and last_name together: too long to index for search (200 characters"),
        ({"email": "a" * 64 + "@" + ".".join(["b" * 60] * 3) + ".com"}, "MX",
         "email: too long to index"),
    ],
)
def test_each_rejection_reason(values: dict[str, str], region: str | None, reason: str) -> None:
    result = validate_row({"external_id": "P1", **values}, phone_region=region, today=TODAY)
    assert isinstance(result, str)
    assert reason in result


def test_boundaries_that_are_still_accepted() -> None:
    result = check(
        tags=";".join(f"t{i}" for i in range(10)) + ";T0",  # 10 distinct after de-duplication
        external_id="x" * 100,
        birth_date=TODAY.isoformat(),
        phone="+52 55 1234 5678",
    )
    assert isinstance(result, PatientRow)
    assert len(result.tags) == 10
    assert isinstance(check(tags="y" * 30), PatientRow)


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com", "Jose.Nunez+x@Example.COM", "A_B-C@EXAMPLE.COM", "a..b@example.com",
        ".a@example.com", "a.@example.com", "x" * 64 + "@example.com", "x" * 65 + "@example.com",
        "josé@example.com", "jose@exámple.com", '"q"@example.com', "a b@example.com",
        "a@example.com.", "a@localhost", "a@test", "a@" + "b" * 250 + ".com",
    ],
)
def test_email_fast_path_gives_email_validators_answer(address: str) -> None:
    try:
        expected: str | None = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        expected = None
    validate_row({"external_id": "P0", "email": "warm@" + address.rpartition("@")[2]},
                 phone_region=None)  # the domain is now known: the fast path may answer
    for _ in range(2):
        result = check(email=address)
        got = result.email if isinstance(result, PatientRow) else None
        assert got == expected


def test_every_bad_field_is_named_at_once() -> None:
    result = check(email="nope", email_opt_in="maybe", timezone="Nowhere")
    assert isinstance(result, str)
    assert result.count(";") == 2
    assert result.startswith("email:")


# --- importing into the database --------------------------------------------------------------


async def test_valid_import_stores_normalized_rows(db: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "patients.csv", [
        row("P1", email="Jose@Example.COM", phone="55 1234 5678", tags="VIP; Diabetes;vip",
            birth_date="1980-05-17", last_study_at="2024-03-01", timezone="America/Mexico_City",
            patient_type="Cardiology", sms_opt_in="TRUE"),
        row("P2", first_name="María", last_name="Ibáñez", email="", phone="",
            last_study_at="2024-03-01T10:00:00-06:00", email_opt_in="", sms_opt_in=""),
    ])
    summary = await do_import(db, path)
    assert (summary.inserted, summary.updated, summary.rejected) == (2, 0, 0)
    assert summary.report_path is None
    assert not (tmp_path / "patients.rejected.csv").exists()

    patients = await catalog(db)
    one, two = patients["P1"], patients["P2"]
    assert one.email == "Jose@example.com"
    assert one.phone == "+525512345678"
    assert one.tags == ["vip", "diabetes"]
    assert one.birth_date == date(1980, 5, 17) and one.birth_month == 5
    assert one.patient_type == "cardiology"
    assert one.last_study_at == datetime(2024, 3, 1, tzinfo=UTC)
    assert (one.email_opt_in, one.sms_opt_in) == (True, True)
    assert one.email_opted_out_at is None and one.created_at.tzinfo is not None
    assert (two.email, two.phone) == (None, None)
    assert two.last_study_at == datetime(2024, 3, 1, 16, tzinfo=UTC)
    assert (two.email_opt_in, two.sms_opt_in) == (False, False)  # blank means no consent
    for patient in (one, two):
        keys = patient_keys(
            first_name=patient.first_name, last_name=patient.last_name, email=patient.email,
            phone=patient.phone, external_id=patient.external_id,
        )
        assert {k: getattr(patient, k) for k in keys} == keys
    assert await tags_of(db) == {"P1": {"vip", "diabetes"}}

    [entry] = await audit_entries(db, "patients.imported")
    assert entry.actor == "cli:test"
    assert entry.details == {"file": "patients.csv", "inserted": 2, "updated": 0, "rejected": 0}


async def test_reimport_updates_and_keeps_opt_outs(db: Database, tmp_path: Path) -> None:
    first = write_csv(tmp_path / "a.csv", [row("P1", tags="vip;diabetes"), row("P2")])
    await do_import(db, first)
    before = await catalog(db)
    stop = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with db.transaction() as session:
        await session.execute(
            update(Patient).where(Patient.external_id == "P1")
            .values(sms_opted_out_at=stop, email_opted_out_at=stop)
        )

    second = write_csv(tmp_path / "b.csv", [
        row("P1", first_name="Pepe", sms_opt_in="yes", tags="new"),
        row("P2", last_name="Zúñiga"),
        row("P3"),
    ])
    summary = await do_import(db, second)
    assert (summary.inserted, summary.updated, summary.rejected) == (1, 2, 0)

    after = await catalog(db)
    one = after["P1"]
    assert one.first_name == "Pepe" and one.sms_opt_in is True
    assert one.sort_key == "nunez pepe" and one.first_name_key == "pepe"
    assert (one.sms_opted_out_at, one.email_opted_out_at) == (stop, stop)  # STOP survives
    assert (one.id, one.created_at) == (before["P1"].id, before["P1"].created_at)
    assert one.updated_at > before["P1"].updated_at
    assert after["P2"].last_name == "Zúñiga"
    assert await tags_of(db) == {"P1": {"new"}}
    assert [e.details["updated"] for e in await audit_entries(db, "patients.imported")] == [0, 2]


async def test_columns_absent_from_the_file_are_kept(db: Database, tmp_path: Path) -> None:
    await do_import(db, write_csv(tmp_path / "full.csv", [
        row("P1", tags="vip", birth_date="1990-01-02", sms_opt_in="yes"),
    ]))
    consent = write_csv(
        tmp_path / "consent.csv", [{"external_id": "P1", "sms_opt_in": "no"}],
        columns=["external_id", "sms_opt_in"],
    )
    summary = await do_import(db, consent)
    assert summary.updated == 1 and "email" in summary.unchanged_columns
    names = write_csv(
        tmp_path / "names.csv", [{"external_id": "P1", "first_name": "Pepe"}],
        columns=["external_id", "first_name"],
    )
    await do_import(db, names)

    patient = (await catalog(db))["P1"]
    assert patient.sms_opt_in is False
    assert (patient.email, patient.phone) == ("p1@example.com", "+525512345678")
    assert patient.birth_date == date(1990, 1, 2) and patient.tags == ["vip"]
    assert (patient.first_name, patient.last_name) == ("Pepe", "Núñez")
    assert patient.sort_key == "nunez pepe"
    assert await tags_of(db) == {"P1": {"vip"}}


async def test_report_lists_rejected_rows_with_their_lines(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    rows = [
        row("P1"),                                       # line 2
        row("P2", email="not-an-email"),                 # line 3
        row("P3", first_name="Ana\nMaría"),              # lines 4-5: a quoted line break
        row("P4", sms_opt_in="maybe"),                   # line 6
        row("P1", first_name="again"),                   # line 7: duplicate of line 2
        row("", first_name="nobody"),                    # line 8
        row("P5", phone="+1 555 0100"),                  # line 9
        row("P6", timezone="Mars/Base"),                 # line 10
        row("P3", first_name="later"),                   # line 11: duplicate of line 4
        row("P7", tags=";".join(f"t{i}" for i in range(11))),  # line 12
        row("P8", birth_date="1980-02-30"),              # line 13
    ]
    write_csv(path, rows)
    with path.open("a", encoding="utf-8", newline="") as out:
        out.write("P9,too,many,fields,,,,,,,,,,\n")      # line 14
    summary = await do_import(db, path, batch_size=3)

    assert (summary.inserted, summary.updated, summary.rejected) == (2, 0, 10)
    assert summary.report_path == tmp_path / "mixed.rejected.csv"
    report = read_report(summary.report_path)
    assert [(r["line"], r["external_id"]) for r in report] == [
        ("3", "P2"), ("6", "P4"), ("7", "P1"), ("8", ""), ("9", "P5"), ("10", "P6"),
        ("11", "P3"), ("12", "P7"), ("13", "P8"), ("14", "P9"),
    ]
    reasons = {r["line"]: r["reason"] for r in report}
    assert reasons["3"].startswith("email: 'not-an-email' is not a valid email address")
    assert reasons["6"].startswith("sms_opt_in: 'maybe'")
    assert reasons["7"] == "external_id: 'P1' was already given on line 2"
    assert reasons["8"].startswith("external_id: is empty")
    assert reasons["9"].startswith("phone: '+1 555 0100' is not a valid phone number")
    assert reasons["10"].startswith("timezone:")
    assert reasons["11"] == "external_id: 'P3' was already given on line 4"
    assert reasons["12"].startswith("tags: 11 tags")
    assert reasons["13"].startswith("birth_date:")
    assert reasons["14"].startswith("has 14 fields but the header has 12")
    assert set(await catalog(db)) == {"P1", "P3"}
    assert (await catalog(db))["P3"].first_name == "Ana\nMaría"


async def test_longest_values_fit_the_database(db: Database, tmp_path: Path) -> None:
    longest = row(
        "x" * 100, first_name="Á" * 100, last_name="b" * 99, patient_type="t" * 50,
        email="a" * 64 + "@" + "c" * 60 + "." + "d" * 60 + ".example.com",
        tags=";".join(f"{i}" * 30 for i in range(10)),
    )
    too_long = row("P2", first_name="a" * 100, last_name="b" * 100)
    summary = await do_import(db, write_csv(tmp_path / "long.csv", [longest, too_long]))
    assert (summary.inserted, summary.rejected) == (1, 1)
    stored = (await catalog(db))["x" * 100]
    assert len(stored.sort_key) == 200 and len(stored.tags) == 10


async def test_duplicates_within_one_batch(db: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [row("P1"), row("P2"), row("P1", first_name="Dup")])
    summary = await do_import(db, path)
    assert (summary.inserted, summary.rejected) == (2, 1)
    [rejected] = read_report(summary.report_path or Path())
    assert (rejected["line"], rejected["reason"]) == (
        "4", "external_id: 'P1' was already given on line 2"
    )
    assert (await catalog(db))["P1"].first_name == "José"  # the first one wins


async def test_local_phone_without_region_is_rejected(db: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", [row("P1", phone="55 1234 5678"), row("P2")])
    report = tmp_path / "out" / "why.csv"
    report.parent.mkdir()
    summary = await do_import(db, path, phone_region=None, report_path=report)
    assert (summary.inserted, summary.rejected) == (1, 1)
    [rejected] = read_report(report)
    assert rejected["line"] == "2"
    assert "DEFAULT_PHONE_REGION is not set" in rejected["reason"]


async def test_bom_semicolons_crlf_and_unknown_columns(db: Database, tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    text = (
        "\ufeffExternal_ID;First_Name;email;Notes;tags\r\n"
        "P1;José;jose@example.com;VIP patient;\"a;b\"\r\n"
        "\r\n"
        "P2;Ana;ana@example.com;;\r\n"
    )
    path.write_bytes(text.encode("utf-8"))
    summary = await do_import(db, path)
    assert (summary.inserted, summary.rejected) == (2, 0)
    assert summary.ignored_columns == ["notes"]
    patients = await catalog(db)
    assert patients["P1"].first_name == "José" and patients["P1"].tags == ["a", "b"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\r\n\r\n", "is empty"),
        ("external_id,first_name\nP1,Jos\xe9\n".encode("latin-1"), "is not UTF-8 text: byte 0xE9"),
        (b"PK\x03\x04\x14\x00\x06\x00" + bytes(200), "is a spreadsheet workbook"),
        (bytes(range(256)) * 4, "is a binary file"),
        (b"id,name,email\n1,a,b\n", "has no external_id column"),
        (b"\xff\xfee\x00x\x00", "is UTF-16 text"),
        (b"external_id,email,email\nP1,a,b\n", "names the column 'email' twice"),
    ],
)
async def test_unusable_files_import_nothing(
    db: Database, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(UnusableFile, match=message):
        await do_import(db, path)
    assert await catalog(db) == {}
    assert await audit_entries(db, "patients.imported") == []


async def test_bad_utf8_late_in_the_file_names_its_line(db: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "late.csv", [row(f"P{i}") for i in range(1, 30)])
    with path.open("ab") as out:
        out.write(b"P99,Jos\xe9,x,,,,,,,,,\n")
    with pytest.raises(UnusableFile, match=r"byte 0xE9 on line 31 \(byte offset \d+\)"):
        await do_import(db, path, batch_size=5)
    assert await catalog(db) == {}


async def test_report_folder_must_exist(db: Database, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", [row("P1")])
    with pytest.raises(PatientImportError, match=r"folder .* does not exist; choose another"):
        await do_import(db, path, report_path=tmp_path / "missing" / "report.csv")
    assert await catalog(db) == {}


async def test_missing_file_and_folder(db: Database, tmp_path: Path) -> None:
    with pytest.raises(UnusableFile, match="does not exist"):
        await do_import(db, tmp_path / "nowhere.csv")
    with pytest.raises(UnusableFile, match="is a folder"):
        await do_import(db, tmp_path)


async def test_failure_midway_leaves_the_catalog_unchanged(db: Database, tmp_path: Path) -> None:
    await do_import(db, write_csv(tmp_path / "first.csv", [row("P1", first_name="Before")]))
    before = await catalog(db)
    rows = [row("PX", email="bad")] + [row(f"P{i}", first_name="After") for i in range(1, 60)]
    path = write_csv(tmp_path / "big.csv", rows)
    calls: list[int] = []

    def crash_after_two_batches(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise OSError("disk unplugged")

    with pytest.raises(OSError, match="disk unplugged"):
        await do_import(db, path, batch_size=10, progress=crash_after_two_batches)
    after = await catalog(db)
    assert set(after) == {"P1"}
    assert after["P1"].first_name == "Before" and after["P1"].updated_at == before["P1"].updated_at
    assert len(await audit_entries(db, "patients.imported")) == 1
    assert leftovers(tmp_path) == []

    summary = await do_import(db, path, batch_size=10)  # the same connection pool, cleanly
    assert (summary.inserted, summary.updated, summary.rejected) == (58, 1, 1)


async def test_validation_in_worker_processes(db: Database, tmp_path: Path) -> None:
    rows = [row(f"P{i}", tags="a;b") for i in range(40)] + [row("P1"), row("PX", email="x@")]
    path = write_csv(tmp_path / "p.csv", rows)
    summary = await do_import(db, path, batch_size=7, workers=2)
    assert (summary.inserted, summary.rejected) == (40, 2)
    report = read_report(summary.report_path or Path())
    assert [(r["line"], r["reason"][:12]) for r in report] == [
        ("42", "external_id:"), ("43", "email: 'x@' "),
    ]
    patients = await catalog(db)
    assert patients["P39"].phone == "+525512345678" and patients["P39"].tags == ["a", "b"]


def test_short_and_long_records_are_rejected_not_fatal(tmp_path: Path) -> None:
    layout = Layout(index={"first_name": 0, "email": 1, "external_id": 2}, width=3)
    records = [(2, ["Ana"]), (3, ["Ana", "a@example.com", "P1", "extra"]), (4, [])]
    parsed = check_records(records, layout, "MX", "sqlite")
    assert [(p.line, p.external_id) for p in parsed] == [(2, ""), (3, "P1"), (4, "")]
    assert all(isinstance(p.result, str) and "fields but the header has 3" in p.result
               for p in parsed)


def test_line_numbers_follow_quoted_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "lines.csv"
    path.write_text('external_id,first_name\n\nP1,"a\nb\nc"\nP2,x\r\n\nP3,y', encoding="utf-8")
    with PatientCsv(path) as source:
        records = [r for batch in source.records(10) for r in batch]
    assert [(line, fields[0]) for line, fields in records] == [(3, "P1"), (6, "P2"), (8, "P3")]


# --- the command line -------------------------------------------------------------------------


@pytest.mark.slow
async def test_cli_imports_and_prints_a_summary(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "patients.csv", [row("P1"), row("P2", email="bad")])
    result = cli(database_url, tmp_path, "patients", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert "inserted: 1" in result.stdout and "rejected: 1" in result.stdout
    assert str(tmp_path / "patients.rejected.csv") in result.stdout
    assert "Traceback" not in result.stderr
    assert set(await catalog(db)) == {"P1"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        ("external_id\nJos\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        (bytes(range(256)) * 8, "is a binary file"),
        (b"name,email\nJose,jose@example.com\n", "has no external_id column"),
    ],
)
async def test_cli_unusable_file_exits_2_with_one_line(
    db: Database, database_url: str, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = cli(database_url, tmp_path, "patients", "import", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: ") and message in lines[0]
    assert await catalog(db) == {}


def interrupt_import(database_url: str, tmp_path: Path) -> tuple[int | None, str]:
    """Start `patients import` on a large file, press Ctrl-C once it is under way."""
    path = tmp_path / "large.csv"
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["external_id", "first_name", "last_name", "email", "phone"])
        for p in synthetic_patients(12_000, rng_seed=5):  # small: validated in a thread
            writer.writerow([p["external_id"], p["first_name"], p["last_name"],
                             p["email"] or "", p["phone"] or ""])
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "patients", "import", str(path)],
        cwd=tmp_path, env=clean_env(database_url, tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 90
    for line in process.stderr:  # plain progress lines when stderr is not a terminal
        if line.startswith("importing large.csv:") and not line.strip().endswith("100%"):
            process.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline
    _, err = process.communicate(timeout=90)
    return process.returncode, err


@pytest.mark.slow
async def test_cli_ctrl_c_leaves_the_catalog_unchanged(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    returncode, err = interrupt_import(database_url, tmp_path)
    assert returncode == 130, err
    assert "import interrupted; the catalog is unchanged" in err
    assert "Traceback" not in err
    assert await catalog(db) == {}
    assert await audit_entries(db, "patients.imported") == []


async def test_audit_is_in_the_same_transaction(db: Database, tmp_path: Path) -> None:
    await do_import(db, write_csv(tmp_path / "x.csv", [row("P1")]))
    async with db.transaction() as session:
        count = await session.scalar(select(func.count()).select_from(Patient))
    assert count == 1
    assert len(await audit_entries(db, "patients.imported")) == 1
