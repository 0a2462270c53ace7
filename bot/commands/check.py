"""`campaign-bot check`: test what is configured, one line per check, with the fix on failure."""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from bot import db as database
from bot.settings import Settings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "check", help="test the database, Slack, SMTP and Twilio settings (sends nothing)"
    )
    parser.set_defaults(handler=_check)


async def check_database(settings: Settings) -> list[Check]:
    name = f"database {database.describe(settings.database_url)}"
    try:
        current, head = await database.migration_state(settings.database_url)
    except Exception as exc:
        return [Check(name, False, f"cannot connect ({exc}); check DATABASE_URL")]
    if current != head:
        return [Check(name, False, f"at revision {current}, head is {head}; "
                                   "run `campaign-bot db upgrade`")]
    return [Check(name, True, f"connected, migrations at head ({head})")]


async def check_slack(settings: Settings) -> list[Check]:
    if not settings.slack_enabled:
        return [Check("Slack", True, "off (no SLACK_BOT_TOKEN); the bot runs without Slack")]
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
    try:
        response = await client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown error")
        return [Check("Slack auth.test", False,
                      f"{error}; copy the Bot User OAuth Token (xoxb-…) into SLACK_BOT_TOKEN")]
    except Exception as exc:
        return [Check("Slack auth.test", False,
                      f"cannot reach {settings.slack_api_url} ({exc}); check SLACK_API_URL")]
    checks = [Check("Slack auth.test", True,
                    f"bot {response.get('user')} in workspace {response.get('team')}")]
    scopes = set(filter(None, (response.headers or {}).get("x-oauth-scopes", "").split(",")))
    if scopes:
        needed = {"commands", "chat:write", "users:read", "files:read", "files:write"}
        missing = sorted(needed - {s.strip() for s in scopes})
        checks.append(Check("Slack scopes", not missing,
                            "all granted" if not missing else
                            f"missing {', '.join(missing)}; reinstall the app from manifest.yml"))
    mode = "Socket Mode (SLACK_APP_TOKEN set)" if settings.socket_mode else "HTTP mode"
    checks.append(Check("Slack mode", True, mode))
    return checks


async def check_public_url(settings: Settings) -> list[Check]:
    url = settings.public_base_url
    if not url:
        return [Check("PUBLIC_BASE_URL", True,
                      "not set: no unsubscribe links, tracking or Twilio callbacks")]
    parsed = urlparse(url)
    if parsed.scheme != "https" and parsed.hostname not in {"localhost", "127.0.0.1"}:
        return [Check("PUBLIC_BASE_URL", False,
                      f"{url} is not https; Twilio and mail clients need an https URL")]
    if parsed.query or parsed.fragment:
        return [Check("PUBLIC_BASE_URL", False, f"{url} has a query or fragment; remove it")]
    return [Check("PUBLIC_BASE_URL", True, f"{url.rstrip('/')}/twilio/status will receive "
                                           "SMS status callbacks")]


async def check_email(settings: Settings) -> list[Check]:
    from bot.senders import email_sender
    from services.delivery.email_wire import bare_address

    sender = email_sender(settings)
    name = "email (SMTP)" if settings.effective_email_backend == "smtp" else "email (outbox)"
    try:
        if settings.effective_email_backend == "smtp":
            address = bare_address(settings.email_from) if settings.email_from else None
            lines = await sender.check(address)  # type: ignore[call-arg]
        else:
            lines = await sender.check()
    finally:
        await sender.close()
    return _named(name, lines)


def _named(name: str, lines: list[tuple[bool, str]]) -> list[Check]:
    """The senders' lines under one name, without their own "SMTP: "-style prefix."""
    return [Check(name, ok, re.sub(r"^(SMTP|Email|SMS|Twilio): ", "", line)) for ok, line in lines]


async def check_sms(settings: Settings) -> list[Check]:
    from bot.senders import sms_sender

    sender = sms_sender(settings)
    name = "SMS (Twilio)" if settings.effective_sms_backend == "twilio" else "SMS (outbox)"
    try:
        lines = await sender.check()
    finally:
        await sender.close()
    return _named(name, lines)


CHECKS: list[Callable[[Settings], Awaitable[list[Check]]]] = [
    check_database,
    check_slack,
    check_email,
    check_sms,
    check_public_url,
]


async def run_checks(settings: Settings) -> list[Check]:
    results: list[Check] = []
    for check in CHECKS:
        results.extend(await check(settings))
    return results


async def _check(args: argparse.Namespace, settings: Settings) -> int:
    results = await run_checks(settings)
    for result in results:
        print(result.line())
    failed = sum(not r.ok for r in results)
    print(f"{failed} of {len(results)} checks failed" if failed else "all checks passed")
    return 1 if failed else 0
