"""Per-channel send rate: never more than R messages in any 1-second window, and close to R.

A token bucket would let a full bucket go out at once and, refilling meanwhile, exceed R in a
sliding 1-second window. Instead every message gets its own slot, evenly spaced 1/R apart
(`next = max(now, previous + 1/R)`, so a slow spell builds up no burst), and two guards keep
any window honest: a slot is only planned at least `1 s + margin` after the slot R places
earlier, and a waiter that wakes up late is only let through if the last R actual grants leave
room. The margin (default 40 ms) absorbs jitter between a grant and the provider seeing the
request (a busy event loop, the network), so the provider's clock agrees too; it costs about 4%
of R. Jitter beyond it can still put R+1 into a window on the provider's clock: no sender can
see when its requests arrive, and a larger margin would cost the 0.95·R target (SPEC §5).

A whole number of messages fits in a window: for R above 1 at most floor(R) go out in any
1-second window; for R below 1, one every 1/R seconds (R = 0.5: one every 2 s).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Shared by every worker of one channel in one process (one event loop)."""

    def __init__(
        self,
        rate: float,
        *,
        margin: float = 0.04,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of messages per second, not {rate}")
        if not (0 <= margin < 1):
            raise ValueError("margin must be between 0 and 1 second")
        self.rate = rate
        self.interval = 1.0 / rate
        self.window = 1.0 + margin
        self.per_window = max(1, math.floor(rate + 1e-9))
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf  # earliest time of the next slot
        self._planned: deque[float] = deque(maxlen=self.per_window)  # the last slots handed out
        self._granted: deque[float] = deque(maxlen=self.per_window)  # when waiters really left

    def _reserve(self) -> float:
        """Claim the next slot and return its time (no await: atomic on the event loop)."""
        slot = max(self._clock(), self._next)
        if len(self._planned) == self.per_window:
            slot = max(slot, self._planned[0] + self.window)
        self._planned.append(slot)
        self._next = slot + self.interval
        return slot

    def _room_at(self) -> float:
        """Earliest time the window of actual grants lets one more through."""
        if len(self._granted) < self.per_window:
            return -math.inf
        return self._granted[0] + self.window

    async def acquire(self) -> None:
        """Wait for this message's slot; returns at once when sending is behind schedule."""
        slot = self._reserve()
        while True:
            delay = slot - self._clock()
            if delay > 0:
                await self._sleep(delay)
            now = self._clock()
            room = self._room_at()
            if now >= room:
                self._granted.append(now)
                return
            slot = room  # woke late behind others that went first: wait for room again

    def defer(self, seconds: float) -> None:
        """Plan no new slot for `seconds` from now (a provider's Retry-After, say)."""
        self._next = max(self._next, self._clock() + max(0.0, seconds))


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """Most events inside any closed window of `window` seconds (to check a rate after the fact)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most
