"""Reliability soak (issue 8, SPEC §3 "Delivery rules"): does every delivery end, exactly once?

Two real `campaign-bot run` processes share one fresh PostgreSQL database, reached through a
TCP proxy; 20 campaigns of 200–500 patients (EMAIL, SMS, EMAIL_SMS) fall due at the same
moment; while they send, faults arrive on a timeline: five kill -9 (each process restarted
about 2 s later), a 15 s database outage, Twilio 500s (nothing stored, then stored), dropped
Twilio connections, the mail server away for 30 s. Then it prints duplicates, unknown (and how
many of those a provider really had), stuck deliveries and campaigns, time to final, peak RSS.

It is a measurement: exit 0 whatever the figures, 1 only when the setup broke.
Usage: .venv/bin/python benchmarks/bench_soak.py [--quick] [--seed 8] [--limit S] [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import secrets
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from soak_bots import CLOCK, Fleet, SetupBroke, say, wait_healthy
from sqlalchemy import insert, select, update
from sqlalchemy.engine import make_url

from bot.db import Database, upgrade
from services import campaigns
from services.campaign_validation import CampaignInput
from services.limits import CampaignLimits
from services.models import Campaign, CampaignStatus, Delivery, DeliveryStatus, Patient, utcnow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the stand-ins live in tests/, which is not installed

from tests.bot.test_settings import clean_env  # noqa: E402
from tests.campaign_fixtures import OPERATOR, patient_row  # noqa: E402
from tests.fakes.smtp_server import FakeSmtp  # noqa: E402
from tests.fakes.tcp_proxy import TcpProxy  # noqa: E402
from tests.fakes.twilio_server import FakeTwilio  # noqa: E402

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
FINAL = {CampaignStatus.completed, CampaignStatus.failed, CampaignStatus.cancelled,
         CampaignStatus.missed}
OPEN = {DeliveryStatus.pending, DeliveryStatus.sending}
MARK = re.compile(r"soak campaign (\d+)\b")
SAMPLE = 0.5  # seconds between samples of the campaigns and of each process's RSS
LEAD = 15.0  # seconds from the bots being up to the campaigns' due moment
# (seconds after the due moment, fault): scaled by Plan.scale, as are the durations. All
# within the first minute, while both channels are still sending; the database outage comes
# last, with no kill after it, because a restart's start-up recovery would hide whether an
# outage heals without one.
TIMELINE = [(5, "kill"), (10, "twilio 500"), (15, "kill"), (20, "smtp away"), (25, "kill"),
            (30, "twilio 500 stored"), (35, "kill"), (40, "twilio drop"), (45, "kill"),
            (55, "db outage")]
DB_OUTAGE, SMTP_AWAY = 15.0, 30.0


@dataclass(frozen=True)
class Plan:
    """The load and how far apart the faults are: the full run, or --quick."""

    patients: int
    campaigns: int
    sizes: tuple[int, int]
    scale: float
    limit: float


# -- setup --------------------------------------------------------------------------------
async def add_patients(db: Database, count: int) -> list[int]:
    rows = [patient_row(f"S{n:05d}", email=f"patient{n:05d}@patients.example",
                        phone=f"+5255{10_000_000 + n:08d}", email_opt_in=True, sms_opt_in=True)
            for n in range(1, count + 1)]
    async with db.transaction() as session:
        for start in range(0, len(rows), 1000):  # well under asyncpg's 32,767 parameters
            await session.execute(insert(Patient), rows[start:start + 1000])
        found = await session.execute(select(Patient.id).where(Patient.external_id.like("S%")))
        return sorted(found.scalars())


async def add_campaigns(db: Database, plan: Plan, rng: random.Random) -> dict[int, int]:
    """The campaigns, scheduled two minutes ahead; {campaign id: its number in the marks}."""
    patient_ids = await add_patients(db, plan.patients)
    channels = ["EMAIL", "SMS", "EMAIL_SMS"]
    numbers: dict[int, int] = {}
    limits = CampaignLimits(max_audience=max(plan.sizes), attachment_max_bytes=5 << 20)
    async with db.transaction() as session:
        for n in range(1, plan.campaigns + 1):
            audience = rng.sample(patient_ids, rng.randint(*plan.sizes))
            campaign = await campaigns.create(
                session=session, actor=OPERATOR, limits=limits,
                campaign_in=CampaignInput(
                    subject=f"soak campaign {n}: your check-up, {{{{ first_name }}}}",
                    message=f"Hello {{{{ first_name }}}}, soak campaign {n} reminds you "
                            "that your yearly check-up is due.",
                    channel=channels[(n - 1) % 3] if n <= 3 else rng.choice(channels),
                    patient_ids=audience, send_at=utcnow() + timedelta(minutes=2),
                ),
            )
            numbers[campaign.id] = n
    return numbers


# -- the run ------------------------------------------------------------------------------
async def timeline(plan: Plan, due: float, fleet: Fleet, proxy: TcpProxy, smtp: FakeSmtp,
                   twilio: FakeTwilio, rng: random.Random, injected: list[str]) -> None:
    """Inject TIMELINE's faults at their moments after `due` (monotonic); append each."""
    loop = asyncio.get_running_loop()
    background: list[asyncio.Task[None]] = []
    try:
        for offset, fault in TIMELINE:
            await asyncio.sleep(max(0.0, due + offset * plan.scale - time.monotonic()))
            injected.append(fault)
            if fault == "kill":
                say(fleet.kill(rng))
            elif fault == "db outage":
                seconds = DB_OUTAGE * plan.scale
                say(f"database outage for {seconds:g} s ({proxy.open_connections} "
                    "connections reset)")
                background.append(loop.create_task(proxy.outage(seconds)))
                background[-1].add_done_callback(lambda _: say("database back"))
            elif fault == "smtp away":
                seconds = SMTP_AWAY * plan.scale
                smtp.away(seconds)
                say(f"mail server away for {seconds:g} s")
                loop.call_later(seconds, say, "mail server back")
            elif fault == "twilio 500":
                twilio.fail_next(500, n=40)
                say("Twilio: next 40 POSTs answer 500, nothing stored")
            elif fault == "twilio 500 stored":
                try:
                    twilio.fail_next(500, n=20, stored=True)
                    say("Twilio: next 20 POSTs are stored, then answered 500")
                except TypeError:
                    twilio.fail_next(500, n=20)
                    say("Twilio: next 20 POSTs answer 500 (NOTE: this FakeTwilio has no "
                        "stored=True yet: plain 500s, nothing stored)")
            elif fault == "twilio drop":
                twilio.fail_next("drop", n=10)
                say("Twilio: next 10 POSTs are stored, then the connection is dropped")
        await asyncio.gather(*background)
    finally:
        for task in background:
            task.cancel()  # an outage heals when cancelled
        await asyncio.gather(*background, return_exceptions=True)


