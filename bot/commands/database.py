"""`campaign-bot db upgrade`."""

from __future__ import annotations

import argparse
from typing import Any

from bot import db
from bot.settings import Settings


def register(commands: Any) -> None:
    group = commands.add_parser("db", help="database maintenance")
    sub = group.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    upgrade = sub.add_parser("upgrade", help="run the Alembic migrations to head")
    upgrade.set_defaults(handler=_upgrade)


async def _upgrade(args: argparse.Namespace, settings: Settings) -> int:
    await db.upgrade_async(settings.database_url)
    current, head = await db.migration_state(settings.database_url)
    print(f"database {db.describe(settings.database_url)} is at revision {current} (head {head})")
    return 0
