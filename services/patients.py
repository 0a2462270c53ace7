"""The patients catalog: importing a patient CSV (SPEC §2), all or nothing, upsert by external_id.

How an import runs, and why:
1. The file is streamed in batches; a worker thread (worker processes for large files on
   machines with spare cores) validates them while the main task writes the previous ones
   to temporary staging tables (services/patient_staging.py), which also catch duplicate
   external_ids. Memory stays bounded whatever the file's size.
2. One set-based `INSERT … SELECT … ON CONFLICT (external_id) DO UPDATE` moves the staged
   rows into `patients`; `patient_tags` follows; the audit entry is added; one commit.
   Any error or Ctrl-C before that commit leaves the catalog exactly as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import func, literal, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bot.db import Database
from services import audit, csv_safe, patient_staging
from services.access import Actor
from services.models import Patient, PatientTag, utcnow
from services.patient_csv import (
    ParsedRow,
    PatientCsv,
    PatientImportError,
    UnusableFile,
    validated_batches,
)
from services.patient_rows import VALUE_COLUMNS
from services.patient_staging import STAGED_ROWS, STAGED_TAGS, StagingWriter
from services.private_files import FILE_MODE

__all__ = [
    "ImportSummary",
    "PatientImportError",
    "UnusableFile",
    "default_report_path",
    "import_patients",
]

BATCH_SIZE = 5000
# Validation in worker processes pays off only with spare cores and a file large enough to
# amortize starting them (about 2 s each); otherwise one thread validates.
PROCESSES_FROM_BYTES = 8 * 1024 * 1024
PROCESSES_FROM_CPUS = 4
MAX_WORKERS = 8
REPORT_COLUMNS = ("line", "external_id", "reason")

# What each CSV column updates on an existing patient. A column missing from the file
# changes nothing for existing patients (a file of external_id,sms_opt_in only edits consent).
UPDATED_BY = {
    "external_id": ("external_id_key",),
    "first_name": ("first_name", "first_name_key"),
    "last_name": ("last_name", "last_name_key"),
    "email": ("email", "email_key"),
    "phone": ("phone", "phone_key"),
    "birth_date": ("birth_date", "birth_month"),
    "patient_type": ("patient_type",),
    "last_study_at": ("last_study_at",),
    "timezone": ("timezone",),
    "email_opt_in": ("email_opt_in",),
    "sms_opt_in": ("sms_opt_in",),
    "tags": ("tags",),
}

Progress = Callable[[int, int], None]  # (bytes of the file read so far, file size)


@dataclass
class ImportSummary:
    """What an import did; `report_path` is set only when rows were rejected."""

    file: Path
    inserted: int = 0
    updated: int = 0
    rejected: int = 0
    report_path: Path | None = None
    ignored_columns: list[str] = field(default_factory=list)
    unchanged_columns: list[str] = field(default_factory=list)  # absent: kept as they were
    seconds: float = 0.0


def default_report_path(csv_path: Path) -> Path:
    """`patients.csv` → `patients.rejected.csv`, next to it."""
    return csv_path.with_name(f"{csv_path.stem}.rejected.csv")


async def import_patients(
    db: Database,
    path: Path,
    *,
    actor: Actor | str,
    phone_region: str | None,
    report_path: Path | None = None,
    progress: Progress | None = None,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
) -> ImportSummary:
    """Upsert the CSV's valid rows by external_id in one transaction; report the rejected ones.

    `workers`: validation processes (0: one thread; None: chosen from the file's size).
    Raises UnusableFile (nothing imported) when the file as a whole cannot be used.
    """
    started = time.perf_counter()
    report = _RejectedReport(report_path or default_report_path(path))
    with PatientCsv(path) as source:
        summary = ImportSummary(
            file=path,
            ignored_columns=source.ignored_columns,
            unchanged_columns=[c for c in UPDATED_BY if c not in source.columns],
        )
        if workers is None:
            workers = _default_workers(source.size)
        try:
            async with db.engine.connect() as connection:
                await patient_staging.use_disk_for_temporary_tables(connection, True)
                try:
                    async with connection.begin():
                        await _stage_and_merge(
                            connection, source, report, summary, actor=actor,
                            phone_region=phone_region, progress=progress,
                            batch_size=batch_size, workers=workers,
                        )
                finally:
                    await patient_staging.use_disk_for_temporary_tables(connection, False)
        except BaseException:
            report.discard()
            raise
    summary.report_path = report.publish()
    summary.seconds = time.perf_counter() - started
    return summary


async def _stage_and_merge(
    connection: AsyncConnection,
    source: PatientCsv,
    report: _RejectedReport,
    summary: ImportSummary,
    *,
    actor: Actor | str,
    phone_region: str | None,
    progress: Progress | None,
    batch_size: int,
    workers: int,
) -> None:
    """Everything inside the import's one transaction."""
    await patient_staging.create(connection)
    writer = await StagingWriter.open(connection)
    batches = validated_batches(
        source,
        phone_region=phone_region,
        dialect=connection.dialect.name,
        batch_size=batch_size,
        workers=workers,
    )
    async with aclosing(batches):
        async for rows, read in batches:
            report.add(await writer.stage(rows))
            if progress is not None:
                progress(read, source.size)
    if progress is not None:
        progress(source.size, source.size)
    summary.inserted, summary.updated = await _merge(connection, source.columns)
    await patient_staging.drop(connection)
    summary.rejected = report.count
    await _audit(connection, actor, summary)
    report.finish()  # before the commit: a full disk must not leave half a report


def _default_workers(size: int) -> int:
    if size < PROCESSES_FROM_BYTES:
        return 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus - 1, MAX_WORKERS) if cpus >= PROCESSES_FROM_CPUS else 0


