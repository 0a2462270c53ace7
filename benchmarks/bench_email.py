"""Email throughput and memory (SPEC §5), against Postfix's smtp-sink on loopback.

In one run, several rounds each (medians reported):
  (a) smtp-source (Postfix's C load generator): N messages of our message's size, in as many
      parallel sessions as our pool, one connection per message (and, for reference, with -d:
      one connection per session, as our pool does);
  (b) our pipeline: N personalised emails (Jinja2 sandbox) with a 200 KB PDF attached, built
      by CampaignMail and sent by SmtpEmailSender's connection pool;
  (c) a plain baseline: EmailMessage built from scratch per recipient (attachment encoded per
      message), one aiosmtplib.send per message, a new connection each.
Then the peak RSS of a subprocess sending N emails with a 5 MB attachment through (b).

Targets: (b) ≥ 0.8 × (a); peak RSS ≤ 250 MB. Needs smtp-sink and smtp-source:
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix   # then stop postfix itself
Usage: .venv/bin/python benchmarks/bench_email.py [--rounds 5] [--count 500] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiosmtplib

from services.delivery.email_message import Attachment, CampaignMail
from services.delivery.email_sender import SmtpEmailSender

SENDER = "Clínica Sonrisa <hola@sonrisa.example>"
ADDRESS = "Av. Reforma 222, piso 3\nCiudad de México, CDMX 06600"
SUBJECT = "{{ first_name }}, your annual check-up at {{ clinic_name }}"
MESSAGE = """Hello {{ first_name }},

It has been almost a year since your last visit to {{ clinic_name }}. This month every
check-up includes a free cleaning: book at https://sonrisa.example/book or reply to this email.

The attached leaflet explains what the check-up covers and how to prepare for it.

