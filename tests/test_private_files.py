"""Patient data on disk is the bot user's alone: 0600 files, 0700 folders, whatever the umask
(SPEC §7): the SQLite database and its -wal/-shm, the outbox, .eml files, sms.jsonl."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.db import Database, upgrade_async
from services.delivery.email_outbox import FileEmailSender
from services.delivery.sms_outbox import FileSmsSender
from services.patients import import_patients
from services.private_files import ensure_private_file, private_folder


@pytest.fixture(params=[0o022, 0o002, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """A permissive umask around the test, as a service manager may set it."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_sqlite_database_wal_and_shm_are_0600(umask: int, tmp_path: Path) -> None:
    path = tmp_path / "data" / "campaign_bot.db"
    url = f"sqlite:///{path}"
    await upgrade_async(url)  # how `campaign-bot run` first creates it
    assert mode(path) == 0o600
    database = Database(url)
    try:
        async with database.transaction() as session:
            await session.execute(text("CREATE TABLE probe (x INTEGER)"))
            await session.execute(text("INSERT INTO probe VALUES (1)"))
            wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
            # WAL mode with the connection open: both files exist, and are private too.
            assert (mode(path), mode(wal), mode(shm)) == (0o600, 0o600, 0o600)
    finally:
        await database.dispose()


async def test_a_database_created_by_the_engine_itself_is_0600(
    umask: int, tmp_path: Path
) -> None:
    path = tmp_path / "fresh.db"
    database = Database(f"sqlite:///{path}")
    try:
        async with database.transaction() as session:
            await session.execute(text("CREATE TABLE probe (x INTEGER)"))
        assert mode(path) == 0o600
    finally:
        await database.dispose()


async def test_email_outbox_folder_0700_and_eml_files_0600(umask: int, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    sender = FileEmailSender(outbox)
    result = await sender.send(sender="clinic@example.org", recipient="ana@example.com",
                               message=b"Subject: hi\r\n\r\nHello Ana\r\n", message_id="<m1@x>")
    assert result.outcome.name == "SENT", result
    assert mode(outbox) == 0o700
    [eml] = list(outbox.glob("*.eml"))
    assert mode(eml) == 0o600
    assert not list(outbox.glob(".*.tmp"))


async def test_sms_outbox_folder_0700_and_jsonl_0600(umask: int, tmp_path: Path) -> None:
    outbox = tmp_path / "deep" / "outbox"
    sender = FileSmsSender(outbox, from_number="+15005550006")
    try:
        await sender.send(to="+525512340001", body="Hola Ana. Reply STOP to opt out")
    finally:
        await sender.close()
    assert mode(outbox) == 0o700
    assert mode(outbox / "sms.jsonl") == 0o600


async def test_rejected_rows_report_is_0600(umask: int, tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'c.db'}")
    await upgrade_async(database.url)
    source = tmp_path / "patients.csv"
    source.write_text("external_id,email\nP1,not an email\n", encoding="utf-8")
    try:
        summary = await import_patients(database, source, actor="cli:test", phone_region="MX",
                                        workers=0)
    finally:
        await database.dispose()
    assert summary.report_path is not None and mode(summary.report_path) == 0o600


def test_existing_files_and_folders_are_left_as_they_are(tmp_path: Path) -> None:
    folder, file = tmp_path / "shared", tmp_path / "shared" / "x.db"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    file.write_bytes(b"")
    os.chmod(file, 0o640)
    private_folder(folder)
    ensure_private_file(file)
    assert (mode(folder), mode(file)) == (0o750, 0o640)
    with pytest.raises(FileExistsError):
        private_folder(file)
