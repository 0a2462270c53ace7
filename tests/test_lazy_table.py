"""The lazy table: keyset pages, search by every key, both read plans, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
import pytest
from sqlalchemy import insert

from bot.db import Database
from services import lazy_table
from services.errors import ValidationFailed
from services.lazy_table import Page, count_matches, decode_cursor, encode_cursor, page
from services.models import Patient
from services.search_keys import digits, fold, patient_keys

NAMED = [  # (first, last, email, phone, external_id)
    ("José", "Álvarez", "jose.alvarez@example.com", "+525512345678", "MRN-77"),
    ("Jose", "Alvarado", "jalvarado@example.org", "+525587654321", "P-0002"),
    ("María", "García", "maria.garcia@example.com", "+14155550100", "P-0003"),
    ("Maria", "Garcia", None, None, "P-0004"),  # same sort key as the row above
    ("María José", "López", "mjlopez@example.com", None, "P-0005"),
    ("Mario", "Gómez", "mgomez@example.com", "+525500000001", "P-0006"),
    ("Ana", "Martínez", "ana@example.net", None, "P-0007"),
    ("Anabel", "Ortiz", None, "+525511112222", "P-0008"),
    ("Marco", "de la Cruz", "marco@example.com", None, "P-0009"),
    ("Luis", "Marín", "luis.marin@example.com", None, "P-0010"),
    ("Zoë", "Zapata", None, None, "P-0011"),
    ("", "Solo", None, None, "P-0012"),
    ("Pedro", "", "pedro@example.com", None, "P-0013"),
]
FILLER = [(f"Test{i % 3}", f"Person {i:02d}", f"test{i}@example.com",
           f"+1212555{i:04d}", f"F-{i:04d}") for i in range(40)]


def _row(first: str, last: str, email: str | None, phone: str | None, eid: str) -> dict[str, Any]:
    return {"external_id": eid, "first_name": first, "last_name": last, "email": email,
            "phone": phone, **patient_keys(first_name=first, last_name=last, email=email,
                                           phone=phone, external_id=eid)}


ROWS = [_row(*values) for values in NAMED + FILLER]


async def _seed(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(insert(Patient), ROWS)


def _expected(query: str, region: str | None = None) -> list[str]:
    """External ids matching `query` in (sort_key, id) order: the search rules, restated."""
    text, key = " ".join(query.split()), fold(query)

    def starts(value: str | None, prefix: str) -> bool:
        return value is not None and value.startswith(prefix)

    def matches(r: dict[str, Any]) -> bool:
        if not key:
            return True
        if "@" in key:
            return starts(r["email_key"], key)
        if re.fullmatch(r"[\d\s+().-]*\d[\d\s+().-]*", text):
            number = digits(text)
            national = (f"{phonenumbers.country_code_for_region(region)}{number.lstrip('0')}"
                        if region and not text.startswith("+") else number)
            return (starts(r["phone_key"], number) or starts(r["phone_key"], national)
                    or starts(r["external_id_key"], key))
        tokens = key.split(" ")
        first_last = any(r["first_name_key"] == " ".join(tokens[:i])
                         and r["last_name_key"].startswith(" ".join(tokens[i:]))
                         for i in range(1, len(tokens)))
        single = " " not in key and (starts(r["email_key"], key)
                                     or starts(r["external_id_key"], key))
        return (r["sort_key"].startswith(key) or r["first_name_key"].startswith(key)
                or first_last or single)

    ordered = sorted(enumerate(ROWS, start=1), key=lambda p: (p[1]["sort_key"], p[0]))
    return [r["external_id"] for _, r in ordered if matches(r)]


async def _walk(db: Database, query: str = "", size: int = 5, **kwargs: Any) -> list[Page]:
    """Every page of a search, following Next from the first page."""
    pages: list[Page] = []
    async with db.sessions() as session:
        current = await page(session, query=query, size=size, **kwargs)
        pages.append(current)
        while current.next_cursor is not None:
            current = await page(session, query=query, after=current.next_cursor, size=size,
                                 **kwargs)
            pages.append(current)
            assert len(pages) < 100
    return pages


def _ids(pages: list[Page]) -> list[str]:
    return [row.external_id for p in pages for row in p.rows]


async def test_next_and_previous_visit_every_patient_once_in_order(db: Database) -> None:
    await _seed(db)
    pages = await _walk(db, size=7)
    assert _ids(pages) == _expected("") and len(_ids(pages)) == len(ROWS)
    assert [len(p.rows) for p in pages] == [7] * 7 + [4]
    assert not pages[0].has_previous and not pages[-1].has_next
    assert all(p.has_previous and p.has_next for p in pages[1:-1])
    back = [pages[-1]]
    async with db.sessions() as session:
        while back[-1].previous_cursor is not None:
            back.append(await page(session, before=back[-1].previous_cursor, size=7))
    assert [[r.id for r in p.rows] for p in reversed(back)] == [[r.id for r in p.rows]
                                                                for p in pages]
    first = pages[0].rows[0]
    assert first.display_name == "Jose Alvarado" and first.email == "jalvarado@example.org"
    assert [r.display_name for r in pages[0].rows][3:5] == ["María García", "Maria Garcia"]


@pytest.mark.parametrize(("query", "region", "expected"), [
    ("alv", None, ["P-0002", "MRN-77"]),  # last-name prefix
    ("jose", None, ["P-0002", "MRN-77"]),  # "jose" finds José; "María José" starts otherwise
    ("ÁLVAREZ jo", None, ["MRN-77"]),  # "last first", accents folded
    ("maria garc", None, ["P-0003", "P-0004"]),  # "first last", same name: by id
    ("maria jose lo", None, ["P-0005"]),  # a first name of two words
    ("de la cr", None, ["P-0009"]),  # a last name of three words
    ("marco de la", None, ["P-0009"]),
    ("zoe", None, ["P-0011"]),
    ("mar", None, ["P-0009", "P-0003", "P-0004", "P-0006", "P-0005", "P-0010", "P-0007"]),
    ("mjlop", None, ["P-0005"]),  # email prefix
    ("Luis.Marin@EX", None, ["P-0010"]),
    ("+52 55 1234", None, ["MRN-77"]),  # E.164 digits
    ("1415", None, ["P-0003"]),
    ("55 1234 5678", "MX", ["MRN-77"]),  # national number, with the clinic's region
    ("55 1234 5678", None, []),
    ("mrn-7", None, ["MRN-77"]),  # external id
    ("p-001", None, ["P-0010", "P-0013", "P-0012", "P-0011"]),
    ("qqqq", None, []),
    ("ped", None, ["P-0013"]),  # no last name
    ("solo", None, ["P-0012"]),  # no first name
])
async def test_search_by_each_key(
    db: Database, query: str, region: str | None, expected: list[str]
) -> None:
    await _seed(db)
    assert _expected(query, region) == expected
    pages = await _walk(db, query, size=3, phone_region=region)
    assert _ids(pages) == expected
    async with db.sessions() as session:
        assert await count_matches(session, query, phone_region=region) == (len(expected), False)


QUERIES = ["", "a", "ma", "mar", "test", "test1 person", "person 1", "t", "p-0", "f-00",
           "1212555", "+1 212 555 00", "zzz", "maria", "e", "@example.com", "test1@"]


@pytest.mark.parametrize("threshold", [0, 2, 10**9])
async def test_every_read_plan_gives_the_same_pages(
    db: Database, monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    """0: every part walks the sort index; 10**9: every part is read whole; 2: a mix."""
    await _seed(db)
    monkeypatch.setattr(lazy_table, "WALK_THRESHOLD", threshold)
    for query in QUERIES:
        pages = await _walk(db, query, size=4)
        assert _ids(pages) == _expected(query), query
        back = [pages[-1]]
        async with db.sessions() as session:
            while back[-1].previous_cursor is not None:
                back.append(await page(session, query=query, before=back[-1].previous_cursor,
                                       size=4))
        assert _ids(list(reversed(back))) == _expected(query), query


async def test_nothing_found_and_going_past_either_end(db: Database) -> None:
    await _seed(db)
    async with db.sessions() as session:
        empty = await page(session, query="nobody here")
        assert (empty.rows, empty.next_cursor, empty.previous_cursor) == ([], None, None)
        assert await count_matches(session, "nobody here") == (0, False)
        first = await page(session, size=3)
        # Before the first row: the first page again.
        again = await page(session, before=encode_cursor("", 0), size=3)
        assert again == first
        # After the last row: an empty page whose Previous leads back to the last page.
        last = decode_cursor((await _walk(db, size=10))[-1].next_cursor or encode_cursor(
            ROWS and max(r["sort_key"] for r in ROWS), 10**6))
        beyond = await page(session, after=encode_cursor(*last), size=3)
        assert beyond.rows == [] and beyond.next_cursor is None
        assert beyond.previous_cursor is not None
        back = await page(session, before=beyond.previous_cursor, size=3)
        assert [r.external_id for r in back.rows] == _expected("")[-3:]


async def test_count_matches_is_capped(db: Database) -> None:
    await _seed(db)
    async with db.sessions() as session:
        assert await count_matches(session, "") == (len(ROWS), False)
        assert await count_matches(session, "", cap=len(ROWS)) == (len(ROWS), False)
        assert await count_matches(session, "", cap=10) == (10, True)
        assert await count_matches(session, "test", cap=10) == (10, True)
        assert await count_matches(session, "test") == (40, False)
        assert await count_matches(session, "ma") == (len(_expected("ma")), False)


async def test_tampered_cursors_are_refused_clearly(db: Database) -> None:
    await _seed(db)
    good = encode_cursor("garcia maria", 3)
    assert decode_cursor(good) == ("garcia maria", 3)
    assert len(good) < 40 and re.fullmatch(r"[A-Za-z0-9_-]+", good)
    flipped = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    async with db.sessions() as session:
        for bad in ("", "abc", "!!!", flipped, good + "x", "x" * 1000, "eyJpZCI6IDF9"):
            with pytest.raises(ValidationFailed) as caught:
                await page(session, after=bad)
            assert "cursor" in caught.value.errors
        with pytest.raises(ValidationFailed, match="either after or before"):
            await page(session, after=good, before=good)
        with pytest.raises(ValidationFailed, match="size"):
            await page(session, size=0)