See you soon,
The {{ clinic_name }} team"""
FIRST_NAMES = ["María", "José", "Ana", "Luis", "Sofía", "Carlos", "Lucía", "Jorge", "Elena", "Raúl"]
POOL_SIZE = 4
WORKERS = 2 * POOL_SIZE
SINK_BIN, SOURCE_BIN = "/usr/sbin/smtp-sink", "/usr/sbin/smtp-source"

try:  # the project's sandboxed renderer, when present
    from services.personalisation import render_text as _render_text

    RENDERER = "Jinja2 sandbox (services.personalisation.render_text)"

    def personalise(template: str, values: dict[str, str]) -> str:
        return _render_text(template, values)
except ImportError:  # pragma: no cover - before the personalisation service existed
    RENDERER = "str.replace"

    def personalise(template: str, values: dict[str, str]) -> str:
        for name, value in values.items():
            template = template.replace("{{ " + name + " }}", value)
        return template


def fake_pdf(size: int) -> bytes:
    """A PDF-shaped file of `size` bytes (incompressible content stream)."""
    head, tail = b"%PDF-1.7\n1 0 obj\n<< /Length 0 >>\nstream\n", b"\nendstream\nendobj\n%%EOF\n"
    return head + os.urandom(max(0, size - len(head) - len(tail))) + tail


def patients(count: int) -> list[dict[str, str]]:
    return [{"first_name": FIRST_NAMES[i % len(FIRST_NAMES)], "last_name": f"Pérez {i}",
             "email": f"patient{i}@patients.example", "clinic_name": "Clínica Sonrisa"}
            for i in range(count)]


def unsubscribe_url(address: str) -> str:
    token = hashlib.sha256(b"bench-secret" + address.encode()).hexdigest()[:32]
    return f"https://bot.sonrisa.example/unsubscribe/{token}"


async def our_pipeline(
    port: int, people: list[dict[str, str]], pdf: bytes, *, chunks: bool = True
) -> float:
    """(b): CampaignMail once, then render + send per patient over the pool; seconds taken."""
    start = time.perf_counter()
    mail = CampaignMail(sender=SENDER, postal_address=ADDRESS, clinic_name="Clínica Sonrisa",
                        preview_text="A free cleaning with every check-up this month",
                        attachment=Attachment("check-up.pdf", pdf, "application/pdf"))
    sender = SmtpEmailSender("127.0.0.1", port, "none", None, None, timeout=30,
                             pool_size=POOL_SIZE, local_hostname="bench.localhost")
    queue = iter(people)
    failures: list[str] = []

    async def worker() -> None:
        for person in queue:  # workers share one iterator: each patient is taken once
            message_id = mail.new_message_id()
            render = mail.render_chunks if chunks else mail.render
            raw = render(
                to=person["email"], message_id=message_id,
                subject=personalise(SUBJECT, person), text_body=personalise(MESSAGE, person),
                unsubscribe_url=unsubscribe_url(person["email"]))
            result = await sender.send(sender=mail.envelope_sender, recipient=person["email"],
                                       message=raw, message_id=message_id)
            if result.outcome != "sent":
                failures.append(f"{result.outcome}: {result.reason}")

    # More workers than connections, so that a message is rendered while another is in flight.
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    await sender.close()
    if failures:
        raise RuntimeError(f"{len(failures)} not sent, e.g. {failures[0]}")
    return time.perf_counter() - start


async def baseline(port: int, people: list[dict[str, str]], pdf: bytes) -> float:
    """(c): EmailMessage per recipient, a new connection per message, one at a time."""
    start = time.perf_counter()
    for person in people:
        message = EmailMessage()
        message["From"] = SENDER
        message["To"] = person["email"]
        message["Subject"] = personalise(SUBJECT, person)
        message["List-Unsubscribe"] = f"<{unsubscribe_url(person['email'])}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        text = personalise(MESSAGE, person)
        message.set_content(text)
        message.add_alternative(f"<p>{text}</p>", subtype="html")
        message.add_attachment(pdf, maintype="application", subtype="pdf",
                               filename="check-up.pdf")
        await aiosmtplib.send(message, hostname="127.0.0.1", port=port,
                              local_hostname="bench.localhost", start_tls=False)
    return time.perf_counter() - start


def smtp_source(port: int, count: int, size: int, reuse: bool) -> float:
    """(a): Postfix's smtp-source, POOL_SIZE sessions in parallel; seconds taken."""
    command = [SOURCE_BIN, "-c", "-s", str(POOL_SIZE), "-m", str(count), "-l", str(size),
               "-f", "hola@sonrisa.example", "-t", "patient@patients.example",
               "-M", "bench.localhost", f"127.0.0.1:{port}"]
    if reuse:
        command.insert(1, "-d")
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [SINK_BIN, f"127.0.0.1:{port}", "1024"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]  # smtp-sink refuses to run as root
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return sink, port
        except OSError:
            time.sleep(0.05)
    sink.kill()
    raise SystemExit("smtp-sink did not start")


