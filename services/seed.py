"""Realistic synthetic patients, for trying the bot out and for benchmarks (`patients seed N`).

Fast by construction: names, search keys and phone prefixes are computed once into pools
(phone prefixes are checked with phonenumbers once, not per patient), rows are plain dicts
from one `random.Random`, and they go in with Core bulk inserts (COPY on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import phonenumbers
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db import Database
from services import audit
from services.access import Actor
from services.models import Patient, UTCDateTime, utcnow
from services.search_keys import fold

BATCH_SIZE = 20_000
# SQLite inserts into ten indexes row by row cost more than building them afterwards, by
# sorting, once a seeding adds many rows (and at least as many as there already are).
REBUILD_INDEXES_FROM = 50_000
_INDEXES = sorted(Patient.__table__.indexes, key=lambda index: str(index.name))
ID_PREFIX = "P"
ID_DIGITS = 7

Progress = Callable[[int, int], None]  # (patients added so far, patients to add)

FEMALE = (
    "María", "Guadalupe", "Sofía", "Ximena", "Valentina", "Camila", "Fernanda", "Daniela",
    "Lucía", "Mariana", "Andrea", "Natalia", "Ana", "Verónica", "Mónica", "Patricia", "Rosa",
    "Adriana", "Alejandra", "Gabriela", "Beatriz", "Inés", "Elena", "Paola", "Regina",
    "Renata", "Itzel", "Citlali", "Noemí", "Raquel", "Jimena", "Leticia", "Araceli", "Yolanda",
    "Dolores", "Ángela", "Zoé", "Susana", "María José", "Ana Sofía", "Emily", "Sarah",
    "Jennifer", "Jessica",
)
MALE = (
    "José", "Juan", "Luis", "Carlos", "Jesús", "Miguel", "Alejandro", "Francisco", "Jorge",
    "Manuel", "Ricardo", "Fernando", "Andrés", "Martín", "Héctor", "Raúl", "Julián", "Iván",
    "Sebastián", "Mateo", "Santiago", "Diego", "Emiliano", "Leonardo", "Óscar", "Rubén",
    "Ramón", "Tomás", "Joaquín", "Adrián", "Ángel", "Efraín", "Germán", "Cuauhtémoc",
    "José Luis", "Juan Pablo", "Michael", "David", "James", "Robert",
)
SURNAMES = (
    "Hernández", "García", "Martínez", "López", "González", "Pérez", "Rodríguez", "Sánchez",
    "Ramírez", "Cruz", "Flores", "Gómez", "Morales", "Vázquez", "Jiménez", "Reyes", "Díaz",
    "Torres", "Gutiérrez", "Ruiz", "Mendoza", "Aguilar", "Ortiz", "Moreno", "Castillo",
    "Romero", "Álvarez", "Méndez", "Chávez", "Rivera", "Juárez", "Ramos", "Domínguez",
    "Herrera", "Medina", "Castro", "Vargas", "Guzmán", "Velázquez", "Muñoz", "Núñez", "Ibáñez",
    "Peña", "Ordóñez", "Castañeda", "Saldaña", "Zúñiga", "Benítez", "Rincón", "Téllez",
    "De la Cruz", "Del Valle", "Smith", "Johnson", "Williams", "Brown", "O'Connor", "Miller",
)
# (type, share in %, earliest and latest birth year)
PATIENT_TYPES = (
    ("general", 45, 1930, 2020),
    ("pediatric", 15, 2007, 2020),
    ("cardiology", 12, 1930, 1985),
    ("oncology", 8, 1935, 2000),
    ("prenatal", 8, 1980, 2006),
    ("dermatology", 7, 1940, 2010),
    ("ophthalmology", 5, 1930, 2000),
)
TAGS = (
    "vip", "diabetes", "hypertension", "newsletter", "insurance-a", "insurance-b", "follow-up",
    "no-show", "referral", "spanish", "english", "corporate",
)
# Reserved for documentation (RFC 2606): never a real person's mailbox.
EMAIL_DOMAINS = ("example.com",) * 5 + ("example.org",) * 3 + ("example.net", "mail.example.com")
# (country code, area code, time zone, share in % of patients with a phone)
AREAS = (
    ("52", "55", "America/Mexico_City", 50), ("52", "33", "America/Mexico_City", 8),
    ("52", "222", "America/Mexico_City", 5), ("52", "442", "America/Mexico_City", 4),
    ("52", "81", "America/Monterrey", 8), ("52", "664", "America/Tijuana", 4),
    ("52", "998", "America/Cancun", 3), ("52", "999", "America/Merida", 3),
    ("1", "212", "America/New_York", 3), ("1", "305", "America/New_York", 2),
    ("1", "312", "America/Chicago", 2), ("1", "713", "America/Chicago", 2),
    ("1", "415", "America/Los_Angeles", 3), ("1", "602", "America/Phoenix", 3),
)
_NOT_LETTERS = re.compile(r"[^a-z]+")
_STUDY_SPAN = timedelta(days=3 * 365).total_seconds()


@dataclass(frozen=True, slots=True)
class _Name:
    text: str
    key: str  # search key (services.search_keys.fold)
    mailbox: str  # ASCII letters for the email's local part


@dataclass(frozen=True, slots=True)
class _Prefix:
    e164: str  # "+52551234": every 4-digit ending makes a valid number
    timezone: str


class _Pools:
    """Everything expensive, computed once per seeding."""

    def __init__(self, rng: random.Random) -> None:
        self.female = [_name(n) for n in FEMALE]
        self.male = [_name(n) for n in MALE]
        self.surnames = [_name(n) for n in SURNAMES]
        # 100 entries: (type, first ordinal of its birth range, days in the range)
        self.types = [
            (kind, date(lo, 1, 1).toordinal(), (date(hi, 12, 31) - date(lo, 1, 1)).days)
            for kind, share, lo, hi in PATIENT_TYPES
            for _ in range(share)
        ]
        self.prefixes = [
            prefix
            for country, area, zone, share in AREAS
            for prefix in _valid_prefixes(rng, country, area, zone, share)
        ]
        self.other_zones = ["America/Mexico_City"] * 8 + ["America/Monterrey", "America/Cancun"]
        # Half have no tags, then one, two or three distinct ones (30/15/5 %).
        self.tag_sets: list[list[str]] = [[]] * 50 + [
            rng.sample(TAGS, 1 if i < 30 else 2 if i < 45 else 3) for i in range(50)
        ]


def _name(text: str) -> _Name:
    key = fold(text)
    return _Name(text, key, _NOT_LETTERS.sub("", key))


def _valid_prefixes(
    rng: random.Random, country: str, area: str, zone: str, count: int
) -> list[_Prefix]:
    """`count` × 4 prefixes whose every 4-digit completion phonenumbers accepts as valid."""
    national_length = 10
    wanted, found, tries = count * 4, [], 0
    while len(found) < wanted and tries < wanted * 50:
        tries += 1
        middle_length = national_length - len(area) - 4
        if country == "1":  # NANP exchange: 2-9 first, never 555 (fictional) nor N11
            exchange = f"{rng.randint(200, 999)}"
            if exchange == "555" or exchange[1:] == "11":
                continue
            middle = exchange[:middle_length]
        else:
            middle = "".join(rng.choice("123456789") for _ in range(middle_length))
        national = area + middle
        endings = ("0000", "9999", "5050", f"{rng.randrange(10_000):04d}")
        if all(
            phonenumbers.is_valid_number(phonenumbers.parse(f"+{country}{national}{e}"))
            for e in endings
        ):
            found.append(_Prefix(f"+{country}{national}", zone))
    return found


# The `Patient` columns a seeded row fills, in the order `_row` returns them.
COLUMNS = (
    "external_id", "first_name", "last_name", "email", "phone", "birth_date", "birth_month",
    "patient_type", "last_study_at", "timezone", "email_opt_in", "sms_opt_in",
    "email_opted_out_at", "sms_opted_out_at", "tags", "sort_key", "first_name_key",
    "last_name_key", "email_key", "phone_key", "external_id_key", "created_at", "updated_at",
)


def _row(number: int, pools: _Pools, rng: random.Random, now: datetime) -> tuple[Any, ...]:
    """One patient, as plain values in `COLUMNS` order (about ten random draws)."""
    rnd = rng.random
    kind, born_from, born_span = pools.types[int(rnd() * 100)]
    names = pools.female if kind == "prenatal" or rnd() < 0.52 else pools.male
    first = names[int(rnd() * len(names))]
    surnames = pools.surnames
    surname = surnames[int(rnd() * len(surnames))]
    if rnd() < 0.6:  # Mexican patients usually give both surnames
        second = surnames[int(rnd() * len(surnames))]
        last, last_key = f"{surname.text} {second.text}", f"{surname.key} {second.key}"
    else:
        last, last_key = surname.text, surname.key
    external_id = f"{ID_PREFIX}{number:0{ID_DIGITS}d}"

    email = None
    if rnd() >= 0.05:
        domain = EMAIL_DOMAINS[int(rnd() * len(EMAIL_DOMAINS))]
        email = f"{first.mailbox}.{surname.mailbox}{number}@{domain}"
    phone = timezone = None
    if rnd() >= 0.08:
        prefix = pools.prefixes[int(rnd() * len(pools.prefixes))]
        phone = f"{prefix.e164}{int(rnd() * 10_000):04d}"
        timezone = prefix.timezone
    elif rnd() >= 0.3:
        timezone = pools.other_zones[int(rnd() * len(pools.other_zones))]

    birth_date = date.fromordinal(born_from + int(rnd() * born_span))
    last_study_at = None if rnd() < 0.1 else now - timedelta(seconds=rnd() * _STUDY_SPAN)
    email_opt_in = email is not None and rnd() < 0.8
    sms_opt_in = phone is not None and rnd() < 0.65
    # A few patients said STOP or unsubscribed after consenting.
    email_out = now - timedelta(days=rnd() * 300) if email_opt_in and rnd() < 0.02 else None
    sms_out = now - timedelta(days=rnd() * 300) if sms_opt_in and rnd() < 0.03 else None
    return (
        external_id, first.text, last, email, phone, birth_date, birth_date.month,
        kind, last_study_at, timezone, email_opt_in, sms_opt_in, email_out, sms_out,
        pools.tag_sets[int(rnd() * 100)],
        f"{last_key} {first.key}", first.key, last_key,
        email,  # generated lower-case ASCII: already its own search key
        phone[1:] if phone else None, external_id.lower(), now, now,
    )


def synthetic_patients(
    n: int, *, rng_seed: int | None = None, first_number: int = 1
) -> Iterator[dict[str, Any]]:
    """`n` synthetic patients as `Patient` column values (what `seed_patients` inserts)."""
    rng = random.Random(rng_seed)
    pools = _Pools(rng)
    now = utcnow()
    for number in range(first_number, first_number + n):
        yield dict(zip(COLUMNS, _row(number, pools, rng, now), strict=True))


async def seed_patients(
    db: Database,
    n: int,
    *,
    rng_seed: int | None = None,
    progress: Progress | None = None,
    actor: Actor | str | None = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Add `n` synthetic patients (ids continue after existing P0000001-style ones), atomically."""
    if n < 1:
        return 0
    rng = random.Random(rng_seed)
    pools = _Pools(rng)
    now = utcnow()  # also marks this seeding's rows (created_at) for their tags
    async with db.transaction() as session:
        connection = await session.connection()
        first_number = await _next_number(connection)
        before = (await connection.execute(select(func.coalesce(func.max(Patient.id), 0)))).scalar()
        # Written first: on SQLite this DML is what opens the real transaction, so that
        # the index rebuild below is part of it (and undone if the seeding fails).
        await audit.record(
            session,
            actor or Actor.local_operator(),
            "patients.seeded",
            count=n,
            first_external_id=f"{ID_PREFIX}{first_number:0{ID_DIGITS}d}",
            last_external_id=f"{ID_PREFIX}{first_number + n - 1:0{ID_DIGITS}d}",
        )
        await session.flush()
        rebuild = n >= REBUILD_INDEXES_FROM and n >= (before or 0)
        rebuild = rebuild and await _inside_sqlite_transaction(connection)
        if rebuild:
            await connection.run_sync(lambda sync: [i.drop(sync) for i in _INDEXES])
        await _insert(connection, n, first_number, pools, rng, now, progress, batch_size)
        if rebuild:
            await connection.run_sync(lambda sync: [i.create(sync) for i in _INDEXES])
        await _insert_tags(connection, after_id=before or 0, created_at=now)
    return n


