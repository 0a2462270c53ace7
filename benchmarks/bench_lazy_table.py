"""Lazy table page and search latency over a big catalog (SPEC §5: p95 ≤ 50 ms at 1,000,000).

    .venv/bin/python benchmarks/bench_lazy_table.py [--rows 1000000] [--calls 300]
        [--keep DIR] [--postgres-url postgresql://postgres@127.0.0.1:5432/test]
        [--no-postgres] [--explain]

Seeds a fresh SQLite database (and a PostgreSQL database on the server at --postgres-url
when it answers, created here) with `services.seed.seed_patients`, then times each case
below `--calls` times (inputs taken in turn) and prints p50/p95/p99 in milliseconds. Each
call opens its own session, as a Slack request does. Without --keep the databases are
dropped at the end; with --keep DIR they are kept (SQLite file in DIR, PostgreSQL database
`bench_lazy_table_<rows>`) and reused by the next run with the same --rows.
--explain prints the statements of one call per case with the databases' plans.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from bot.db import Database, describe, upgrade_async
from services import lazy_table
from services.models import Patient
from services.seed import seed_patients

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
Call = Callable[[AsyncSession, int], Awaitable[Any]]


def _cycle(values: list[Any]) -> Callable[[int], Any]:
    return lambda i: values[i % len(values)]


async def _cases(db: Database) -> list[tuple[str, Call]]:
    """The calls to time, with inputs drawn from the seeded catalog itself."""
    rng = random.Random(11)
    async with db.sessions() as session:
        top = int(await session.scalar(select(func.max(Patient.id))) or 0)
        picks = [rng.randint(1, top) for _ in range(60)]
        sampled = (await session.execute(
            select(Patient.sort_key, Patient.id, Patient.email_key, Patient.phone_key,
                   Patient.external_id).where(Patient.id.in_(picks)))).all()
    cursors = _cycle([lazy_table.encode_cursor(r.sort_key, r.id) for r in sampled])
    emails = _cycle([r.email_key[: r.email_key.index("@") - 2] for r in sampled if r.email_key])
    phones = _cycle([" ".join((r.phone_key[:2], r.phone_key[2:4], r.phone_key[4:6]))
                     for r in sampled if r.phone_key])
    external = _cycle([r.external_id[:-2] for r in sampled])
    rare = _cycle(["cuauhtemoc zu", "efrain tellez", "ordonez ruben", "zuniga del valle g"])
    nothing = _cycle(["qxz", "zzzz", "maria qq", "5599@x"])
    common = _cycle(["a", "ma", "m", "jo"])
    second: dict[str, str | None] = {}

    async def page2(session: AsyncSession, i: int) -> Any:
        query = common(i)
        if query not in second:
            second[query] = (await lazy_table.page(session, query=query)).next_cursor
        return await lazy_table.page(session, query=query, after=second[query])

    return [
        ("first page", lambda s, i: lazy_table.page(s)),
        ("deep page (keyset)", lambda s, i: lazy_table.page(s, after=cursors(i))),
        ("previous page", lambda s, i: lazy_table.page(s, before=cursors(i))),
        ("search 'a'", lambda s, i: lazy_table.page(s, query="a")),
        ("search 'ma'", lambda s, i: lazy_table.page(s, query="ma")),
        ("search a/ma/m/jo, page 2", page2),
        ("search rare name", lambda s, i: lazy_table.page(s, query=rare(i))),
        ("search no match", lambda s, i: lazy_table.page(s, query=nothing(i))),
        ("search email prefix", lambda s, i: lazy_table.page(s, query=emails(i))),
        ("search phone digits", lambda s, i: lazy_table.page(s, query=phones(i))),
        ("search national phone", lambda s, i: lazy_table.page(
            s, query=phones(i)[3:], phone_region="MX")),
        ("search external id", lambda s, i: lazy_table.page(s, query=external(i))),
        ("count_matches 'a'/'ma'/…", lambda s, i: lazy_table.count_matches(s, common(i))),
        ("count_matches rare", lambda s, i: lazy_table.count_matches(s, rare(i))),
        ("count_matches email", lambda s, i: lazy_table.count_matches(s, emails(i))),
    ]


def _percentile(sorted_ms: list[float], p: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[index]


async def measure(db: Database, calls: int, explain: bool) -> list[tuple[str, list[float]]]:
    results = []
    for name, call in await _cases(db):
        for i in range(8):  # warm the caches, as a running bot has them
            async with db.sessions() as session:
                await call(session, i)
        if explain:
            await _explain(db, name, call)
        timings = []
        for i in range(calls):
            async with db.sessions() as session:
                started = time.perf_counter()
                await call(session, i)
                timings.append((time.perf_counter() - started) * 1000)
        results.append((name, sorted(timings)))
    return results


async def _explain(db: Database, name: str, call: Call) -> None:
    statements: list[tuple[str, Any]] = []

    def grab(_c: Any, _cur: Any, statement: str, params: Any, _ctx: Any, _many: bool) -> None:
        statements.append((statement, params))

    event.listen(db.engine.sync_engine, "before_cursor_execute", grab)
    async with db.sessions() as session:
        await call(session, 0)
    event.remove(db.engine.sync_engine, "before_cursor_execute", grab)
    print(f"\n### {name}")
    async with db.engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert raw is not None
        for statement, params in statements:
            print("SQL:", " ".join(statement.split()))
            if db.dialect == "sqlite":
                cursor = await raw.execute("EXPLAIN QUERY PLAN " + statement, params)
                lines = [f"{row[0]:>3} {row[1]:>3} {row[3]}" for row in await cursor.fetchall()]
            else:
                rows = await raw.fetch("EXPLAIN (ANALYZE, COSTS OFF) " + statement, *params)
                lines = [row[0] for row in rows]
            print("\n".join("    " + line for line in lines))


def report(label: str, results: list[tuple[str, list[float]]]) -> None:
    print(f"\n{label}\n  {'case':28} {'p50':>8} {'p95':>8} {'p99':>8}   (ms)")
    for name, ms in results:
        flag = "" if _percentile(ms, 95) <= 50 else "  > 50 ms at p95"
        print(f"  {name:28} {_percentile(ms, 50):8.2f} {_percentile(ms, 95):8.2f} "
              f"{_percentile(ms, 99):8.2f}{flag}", flush=True)


async def prepare(url: str, rows: int) -> Database:
    """A migrated database holding exactly `rows` seeded patients (reused when it does)."""
    await upgrade_async(url)
    db = Database(url)
    async with db.sessions() as session:
        present = int(await session.scalar(select(func.count()).select_from(Patient)) or 0)
    if present == rows:
        print(f"  reusing {present:,} patients in {describe(url)}", flush=True)
        return db
    if present:
        raise SystemExit(f"{describe(url)} holds {present:,} patients, not {rows:,}; "
                         "remove it or use another --keep folder")
    started = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            print(f"  seeded {done:,}/{total:,}", flush=True)

    await seed_patients(db, rows, rng_seed=42, progress=progress)
    print(f"  seeding took {time.perf_counter() - started:.0f} s", flush=True)
    # Fresh statistics and visibility map, as autovacuum leaves them after a bulk load.
    async with db.engine.connect() as connection:
        if db.dialect == "postgresql":
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text("VACUUM ANALYZE patients"))
            await connection.execute(text("VACUUM ANALYZE patient_tags"))
    return db


async def _pg(url: str, statement: str, *args: Any) -> Any:
    """One statement on the server's admin database (CREATE/DROP DATABASE need no transaction)."""
    import asyncpg

    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host or "127.0.0.1", port=parsed.port or 5432,
        user=parsed.username or "postgres", password=parsed.password,
        database=parsed.database or "postgres", timeout=5)
    try:
        return await connection.fetchval(statement, *args)
    finally:
        await connection.close()


