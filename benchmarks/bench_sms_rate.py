"""SPEC §5, SMS: with SMS_RATE=R, achieved rate >= 0.95·R and never above R in any 1-s window.

Concurrent workers share one RateLimiter and one TwilioSmsSender (the real twilio client) and
send to FakeTwilio on loopback, in a process of its own. The figures come from the fake's
receive timestamps: what the provider sees, not what the sender thinks it did.

    .venv/bin/python benchmarks/bench_sms_rate.py --rate 1 10 50 --messages 100 --workers 4
"""

from __future__ import annotations

import argparse
import asyncio
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


def main() -> int:
    """Run the benchmark for each rate and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, nargs="+", default=[1, 10, 50],
                        help="SMS_RATE values to measure (messages per second)")
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
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
        f = asyncio.run(run(rate, args.messages, args.workers, args.provider_delay))
        ok &= f.passed
        print(f"{f.rate:>8g} {f.messages:>5} {f.workers:>7} {f.achieved:>10.3f} "
              f"{f.achieved / f.rate:>6.3f} {f.max_window:>10} {f.p50_ms:>7.1f} {f.p99_ms:>7.1f}"
              f"  {dict(f.outcomes)}  {'PASS' if f.passed else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
