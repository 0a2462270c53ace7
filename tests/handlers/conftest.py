"""The `bot` fixture: the bot's HTTP side on a real port (see bot_server.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.db import Database
from tests.handlers.bot_server import Bot, running_bot


@pytest.fixture
async def bot(db: Database, tmp_path: Path) -> AsyncIterator[Bot]:
    async with running_bot(db, tmp_path) as running:
        yield running
