"""The schema: migrations match the models, on both databases."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from bot.db import Database
from services.models import Base


async def test_migrations_match_the_models(db: Database) -> None:
    async with db.engine.connect() as connection:
        diff = await connection.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
        )
    assert diff == []


async def test_sqlite_is_configured_for_a_service(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("SQLite pragmas only apply to SQLite")
    async with db.engine.connect() as connection:
        assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await connection.execute(text("PRAGMA busy_timeout"))).scalar() >= 5000


async def test_concurrent_read_then_write_transactions_both_succeed(database_url: str) -> None:
    """Two writers that read first: the second waits for the first instead of failing."""
    import asyncio

    from services.models import AppSecret

    first, second = Database(database_url), Database(database_url)

    async def read_then_write(db: Database, name: str) -> None:
        async with db.transaction() as session:
            await session.execute(text("SELECT count(*) FROM app_secrets"))
            await asyncio.sleep(0.2)
            session.add(AppSecret(name=name, value="x"))

    try:
        await asyncio.gather(read_then_write(first, "a"), read_then_write(second, "b"))
        async with first.read() as session:
            names = (await session.execute(text("SELECT name FROM app_secrets"))).scalars()
            assert sorted(names) == ["a", "b"]
    finally:
        await first.dispose()
        await second.dispose()
