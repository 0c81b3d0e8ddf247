"""Human output for `probe check`: a line per attempt for a few targets, open ports and a
count of the rest for sweeps, and a tcping-style summary in repeat mode."""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ..output.histogram import histogram_lines
from ..record import OPEN, OUTCOMES, REFUSED, TIMEOUT, Record

# At most this many attempts in a run and every one gets its own line (nmap lists up to 25
# closed ports before it folds them into "Not shown").
LIST_LIMIT = 32


@dataclass(slots=True)
class _Stats:
    """Latency of one target's open attempts: Welford's running mean and variance."""

    outcomes: Counter[str] = field(default_factory=Counter)
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = 0.0
    kept: Latencies | None = None  # --histogram: the open latencies

    def add(self, record: Record) -> None:
        self.outcomes[record.outcome] += 1
        if record.outcome != OPEN:
            return
        x = record.latency_ms
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        self.low = min(self.low, x)
        self.high = max(self.high, x)
        if self.kept is not None:
            self.kept.add(x)

    def lines(self, label: str) -> list[str]:
        sent = sum(self.outcomes.values())
        opened = self.outcomes[OPEN]
        loss = 100.0 * (sent - opened) / sent if sent else 0.0
        other = sent - opened - self.outcomes[REFUSED] - self.outcomes[TIMEOUT]
        out = [
            f"--- {label} ---",
            f"{sent} attempts, {opened} open, {self.outcomes[REFUSED]} refused, "
            f"{self.outcomes[TIMEOUT]} timeout, {other} other, {loss:.1f}% loss",
        ]
        if self.n:
            mdev = math.sqrt(self.m2 / self.n)
            out.append(
                f"latency min/avg/max/mdev = {self.low:.3f}/{self.mean:.3f}/"
                f"{self.high:.3f}/{mdev:.3f} ms"
            )
        if self.kept is not None:
            out.extend(histogram_lines(self.kept.values))
        return out


@dataclass(slots=True)
class Latencies:
    """What --histogram draws from: every latency up to KEEP of them, a uniform sample of
    KEEP beyond (`-c 0` runs for days; its memory must not)."""

    KEEP: ClassVar[int] = 100_000
    values: array[float] = field(default_factory=lambda: array("d"))
    seen: int = 0

    def add(self, x: float) -> None:
        self.seen += 1
        if len(self.values) < self.KEEP:
            self.values.append(x)
        elif (j := random.randrange(self.seen)) < self.KEEP:
            self.values[j] = x


class HumanReport:
    """Decides which records a person sees; `show` writes one through the structlog sink."""

    def __init__(
        self,
        show: Callable[[Record], None],
        list_mode: bool,
        count: int,
        histogram: bool = False,
    ) -> None:
        self.show = show
        self.histogram = histogram  # latency buckets after each target's summary
        self.list_mode = list_mode
        self.repeat = list_mode and count > 1
        self.outcomes: Counter[str] = Counter()
        self.per_target: dict[tuple[str, str | None], _Stats] = {}

    def record(self, record: Record) -> None:
        self.outcomes[record.outcome] += 1
        if self.list_mode or record.outcome == OPEN:
            self.show(record)
        if self.repeat:
            key = (record.target, record.address)
            stats = self.per_target.get(key)
            if stats is None:
                stats = self.per_target[key] = _Stats()
                if self.histogram:
                    stats.kept = Latencies()
            stats.add(record)

    def summary(self, elapsed: float, lag_ms: tuple[float, float] | None = None) -> list[str]:
        """`lag_ms`: the event loop's lag (p99, max) while probing, beside the latencies."""
        lines: list[str] = []
        for (target, address), stats in self.per_target.items():
            label = target if address is None or address in target else f"{target} ({address})"
            lines.extend(stats.lines(label))
        if self.list_mode:
            return lines
        total = sum(self.outcomes.values())
        rate = total / elapsed if elapsed > 0 else 0.0
        hidden = [
            f"{self.outcomes[o]} {o}"
            for o in OUTCOMES
            if o != OPEN
            if self.outcomes[o] or o in (REFUSED, TIMEOUT)
        ]
        line = (
            f"{total} attempts in {elapsed:.2f} s ({rate:.0f}/s): "
            f"{self.outcomes[OPEN]} open; {', '.join(hidden)} not shown"
        )
        lines.append(line)
        if lag_ms is not None:
            lines.append(f"event loop lag p99 {lag_ms[0]:.1f} ms, max {lag_ms[1]:.1f} ms")
        return lines

    def progress(self, elapsed: float) -> str:
        total = sum(self.outcomes.values())
        rate = total / elapsed if elapsed > 0 else 0.0
        return f"{total} attempts, {self.outcomes[OPEN]} open, {rate:.0f}/s"
