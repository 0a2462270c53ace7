"""The lazy table: pages of patients for the audience picker, searched and paged by keyset.

Rows are in (sort_key, id) order, i.e. last name, first name, id. A search is split into
*parts*, one per way a patient can match (last name or "last first", first name,
"first last", email, phone, external id), each an index range over a folded key column.
A part with few matches is read whole and sorted; a part with many is read by walking the
sort index and filtering, which stops after one page. A capped count of each part picks the
plan, so a one-letter search and a search matching nothing both touch at most a few thousand
index entries; every plan returns the same rows in the same order.

Each page is one statement: the capped counts, then every plan guarded by them, only one of
which runs. Statements are built once per shape (kind of query, direction) and cached;
each call only binds values: building them costs more than running them.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import phonenumbers
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    func,
    or_,
    select,
    tuple_,
    union,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal

from services.errors import ValidationFailed
from services.models import Patient
from services.search_keys import PREFIX_END, digits, fold

Cursor = str

PAGE_SIZE_MAX = 100
# Above this many matches a part is read by walking the sort index (about 1 row in
# WALK_THRESHOLD / catalog size matches, so a page costs a few thousand rows at most);
# at or below it, its matches are read whole and sorted.
WALK_THRESHOLD = 2000
# Emails spell names ("maria.garcia12@…"), so an email prefix's matches can bunch up in name
# order, where a walk from the cursor could pass most of the catalog before reaching them:
# read up to this many whole instead.
EMAIL_WALK_THRESHOLD = 10_000
MAX_QUERY_LENGTH = 100
_PHONE_LIKE = re.compile(r"[\d\s+().-]*\d[\d\s+().-]*")
_CURSOR_KEY = b"campaign-bot lazy-table cursor"
_BAD_CURSOR = "this page link is not valid any more; go back to the first page"
_ROW = (Patient.id, Patient.external_id, Patient.first_name, Patient.last_name,
        Patient.email, Patient.phone, Patient.sort_key)


@dataclass(frozen=True)
class PatientRow:
    id: int
    external_id: str
    first_name: str
    last_name: str
    email: str | None
    phone: str | None

    @property
    def display_name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip() or self.external_id


@dataclass(frozen=True)
class Page:
    rows: list[PatientRow]
    next_cursor: Cursor | None  # pass as `after=` for Next
    previous_cursor: Cursor | None  # pass as `before=` for Previous

    @property
    def has_next(self) -> bool:
        return self.next_cursor is not None

    @property
    def has_previous(self) -> bool:
        return self.previous_cursor is not None


# ---- cursors: opaque, short, checked -----------------------------------------------------


def encode_cursor(sort_key: str, patient_id: int) -> Cursor:
    """The position just after (or before) one row, as a short URL-safe string."""
    payload = f"{patient_id}:{sort_key}".encode()
    check = hashlib.blake2b(payload, digest_size=4, key=_CURSOR_KEY).digest()
    return base64.urlsafe_b64encode(check + payload).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: Cursor) -> tuple[str, int]:
    """(sort_key, id) of a cursor; ValidationFailed for anything this module did not make."""
    try:
        if not isinstance(cursor, str) or len(cursor) > 600:
            raise ValueError(cursor)
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        check, payload = raw[:4], raw[4:]
        if hashlib.blake2b(payload, digest_size=4, key=_CURSOR_KEY).digest() != check:
            raise ValueError(cursor)
        id_text, _, sort_key = payload.decode("utf-8").partition(":")
        return sort_key, int(id_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed({"cursor": _BAD_CURSOR}) from None


# ---- search parts ------------------------------------------------------------------------


class _Unindexed(ColumnElement[Any]):
    """A column the SQLite planner may not use an index for (`+col`): keeps it on the sort walk."""

    inherit_cache = True
    _traverse_internals: ClassVar[Any] = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: Any) -> None:
        self.column = column
        self.type = column.type


@compiles(_Unindexed)
def _unindexed_default(element: _Unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(_Unindexed, "sqlite")
def _unindexed_sqlite(element: _Unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.column, **kw))


@dataclass(frozen=True)
class _Part:
    """One way a patient can match: an index range over a key column, by name of its binds."""

    name: str
    column: str  # the key column of its range: `{name}_lo` <= column < `{name}_hi`
    first: bool = False  # also first_name_key = `{name}_first` ("first last")
    ordered: bool = False  # its matches lie in sort_key range [`{name}_wlo`, `{name}_whi`]
    counted: bool = True  # False: the sort_key range itself, always walked

    def match(self, *, walking: bool = False) -> ColumnElement[bool]:
        def col(name: str) -> Any:
            column = getattr(Patient, name)
            return _Unindexed(column) if walking else column

        condition = and_(col(self.column) >= _bind(f"{self.name}_lo"),
                         col(self.column) < _bind(f"{self.name}_hi"))
        if self.first:
            condition = and_(col("first_name_key") == _bind(f"{self.name}_first"), condition)
        return condition

    def threshold(self) -> ColumnElement[int]:
        # Emails spell names, so an email prefix's matches can bunch up in sort order.
        return _number("t_email" if self.column == "email_key" else "t_walk")


def _bind(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_ or Patient.sort_key.type)


def _number(name: str) -> Any:
    """A limit or threshold, written into the SQL: PostgreSQL's generic plans for a reused
    prepared statement must know every LIMIT, or they scan and sort whole ranges."""
    return bindparam(name, type_=Integer, literal_execute=True)


def _classify(query: str, phone_region: str | None) -> tuple[str, int, dict[str, str]]:
    """The query's kind, how many parts of a kind it has, and the prefix of each part."""
    text = " ".join(query.split())[:MAX_QUERY_LENGTH]
    key = fold(text)
    if not key:
        return "all", 0, {}
    if "@" in key:
        return "email", 0, {"email": key}
    if _PHONE_LIKE.fullmatch(text):
        number = digits(text)
        prefixes = [number]
        code = phonenumbers.country_code_for_region(phone_region) if phone_region else 0
        if code and not text.startswith("+") and number.lstrip("0"):
            prefixes.append(f"{code}{number.lstrip('0')}")  # a national number
        prefixes = list(dict.fromkeys(prefixes))
        return "phone", len(prefixes), {"ext": key} | {f"ph{i}": p for i, p in
                                                       enumerate(prefixes)}
    values = {"sort": key, "first": key}
    tokens = key.split(" ")
    splits = min(len(tokens), 5) - 1  # "first last", first names of up to four words
    for i in range(splits):
        values[f"fl{i}_first"] = " ".join(tokens[: i + 1])
        values[f"fl{i}"] = " ".join(tokens[i + 1 :])
    if not splits:
        values |= {"email": key, "ext": key}
    return "text", splits, values