async def _insert(
    connection: AsyncConnection,
    n: int,
    first_number: int,
    pools: _Pools,
    rng: random.Random,
    now: datetime,
    progress: Progress | None,
    batch_size: int = BATCH_SIZE,
) -> None:
    write = await _writer(connection)
    done, writing = 0, None
    try:
        while done < n:
            size = min(batch_size, n - done)
            rows = [_row(first_number + done + i, pools, rng, now) for i in range(size)]
            # The next batch is generated while the database writes this one.
            if writing is not None:
                await writing
                if progress is not None:
                    progress(done, n)
            writing = asyncio.ensure_future(write(rows))
            await asyncio.sleep(0)  # let it reach the driver before generating more
            done += size
        if writing is not None:
            await writing
            writing = None
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
    if progress is not None:
        progress(n, n)


async def _inside_sqlite_transaction(connection: AsyncConnection) -> bool:
    """SQLite only: is a real transaction open (so DDL can still be rolled back)?"""
    if connection.dialect.name != "sqlite":
        return False
    raw = await connection.get_raw_connection()
    return bool(getattr(raw.driver_connection, "in_transaction", False))


async def _next_number(connection: AsyncConnection) -> int:
    """One past the highest `P<digits>` external id already in the catalog."""
    column = Patient.__table__.c.external_id
    query = (
        select(column)
        .where(column >= f"{ID_PREFIX}0", column < f"{ID_PREFIX}:")  # P then a digit
        .order_by(func.length(column).desc(), column.desc())
        .limit(100)
    )
    for (external_id,) in await connection.execute(query):
        digits = external_id[len(ID_PREFIX):]
        if digits.isdigit():
            return int(digits) + 1
    return 1


