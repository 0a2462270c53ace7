"""An import's staging tables: temporary, on the import's own connection, never the catalog.

Staging first, then one set-based merge, gives three things: the catalog is only written
(and, on SQLite, only locked) for the short merge at the end; the staging table's primary
key finds duplicate external_ids and the line that first gave them without holding the
file in memory; and a failure anywhere before the merge's commit changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.models import Patient
from services.patient_csv import ParsedRow
from services.patient_rows import VALUE_COLUMNS

_metadata = MetaData()
STAGED_ROWS = Table(
    "patient_import_rows",
    _metadata,
    Column("line", Integer, nullable=False),
    *(
        Column(c.name, c.type, primary_key=c.name == "external_id")
        for c in Patient.__table__.c
        if c.name in VALUE_COLUMNS
    ),
    prefixes=["TEMPORARY"],
)
STAGED_TAGS = Table(
    "patient_import_tags",
    _metadata,
    Column("external_id", String(100), nullable=False),
    Column("tag", String(30), nullable=False),
    prefixes=["TEMPORARY"],
)


async def create(connection: AsyncConnection) -> None:
    await drop(connection)  # a crash may have left them on this pooled connection
    await connection.run_sync(_metadata.create_all)


async def drop(connection: AsyncConnection) -> None:
    schema = "pg_temp" if connection.dialect.name == "postgresql" else "temp"
    for table in (STAGED_TAGS, STAGED_ROWS):
        await connection.exec_driver_sql(f"DROP TABLE IF EXISTS {schema}.{table.name}")


async def use_disk_for_temporary_tables(connection: AsyncConnection, on: bool) -> None:
    """SQLite keeps temporary tables in memory here (bot/db.py); a big file's belong on disk.

    The setting can only change outside a transaction; it is restored afterwards.
    """
    if connection.dialect.name != "sqlite":
        return
    with suppress(Exception):  # a performance setting only: never fail an import over it
        if connection.in_transaction():
            await connection.commit()
        await connection.exec_driver_sql(f"PRAGMA temp_store = {'FILE' if on else 'MEMORY'}")
        await connection.commit()


class StagingWriter:
    """Bulk writes to the staging tables through the driver: executemany, COPY on PostgreSQL.

    The rows arrive as the driver takes them (`PatientRow.stored_values`), so the event
    loop's thread does little more than hand them over.
    """

    def __init__(self, connection: AsyncConnection, copy: Any) -> None:
        self.connection = connection
        self._copy = copy
        self._columns = ["line", *VALUE_COLUMNS]

    @classmethod
    async def open(cls, connection: AsyncConnection) -> StagingWriter:
        copy = None
        if connection.dialect.name == "postgresql":
            raw = await connection.get_raw_connection()
            copy = raw.driver_connection.copy_records_to_table  # type: ignore[union-attr]
        return cls(connection, copy)

    async def stage(self, batch: list[ParsedRow]) -> list[ParsedRow]:
        """Stage the batch's valid rows; returns its rejected rows (duplicates too) by line."""
        rejected: list[ParsedRow] = []
        accepted: dict[str, ParsedRow] = {}
        for parsed in batch:
            if isinstance(parsed.result, str):
                rejected.append(parsed)
            elif parsed.external_id in accepted:
                first_line = accepted[parsed.external_id].line
                rejected.append(_duplicate(parsed.line, parsed.external_id, first_line))
            else:
                accepted[parsed.external_id] = parsed
        if accepted:
            earlier = await self.connection.execute(
                select(STAGED_ROWS.c.external_id, STAGED_ROWS.c.line).where(
                    STAGED_ROWS.c.external_id.in_(list(accepted))
                )
            )
            for external_id, first_line in earlier.all():
                line = accepted.pop(external_id).line
                rejected.append(_duplicate(line, external_id, first_line))
        if accepted:
            rows = [(p.line, *p.result) for p in accepted.values()]
            await self._write(STAGED_ROWS, self._columns, rows)
            tags = [(p.external_id, tag) for p in accepted.values() for tag in p.tags]
            if tags:
                await self._write(STAGED_TAGS, ["external_id", "tag"], tags)
        rejected.sort(key=lambda r: r.line)
        return rejected

    async def _write(
        self, table: Table, columns: list[str], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        if self._copy is not None:
            await self._copy(table.name, records=rows, columns=columns)
            return
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"
        await self.connection.exec_driver_sql(sql, list(rows))


def _duplicate(line: int, external_id: str, first_line: int) -> ParsedRow:
    reason = f"external_id: {external_id!r} was already given on line {first_line}"
    return ParsedRow(line, external_id, reason)
