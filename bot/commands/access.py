"""`campaign-bot access grant|revoke SLACK_USER_ID read|write|admin` and `access list`."""

from __future__ import annotations

import argparse
from typing import Any

from bot import db
from bot.settings import Settings
from services import access
from services.access import Actor
from services.models import AccessLevel

LEVELS = [level.name for level in AccessLevel]


def register(commands: Any) -> None:
    group = commands.add_parser("access", help="who may read, send (write) or administer")
    sub = group.add_subparsers(dest="access_command", metavar="ACTION", required=True)

    grant = sub.add_parser("grant", help="give a Slack user read, write or admin access")
    grant.add_argument("user", metavar="SLACK_USER_ID", help="e.g. U012ABCDEF")
    grant.add_argument("level", choices=LEVELS, metavar="read|write|admin")
    grant.set_defaults(handler=_grant)

    revoke = sub.add_parser(
        "revoke",
        help="take access away from a Slack user",
        description="Without a level, remove the user's access. With one, the user keeps "
        "only what is below it (revoking write from a writer leaves read).",
    )
    revoke.add_argument("user", metavar="SLACK_USER_ID")
    revoke.add_argument("level", nargs="?", choices=LEVELS, metavar="read|write|admin")
    revoke.set_defaults(handler=_revoke)

    listing = sub.add_parser("list", help="every grant, and the admins of CAMPAIGN_BOT_ADMINS")
    listing.set_defaults(handler=_list)


def _env_admin_note(user_id: str, settings: Settings) -> str:
    if user_id in settings.campaign_bot_admins:
        return f"; note: {user_id} is also an admin through CAMPAIGN_BOT_ADMINS"
    return ""


async def _grant(args: argparse.Namespace, settings: Settings) -> int:
    level = AccessLevel[args.level]
    async with db.migrated(settings.database_url) as database, database.transaction() as session:
        user_id = await access.grant(
            session=session, actor=Actor.local_operator(), user_id=args.user, level=level
        )
    print(f"{user_id} now has {level.name} access{_env_admin_note(user_id, settings)}")
    return 0


async def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    level = AccessLevel[args.level] if args.level else None
    async with db.migrated(settings.database_url) as database, database.transaction() as session:
        result = await access.revoke(
            session=session, actor=Actor.local_operator(), user_id=args.user, level=level
        )
    user_id, note = result.user_id, _env_admin_note(result.user_id, settings)
    if result.previous is None:
        print(f"{user_id} had no access granted; nothing changed{note}")
    elif not result.changed:
        print(f"{user_id} has {result.previous.name} access, below {args.level}; "
              f"nothing changed{note}")
    elif result.remaining is None:
        print(f"{user_id} no longer has any access{note}")
    else:
        print(f"{user_id} now has {result.remaining.name} access{note}")
    return 0


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    async with db.migrated(settings.database_url) as database, database.transaction() as session:
        grants = await access.list_grants(session=session, actor=Actor.local_operator())
    rows = [("USER", "LEVEL", "GRANTED BY", "GRANTED AT")]
    rows += [(g.slack_user_id, g.level, g.granted_by, f"{g.granted_at:%Y-%m-%d %H:%M} UTC")
             for g in grants]
    rows += [(user, "admin", "CAMPAIGN_BOT_ADMINS", "")
             for user in settings.campaign_bot_admins]
    if len(rows) == 1:
        print("no access granted yet; grant some with `campaign-bot access grant`")
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