async def _writer(
    connection: AsyncConnection,
) -> Callable[[list[tuple[Any, ...]]], Awaitable[None]]:
    """Bulk insert through the driver: COPY on PostgreSQL, executemany on SQLite.

    Values pass through SQLAlchemy's own bind processors for these columns (so they are
    stored exactly as SQLAlchemy stores them), without its per-row statement overhead.
    """
    dialect = connection.dialect
    columns = Patient.__table__.c
    processors = [
        (i, _memo(processor) if name in _FEW_VALUES else processor)
        for i, name in enumerate(COLUMNS)
        if (processor := columns[name].type.dialect_impl(dialect).bind_processor(dialect))
    ]

    def stored(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        out = []
        for row in rows:
            values = list(row)
            for i, processor in processors:
                if values[i] is not None:
                    values[i] = processor(values[i])
            out.append(tuple(values))
        return out

    if dialect.name == "postgresql":
        raw = await connection.get_raw_connection()
        copy = raw.driver_connection.copy_records_to_table  # type: ignore[union-attr]

        async def copy_rows(rows: list[tuple[Any, ...]]) -> None:
            await copy(Patient.__tablename__, records=stored(rows), columns=list(COLUMNS))

        return copy_rows

    sql = (
        f"INSERT INTO {Patient.__tablename__} ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in COLUMNS)})"
    )

    async def insert_rows(rows: list[tuple[Any, ...]]) -> None:
        await connection.exec_driver_sql(sql, stored(rows))  # type: ignore[arg-type]

    return insert_rows


# Columns whose values repeat a lot: each distinct value is converted once.
_FEW_VALUES = {"birth_date", "email_opt_in", "sms_opt_in", "tags", "created_at", "updated_at"}


def _memo(processor: Callable[[Any], Any]) -> Callable[[Any], Any]:
    converted: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        key = tuple(value) if isinstance(value, list) else value
        try:
            return converted[key]
        except KeyError:
            converted[key] = result = processor(value)
            return result

    return convert


async def _insert_tags(connection: AsyncConnection, *, after_id: int, created_at: datetime) -> None:
    """`patient_tags` rows for the new patients, expanded from their `tags` in SQL."""
    if connection.dialect.name == "postgresql":
        expand = "CROSS JOIN LATERAL json_array_elements_text(p.tags) AS t(value)"
    else:
        expand = "JOIN json_each(p.tags) AS t"
    statement = text(
        "INSERT INTO patient_tags (patient_id, tag) "
        f"SELECT p.id, t.value FROM patients AS p {expand} "
        "WHERE p.id > :after_id AND p.created_at = :created_at"
    ).bindparams(bindparam("created_at", type_=UTCDateTime()))
    await connection.execute(statement, {"after_id": after_id, "created_at": created_at})

