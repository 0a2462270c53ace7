"""`campaign-bot patients import FILE.csv [--report PATH]` and `campaign-bot patients seed N`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asyncpg import InterfaceError, PostgresError
from asyncpg import exceptions as asyncpg_exc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from sqlalchemy import exc as sqlalchemy_exc
from sqlalchemy.exc import SQLAlchemyError

from bot import db
from bot.settings import Settings
from services.access import Actor
from services.patients import ImportSummary, PatientImportError, UnusableFile, import_patients
from services.seed import seed_patients

EXIT_UNUSABLE = 2
EXIT_INTERRUPTED = 130
# Raised by the database or its drivers (bulk writes go through asyncpg directly).
DATABASE_ERRORS = (SQLAlchemyError, PostgresError, InterfaceError, OSError)
DATA_ERRORS = (sqlalchemy_exc.DataError, sqlalchemy_exc.IntegrityError, asyncpg_exc.DataError,
               asyncpg_exc.IntegrityConstraintViolationError)


def register(commands: Any) -> None:
    group = commands.add_parser("patients", help="the patients catalog")
    sub = group.add_subparsers(dest="patients_command", metavar="ACTION", required=True)

    load = sub.add_parser(
        "import",
        help="upsert patients from a CSV file by external_id",
        description="Upsert patients from a CSV file by external_id (all or nothing). Rejected "
        "rows are listed with their line and reason in a report next to the file.",
    )
    load.add_argument("file", type=Path, metavar="FILE.csv")
    load.add_argument(
        "--report", type=Path, metavar="PATH", help="where to write the rejected rows "
        "(default: <name>.rejected.csv next to the file)"
    )
    load.set_defaults(handler=_import)

    seed = sub.add_parser("seed", help="add N realistic synthetic patients (for trying it out)")
    seed.add_argument("count", type=_positive, metavar="N")
    seed.add_argument("--seed", type=int, default=None, metavar="INT", help="random seed")
    seed.set_defaults(handler=_seed)


async def _import(args: argparse.Namespace, settings: Settings) -> int:
    path: Path = args.file
    try:
        async with db.migrated(settings.database_url) as database:
            with _progress_bar(f"importing {path.name}", bytes_=True) as advance:
                summary = await import_patients(
                    database,
                    path,
                    actor=Actor.local_operator(),
                    phone_region=settings.default_phone_region,
                    report_path=args.report,
                    progress=advance,
                )
    except (UnusableFile, PatientImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("import interrupted; the catalog is unchanged", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DATABASE_ERRORS as exc:
        if _refused_value(exc):
            # The server is fine; a value from the file is not (pointing at DATABASE_URL
            # here sent operators looking in the wrong place).
            print(f"error: the database refused a value from {path} ({_first_line(exc)}); "
                  "the catalog is unchanged; fix that value in the file and import it again",
                  file=sys.stderr)
        else:
            _database_failed(settings, exc, "the catalog is unchanged")
        return 1
    _print_summary(summary)
    return 0


async def _seed(args: argparse.Namespace, settings: Settings) -> int:
    try:
        async with db.migrated(settings.database_url) as database:
            with _progress_bar("seeding patients", bytes_=False) as advance:
                added = await seed_patients(
                    database, args.count, rng_seed=args.seed, progress=advance
                )
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("seeding interrupted; no patients were added", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DATABASE_ERRORS as exc:
        _database_failed(settings, exc, "no patients were added")
        return 1
    print(f"added {added:,} synthetic patients to {db.describe(settings.database_url)}")
    return 0


def _database_failed(settings: Settings, exc: BaseException, outcome: str) -> None:
    print(
        f"error: the database {db.describe(settings.database_url)} failed "
        f"({_first_line(exc)}); {outcome}; check DATABASE_URL and that the server is up",
        file=sys.stderr,
    )


def _refused_value(exc: BaseException) -> bool:
    """Did the database refuse a value (bad data), rather than fail or go away?"""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DATA_ERRORS):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else (
            current.__cause__ or current.__context__)
    return False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _print_summary(summary: ImportSummary) -> None:
    print(f"imported {summary.file} in {summary.seconds:.1f} s")
    print(f"  inserted: {summary.inserted:,}")
    print(f"  updated:  {summary.updated:,}")
    if summary.rejected:
        print(f"  rejected: {summary.rejected:,} (line and reason in {summary.report_path})")
    else:
        print("  rejected: 0")
    if summary.ignored_columns:
        print(f"  ignored columns (not part of the patient format): "
              f"{', '.join(summary.ignored_columns)}")
    if summary.unchanged_columns and summary.updated:
        print(f"  not in the file, so kept as they were for existing patients: "
              f"{', '.join(summary.unchanged_columns)}")


@contextmanager
def _progress_bar(label: str, *, bytes_: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich bar on a terminal; elsewhere (logs, pipes) a plain line every 10%."""
    console = Console(stderr=True)
    if not console.is_terminal:
        shown = [-1]

        def log(done: int, total: int) -> None:
            tenth = done * 10 // total if total else 10
            if tenth > shown[0]:
                shown[0] = tenth
                print(f"{label}: {tenth * 10}%", file=sys.stderr, flush=True)

        yield log
        return
    amount = (DownloadColumn(), TransferSpeedColumn()) if bytes_ else (MofNCompleteColumn(),)
    columns = (TextColumn("{task.description}"), BarColumn(), *amount, TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            description = "saving to the database" if bytes_ and done >= total else label
            bar.update(task, completed=done, total=total, description=description)

        yield advance


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
