"""The SMS window: marketing SMS go out only between `start` and `end`, patient's local time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class QuietHours:
    """The allowed window; may wrap past midnight (e.g. 22:00-06:00)."""

    start: time
    end: time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def allows(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def next_opening(self, now: datetime, zone: ZoneInfo) -> datetime:
        """`now` if the window is open in `zone`, else the UTC instant it next opens."""
        local = now.astimezone(zone)
        if self.allows(local.time()):
            return now
        opening = datetime.combine(local.date(), self.start, tzinfo=zone)
        if opening <= local:
            opening = datetime.combine(local.date() + timedelta(days=1), self.start, tzinfo=zone)
        return opening.astimezone(UTC)
