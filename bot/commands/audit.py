"""`campaign-bot audit export [--out FILE]`: the audit log as CSV."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bot import db
from bot.settings import Settings
from services import audit
from services.access import Actor, require
from services.models import AccessLevel


def register(commands: Any) -> None:
    group = commands.add_parser("audit", help="the audit log")
    sub = group.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    export = sub.add_parser(
        "export",
        help="write the audit log as CSV (to stdout, or --out FILE)",
        description=f"Columns: {', '.join(audit.CSV_COLUMNS)}; oldest entry first.",
    )
    export.add_argument("--out", type=Path, metavar="FILE", help="write to FILE, not stdout")
    export.add_argument("--campaign", type=int, metavar="ID", help="only this campaign's entries")
    export.set_defaults(handler=_export)


async def _export(args: argparse.Namespace, settings: Settings) -> int:
    await db.upgrade_async(settings.database_url)
    database = db.Database(settings.database_url)
    filters: dict[str, Any] = {"campaign_id": args.campaign} if args.campaign else {}
    try:
        async with database.transaction() as session:
            actor = Actor.local_operator()
            await require(session, actor, AccessLevel.admin, "export the audit log")
            if args.out is None:
                await audit.export_csv(session, sys.stdout, **filters)
                return 0
            # Written beside the target and renamed: a failed export leaves no half file.
            out: Path = args.out
            fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                    count = await audit.export_csv(session, handle, **filters)
                os.replace(temporary, out)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
                raise
    finally:
        await database.dispose()
    print(f"wrote {count} audit entries to {out}", file=sys.stderr)
    return 0