async def wait_final(db: Database, fleet: Fleet, due: float, limit: float) -> float | None:
    """Seconds from `due` (monotonic) until every campaign is final; None at the limit."""
    while (elapsed := time.monotonic() - due) < limit:
        fleet.watch()
        async with db.read() as session:
            statuses = list((await session.execute(select(Campaign.status))).scalars())
        if statuses and all(s in FINAL for s in statuses):
            return elapsed
        await asyncio.sleep(SAMPLE)
    return None


def arrivals(smtp: FakeSmtp, twilio: FakeTwilio) -> tuple[Counter[tuple[int, str, str]], int]:
    """How often each (campaign number, channel, address) reached a provider; unattributed."""
    seen: Counter[tuple[int, str, str]] = Counter()
    stray = 0
    parser = BytesHeaderParser(policy=default_policy)
    for message in smtp.messages:
        match = MARK.search(str(parser.parsebytes(message.data)["Subject"] or ""))
        for recipient in message.recipients:
            if match:
                seen[(int(match.group(1)), "email", recipient.lower())] += 1
            else:
                stray += 1
    for sms in twilio.messages:
        if match := MARK.search(sms.body):
            seen[(int(match.group(1)), "sms", sms.to)] += 1
        else:
            stray += 1
    return seen, stray


@dataclass(frozen=True)
class Row:
    """One delivery, as the ledger has it at the end."""

    campaign_id: int
    channel: str
    status: DeliveryStatus
    reason: str | None
    address: str  # where it went (or would go): matched against what the fakes received


