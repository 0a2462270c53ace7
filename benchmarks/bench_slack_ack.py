"""Slack acknowledgement latency over real HTTP with a big catalog (SPEC §5: p99 ≤ 50 ms).

    .venv/bin/python benchmarks/bench_slack_ack.py [--patients 1000000] [--calls 200]
        [--keep PATH.db] [--database-url postgresql://…]

Runs the bot's aiohttp server with the real Bolt app on a random port, against the Slack
Web API stand-in (tests/fakes), with signed requests as Slack sends them. Times, from the
POST to the HTTP answer (what Slack's 3-second limit measures), `--calls` of each:

- `/campaign` (the slash command: ack, then views.open and the segment counts);
- a view submission of the audience step (the capped segment count runs before the ack,
  because the answer carries the errors or the next view);
- a view submission of the campaign form with field errors (validation before the ack);
- the lazy table's Next page and Search actions (ack first; the page follows by views.update,
  whose latency is printed too as "page shown").

The SQLite catalog is seeded with `services.seed.seed_patients` (or reused from --keep).
Prints p50/p95/p99 in milliseconds per case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from bot.context import AppContext
from bot.db import Database, describe, upgrade_async
from bot.server import SLACK_EVENTS_PATH, build_web_app
from bot.settings import load_settings
from bot.slack_app import build_slack_app
from modals import ids
from services import segments
from services.access import Actor
from services.models import AccessGrant, Patient
from services.seed import seed_patients
from services.tokens import load_signer
from tests.fakes.slack_api import DEFAULT_USER, FakeSlack
from tests.fakes.slack_requests import SlackRequests

SECRET = "bench-signing-secret"
CHANNEL = "C0BENCH"
SEARCHES = ("gar", "maria", "lop", "ana m", "hernandez", "sm", "jo", "rodriguez", "p00012")


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return (f"p50 {at(0.50):7.1f}  p95 {at(0.95):7.1f}  p99 {at(0.99):7.1f}  "
            f"max {ordered[-1]:7.1f}  mean {statistics.fmean(ordered):6.1f}  (n={len(ordered)})")


async def prepare(database_url: str, patients: int) -> Database:
    await upgrade_async(database_url)
    db = Database(database_url)
    async with db.sessions() as session:
        present = int(await session.scalar(select(func.count()).select_from(Patient)) or 0)
    if present < patients:
        print(f"seeding {patients - present:,} patients …", flush=True)
        started = time.perf_counter()
        await seed_patients(db, patients - present, rng_seed=1, actor=Actor.local_operator())
        print(f"seeded in {time.perf_counter() - started:.0f} s", flush=True)
    async with db.transaction() as session:
        await segments.sync_segments(session, [])
        if await session.get(AccessGrant, DEFAULT_USER) is None:
            session.add(AccessGrant(slack_user_id=DEFAULT_USER, level="write", granted_by="bench"))
    return db


async def timed(samples: list[float], request: Any) -> Any:
    started = time.perf_counter()
    answer = await request
    samples.append((time.perf_counter() - started) * 1000)
    assert answer.status == 200, answer
    return answer


async def settle(slack: FakeSlack, view_id: str, old_hash: str) -> float:
    """Wait for the bot's views.update after an ack; its time in ms."""
    started = time.perf_counter()
    while slack.views[view_id]["hash"] == old_hash:  # noqa: ASYNC110 - another task's change
        await asyncio.sleep(0.001)
    return (time.perf_counter() - started) * 1000


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_slack_ack_"))
    url = args.database_url or f"sqlite:///{args.keep or work / 'patients.db'}"
    db = await prepare(url, args.patients)
    async with FakeSlack() as slack:
        slack.trigger_ttl = None
        slack.bot_channels = {CHANNEL}
        settings = load_settings(
            database_url=url, outbox_dir=work / "outbox", slack_bot_token="xoxb-test",
            slack_signing_secret=SECRET, slack_api_url=slack.url, email_backend="file",
            sms_backend="file", segments_file=work / "none.yml",
        )
        async with db.transaction() as session:
            signer = await load_signer(session)
        app = build_slack_app(settings, db, signer=signer)
        server = TestServer(build_web_app(AppContext(settings, db, signer), slack=app))
        await server.start_server()
        sr = SlackRequests(str(server.make_url(SLACK_EVENTS_PATH)), SECRET, slack=slack,
                           channel_id=CHANNEL)
        results: dict[str, list[float]] = {k: [] for k in (
            "slash command", "modal ready", "audience submission", "form submission",
            "page action", "page shown", "search action", "search shown")}
        async with sr:
            await sr.slash_command()  # warm-up: auth.test, first connections
            await asyncio.sleep(1)
            for n in range(args.calls):
                known = set(slack.views)
                await timed(results["slash command"], sr.slash_command())
                started = time.perf_counter()
                while True:
                    new = [v for v in slack.views if v not in known]
                    if new and slack.views[new[0]]["callback_id"] == ids.AUDIENCE_VIEW:
                        break
                    await asyncio.sleep(0.002)
                results["modal ready"].append((time.perf_counter() - started) * 1000)
                view = slack.views[new[0]]
                await timed(results["audience submission"], sr.view_submission(
                    view, {"segment_select": "all"}))  # refused: over the limit
                await sr.click(view, ids.CUSTOMIZE_ACTION)
                await settle(slack, view["id"], view["hash"])
                table = slack.views[view["id"]]
                await timed(results["page action"], sr.click(table, ids.NEXT_ACTION))
                results["page shown"].append(await settle(slack, table["id"], table["hash"]))
                table = slack.views[view["id"]]
                await timed(results["search action"], sr.click(
                    table, ids.SEARCH_ACTION, selected=SEARCHES[n % len(SEARCHES)]))
                results["search shown"].append(await settle(slack, table["id"], table["hash"]))
                table = slack.views[view["id"]]
                await sr.click(table, ids.SELECT_PAGE_ACTION)
                await settle(slack, table["id"], table["hash"])
                await sr.view_submission(slack.views[view["id"]])
                form = slack.views[view["id"]]
                await timed(results["form submission"], sr.view_submission(form, {
                    "subject/value": "Hi", "message/value": "Too short",
                    "channel/value": "EMAIL", "when/value": "now"}))
        await server.close()
    await db.dispose()
    print(f"\nSlack ack latency, {args.calls} flows, catalog of {args.patients:,} patients, "
          f"{describe(url)}")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {when}")
    for name, samples in results.items():
        print(f"  {name:20s} {percentiles(samples)} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="SQLite file to seed once and reuse")
    parser.add_argument("--database-url", help="e.g. postgresql://postgres@127.0.0.1/bench")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
