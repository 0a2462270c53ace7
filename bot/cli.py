"""`campaign-bot`: the command line (SPEC §2). Each command group lives in bot/commands/."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from bot.commands import access, audit, campaigns, check, database, patients, run
from bot.settings import ConfigurationError, Settings, load_settings
from services.errors import CampaignBotError, ValidationFailed

EXIT_USAGE = 2  # bad input or configuration: the user can fix it

GROUPS = (run, database, patients, access, campaigns, audit, check)

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campaign-bot",
        description="Send email and SMS campaigns to a clinic's patients, from Slack.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(exc.one_line(), file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return asyncio.run(handler(args, settings))
    except ValidationFailed as exc:
        for field, reason in exc.errors.items():
            print(f"{field}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    except CampaignBotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