async def _merge(connection: AsyncConnection, columns: frozenset[str]) -> tuple[int, int]:
    """Upsert the staged rows into the catalog; returns (inserted, updated)."""
    patients = Patient.__table__
    stamp = literal(utcnow(), patients.c.created_at.type)  # created_at of the rows inserted now
    source = select(*(STAGED_ROWS.c[name] for name in VALUE_COLUMNS), stamp, stamp)
    module = postgresql if connection.dialect.name == "postgresql" else sqlite
    # WHERE true: SQLite needs it to parse INSERT … SELECT … ON CONFLICT.
    insert = module.insert(patients).from_select(
        [*VALUE_COLUMNS, "created_at", "updated_at"], source.where(true())
    )
    # Never id, created_at or the opt-out times: a patient's STOP survives every re-import.
    updates: dict[str, Any] = {"updated_at": insert.excluded.updated_at}
    for column in columns:
        for name in UPDATED_BY[column]:
            updates[name] = insert.excluded[name]
    if {"first_name", "last_name"} <= columns:
        updates["sort_key"] = insert.excluded.sort_key
    elif columns & {"first_name", "last_name"}:  # the other half comes from the stored row
        last = (
            insert.excluded.last_name_key if "last_name" in columns else patients.c.last_name_key
        )
        first = (
            insert.excluded.first_name_key if "first_name" in columns
            else patients.c.first_name_key
        )
        updates["sort_key"] = func.trim(last.concat(" ").concat(first))
    # This write is the first statement that touches the catalog: on SQLite the write lock
    # is taken here (waiting out the busy timeout), never upgraded from a stale read.
    await connection.execute(
        insert.on_conflict_do_update(index_elements=["external_id"], set_=updates)
    )

    joined = STAGED_ROWS.join(patients, patients.c.external_id == STAGED_ROWS.c.external_id)
    total = (await connection.execute(select(func.count()).select_from(STAGED_ROWS))).scalar_one()
    inserted = (
        await connection.execute(
            select(func.count()).select_from(joined).where(patients.c.created_at == stamp)
        )
    ).scalar_one()
    if "tags" in columns:
        tags = PatientTag.__table__
        await connection.execute(
            tags.delete().where(tags.c.patient_id.in_(select(patients.c.id).select_from(joined)))
        )
        await connection.execute(
            tags.insert().from_select(
                ["patient_id", "tag"],
                select(patients.c.id, STAGED_TAGS.c.tag).select_from(
                    STAGED_TAGS.join(patients, patients.c.external_id == STAGED_TAGS.c.external_id)
                ),
            )
        )
    return inserted, total - inserted


async def _audit(connection: AsyncConnection, actor: Actor | str, summary: ImportSummary) -> None:
    async with AsyncSession(bind=connection) as session:  # joins the import's transaction
        await audit.record(
            session,
            actor,
            "patients.imported",
            file=summary.file.name,
            inserted=summary.inserted,
            updated=summary.updated,
            rejected=summary.rejected,
        )
        await session.flush()


class _RejectedReport:
    """The rejected rows, written to a side file as they come and put in place on success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._partial = path.with_name(f".{path.name}.partial")
        self._out: TextIO | None = None
        self._writer: csv_safe.SafeWriter | None = None
        folder = path.parent
        problem = (
            "does not exist" if not folder.is_dir()
            else "is not writable" if not os.access(folder, os.W_OK)
            else None
        )
        if problem:
            raise PatientImportError(
                f"cannot write the report to {path}: folder {folder} {problem}; "
                "choose another with --report PATH"
            )

    def add(self, rows: Sequence[ParsedRow]) -> None:
        if not rows:
            return
        try:
            if self._out is None or self._writer is None:
                # utf-8-sig: Excel, where the report is usually opened, then shows accents right.
                # 0600: the rejected values are patients' addresses and numbers.
                fd = os.open(self._partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
                os.fchmod(fd, FILE_MODE)
                self._out = os.fdopen(fd, "w", encoding="utf-8-sig", newline="")
                self._writer = csv_safe.writer(self._out)
                self._writer.writerow(REPORT_COLUMNS)
            self._writer.writerows((r.line, r.external_id, r.result) for r in rows)
        except OSError as exc:
            raise self._failed(exc) from None
        self.count += len(rows)

    def finish(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except OSError as exc:
                raise self._failed(exc) from None

    def publish(self) -> Path | None:
        """Put the report in place (after the commit); where it is, if rows were rejected."""
        if self._out is None:
            return None
        try:
            os.replace(self._partial, self.path)
        except OSError:  # the import is committed: point at the rows rather than fail it
            return self._partial
        return self.path

    def discard(self) -> None:
        if self._out is not None:
            with suppress(OSError):
                self._out.close()
            self._partial.unlink(missing_ok=True)

    def _failed(self, exc: OSError) -> PatientImportError:
        return PatientImportError(
            f"cannot write the report {self._partial}: {exc.strerror}; nothing was imported"
        )
