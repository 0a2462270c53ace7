"""Smart segments: built-ins, `type:`/`tag:` families, segments.yml, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import Database
from services import segments
from services.errors import NotFound
from services.models import Patient, PatientTag, Segment
from services.search_keys import patient_keys
from services.segments import SegmentsFileError, load_segments_file

ROOT = Path(__file__).resolve().parent.parent
CLINIC_TZ = "America/Mexico_City"  # UTC-6 all year
NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)  # 06:00 on 15 March at the clinic


def _patient(external_id: str, **values: Any) -> dict[str, Any]:
    row = {"external_id": external_id, "first_name": external_id.title(), "last_name": "Test",
           "email": None, "phone": None, **values}
    if row.get("birth_date"):
        row["birth_month"] = row["birth_date"].month
    return {**row, **patient_keys(first_name=row["first_name"], last_name=row["last_name"],
                                  email=row["email"], phone=row["phone"],
                                  external_id=external_id)}


CATALOG = [
    _patient("study30", last_study_at=NOW - timedelta(days=30), patient_type="new",
             birth_date=date(1990, 3, 31), email="a@example.com", email_opt_in=True),
    _patient("study31", last_study_at=NOW - timedelta(days=31), patient_type="returning",
             birth_date=date(1985, 4, 1)),
    # 30 calendar days ago at the clinic (13 Feb, 02:00 local) although 30 days 4 h ago.
    _patient("early30", last_study_at=datetime(2025, 2, 13, 8, 0, tzinfo=UTC),
             patient_type="returning", birth_date=date(2000, 2, 28)),
    # 12 Feb at 23:00 at the clinic, though already 13 Feb in UTC: 31 local days ago.
    _patient("late31", last_study_at=datetime(2025, 2, 13, 5, 0, tzinfo=UTC)),
    _patient("never", patient_type="new", phone="+525512345678", sms_opt_in=True),
    _patient("study365", last_study_at=NOW - timedelta(days=365), timezone="America/Cancun"),
    _patient("study366", last_study_at=NOW - timedelta(days=366), birth_date=date(1970, 3, 1)),
    _patient("today", last_study_at=NOW - timedelta(hours=1), patient_type="vip"),
]
TAGS = {"study30": ["vip"], "study31": ["vip", "diabetic"], "never": ["diabetic"]}

EXPECTED = {
    "all": {p["external_id"] for p in CATALOG},
    "recent-study-30d": {"study30", "early30", "today"},
    "no-study-12m": {"never", "study366"},
    "birthday-this-month": {"study30", "study366"},
    "type:new": {"study30", "never"},
    "type:returning": {"study31", "early30"},
    "type:vip": {"today"},
    "tag:vip": {"study30", "study31"},
    "tag:diabetic": {"study31", "never"},
    "tag:DIABETIC": {"study31", "never"},
}


async def _pairs(session: AsyncSession, key: Any, value: Any) -> dict[Any, Any]:
    return {k: v for k, v in (await session.execute(select(key, value))).all()}


async def _seed(db: Database) -> dict[str, int]:
    async with db.transaction() as session:
        await session.execute(insert(Patient), CATALOG)
        ids = await _pairs(session, Patient.external_id, Patient.id)
        tags = [{"patient_id": ids[e], "tag": t} for e, ts in TAGS.items() for t in ts]
        await session.execute(insert(PatientTag), tags)
    return ids


async def _members(db: Database, slug: str, **kwargs: Any) -> set[str]:
    async with db.sessions() as session:
        found = await segments.resolve(session, slug, now=NOW, clinic_tz=CLINIC_TZ, **kwargs)
        names = await _pairs(session, Patient.id, Patient.external_id)
    return {names[i] for i in found}


async def test_builtin_and_family_segments_select_the_right_patients(db: Database) -> None:
    await _seed(db)
    for slug, expected in EXPECTED.items():
        assert await _members(db, slug) == expected, slug


async def test_counts_equal_resolved_lengths_and_resolve_is_in_id_order(db: Database) -> None:
    await _seed(db)
    async with db.sessions() as session:
        for slug in EXPECTED:
            ids = await segments.resolve(session, slug, now=NOW, clinic_tz=CLINIC_TZ)
            assert ids == sorted(ids)
            n = await segments.count(session, slug, now=NOW, clinic_tz=CLINIC_TZ)
            assert n == len(ids) == len(EXPECTED[slug]), slug
        limited = await segments.resolve(session, "all", limit=3)
        assert limited == sorted(limited)[:3] and len(limited) == 3
        # A capped count stops at cap + 1: enough to say "more than MAX_AUDIENCE".
        assert await segments.count(session, "all", cap=3) == 4
        assert await segments.count(session, "tag:vip", cap=1) == 2
        assert await segments.count(session, "no-study-12m", now=NOW, cap=100) == 2
        capped = await segments.list_segments(session, now=NOW, clinic_tz=CLINIC_TZ, cap=1)
        assert {s.slug: s.size for s in capped}["all"] == 2


async def test_birthday_month_is_the_clinics_month(db: Database) -> None:
    await _seed(db)
    # 1 April 03:00 UTC is still 31 March in Mexico City.
    evening = datetime(2025, 4, 1, 3, 0, tzinfo=UTC)
    async with db.sessions() as session:
        there = await segments.count(session, "birthday-this-month", now=evening,
                                     clinic_tz=CLINIC_TZ)
        in_utc = await segments.count(session, "birthday-this-month", now=evening)
    assert (there, in_utc) == (2, 1)  # March: study30, study366; April: study31


async def test_unknown_segments_are_not_found(db: Database) -> None:
    async with db.sessions() as session:
        for slug in ("nope", "type:", "tag:  ", "kind:x"):
            with pytest.raises(NotFound) as caught:
                await segments.count(session, slug)
            assert caught.value.what == "segment" and caught.value.key == slug


async def test_list_segments_gives_sizes_and_one_entry_per_type_and_tag(db: Database) -> None:
    await _seed(db)
    async with db.transaction() as session:
        await segments.sync_segments(session, [])
    async with db.sessions() as session:
        listed = await segments.list_segments(session, now=NOW, clinic_tz=CLINIC_TZ)
        bare = await segments.list_segments(session, with_counts=False)
    slugs = [s.slug for s in listed]
    assert slugs == ["all", "recent-study-30d", "no-study-12m", "birthday-this-month",
                     "type:new", "type:returning", "type:vip", "tag:diabetic", "tag:vip"]
    assert {s.slug: s.size for s in listed} == {s: len(EXPECTED[s]) for s in slugs}
    assert [s.slug for s in bare] == slugs and {s.size for s in bare} == {None}
    assert listed[0].name == "All patients"


SEGMENTS_YML = """\
# Clinic segments
- slug: lapsed-diabetic
  name: Diabetic, no study in 30 days
  conditions:
    - tags: {has_tag: diabetic}
    - any:
        - last_study_at: {is_null: true}
        - last_study_at: {older_than_days: 30}