async def run_sqlite(args: argparse.Namespace, folder: Path) -> None:
    url = f"sqlite:///{folder / f'lazy_table_{args.rows}.db'}"
    db = await prepare(url, args.rows)
    try:
        report(f"SQLite {_sqlite_version()}, {args.rows:,} patients, {args.calls} calls per case",
               await measure(db, args.calls, args.explain))
    finally:
        await db.dispose()


async def run_postgres(args: argparse.Namespace) -> None:
    name = f"bench_lazy_table_{args.rows}" if args.keep else f"bench_lt_{secrets.token_hex(4)}"
    try:
        exists = await _pg(args.postgres_url, "SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await _pg(args.postgres_url, f'CREATE DATABASE "{name}"')
    except Exception as exc:  # no server: the SQLite figures stand alone
        print(f"\nPostgreSQL skipped: {args.postgres_url} not reachable ({exc})")
        return
    url = make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        db = await prepare(url, args.rows)
        try:
            async with db.sessions() as session:
                version = await session.scalar(text("SHOW server_version"))
            report(f"PostgreSQL {version}, {args.rows:,} patients, {args.calls} calls per case",
                   await measure(db, args.calls, args.explain))
        finally:
            await db.dispose()
    finally:
        if not args.keep:
            await _pg(args.postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per case")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the seeded databases here")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--explain", action="store_true", help="print each case's plans")
    args = parser.parse_args()
    print(f"bench_lazy_table: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        await run_sqlite(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_lazy_table_") as folder:
            await run_sqlite(args, Path(folder))
    if not args.no_postgres:
        await run_postgres(args)
    print("\nSPEC §5 target: p95 ≤ 50 ms per page and per search, on SQLite and PostgreSQL.")


if __name__ == "__main__":
    asyncio.run(main())
