"""Patients catalog throughput: CSV import (fresh and re-import) and `patients seed`.

    .venv/bin/python benchmarks/bench_import.py [--rows 100000] [--seed-rows 1000000]
        [--database-url URL] [--postgres-url postgresql://postgres@127.0.0.1:5432/test]

Writes a CSV of synthetic patients (with a few bad rows) to a temporary folder and imports
it into a fresh SQLite database, and into a temporary PostgreSQL database when the server
answers (created and dropped here); `--database-url` benchmarks that database instead.
Then seeds `--seed-rows` patients into a fresh SQLite database (and PostgreSQL). Prints
time, rows/s and the process's peak memory after each step.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import platform
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.engine import make_url

from bot.db import Database, describe, upgrade_async
from services.patient_rows import COLUMNS
from services.patients import import_patients
from services.seed import seed_patients, synthetic_patients

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def write_csv(path: Path, rows: int) -> int:
    """A realistic export: mixed spellings of booleans, local phones, ~0.2% bad rows."""
    bad = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for i, p in enumerate(synthetic_patients(rows, rng_seed=7)):
            email = p["email"] or ""
            if i % 500 == 499:
                email, bad = "not-an-email@", bad + 1
            writer.writerow([
                p["external_id"], p["first_name"], p["last_name"], email, p["phone"] or "",
                p["birth_date"].isoformat(), p["patient_type"],
                p["last_study_at"].isoformat() if p["last_study_at"] else "",
                p["timezone"] or "", ("yes" if p["email_opt_in"] else "no"),
                ("TRUE" if p["sms_opt_in"] else ""), ";".join(p["tags"]),
            ])
    return bad


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def bench_import(url: str, csv_path: Path, rows: int) -> None:
    await upgrade_async(url)
    db = Database(url)
    try:
        for label in ("import (all new)", "re-import (all updates)"):
            started = time.perf_counter()
            summary = await import_patients(
                db, csv_path, actor="bench", phone_region="MX",
                report_path=csv_path.with_suffix(".rejected.csv"),
            )
            seconds = time.perf_counter() - started
            print(
                f"  {label:24} {seconds:7.2f} s  {rows / seconds:9,.0f} rows/s  "
                f"inserted {summary.inserted:,} updated {summary.updated:,} "
                f"rejected {summary.rejected:,}  peak RSS {peak_mb():.0f} MB",
                flush=True,
            )
    finally:
        await db.dispose()


async def bench_seed(url: str, rows: int) -> None:
    await upgrade_async(url)
    db = Database(url)
    try:
        started = time.perf_counter()
        await seed_patients(db, rows, rng_seed=1, actor="bench")
        seconds = time.perf_counter() - started
        print(
            f"  seed {rows:,} patients     {seconds:7.2f} s  {rows / seconds:9,.0f} rows/s  "
            f"peak RSS {peak_mb():.0f} MB",
            flush=True,
        )
    finally:
        await db.dispose()


@asynccontextmanager
async def temporary_postgres(admin_url: str) -> AsyncIterator[str | None]:
    """A fresh database on the server, dropped afterwards; None when no server answers."""
    import asyncpg

    parsed = make_url(admin_url)
    name = f"bench_{secrets.token_hex(4)}"
    connect = {
        "host": parsed.host or "127.0.0.1", "port": parsed.port or 5432,
        "user": parsed.username or "postgres", "password": parsed.password,
        "database": parsed.database or "postgres", "timeout": 5,
    }
    try:
        admin = await asyncpg.connect(**connect)
    except Exception as exc:
        print(f"PostgreSQL skipped: {admin_url} does not answer ({type(exc).__name__})")
        yield None
        return
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield parsed.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed-rows", type=int, default=1_000_000, help="0 skips seeding")
    parser.add_argument("--database-url", help="benchmark this database instead of fresh ones")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    args = parser.parse_args()
    print(f"{platform.node()} · {platform.processor() or platform.machine()} · "
          f"Python {platform.python_version()} · {time.strftime('%Y-%m-%d %H:%M')}")

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        csv_path = work / "patients.csv"
        started = time.perf_counter()
        bad = write_csv(csv_path, args.rows)
        print(f"wrote {args.rows:,} rows ({bad} bad) = {csv_path.stat().st_size / 2**20:.1f} MB "
              f"in {time.perf_counter() - started:.1f} s")

        if args.database_url:
            print(f"import into {describe(args.database_url)}")
            await bench_import(args.database_url, csv_path, args.rows)
            return
        print("import into a fresh SQLite database")
        await bench_import(f"sqlite:///{work / 'import.db'}", csv_path, args.rows)
        async with temporary_postgres(args.postgres_url) as pg:
            if pg:
                print("import into a fresh PostgreSQL database")
                await bench_import(pg, csv_path, args.rows)

        if args.seed_rows > 0:
            print("seed a fresh SQLite database")
            await bench_seed(f"sqlite:///{work / 'seed.db'}", args.seed_rows)
            async with temporary_postgres(args.postgres_url) as pg:
                if pg:
                    print("seed a fresh PostgreSQL database")
                    await bench_seed(pg, args.seed_rows)


if __name__ == "__main__":
    asyncio.run(main())