def _parts(kind: str, n: int) -> list[_Part]:
    if kind == "email":
        return [_Part("email", "email_key")]
    if kind == "phone":
        return [*(_Part(f"ph{i}", "phone_key") for i in range(n)),
                _Part("ext", "external_id_key")]
    if kind != "text":
        return []
    # sort_key is "last first": its prefix covers a last name and "last first".
    parts = [_Part("sort", "sort_key", ordered=True, counted=False),
             _Part("first", "first_name_key")]
    # "first last": every match's sort_key starts with the last name's prefix.
    parts += [_Part(f"fl{i}", "last_name_key", first=True, ordered=True) for i in range(n)]
    if not n:
        parts += [_Part("email", "email_key"), _Part("ext", "external_id_key")]
    return parts


def _values(values: dict[str, str], position: tuple[str, int] | None,
            forward: bool) -> dict[str, Any]:
    """Every bind value of a page or count statement, for these prefixes and this cursor."""
    bound: dict[str, Any] = {"t_walk": WALK_THRESHOLD, "t_email": EMAIL_WALK_THRESHOLD}
    if position is not None:
        bound |= {"key": position[0], "id": position[1]}
    for name, value in values.items():
        if name.endswith("_first"):
            bound[name] = value
            continue
        low, high = value, value + PREFIX_END
        bound |= {f"{name}_lo": low, f"{name}_hi": high}
        # A walk's range and the cursor, merged: one sort_key range for the planner.
        if position is not None and forward:
            low = max(low, position[0])
        elif position is not None:
            high = min(high, position[0])
        bound |= {f"{name}_wlo": low, f"{name}_whi": high}
    return bound


# ---- statements: built once per shape, values bound at each call ----------------------