async def ledger_rows(db: Database) -> list[Row]:
    async with db.read() as session:
        found = await session.execute(
            select(Delivery.campaign_id, Delivery.channel, Delivery.status, Delivery.reason,
                   Delivery.address, Patient.email, Patient.phone)
            .join(Patient, Patient.id == Delivery.patient_id))
        rows = []
        for campaign_id, channel, status, reason, address, email, phone in found.all():
            # A row not yet claimed may have no address: the patient's is where it would go.
            if channel == "email":
                address = (address or email or "").lower()
            rows.append(Row(campaign_id, str(channel), status, reason, address or phone or ""))
        return rows


async def campaign_states(db: Database) -> list[tuple[int, CampaignStatus]]:
    async with db.read() as session:
        found = await session.execute(select(Campaign.id, Campaign.status).order_by(Campaign.id))
        return [(campaign_id, status) for campaign_id, status in found.all()]


def report(numbers: dict[int, int], rows: list[Row],
           states: list[tuple[int, CampaignStatus]], seen: Counter[tuple[int, str, str]],
           stray: int, to_final: float | None, limit: float, fleet: Fleet) -> None:
    by_channel = Counter(channel for _, channel, _ in seen.elements())
    print(f"messages at providers: {seen.total() + stray:,} (email {by_channel['email']:,}, "
          f"sms {by_channel['sms']:,}, not from a soak campaign {stray})")
    print(f"duplicates: {sum(1 for n in seen.values() if n > 1):,}")

    def arrived(row: Row) -> bool:
        return seen[(numbers.get(row.campaign_id, 0), row.channel, row.address)] > 0

    unknown = [r for r in rows if r.status == DeliveryStatus.unknown]
    print(f"unknown: {len(unknown):,}")
    print(f"unknown that reached a provider: {sum(map(arrived, unknown)):,}")
    # The ledger contradicting the providers, either way: a patient who got the message while
    # the ledger says failed, skipped or still open; or "sent" that no provider ever had.
    said_sent = {DeliveryStatus.sent, DeliveryStatus.delivered}
    print("not sent in the ledger but reached a provider: " + str(sum(
        1 for r in rows if r.status not in said_sent | {DeliveryStatus.unknown} and arrived(r))))
    print("sent in the ledger but never reached a provider: " + str(sum(
        1 for r in rows if r.status in said_sent and not arrived(r))))
    open_ = Counter(str(r.status) for r in rows if r.status in OPEN)
    print(f"stuck deliveries: {open_.total():,} "
          f"(sending {open_['sending']:,}, pending {open_['pending']:,})")
    stuck = [(cid, status) for cid, status in states if status not in FINAL]
    still_open = Counter(r.campaign_id for r in rows if r.status in OPEN)
    detail = ", ".join(f"#{numbers.get(cid, cid)} {status} with {still_open[cid]} open"
                       for cid, status in stuck[:6]) + (f", {len(stuck) - 6} more"
                                                        if len(stuck) > 6 else "")
    print(f"stuck campaigns: {len(stuck)}" + (f" ({detail})" if detail else ""))
    print("time to final: " + (f"{to_final:.1f} s" if to_final is not None
                               else f"not reached in {limit:.0f} s"))
    print("peak RSS per process (MB): "
          + ", ".join(f"{b.name} {b.peak_kb / 1024:.0f}" for b in fleet.bots))
    statuses = Counter(r.status for r in rows)
    print(f"deliveries: {len(rows):,}")
    for status in DeliveryStatus:
        print(f"deliveries {status}: {statuses[status]:,}")
    reasons = Counter(r.reason or "(no reason)" for r in rows
                      if r.status == DeliveryStatus.failed)
    for rank, (reason, count) in enumerate(reasons.most_common(5), 1):
        print(f"failed reason {rank}: {count:,} × {reason}")
    if fleet.exits:
        print("unexpected exits: " + "; ".join(fleet.exits))


