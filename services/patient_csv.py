"""Reading a patient CSV file as a stream: encoding, header, line numbers, batches of rows.

Memory stays bounded whatever the file's size: it is read in chunks, split into physical
lines (\n, \r\n or a lone \r) and handed out in batches of records. Anything that makes
the whole file unusable raises `UnusableFile`.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import logging
import multiprocessing
import re
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from services.errors import CampaignBotError
from services.patient_rows import COLUMNS, validate_row

logger = logging.getLogger(__name__)
MAX_LINE_BYTES = 4 * 1024 * 1024  # no patient row is this long: the file is not CSV
_EOL = re.compile(rb"\r\n|\n|\r")
_CHUNK = 1024 * 1024
_DELIMITERS = (",", ";", "\t")
_SAVE_AS = "save it from your spreadsheet as 'CSV UTF-8'"


class PatientImportError(CampaignBotError):
    """The import could not run (e.g. the report cannot be written); nothing was imported."""


class UnusableFile(PatientImportError):
    """The file as a whole cannot be imported; nothing was imported."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each known column sits in a record, and how many fields a record must have."""

    index: dict[str, int]
    width: int


Record = tuple[int, list[str]]  # (first physical line, fields)


@dataclass(frozen=True, slots=True)
class ParsedRow:
    """One CSV record: its first physical line, its external_id as written, and the verdict."""

    line: int
    external_id: str
    result: tuple[Any, ...] | str  # stored values (VALUE_COLUMNS order) or why it is rejected
    tags: tuple[str, ...] = ()


def check_records(
    records: list[Record], layout: Layout, phone_region: str | None, dialect: str
) -> list[ParsedRow]:
    """Validate a batch, ready for `dialect` (runs in a worker: plain data in and out)."""
    today = datetime.now(UTC).date()
    at = layout.index["external_id"]
    parsed = []
    for line, fields in records:
        external_id = fields[at].strip() if at < len(fields) else ""
        result: tuple[Any, ...] | str
        if len(fields) != layout.width:
            result = (
                f"has {len(fields)} fields but the header has {layout.width} "
                "(a value containing the separator must be quoted)"
            )
        else:
            values = {column: fields[i] for column, i in layout.index.items()}
            row = validate_row(values, phone_region=phone_region, today=today)
            if not isinstance(row, str):
                parsed.append(ParsedRow(line, external_id, row.stored_values(dialect), row.tags))
                continue
            result = row
        parsed.append(ParsedRow(line, external_id, result))
    return parsed


async def validated_batches(
    source: PatientCsv,
    *,
    phone_region: str | None,
    dialect: str,
    batch_size: int,
    workers: int,
) -> AsyncIterator[tuple[list[ParsedRow], int]]:
    """(rows, bytes of the file read so far), in file order; validation runs off the loop.

    `workers` > 0 validates in that many processes (phonenumbers and email_validator are
    pure Python: threads would share one core); 0 uses one thread, and so does a caller
    whose processes cannot start (e.g. a script without the `__main__` guard). A few
    batches are in flight at once, so memory stays bounded whatever the file's size.
    """
    loop = asyncio.get_running_loop()
    executor = _executor(workers)
    depth = max(2, 2 * workers)
    records = source.records(batch_size)
    pending: deque[tuple[asyncio.Future[list[ParsedRow]], int, list[Record]]] = deque()

    def submit(batch: list[Record]) -> asyncio.Future[list[ParsedRow]]:
        with _workers_ignore_ctrl_c():  # submitting may start a worker process
            return loop.run_in_executor(
                executor, check_records, batch, source.layout, phone_region, dialect
            )

    try:
        while True:
            while len(pending) < depth and (batch := next(records, None)) is not None:
                pending.append((submit(batch), source.bytes_read, batch))
            if not pending:
                return
            job, read, batch = pending[0]
            try:
                rows = await job
            except BrokenExecutor as exc:
                if isinstance(executor, ThreadPoolExecutor):
                    raise
                logger.warning("validation processes failed (%s); using one thread instead", exc)
                executor.shutdown(wait=False, cancel_futures=True)
                executor = _executor(0)
                for i, (failed, read_then, waiting) in enumerate(pending):
                    _forget(failed)
                    pending[i] = (submit(waiting), read_then, waiting)
                continue
            pending.popleft()
            yield rows, read
    finally:
        for job, _, _ in pending:
            job.cancel()
            _forget(job)
        executor.shutdown(wait=False, cancel_futures=True)


def _forget(job: asyncio.Future[Any]) -> None:
    """Mark a failed job's error as seen (asyncio would log it as never retrieved)."""
    if job.done():
        if not job.cancelled():
            job.exception()
    else:
        job.add_done_callback(lambda j: None if j.cancelled() else j.exception())


def _executor(workers: int) -> Executor:
    if workers > 0:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(1, thread_name_prefix="patient-csv")


@contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Ctrl-C reaches the whole process group: the parent reports it, workers stay quiet.

    A process started while SIGINT is ignored keeps ignoring it (across exec, from its
    first instruction), so the parent ignores it just for the moment of starting them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class PatientCsv:
    """An open patient CSV: the header is checked on opening; `records()` streams the rest."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = _check_path(path)
        self.bytes_read = 0
        self._lines_read = 0
        try:
            self._file: BinaryIO = path.open("rb")
        except OSError as exc:
            raise UnusableFile(path, f"cannot be read ({exc.strerror})") from None
        try:
            self._sniff_binary()
            self._lines = self._text_lines()
            header_line, self.delimiter = self._read_header()
        except BaseException:
            self._file.close()
            raise
        self._reader = csv.reader(self._lines, delimiter=self.delimiter)
        self._reader_base = header_line  # csv line_num 0 is this physical line

    def __enter__(self) -> PatientCsv:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def records(self, size: int) -> Iterator[list[Record]]:
        """The records after the header, in lists of at most `size`; blank lines skipped."""
        batch: list[Record] = []
        previous = 0
        try:
            for fields in self._reader:
                # A quoted value may span lines: a record starts where the previous one ended.
                line = self._reader_base + previous + 1
                previous = self._reader.line_num
                if not any(field.strip() for field in fields):
                    continue
                batch.append((line, fields))
                if len(batch) >= size:
                    yield batch
                    batch = []
        except csv.Error as exc:
            raise UnusableFile(
                self.path,
                f"line {self._reader_base + self._reader.line_num} is not valid CSV ({exc}); "
                "nothing was imported",
            ) from None
        if batch:
            yield batch

    def _sniff_binary(self) -> None:
        head = self._file.peek(8192)[:8192] if hasattr(self._file, "peek") else b""
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise UnusableFile(self.path, f"is UTF-16 text, not UTF-8; {_SAVE_AS}")
        if head.startswith(b"PK\x03\x04") or head.startswith(b"\xd0\xcf\x11\xe0"):
            raise UnusableFile(self.path, f"is a spreadsheet workbook, not CSV; {_SAVE_AS}")
        if b"\x00" in head:
            raise UnusableFile(self.path, f"is a binary file, not CSV text; {_SAVE_AS}")

    def _text_lines(self) -> Iterator[str]:
        """Decoded physical lines (ends kept), counting bytes and lines; strict UTF-8."""
        first = True
        for raw in self._raw_lines():
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UnusableFile(
                    self.path,
                    f"is not UTF-8 text: byte 0x{raw[exc.start]:02X} on line "
                    f"{self._lines_read + 1} (byte offset {self.bytes_read + exc.start}) "
                    f"cannot be decoded; {_SAVE_AS}",
                ) from None
            self.bytes_read += len(raw)
            self._lines_read += 1
            if first:
                text = text.removeprefix("\ufeff")
                first = False
            yield text

    def _raw_lines(self) -> Iterator[bytes]:
        """Lines ending in \\n, \\r\\n or a lone \\r (old Mac exports), read in 1 MB chunks."""
        pending = b""
        while True:
            try:
                chunk = self._file.read(_CHUNK)
            except OSError as exc:
                raise UnusableFile(
                    self.path, f"could not be read ({exc.strerror}); nothing was imported"
                ) from None
            if not chunk:
                break
            data = pending + chunk
            start = 0
            for match in _EOL.finditer(data):
                if match.end() == len(data) and match.group() == b"\r":
                    break  # a \r\n may straddle two chunks
                yield data[start : match.end()]
                start = match.end()
            pending = data[start:]
            if len(pending) > MAX_LINE_BYTES:
                raise UnusableFile(
                    self.path,
                    f"line {self._lines_read + 1} is longer than {MAX_LINE_BYTES // 2**20} MB; "
                    "this does not look like a patient CSV",
                )
        if pending:
            yield pending

    def _read_header(self) -> tuple[int, str]:
        """Skip leading blank lines; the first other line names the columns."""
        for text in self._lines:
            if text.strip(" \t\r\n,;"):
                break
        else:
            raise UnusableFile(self.path, "is empty; the first line must name the columns")
        header_line = self._lines_read
        for delimiter in _DELIMITERS:
            names = _header_names(text, delimiter)
            if "external_id" in names:
                break
        else:
            found = ", ".join(n for n in _header_names(text, ",")[:8] if n) or "nothing"
            raise UnusableFile(
                self.path,
                "has no external_id column; the first line must be a header naming the columns "
                f"({', '.join(COLUMNS[:4])}, …); found: {_cut(found)}",
            )
        seen: set[str] = set()
        for name in names:
            if name and name in seen:
                raise UnusableFile(self.path, f"names the column {name!r} twice in its header")
            seen.add(name)
        index = {name: i for i, name in enumerate(names) if name in COLUMNS}
        self.layout = Layout(index=index, width=len(names))
        self.columns = frozenset(index)
        self.ignored_columns = [n for n in names if n and n not in COLUMNS]
        return header_line, delimiter


def _header_names(text: str, delimiter: str) -> list[str]:
    try:
        fields = next(csv.reader([text], delimiter=delimiter), [])
    except csv.Error:
        return []
    return [field.strip().lower() for field in fields]


def _cut(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_path(path: Path) -> int:
    """The file's size; UnusableFile when it is missing, a folder or empty."""
    try:
        if path.is_dir():
            raise UnusableFile(path, "is a folder, not a CSV file")
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnusableFile(path, "does not exist") from None
    except OSError as exc:
        raise UnusableFile(path, f"cannot be read ({exc.strerror})") from None
    if not path.is_file():
        raise UnusableFile(path, "is not a regular file")
    if size == 0:
        raise UnusableFile(path, "is empty; the first line must name the columns")
    return size