def _in_order(query: Select[Any], forward: bool, *columns: Any) -> Select[Any]:
    sort_key, patient_id = columns or (Patient.sort_key, Patient.id)
    if forward:
        return query.order_by(sort_key, patient_id)
    return query.order_by(sort_key.desc(), patient_id.desc())


def _limit(query: Select[Any], limit: Any, guard: ColumnElement[bool] | None,
           dialect: str) -> Select[Any]:
    """LIMIT, and run the query only if `guard` (a one-row, once-computed condition) holds.

    PostgreSQL runs a WHERE term without columns once, as a gate; SQLite would test it on
    every row, but stops before the first one at LIMIT 0. (PostgreSQL must see a plain
    LIMIT, or it may plan a walk of the sort index as a sort of every match.)
    """
    if guard is None:
        return query.limit(limit)
    if dialect == "sqlite":
        return query.limit(case((guard, limit), else_=0))
    return query.where(guard).limit(limit)


def _cursor(forward: bool) -> ColumnElement[bool]:
    """Past the cursor's row among rows of its sort_key (the walk's range does the rest)."""
    if forward:
        return or_(Patient.sort_key > _bind("key"), Patient.id > _bind("id", Integer))
    return or_(Patient.sort_key < _bind("key"), Patient.id < _bind("id", Integer))


def _walk(name: str | None, where: ColumnElement[bool] | None, position: bool, forward: bool,
          guard: ColumnElement[bool] | None, dialect: str) -> Select[Any]:
    """Rows in sort-index order from the cursor, filtered, stopping after `limit`."""
    conditions = [] if where is None else [where]
    if name is not None:  # a sort_key range, already merged with the cursor
        conditions += [Patient.sort_key >= _bind(f"{name}_wlo"),
                       Patient.sort_key < _bind(f"{name}_whi") if forward or not position
                       else Patient.sort_key <= _bind(f"{name}_whi")]
    elif position:
        conditions.append(Patient.sort_key >= _bind("key") if forward
                          else Patient.sort_key <= _bind("key"))
    if position:
        conditions.append(_cursor(forward))
    query = _in_order(select(*_ROW).where(*conditions), forward)
    return _limit(query, _number("limit"), guard, dialect)


def _read_whole(part: _Part, position: bool, forward: bool, guard: ColumnElement[bool],
                dialect: str) -> Select[Any]:
    """Every match of a small range, then sorted.

    The ids come from the range's index alone (as the counts do), then rows by primary key:
    a planner that overestimates the range then has no table scan to prefer.
    """
    bound = part.threshold() + 1
    ids = _limit(select(Patient.id).where(part.match()), bound, guard, dialect)
    # LIMIT again: a fence, so no planner pushes the cursor in and walks the sort index.
    inner = select(*_ROW).where(Patient.id.in_(ids)).limit(bound).subquery()
    query = select(*inner.c)
    if position:
        row = tuple_(inner.c.sort_key, inner.c.id)
        cursor = tuple_(_bind("key"), _bind("id", Integer))
        query = query.where(row > cursor if forward else row < cursor)
    ordered = _in_order(query, forward, inner.c.sort_key, inner.c.id)
    return ordered.limit(_number("limit"))


def _capped_count(part: _Part, cap: Any) -> Any:
    """How many rows a part matches, counting no further than cap + 1 (index only)."""
    members = select(Patient.id).where(part.match()).limit(cap + 1).subquery()
    return select(func.count()).select_from(members).scalar_subquery()


def _sizes(parts: list[_Part], caps: list[Any]) -> list[ColumnElement[int]]:
    """Each part's capped count, in a one-row CTE computed once (each is read twice)."""
    counts = [_capped_count(p, cap).label(f"n{i}")
              for i, (p, cap) in enumerate(zip(parts, caps, strict=True))]
    sizes = select(*counts).cte("sizes").prefix_with("MATERIALIZED")
    return [select(column).scalar_subquery() for column in sizes.c]


