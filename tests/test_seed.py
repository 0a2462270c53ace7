"""`patients seed N`: realistic synthetic patients, valid, unique, searchable (SPEC §2)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from email_validator import validate_email
from sqlalchemy import select

from bot.db import Database
from services import seed
from services.models import AuditEntry, Base, Patient, PatientTag
from services.patient_rows import parse_tags
from services.search_keys import patient_keys
from services.seed import seed_patients, synthetic_patients

ROOT = Path(__file__).resolve().parent.parent


async def all_patients(db: Database) -> list[Patient]:
    async with db.transaction() as session:
        return list((await session.execute(select(Patient).order_by(Patient.id))).scalars())


async def test_seeded_patients_are_valid_unique_and_searchable(db: Database) -> None:
    progress: list[tuple[int, int]] = []
    added = await seed_patients(
        db, 600, rng_seed=42, batch_size=250, progress=lambda d, t: progress.append((d, t))
    )
    assert added == 600
    assert progress == [(250, 600), (500, 600), (600, 600)]
    patients = await all_patients(db)
    assert len(patients) == 600
    assert [p.external_id for p in patients[:2]] == ["P0000001", "P0000002"]
    assert len({p.external_id for p in patients}) == 600

    emails = [p.email for p in patients if p.email]
    assert len(emails) == len(set(emails))
    assert all(e.endswith(("example.com", "example.org", "example.net")) for e in emails)
    for email in emails[:50]:
        assert validate_email(email, check_deliverability=False).normalized == email

    now = datetime.now(UTC)
    for p in patients:
        if p.phone:
            number = phonenumbers.parse(p.phone)
            assert phonenumbers.is_valid_number(number), p.phone
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            assert e164 == p.phone
        keys = patient_keys(first_name=p.first_name, last_name=p.last_name, email=p.email,
                            phone=p.phone, external_id=p.external_id)
        assert {k: getattr(p, k) for k in keys} == keys
        assert p.birth_date is not None and p.birth_month == p.birth_date.month
        assert 1930 <= p.birth_date.year <= 2020
        if p.last_study_at is not None:
            assert now - timedelta(days=3 * 365 + 1) <= p.last_study_at <= now
        if p.timezone:
            ZoneInfo(p.timezone)
        assert tuple(p.tags) == parse_tags(";".join(p.tags))
        assert not (p.email_opt_in and p.email is None)
        assert not (p.sms_opt_in and p.phone is None)

    # Realistic gaps, loosely: shares of the whole catalog
    share = Counter[str]()
    for p in patients:
        share["email"] += p.email is not None
        share["phone"] += p.phone is not None
        share["email_opt_in"] += p.email_opt_in
        share["sms_opt_in"] += p.sms_opt_in
        share["no_study"] += p.last_study_at is None
        share["cdmx"] += p.timezone == "America/Mexico_City"
        share["accented"] += any(ch in p.first_name + p.last_name for ch in "áéíóúñÁÉÍÓÚÑ")
    assert 0.90 < share["email"] / 600 < 0.99
    assert 0.86 < share["phone"] / 600 < 0.97
    assert 0.65 < share["email_opt_in"] / 600 < 0.85
    assert 0.50 < share["sms_opt_in"] / 600 < 0.70
    assert 0.05 < share["no_study"] / 600 < 0.16
    assert share["cdmx"] / 600 > 0.5
    assert share["accented"] / 600 > 0.3
    assert len({p.patient_type for p in patients}) >= 5

    async with db.transaction() as session:
        tag_rows = set((await session.execute(select(PatientTag.patient_id, PatientTag.tag))).all())
        [entry] = (await session.execute(
            select(AuditEntry).where(AuditEntry.action == "patients.seeded")
        )).scalars()
    assert tag_rows == {(p.id, t) for p in patients for t in p.tags}
    assert len(tag_rows) > 100
    assert entry.details["count"] == 600
    assert entry.details["last_external_id"] == "P0000600"


async def test_seeding_twice_adds_more_after_existing_ids(db: Database) -> None:
    async with db.transaction() as session:
        session.add(Patient(external_id="P0000500", first_name="Imported", tags=[]))
        session.add(Patient(external_id="PX-77", first_name="Other scheme", tags=[]))
    await seed_patients(db, 20, rng_seed=1)
    await seed_patients(db, 30, rng_seed=1)  # same seed: still new ids and emails
    patients = await all_patients(db)
    ids = [p.external_id for p in patients]
    assert len(patients) == 52
    assert ids[2:4] == ["P0000501", "P0000502"] and ids[-1] == "P0000550"
    emails = [p.email for p in patients if p.email]
    assert len(emails) == len(set(emails))


async def test_large_sqlite_seeding_rebuilds_the_indexes_atomically(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.dialect != "sqlite":
        pytest.skip("the index rebuild is for SQLite only")
    monkeypatch.setattr(seed, "REBUILD_INDEXES_FROM", 100)

    def crash(done: int, total: int) -> None:
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        await seed_patients(db, 300, rng_seed=4, batch_size=100, progress=crash)
    assert await all_patients(db) == []
    assert await schema_differences(db) == []  # every index is back

    await seed_patients(db, 300, rng_seed=4, batch_size=100)
    assert len(await all_patients(db)) == 300
    assert await schema_differences(db) == []
    async with db.engine.connect() as connection:
        plan = await connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM patients WHERE sort_key >= 'g' ORDER BY sort_key"
        )
        assert "ix_patients_sort" in " ".join(str(step) for step in plan.all())


async def schema_differences(db: Database) -> list[object]:
    async with db.engine.connect() as connection:
        return await connection.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
        )


def test_same_seed_same_patients() -> None:
    first = [(p["first_name"], p["email"], p["phone"]) for p in synthetic_patients(50, rng_seed=9)]
    again = [(p["first_name"], p["email"], p["phone"]) for p in synthetic_patients(50, rng_seed=9)]
    assert first == again


def cli(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.slow
async def test_cli_seed(db: Database, database_url: str, tmp_path: Path) -> None:
    result = cli(database_url, tmp_path, "patients", "seed", "25", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "added 25 synthetic patients" in result.stdout
    assert len(await all_patients(db)) == 25

    refused = cli(database_url, tmp_path, "patients", "seed", "0")
    assert refused.returncode == 2 and "must be at least 1" in refused.stderr
