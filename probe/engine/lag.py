"""Event-loop lag: how late a timer fires. A busy loop notices completions late, and every
latency it measures then carries that lag, so the lag is measured and reported beside them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

TICK = 0.005  # seconds between samples
LAG_FLOOR = 8  # lag never holds either core's concurrency below this many attempts in flight


class LagMonitor:
    """A timer every TICK that records how late it ran, in a fixed-size histogram.

    With `busy`, samples are taken only while it says so (attempts in flight, whose
    latencies a late loop would inflate): the timer stops at the first tick that finds it
    false, and `wake()` starts it again. An idle daemon's loop is then not woken 200 times
    a second for samples nobody reads (each wake-up costs the process 20-40 µs)."""

    BOUNDS_MS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_sample: Callable[[float], None] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.loop = loop
        self.on_sample = on_sample
        self.counts = [0] * (len(self.BOUNDS_MS) + 1)
        self.max_ms = 0.0
        self.samples = 0
        self._busy = busy
        self.idle = False  # stopped until `wake()`: nothing was in flight at the last tick
        self._handle: asyncio.TimerHandle | None = None
        self.wake()

    def wake(self) -> None:
        """(Re)start the ticks: now due TICK from now."""
        self.idle = False
        # time.monotonic, not loop.time: uvloop's clock is cached per turn in milliseconds.
        self._due = time.monotonic() + TICK
        self._handle = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        lag_ms = max(0.0, (now - self._due) * 1000.0)
        self.samples += 1
        self.max_ms = max(self.max_ms, lag_ms)
        for i, bound in enumerate(self.BOUNDS_MS):
            if lag_ms <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        if self._busy is not None and not self._busy():
            self._handle = None
            self.idle = True
        else:
            self._due = now + TICK
            self._handle = self.loop.call_later(TICK, self._tick)
        if self.on_sample is not None:
            self.on_sample(lag_ms)

    def quantile_ms(self, q: float) -> float:
        return quantile_ms(self.counts, self.max_ms, q)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.idle = False  # stopped for good: never woken again
        self._busy = None


def quantile_ms(counts: list[int], max_ms: float, q: float) -> float:
    """Of a lag histogram over `LagMonitor.BOUNDS_MS` (either core's): the upper bound of
    the bucket holding the q-quantile, the max for the top bucket."""
    samples = sum(counts)
    if not samples:
        return 0.0
    rank = q * samples
    seen = 0
    bounds = LagMonitor.BOUNDS_MS
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return min(bounds[i], max_ms) if i < len(bounds) else max_ms
    return max_ms