def peak_rss_mb(port: int, count: int, attachment_mb: float) -> float:
    """Peak RSS of a fresh process running (b) with a large attachment (os.wait4's rusage)."""
    child = subprocess.Popen([sys.executable, __file__, "--rss-child", str(port), "--count",
                              str(count), "--attachment-mb", str(attachment_mb)])
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the RSS run failed")
    return usage.ru_maxrss / 1024  # kilobytes on Linux


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process and the children it waited for) of `run`."""
    before, start = os.times(), time.perf_counter()
    run()
    wall, after = time.perf_counter() - start, os.times()
    cpu = sum(after[i] - before[i] for i in range(4))  # user, system, children's user, system
    return wall, cpu


def profile(port: int, people: list[dict[str, str]], pdf: bytes) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(our_pipeline(port, people, pdf))
    profiler.disable()
    print("\nWhere our pipeline's time goes (cProfile, cumulative, top 25):")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--attachment-kb", type=int, default=200)
    parser.add_argument("--attachment-mb", type=float, default=5.0, help="for the RSS run")
    parser.add_argument("--profile", action="store_true", help="also cProfile one run of (b)")
    parser.add_argument("--rss-child", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    people = patients(args.count)

    if args.rss_child:
        pdf = fake_pdf(int(args.attachment_mb * 1024 * 1024))
        asyncio.run(our_pipeline(args.rss_child, people, pdf))
        return
    if not (shutil.which(SINK_BIN) and shutil.which(SOURCE_BIN)):
        raise SystemExit("needs Postfix's smtp-sink and smtp-source: sudo DEBIAN_FRONTEND="
                         "noninteractive apt-get install -y postfix (then: sudo postfix stop)")

    pdf = fake_pdf(args.attachment_kb * 1024)
    sink, port = start_sink()
    try:
        sample = CampaignMail(sender=SENDER, postal_address=ADDRESS,
                              attachment=Attachment("check-up.pdf", pdf)).render(
            to="p@patients.example", message_id="<1@sonrisa.example>",
            subject=personalise(SUBJECT, people[0]), text_body=personalise(MESSAGE, people[0]),
            unsubscribe_url=unsubscribe_url("p@patients.example"))
        size = len(sample)
        print(f"{args.count} messages of {size / 1024:.0f} KB ({args.attachment_kb} KB PDF), "
              f"{POOL_SIZE} connections/sessions, {args.rounds} rounds, smtp-sink on 127.0.0.1:"
              f"{port}; personalisation: {RENDERER}; Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs")
        runs: dict[str, tuple[str, Callable[[], object]]] = {
            "source": ("(a) smtp-source, a connection per message",
                       lambda: smtp_source(port, args.count, size, reuse=False)),
            "source_d": ("    smtp-source -d, connections reused",
                         lambda: smtp_source(port, args.count, size, reuse=True)),
            "ours": ("(b) ours: CampaignMail.render_chunks + pool",
                     lambda: asyncio.run(our_pipeline(port, people, pdf))),
            "joined": ("    ours with render() (one bytes object)",
                       lambda: asyncio.run(our_pipeline(port, people, pdf, chunks=False))),
            "base": ("(c) baseline: EmailMessage, one at a time",
                     lambda: asyncio.run(baseline(port, people, pdf))),
        }
        walls: dict[str, list[float]] = {name: [] for name in runs}
        cpus: dict[str, list[float]] = {name: [] for name in runs}
        for round_number in range(args.rounds):  # interleaved, so load changes hit all alike
            for name, (_, run) in runs.items():
                wall, cpu = timed(run)
                walls[name].append(wall)
                cpus[name].append(cpu)
            print(f"  round {round_number + 1}: " + ", ".join(
                f"{name} {args.count / walls[name][-1]:.0f}/s" for name in runs))
        rate = {name: args.count / statistics.median(walls[name]) for name in runs}
        for name, (label, _) in runs.items():
            cpu_ms = statistics.median(cpus[name]) / args.count * 1000
            print(f"{label:44} {rate[name]:7.1f} messages/s  ({cpu_ms:.2f} ms CPU per message)")
        ours, source = rate["ours"], rate["source"]
        verdict = "meets" if ours >= 0.8 * source else "MISSES"
        print(f"ours / smtp-source = {ours / source:.2f} (target ≥ 0.80: {verdict}); "
              f"ours / smtp-source -d = {ours / rate['source_d']:.2f}; "
              f"ours / baseline = {ours / rate['base']:.1f}")
        rss = peak_rss_mb(port, args.count, args.attachment_mb)
        verdict = "meets" if rss <= 250 else "MISSES"
        print(f"peak RSS sending {args.count} emails with a {args.attachment_mb:g} MB attachment:"
              f" {rss:.0f} MB (target ≤ 250 MB: {verdict})")
        if args.profile:
            profile(port, people, pdf)
    finally:
        sink.terminate()
        sink.wait(timeout=5)


if __name__ == "__main__":
    main()
