"""`campaign-bot run`: the bot (Slack + HTTP endpoints + scheduler + sender); migrates first."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING, Any

from bot import db as database
from bot.settings import Settings

if TYPE_CHECKING:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

log = logging.getLogger("campaign_bot")

SLACK_OFF = (
    "Slack is off: no Slack credentials are set. To turn it on, create the app from manifest.yml "
    "(README: 'Creating the Slack app') and set SLACK_BOT_TOKEN with SLACK_APP_TOKEN (Socket "
    "Mode) or SLACK_SIGNING_SECRET (HTTP mode). Everything else runs."
)


def register(commands: Any) -> None:
    parser = commands.add_parser("run", help="run the bot (Slack, HTTP endpoints, scheduler)")
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)"
    )
    parser.set_defaults(handler=_run)


def describe_startup(settings: Settings) -> list[str]:
    """The start-up lines: mode, port, database, which senders are real."""
    if not settings.slack_enabled:
        slack = SLACK_OFF
    elif settings.socket_mode:
        slack = f"Slack: Socket Mode (API {settings.slack_api_url})"
    else:
        slack = f"Slack: HTTP mode at POST /slack/events (API {settings.slack_api_url})"
    if settings.effective_email_backend == "smtp":
        email = (
            f"email: SMTP {settings.smtp_host}:{settings.smtp_port} "
            f"({settings.smtp_security}) from {settings.email_from}"
        )
    else:
        email = f"email: writing .eml files to {settings.outbox_dir.resolve()} (no SMTP)"
    if settings.effective_sms_backend == "twilio":
        sender = settings.twilio_from_number or settings.twilio_messaging_service_sid
        sms = f"SMS: Twilio ({settings.twilio_api_url}) from {sender}"
    else:
        sms = f"SMS: writing to {(settings.outbox_dir / 'sms.jsonl').resolve()} (no Twilio)"
    return [
        slack,
        f"HTTP: listening on port {settings.port} (/healthz)",
        f"database: {database.describe(settings.database_url)}",
        email,
        sms,
        "public URL: "
        + (settings.public_base_url or f"not set: links in messages point to "
           f"{settings.link_base_url} and Twilio sends no status callbacks"),
    ]


async def _app_token_problem(handler: AsyncSocketModeHandler) -> str | None:
    """Why Slack refuses the app-level token (a configuration error), or None. Slack being
    unreachable is not one: the connection is retried once the bot runs."""
    from slack_sdk.errors import SlackApiError
    try:
        # Kept for the first connection (Slack's URL is good for one connection).
        handler.client.wss_uri = await handler.client.issue_new_wss_url()
    except SlackApiError as exc:
        error = exc.response.get("error", "refused")
        return (f"was refused by Slack ({error}); generate an App-Level Token with the "
                "connections:write scope (Basic Information → App-Level Tokens)")
    except Exception as exc:
        log.warning("Slack is not reachable yet (%s); Socket Mode will keep trying", exc)
    return None


async def _connect(handler: AsyncSocketModeHandler) -> None:
    await handler.connect_async()
    log.info("Slack: connected in Socket Mode")


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here, not at the top: Slack, the HTTP server and the chart library take most
    # of a second to import, which every other command (`campaigns create`, …) would pay.
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

    from bot import server
    from bot.context import AppContext
    from bot.notifier import SlackNotifier
    from bot.scheduler import CampaignScheduler
    from bot.senders import build_engine
    from bot.slack_app import build_slack_app
    from services import rules, segments
    from services.tokens import load_signer

    # From the first moment: a stop request during start-up still ends in an orderly stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        clinic_segments = segments.load_segments_file(settings.segments_file)
    except segments.SegmentsFileError as exc:
        print(f"configuration error: SEGMENTS_FILE {exc}; fix the file or point SEGMENTS_FILE "
              "elsewhere", file=sys.stderr)
        return 2
    try:
        clinic_rules = rules.load_rules_file(settings.rules_file)
    except rules.RulesFileError as exc:
        print(f"configuration error: RULES_FILE {exc}; fix the file or point RULES_FILE "
              "elsewhere", file=sys.stderr)
        return 2
    for line in describe_startup(settings):
        log.info(line)
    await database.upgrade_async(settings.database_url)
    db = database.Database(settings.database_url)
    async with db.transaction() as session:
        await segments.sync_segments(session, clinic_segments)
    log.info("segments: %d from %s", len(clinic_segments), settings.segments_file)
    log.info("notification rules: %s", f"{len(clinic_rules)} from {settings.rules_file}"
             if clinic_rules is not None else "the defaults (no RULES_FILE)")
    async with db.transaction() as session:
        signer = await load_signer(session)
    notifier = SlackNotifier(db=db, settings=settings, rule_list=clinic_rules) if (
        settings.slack_enabled) else None
    context = AppContext(settings=settings, db=db, signer=signer)
    if notifier is not None:
        context.notifier = notifier
    schedulers: list[CampaignScheduler] = []  # the sender is woken once it exists

    def poke() -> None:
        for scheduler in schedulers:
            scheduler.poke()

    slack = build_slack_app(settings, db, signer=signer, engine_poke=poke,
                            notifier=notifier) if settings.slack_enabled else None
    if notifier is not None and slack is not None:
        notifier.attach(slack.client)
    socket_mode = None
    if slack is not None and settings.socket_mode:
        socket_mode = AsyncSocketModeHandler(slack, settings.slack_app_token)
        problem = await _app_token_problem(socket_mode)
        if problem:
            await socket_mode.close_async()
            await db.dispose()
            print(f"configuration error: SLACK_APP_TOKEN {problem}", file=sys.stderr)
            return 2
    try:
        runner = await server.start(
            server.build_web_app(context, slack=None if settings.socket_mode else slack),
            host=args.host, port=settings.port,
        )
    except OSError as exc:
        await db.dispose()
        print(f"configuration error: PORT={settings.port} cannot be used ({exc.strerror}); "
              "set PORT to a free port", file=sys.stderr)
        return 2
    engine = await build_engine(settings, db, signer=signer)
    engine.on_event = context.notifier.campaign_event
    engine.on_progress = context.notifier.deliveries_changed
    await engine.start()
    scheduler = CampaignScheduler(
        engine, sweep_seconds=max(0.5, settings.scheduler_sweep.total_seconds())
    )
    await scheduler.start()
    schedulers.append(scheduler)
    # Connecting may wait for Slack (it retries while Slack is unreachable): a stop request
    # must still be heard meanwhile.
    connecting = asyncio.create_task(_connect(socket_mode)) if socket_mode else None
    log.info("campaign-bot is running (sender %s); press Ctrl-C to stop", engine.sender_id)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        if connecting is not None and not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await connecting
        if socket_mode is not None:
            await socket_mode.close_async()
        await scheduler.stop()
        await engine.stop()
        if notifier is not None:
            await notifier.close()
        await runner.cleanup()
        await db.dispose()
    return 0