async def soak(plan: Plan, seed: int, workdir: Path) -> None:
    admin = make_url(ADMIN_URL)
    name = f"bench_soak_{secrets.token_hex(4)}"
    direct = admin.set(database=name).render_as_string(hide_password=False)
    try:
        await _execute(ADMIN_URL, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        raise SetupBroke(f"PostgreSQL not reachable at {ADMIN_URL}: {exc}") from exc
    db: Database | None = None
    fleet: Fleet | None = None
    try:
        await asyncio.to_thread(upgrade, direct)
        db = Database(direct)
        rng = random.Random(seed)
        numbers = await add_campaigns(db, plan, rng)
        channels = await _channels(db)
        say(f"database {name}: {plan.patients:,} patients, {len(numbers)} campaigns "
            f"({', '.join(f'{k} {v}' for k, v in sorted(channels.items()))})")
        async with TcpProxy(admin.host or "127.0.0.1", admin.port or 5432) as proxy, \
                FakeTwilio() as twilio:
            with FakeSmtp() as smtp:
                via_proxy = admin.set(host="127.0.0.1", port=proxy.port, database=name)
                env = bot_env(via_proxy.render_as_string(hide_password=False), smtp, twilio,
                              workdir)
                fleet = Fleet(env=clean_env(**env), workdir=workdir)
                first = [await fleet.start("a"), await fleet.start("b")]
                await asyncio.gather(*(wait_healthy(b) for b in first))
                due = utcnow() + timedelta(seconds=LEAD)
                async with db.transaction() as session:
                    await session.execute(update(Campaign).values(send_at=due))
                CLOCK.due = time.monotonic() + LEAD
                say(f"bots a1, b1 up (pids {first[0].process.pid}, {first[1].process.pid}); "
                    f"campaigns due in {LEAD:g} s; logs in {workdir}")
                injected: list[str] = []
                faults = asyncio.create_task(timeline(
                    plan, CLOCK.due, fleet, proxy, smtp, twilio, random.Random(seed + 1),
                    injected))
                try:
                    to_final = await wait_final(db, fleet, CLOCK.due, plan.limit)
                finally:
                    faults.cancel()
                    await asyncio.gather(faults, return_exceptions=True)
                say("all campaigns final" if to_final is not None else "time limit reached")
                if len(injected) < len(TIMELINE):
                    missed = [fault for _, fault in TIMELINE[len(injected):]]
                    say(f"NOTE: {len(missed)} faults of the timeline never came: "
                        f"{', '.join(missed)}")
                rows, states = await ledger_rows(db), await campaign_states(db)
                began = time.monotonic()
                codes = await fleet.stop()
                say(f"SIGTERM: {', '.join(codes)} ({time.monotonic() - began:.1f} s)")
                seen, stray = arrivals(smtp, twilio)
        print()
        report(numbers, rows, states, seen, stray, to_final, plan.limit, fleet)
    finally:
        if fleet is not None:
            await fleet.kill_all()
        if db is not None:
            await db.dispose()
        await _execute(ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bot_env(database_url: str, smtp: FakeSmtp, twilio: FakeTwilio, workdir: Path
            ) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url, "OUTBOX_DIR": str(workdir / "outbox"),
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port), "SMTP_SECURITY": "none",
        "EMAIL_FROM": "Clinic <clinic@example.org>",
        "CLINIC_POSTAL_ADDRESS": "Calle 1, CDMX", "PUBLIC_BASE_URL": "https://bot.example.org",
        "TWILIO_ACCOUNT_SID": twilio.account_sid, "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_FROM_NUMBER": "+15005550006", "TWILIO_API_URL": twilio.url,
        "SCHEDULER_SWEEP": "1s", "QUIET_HOURS": "off", "EMAIL_RATE": "100", "SMS_RATE": "40",
        "RETRY_FOR": "5m", "LOG_LEVEL": "INFO",
    }


async def _channels(db: Database) -> Counter[str]:
    async with db.read() as session:
        return Counter(str(c) for c in (await session.execute(select(Campaign.channel))).scalars())


async def _execute(url: str, statement: str) -> None:
    import asyncpg

    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host or "127.0.0.1", port=parsed.port or 5432,
        user=parsed.username or "postgres", password=parsed.password,
        database=parsed.database or "postgres", timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the same load; timeline and fault durations × 0.4, limit 4 min")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--limit", type=float, help="seconds after the due moment (600; 240)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the bots' log files")
    args = parser.parse_args()
    plan = (Plan(10_000, 20, (200, 500), 0.4, args.limit or 240) if args.quick
            else Plan(10_000, 20, (200, 500), 1.0, args.limit or 600))
    workdir = Path(tempfile.mkdtemp(prefix="bench_soak_"))
    try:
        asyncio.run(soak(plan, args.seed, workdir))
    except SetupBroke as exc:
        print(f"setup failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception:  # the benchmark itself broke: nothing trustworthy was measured
        traceback.print_exc()
        return 1
    finally:
        if args.keep_logs:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