@functools.lru_cache(maxsize=256)
def _page_statement(kind: str, n: int, position: bool, forward: bool,
                    dialect: str) -> Select[Any]:
    """One statement: the parts' capped counts, then each part read the cheaper way."""
    parts = _parts(kind, n)
    if not parts:
        return _walk(None, None, position, forward, None, dialect)
    counted = [p for p in parts if p.counted]
    sizes = _sizes(counted, [p.threshold() for p in counted])
    arms = [_walk(p.name, None, position, forward, None, dialect)
            for p in parts if not p.counted]
    spread: list[tuple[ColumnElement[bool], ColumnElement[bool]]] = []
    for p, size in zip(counted, sizes, strict=True):
        small = and_(size > 0, size <= p.threshold())
        arms.append(_read_whole(p, position, forward, small, dialect))
        if p.ordered:
            arms.append(_walk(p.name, p.match(walking=True), position, forward,
                              size > p.threshold(), dialect))
        else:
            spread.append((p.match(walking=True), size > p.threshold()))
    if spread:  # one walk of the whole sort index for every big part with no range of its own
        arms.append(_walk(None, or_(*(f for f, _ in spread)), position, forward,
                          or_(*(big for _, big in spread)), dialect))
    merged = union(*(select(*arm.subquery().c) for arm in arms)).subquery()
    ordered = _in_order(select(*merged.c), forward, merged.c.sort_key, merged.c.id)
    return ordered.limit(_number("limit"))


@functools.lru_cache(maxsize=64)
def _count_statement(kind: str, n: int) -> Select[Any]:
    """Capped counts of each part; only if none passes the cap, the size of their union."""
    parts = _parts(kind, n)
    cap = _number("cap")
    if not parts:
        return select(func.count()).select_from(select(Patient.id).limit(cap + 1).subquery())
    if len(parts) == 1:
        return select(_capped_count(parts[0], cap))
    # Counted lazily, left to right: the first part past the cap settles it. Otherwise a
    # María García found by first and by last name is counted once, in the union.
    merged = union(*(select(Patient.id).where(p.match()) for p in parts)).subquery()
    exact = select(func.count()).select_from(merged).scalar_subquery()
    sizes = [_capped_count(p, cap) for p in parts]
    return select(case((or_(*(n > cap for n in sizes)), cap + 1), else_=exact))


async def page(
    session: AsyncSession, *, query: str = "", after: Cursor | None = None,
    before: Cursor | None = None, size: int = 10, phone_region: str | None = None,
) -> Page:
    """One page of patients matching `query`, after or before a cursor (keyset, no OFFSET)."""
    if after is not None and before is not None:
        raise ValidationFailed({"cursor": "give either after or before, not both"})
    if not 1 <= size <= PAGE_SIZE_MAX:
        raise ValidationFailed({"size": f"must be between 1 and {PAGE_SIZE_MAX}"})
    cursor = after if after is not None else before
    position = decode_cursor(cursor) if cursor is not None else None
    forward = before is None
    kind, n, values = _classify(query, phone_region)
    statement = _page_statement(kind, n, position is not None, forward,
                                session.get_bind().dialect.name)
    bound = _values(values, position, forward) | {"limit": size + 1}
    found = list((await session.execute(statement, bound)).all())
    more = len(found) > size
    found = found[:size]
    if not forward:
        found.reverse()
        if not found:  # nothing before the cursor: show the first page
            return await page(session, query=query, size=size, phone_region=phone_region)
    rows = [PatientRow(r.id, r.external_id, r.first_name, r.last_name, r.email, r.phone)
            for r in found]
    has_next = more if forward else True
    has_previous = position is not None if forward else more
    next_cursor = encode_cursor(found[-1].sort_key, found[-1].id) if has_next and found else None
    previous_cursor = None
    if has_previous and found:
        previous_cursor = encode_cursor(found[0].sort_key, found[0].id)
    elif has_previous and position is not None:  # an empty page past the end: back to the last
        previous_cursor = encode_cursor(position[0], position[1] + 1)
    return Page(rows=rows, next_cursor=next_cursor, previous_cursor=previous_cursor)


async def count_matches(
    session: AsyncSession, query: str, *, cap: int = 10_000, phone_region: str | None = None,
) -> tuple[int, bool]:
    """How many patients match (at most `cap`), and whether there are more than `cap`."""
    kind, n, values = _classify(query, phone_region)
    bound = _values(values, None, True) | {"cap": cap}
    found = int(await session.scalar(_count_statement(kind, n), bound) or 0)
    return min(found, cap), found > cap
