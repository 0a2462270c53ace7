"""The snapshot's chart: the delivery funnel per channel, as a PNG (matplotlib, Agg).

Counts only, labelled by stage and channel; no patient data reaches the image. Rendering
takes a few hundred milliseconds of CPU, so `render` runs it off the event loop.
"""

from __future__ import annotations

import asyncio
import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from services.snapshot import ChannelNumbers, Snapshot

STAGES = ("audience", "reachable", "sent", "delivered", "opened", "clicked")
COLOURS = {"email": "#2f6fb0", "sms": "#3a9b5c"}


def _stages(c: ChannelNumbers) -> list[tuple[str, int]]:
    stages = [(name, int(getattr(c, name))) for name in STAGES]
    if c.channel != "email":  # SMS has no opens or clicks
        stages = stages[:4]
    return [*stages, ("failed", c.failed), ("unknown", c.unknown)]


def funnel_png(snap: Snapshot, *, dpi: int = 110) -> bytes:
    """The funnel of each channel the campaign uses, side by side, as PNG bytes."""
    channels = list(snap.channels.values()) or [None]
    figure = Figure(figsize=(4.2 * len(channels), 3.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot: no global state, safe from a worker thread
    figure.suptitle(f"Campaign #{snap.campaign_id}: delivery funnel ({snap.status})")
    axes = figure.subplots(1, len(channels), squeeze=False)[0]
    for ax, c in zip(axes, channels, strict=True):
        if c is None:
            ax.text(0.5, 0.5, "no deliveries", ha="center", va="center")
            ax.set_axis_off()
            continue
        stages = _stages(c)
        labels = [name for name, _ in stages][::-1]
        values = [value for _, value in stages][::-1]
        colours = ["#c0392b" if name in ("failed", "unknown") else COLOURS.get(c.channel, "#555")
                   for name in labels]
        bars = ax.barh(labels, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=8)
        ax.set_title(c.channel)
        ax.set_xlim(0, max(1, max(values)) * 1.2)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


async def render(snap: Snapshot) -> bytes:
    """`funnel_png` in a worker thread (keeps the event loop, and Slack's acks, responsive)."""
    return await asyncio.to_thread(funnel_png, snap)
