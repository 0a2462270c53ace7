"""The campaign's channel message while it sends (progress) and after (the snapshot). Pure.

Counts and campaign data only: a Snapshot carries no patient data, and providers' reasons
are shown with any address or number in them masked.
"""

from __future__ import annotations

import re

from modals import ids
from modals.common import Block, button, context, escape, section
from modals.messages import CHANNEL_NAMES, STATUS_EMOJI, slack_time
from services.snapshot import ChannelNumbers, Snapshot

BAR_WIDTH = 20
PROVIDER_NAMES = {"email": "email server", "sms": "SMS provider"}
REASONS_SHOWN = 5
# Providers sometimes quote the recipient in a reason ("550 <ana@x.mx>: no such user");
# chat logs must not carry it (SPEC §3), so addresses and numbers are masked when shown.
_EMAIL = re.compile(r"<?[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+>?")
_PHONE = re.compile(r"\+\d[\d\s().-]{5,}\d|\b\d{7,}\b")


def scrub(reason: str) -> str:
    """A provider's reason without any email address or phone number in it."""
    return _PHONE.sub("<number>", _EMAIL.sub("<address>", reason))


def progress_bar(share: float, width: int = BAR_WIDTH) -> str:
    """`▓▓▓▓▓░░░░░ 50%` as text (Block Kit has no progress bar)."""
    share = min(1.0, max(0.0, share))
    full = int(share * width)  # like the percentage: never shows done before it is
    return "▓" * full + "░" * (width - full) + f" {int(share * 100)}%"


def _title(snap: Snapshot) -> str:
    return (f"{STATUS_EMOJI.get(snap.status, '')} *Campaign #{snap.campaign_id}: "
            f"{escape(snap.subject)}*")


def _stats_button(snap: Snapshot) -> Block:
    return {"type": "actions", "block_id": f"{ids.CAMPAIGN_ACTIONS_BLOCK}:{snap.campaign_id}",
            "elements": [button("Stats", ids.STATS_ACTION, str(snap.campaign_id))]}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def progress_message(snap: Snapshot) -> tuple[str, list[Block]]:
    """While sending: a progress bar, sent / failed / waiting for quiet hours, the rate."""
    done, total = snap.total("done"), snap.deliveries
    lines = [
        f"{_title(snap)} — sending to {snap.audience:,} patients by "
        f"{CHANNEL_NAMES.get(snap.channel, snap.channel)}",
        f"`{progress_bar(snap.progress)}`  {done:,} of {total:,} deliveries done",
    ]
    for name, c in snap.channels.items():
        parts = [f"{c.sent:,} sent", f"{c.failed:,} failed"]
        if c.skipped:
            parts.append(f"{c.skipped:,} skipped")
        if c.waiting:
            parts.append(f"{c.waiting:,} waiting for quiet hours")
        if c.unknown:
            parts.append(f"{c.unknown:,} unknown")
        if c.unreachable:
            parts.append(f"{PROVIDER_NAMES.get(c.channel, c.channel)} unreachable, retrying "
                         f"({c.unreachable:,} waiting)")
        elif c.retrying:
            parts.append(f"{c.retrying:,} to be retried")
        lines.append(f"*{name}:* " + ", ".join(parts))
    footer = f"{snap.rate:g} messages/s · started {slack_time(snap.started_at)}"
    if snap.waiting_until is not None:
        footer += f" · quiet hours hold some SMS until {slack_time(snap.waiting_until)}"
    text = (f"Campaign #{snap.campaign_id} sending: {int(snap.progress * 100)}% "
            f"({snap.total('sent'):,} sent, {snap.total('failed'):,} failed)")
    return text, [section("\n".join(lines)), context(footer), _stats_button(snap)]


def _channel_lines(c: ChannelNumbers) -> list[str]:
    head = (f"*{c.channel}:* {c.reachable:,} of {c.audience:,} reachable · {c.sent:,} sent · "
            f"{c.delivered:,} delivered · {c.failed:,} failed · {c.unknown:,} unknown")
    if c.channel == "email":
        head += f" · {c.opened:,} opened · {c.clicked:,} clicked"
    head += f" · {c.opted_out:,} opted out"
    if c.waiting:
        head += f" · {c.waiting:,} waiting for quiet hours"
    elif c.pending:
        head += f" · {c.pending:,} pending"
    lines = [head]
    for label, reasons in (("skipped", c.skipped_reasons), ("failed", c.failed_reasons)):
        if reasons:
            items = list(reasons.items())
            shown = ", ".join(f"{escape(scrub(r))}: {n:,}" for r, n in items[:REASONS_SHOWN])
            more = len(items) - REASONS_SHOWN
            lines.append(f"   _{label}:_ {shown}" + (f" (+{more} more)" if more > 0 else ""))
    return lines


def snapshot_message(snap: Snapshot) -> tuple[str, list[Block]]:
    """The performance snapshot (SPEC §4): what reached whom, what failed and why, how fast."""
    lines = [f"{_title(snap)} — {snap.status}"]
    if snap.status_reason and snap.status in ("failed", "missed", "cancelled"):
        lines.append(f"_{escape(scrub(snap.status_reason))}_")
    lines.append(f"*Audience:* {snap.audience:,} patients · "
                 f"{CHANNEL_NAMES.get(snap.channel, snap.channel)}")
    for c in snap.channels.values():
        lines.extend(_channel_lines(c))
    timing = [f"*Start:* {slack_time(snap.started_at)}", f"*End:* {slack_time(snap.finished_at)}"]
    if snap.started_at is not None:
        timing.append(f"*Duration:* {_duration(snap.duration_seconds)}")
        timing.append(f"*Rate:* {snap.rate:g} messages/s")
    if snap.started_at is None and snap.send_at is not None:
        timing.insert(0, f"*Scheduled:* {slack_time(snap.send_at)}")
    blocks: list[Block] = [section("\n".join(lines)), context("   ".join(timing))]
    if snap.total("unknown"):
        blocks.append(context(
            f":warning: {snap.total('unknown'):,} deliveries are unknown (the sender stopped "
            f"mid-send; not re-sent). `campaign-bot campaigns show {snap.campaign_id}` lists "
            "them for the operator."))
    blocks.append(_stats_button(snap))
    text = (f"Campaign #{snap.campaign_id} snapshot: {snap.status}, {snap.total('sent'):,} sent, "
            f"{snap.total('failed'):,} failed ({snap.failed_pct:g}%)")
    return text, blocks


def campaign_message(snap: Snapshot) -> tuple[str, list[Block]]:
    """The live message for the campaign's state: progress while sending, else the snapshot."""
    return progress_message(snap) if snap.status == "sending" else snapshot_message(snap)


def notice(text: str) -> tuple[str, list[Block]]:
    """A notification rule's message."""
    return text, [section(text)]


def chart_title(snap: Snapshot) -> str:
    return f"Campaign #{snap.campaign_id}: delivery funnel"
