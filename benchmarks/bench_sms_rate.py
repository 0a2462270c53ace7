"""SPEC §5, SMS: with SMS_RATE=R, achieved rate >= 0.95·R and never above R in any 1-s window.

Concurrent workers share one RateLimiter and one TwilioSmsSender (the real twilio client) and
send to FakeTwilio on loopback, in a process of its own. The figures come from the fake's
receive timestamps: what the provider sees, not what the sender thinks it did.

    .venv/bin/python benchmarks/bench_sms_rate.py --rate 1 10 50 --messages 100 --workers 4
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Figures:
    rate: float
    messages: int
    workers: int
    achieved: float
    max_window: int
    outcomes: Counter[str]
    p50_ms: float
    p99_ms: float

    @property
    def allowed(self) -> int:
        return max(1, math.floor(self.rate))

    @property
    def passed(self) -> bool:
        return (self.achieved >= 0.95 * min(self.rate, self.allowed)
                and self.max_window <= self.allowed and self.outcomes == {"sent": self.messages})


def _serve_fake(conn: Connection, delay: float) -> None:
    """Child process: FakeTwilio until the parent says stop, then its receive timestamps."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.twilio_server import FakeTwilio

    async def serve() -> None:
        async with FakeTwilio(delay=delay) as fake:
            conn.send((fake.url, fake.account_sid, fake.auth_token, fake.phone_numbers[0]))
            await asyncio.to_thread(conn.recv)
            conn.send([m.received_at for m in fake.messages])

    asyncio.run(serve())


async def run(rate: float, messages: int, workers: int, provider_delay: float) -> Figures:
    """Send `messages` SMS at `rate` with `workers` workers; measure at the fake."""
    from services.delivery.rate_limit import RateLimiter, max_in_any_window
    from services.delivery.sms_sender import TwilioSmsSender

    # The fake runs in its own process, as Twilio runs on its own machines: its CPU use
    # and event loop must not delay ours (nor ours its timestamps).
    conn, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_fake, args=(child, provider_delay), daemon=True
    )
    process.start()
    url, account_sid, auth_token, number = await asyncio.to_thread(conn.recv)
    sender = TwilioSmsSender(
        account_sid=account_sid, auth_token=auth_token, from_number=number, api_url=url,
        public_base_url="https://bot.clinic.example",
    )
    limiter = RateLimiter(rate)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(messages):
        queue.put_nowait(f"+52155{i:08d}")
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            to = queue.get_nowait()
            await limiter.acquire()
            started = time.perf_counter()
            result = await sender.send(
                to=to, body="Hola, tu cita es mañana a las 10:00. Reply STOP to opt out"
            )
            latencies.append(time.perf_counter() - started)
            outcomes[result.outcome.value] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        await sender.close()
        conn.send("stop")
        times: list[float] = sorted(await asyncio.to_thread(conn.recv))
        process.join(timeout=10)

    achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return Figures(rate, messages, workers, achieved, max_in_any_window(times), outcomes,
                   cuts[49] * 1000, cuts[98] * 1000)


async def run_engine(rate: float, messages: int, provider_delay: float) -> Figures:
    """The whole pipeline: an SMS campaign of `messages` patients through DeliveryEngine
    (SQLite ledger, claims, batches, recording) with SMS_RATE=`rate`; measured at the fake."""
    import tempfile

    from sqlalchemy import insert

    from bot.db import Database, upgrade_async
    from bot.senders import build_engine
    from bot.settings import load_settings
    from services import campaigns
    from services.access import Actor
    from services.campaign_validation import CampaignInput
    from services.delivery.rate_limit import max_in_any_window
    from services.models import Patient
    from services.search_keys import patient_keys

    conn, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_fake, args=(child, provider_delay), daemon=True
    )
    process.start()
    url, account_sid, auth_token, number = await asyncio.to_thread(conn.recv)
    with tempfile.TemporaryDirectory() as directory:
        database_url = f"sqlite:///{directory}/sms.db"
        await upgrade_async(database_url)
        settings = load_settings(
            database_url=database_url, twilio_account_sid=account_sid,
            twilio_auth_token=auth_token, twilio_from_number=number, twilio_api_url=url,
            sms_rate=rate, quiet_hours="off", outbox_dir=directory,
        )
        db = Database(database_url)
        rows = [
            {"external_id": f"S{i:06d}", "first_name": "Ana", "last_name": f"Ruiz {i}",
             "phone": f"+5215512{i:06d}", "sms_opt_in": True, "email_opt_in": False, "tags": [],
             **patient_keys(first_name="Ana", last_name=f"Ruiz {i}", email=None,
                            phone=f"+5215512{i:06d}", external_id=f"S{i:06d}")}
            for i in range(messages)
        ]
        async with db.transaction() as session:
            await session.execute(insert(Patient), rows)
            await campaigns.create(
                session=session, actor=Actor("cli:bench", is_env_admin=True),
                limits=settings.limits,
                campaign_in=CampaignInput(
                    subject="Recordatorio", channel="SMS", segment_slug="all", send_now=True,
                    message="Hola {{ first_name }}, tu cita es mañana a las 10:00.",
                ),
            )
        engine = await build_engine(settings, db)
        try:
            await engine.drain()
        finally:
            for driver in engine.drivers:
                await driver.close()
            await db.dispose()
            conn.send("stop")
            times: list[float] = sorted(await asyncio.to_thread(conn.recv))
            process.join(timeout=10)
    if os.environ.get("BENCH_DEBUG"):
        print([round(b - a, 3) for a, b in itertools.pairwise(times)])
    achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    outcomes = Counter({"sent": len(times)})
    return Figures(rate, messages, 0, achieved, max_in_any_window(times), outcomes, 0.0, 0.0)


def main() -> int:
    """Run the benchmark for each rate and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, nargs="+", default=[1, 10, 50],
                        help="SMS_RATE values to measure (messages per second)")
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--engine", action="store_true",
                        help="send a whole campaign through the delivery engine instead")
    parser.add_argument("--provider-delay", type=float, default=0.0,
                        help="seconds the fake takes to answer (a real API takes ~0.1-0.3)")
    args = parser.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    print(f"# SMS rate benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
          f"{platform.node()} ({platform.processor() or platform.machine()}), "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}, provider delay {args.provider_delay:g} s")
    print(f"{'SMS_RATE':>8} {'msgs':>5} {'workers':>7} {'achieved/s':>10} {'ratio':>6} "
          f"{'max in 1 s':>10} {'p50 ms':>7} {'p99 ms':>7}  outcomes  verdict")
    ok = True
    for rate in args.rate:
        if args.engine:
            f = asyncio.run(run_engine(rate, args.messages, args.provider_delay))
        else:
            f = asyncio.run(run(rate, args.messages, args.workers, args.provider_delay))
        ok &= f.passed
        print(f"{f.rate:>8g} {f.messages:>5} {f.workers:>7} {f.achieved:>10.3f} "
              f"{f.achieved / f.rate:>6.3f} {f.max_window:>10} {f.p50_ms:>7.1f} {f.p99_ms:>7.1f}"
              f"  {dict(f.outcomes)}  {'PASS' if f.passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