- slug: reachable-new
  name: New patients we can text
  description: New patients with SMS consent.
  conditions:
    - {patient_type: new, sms_opt_in: true}
- slug: spring-born
  name: Born in spring, not VIP
  conditions:
    - birth_month: {in: [3, 4, 5]}
    - patient_type: {ne: vip}
    - tags: {lacks_tag: [diabetic]}
    - birth_date: {gte: 1971-01-01, lt: 2000-01-01}
- slug: studied-q1
  name: Studied since February
  conditions:
    - last_study_at: {gte: 2025-02-13, lte: "2025-03-15T23:59:59"}
    - timezone: {is_null: true}
    - email: {not_in: [b@example.com]}
"""
FILE_EXPECTED = {
    "lapsed-diabetic": {"study31", "never"},
    "reachable-new": {"never"},
    "spring-born": {"study30"},
    "studied-q1": {"study30", "early30", "today"},
}


async def test_file_segments_are_synced_counted_and_removed_when_stale(
    db: Database, tmp_path: Path
) -> None:
    await _seed(db)
    path = tmp_path / "segments.yml"
    path.write_text(SEGMENTS_YML, encoding="utf-8")
    defined = load_segments_file(path)
    assert [d.slug for d in defined] == list(FILE_EXPECTED)
    assert defined[1].description == "New patients with SMS consent." and defined[1].line == 9
    async with db.transaction() as session:
        await segments.sync_segments(session, defined)
    for slug, expected in FILE_EXPECTED.items():
        assert await _members(db, slug) == expected, slug
    async with db.sessions() as session:
        listed = {s.slug: s.size for s in await segments.list_segments(session, now=NOW,
                                                                        clinic_tz=CLINIC_TZ)}
    assert {slug: listed[slug] for slug in FILE_EXPECTED} == {
        slug: len(members) for slug, members in FILE_EXPECTED.items()}

    async with db.transaction() as session:  # the file changed: one segment left
        await segments.sync_segments(session, defined[:1])
    async with db.sessions() as session:
        stored = await _pairs(session, Segment.slug, Segment.source)
        with pytest.raises(NotFound):
            await segments.count(session, "reachable-new")
    assert stored == {"all": "builtin", "recent-study-30d": "builtin", "no-study-12m": "builtin",
                      "birthday-this-month": "builtin", "lapsed-diabetic": "file"}


BAD_FILES = [
    ("- slug: a\n  name: [unclosed\n  conditions: []\n", 3, "YAML syntax error"),
    ("- slug: ok\n  name: OK\n  conditions:\n    - colour: {eq: red}\n", 4,
     "unknown column 'colour'"),
    ("- slug: ok\n  name: OK\n  conditions:\n    - last_study_at:\n        since: 3\n", 5,
     "unknown operator 'since' for last_study_at"),
    ("- slug: ok\n  name: OK\n  conditions:\n    - last_study_at: {within_days: soon}\n", 4,
     "takes a whole number of days"),
    ("- slug: ok\n  name: OK\n  conditions:\n    - sms_opt_in: {eq: maybe}\n", 4,
     "takes true or false"),
    ("- slug: ok\n  name: OK\n  conditions:\n    - birth_month: 13\n", 4, "month number 1-12"),
    ("- slug: twice\n  name: One\n  conditions: [{patient_type: a}]\n"
     "- slug: twice\n  name: Two\n  conditions: [{patient_type: b}]\n", 4,
     "'twice' is already used on line 1"),
    ("- slug: all\n  name: Mine\n  conditions: [{patient_type: a}]\n", 1, "is a built-in"),
    ("- slug: VIP patients!\n  name: Mine\n  conditions: [{patient_type: a}]\n", 1,
     "may only use a-z, 0-9, - and _"),
    ("- slug: ok\n  name: OK\n  colour: red\n  conditions: [{patient_type: a}]\n", 3,
     "unknown field 'colour'"),
    ("- slug: ok\n  name: OK\n", 1, "has no conditions"),
    ("- slug: ok\n  name: OK\n  conditions: []\n", 3, "at least one condition"),
    ("- slug: ok\n  name: OK\n  conditions:\n    - any: []\n", 4, "`any` needs at least one"),
    ("slug: ok\n", 1, "must be a list of segments"),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD_FILES)
def test_a_bad_segments_file_names_the_file_line_and_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    path = tmp_path / "segments.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SegmentsFileError) as caught:
        load_segments_file(path)
    assert caught.value.line == line, str(caught.value)
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{path}, line {line}: ")


def test_missing_empty_and_example_files(tmp_path: Path) -> None:
    assert load_segments_file(tmp_path / "segments.yml") == []
    (tmp_path / "empty.yml").write_text("# nothing yet\n", encoding="utf-8")
    assert load_segments_file(tmp_path / "empty.yml") == []
    (tmp_path / "latin1.yml").write_bytes("- slug: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SegmentsFileError, match="is not UTF-8"):
        load_segments_file(tmp_path / "latin1.yml")
    example = load_segments_file(ROOT / "segments.example.yml")
    assert len(example) >= 2 and all(d.source == "file" for d in example)
