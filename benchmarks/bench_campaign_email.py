"""A whole email campaign through the real engine (SPEC §5), against Postfix's smtp-sink.

bench_email.py measures the message builder and the SMTP pool alone; this one measures what a
clinic runs: a campaign of N patients with a 200 KB PDF, registered through the campaign
service, started by the engine, every delivery claimed, sent and recorded in the ledger
(SQLite, or PostgreSQL with --database-url), with EMAIL_RATE out of the way. In the same run,
several rounds each (medians), Postfix's smtp-source sends N messages of the same size.

Target: engine rate ≥ 0.8 × smtp-source. Also prints the peak RSS of one round with a 5 MB
attachment (target ≤ 250 MB). Needs smtp-sink and smtp-source (Debian package postfix).
Usage: .venv/bin/python benchmarks/bench_campaign_email.py [--rounds 5] [--count 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_email import MESSAGE, SINK_BIN, SOURCE_BIN, fake_pdf, smtp_source, start_sink
from sqlalchemy import func, insert, select

from bot.db import Database, upgrade
from bot.senders import build_engine
from bot.settings import load_settings
from services import campaigns
from services.access import Actor
from services.attachments import AttachmentInput
from services.campaign_validation import CampaignInput
from services.models import Delivery, DeliveryStatus, Patient
from services.search_keys import patient_keys

FIRST = ["María", "José", "Ana", "Luis", "Sofía", "Carlos", "Lucía", "Jorge", "Elena", "Raúl"]


async def one_campaign(url: str, port: int, count: int, pdf: bytes) -> tuple[float, int]:
    """Seconds from the engine's first look to the campaign completed, and messages sent."""
    settings = load_settings(
        database_url=url, smtp_host="127.0.0.1", smtp_port=port, smtp_security="none",
        email_from="Clínica Sonrisa <hola@sonrisa.example>",
        clinic_postal_address="Av. Reforma 222, Ciudad de México",
        public_base_url="https://bot.sonrisa.example", email_rate=10_000, quiet_hours="off",
        clinic_name="Clínica Sonrisa",
    )
    db = Database(url)
    rows = []
    for i in range(count):
        first, last, email = FIRST[i % len(FIRST)], f"Pérez {i}", f"patient{i}@patients.example"
        rows.append({
            "external_id": f"B{i:06d}", "first_name": first, "last_name": last, "email": email,
            "email_opt_in": True, "sms_opt_in": False, "tags": [],
            **patient_keys(first_name=first, last_name=last, email=email, phone=None,
                           external_id=f"B{i:06d}"),
        })
    async with db.transaction() as session:
        await session.execute(insert(Patient), rows)
        campaign = await campaigns.create(
            session=session, actor=Actor("cli:bench", is_env_admin=True),
            limits=settings.limits,
            campaign_in=CampaignInput(
                subject="{{ first_name }}, your annual check-up", message=MESSAGE,
                channel="EMAIL", segment_slug="all", send_now=True,
                attachment=AttachmentInput("check-up.pdf", pdf),
            ),
        )
    engine = await build_engine(settings, db)
    start = time.perf_counter()
    await engine.drain()
    elapsed = time.perf_counter() - start
    commits, items = engine.ledger_writes
    if commits:
        print(f"  ledger group commits: {commits} for {items} marks and outcomes "
              f"({items / commits:.1f} each)", file=sys.stderr)
    async with db.transaction() as session:
        sent = await session.scalar(
            select(func.count()).select_from(Delivery).where(
                Delivery.campaign_id == campaign.id, Delivery.status == DeliveryStatus.sent))
    for driver in engine.drivers:
        await driver.close()
    await db.dispose()
    return elapsed, int(sent or 0)


def fresh_sqlite(directory: Path, name: str) -> str:
    url = f"sqlite:///{directory / name}.db"
    upgrade(url)
    return url


def rss_child(port: int, count: int, attachment_mb: float) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = fresh_sqlite(Path(directory), "rss")
        pdf = fake_pdf(int(attachment_mb * 1024 * 1024))
        asyncio.run(one_campaign(url, port, count, pdf))
    print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--attachment-kb", type=int, default=200)
    parser.add_argument("--attachment-mb", type=float, default=5.0, help="for the RSS round")
    parser.add_argument("--rss-child", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.count, args.attachment_mb)
        return
    if not (shutil.which(SINK_BIN) and shutil.which(SOURCE_BIN)):
        raise SystemExit("needs smtp-sink and smtp-source: apt-get install postfix")
    pdf = fake_pdf(args.attachment_kb * 1024)
    sink, port = start_sink()
    ours: list[float] = []
    theirs: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as directory:
            for round_ in range(args.rounds):
                url = fresh_sqlite(Path(directory), f"round{round_}")
                seconds, sent = asyncio.run(one_campaign(url, port, args.count, pdf))
                if sent != args.count:
                    raise SystemExit(f"only {sent} of {args.count} sent")
                ours.append(args.count / seconds)
                # Same size as ours: the PDF base64-encoded plus about 5 KB of text and headers.
                size = len(pdf) * 4 // 3 + 5 * 1024
                theirs.append(args.count / smtp_source(port, args.count, size, reuse=False))
                print(f"round {round_ + 1}: engine {ours[-1]:.1f}/s, "
                      f"smtp-source {theirs[-1]:.1f}/s", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(port), "--count", str(args.count),
             "--attachment-mb", str(args.attachment_mb)],
            check=True, capture_output=True, text=True,
        )
        rss = float(child.stdout.strip().splitlines()[-1])
    finally:
        sink.terminate()
        sink.wait()
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"\n{args.count} emails, {args.attachment_kb} KB PDF, {args.rounds} rounds, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"smtp-source (C, -s 4):            {statistics.median(theirs):8.1f} msg/s (median)")
    print(f"campaign-bot engine (SQLite):     {statistics.median(ours):8.1f} msg/s (median)")
    print(f"ratio engine / smtp-source:       {ratio:8.2f}  (target >= 0.80)")
    print(f"peak RSS, {args.attachment_mb:g} MB attachment:      {rss:8.0f} MB (target <= 250)")


if __name__ == "__main__":
    main()
