"""The database engine, its sessions and migrations. The bot picks its own async drivers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import migrations
from services.private_files import ensure_private_file

MIGRATIONS_DIR = Path(migrations.__file__).parent


def async_url(database_url: str) -> URL:
    """`sqlite:///x.db` → aiosqlite, `postgresql://…` → asyncpg (SPEC: plain URLs)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if url.get_backend_name() in {"postgresql", "postgres"}:
        return url.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database: {url.get_backend_name()}")


def describe(database_url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(database_url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Configured for a service: concurrent readers during writes, FK integrity, and waits
    # instead of "database is locked" when two writers meet.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _sqlite_connect(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    # Let SQLAlchemy, not the sqlite3 module, say when a transaction begins (below): the
    # module's own handling starts one only at the first write, so reads and DDL before it
    # would run outside the transaction.
    dbapi_connection.isolation_level = None


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so a read-then-write transaction waits for
    # another writer (busy_timeout) instead of failing when it tries to write.
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def make_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    url = async_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            # Patient data and the link-signing key: 0600 before SQLite creates the file
            # with the umask's mode; SQLite gives -wal and -shm the database file's mode.
            ensure_private_file(path)
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class Database:
    """The engine and its session factory, made once at start-up and passed down."""

    def __init__(self, database_url: str, **engine_kwargs: Any) -> None:
        self.url = database_url
        self.engine = make_engine(database_url, **engine_kwargs)
        self.sessions = make_sessionmaker(self.engine)
        self._core_writer = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.engine.dialect.name == "sqlite" else self.engine
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in one transaction: committed on success, rolled back on any error.

        On SQLite it holds the write lock from the start (BEGIN IMMEDIATE); use `read()` for
        work that only reads, so that it never waits for a writer.
        """
        async with self.sessions() as session, session.begin():
            if self.dialect == "sqlite":
                await session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
            yield session

    async def core_connection(self) -> AsyncConnection:
        """A Core connection of its own (no ORM session; `BEGIN IMMEDIATE` on SQLite): for the
        send pipeline's group commit, which holds it and runs many short transactions on it
        (a session and a pool checkout per transaction cost more than the statements)."""
        return await self._core_writer.connect()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reading (one snapshot, rolled back at the end)."""
        async with self.sessions() as session, session.begin():
            yield session
            await session.rollback()

    async def dispose(self) -> None:
        await self.engine.dispose()


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run Alembic migrations to `revision` (blocking; call from a thread inside the loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)


@asynccontextmanager
async def migrated(database_url: str) -> AsyncIterator[Database]:
    """The database, migrated to head first (so every command works on a fresh machine)."""
    await upgrade_async(database_url)
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


async def migration_state(database_url: str) -> tuple[str | None, str | None]:
    """(current, head) revisions, for `campaign-bot check`."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    engine = make_engine(database_url)
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await engine.dispose()
    return current, head
