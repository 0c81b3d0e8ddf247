"""What running a share of a plan found, as typed data the parent merges.

One type for a share and for the whole run: a worker process sends its `ShareResult` to
the parent pickled, whole, and the parent merges them into one (one process is the same
with one share). Nothing here is text to be parsed back: counts are counters, the
first error is the exception itself (its type decides the exit code), latency statistics
merge exactly (Chan et al.'s parallel variance), and the non-open ports of a few hosts
travel as bitmaps that merge with `|`.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import ClassVar, Protocol

from ..errors import ProbeError
from ..plain import Plain
from ..record import OPEN, Record

# Hosts whose non-open ports are kept for the summary (`127.0.0.1: refused 1-21,23-65535`);
# past this many, a sweep is over many hosts and the summary stays a count.
HOSTS_SUMMARISED = 8
_BITMAP = 65536 // 8

HostKey = tuple[str, str | None]  # (host as written, the address it resolved to)
# Beside each outcome's bitmap, the ports probed at all: an interrupted sweep's workers each
# stopped somewhere else, and the summary tells a port not probed from one of another outcome.
PROBED = "probed"


class Lag(Protocol):
    """An event loop's (or the native core's) lag histogram, as either runner keeps it."""

    @property
    def samples(self) -> int: ...

    @property
    def max_ms(self) -> float: ...

    def quantile_ms(self, q: float) -> float: ...


class Latency(Plain):
    """Running min/avg/max/mdev of latencies (Welford), mergeable across shares."""

    __slots__ = ("high", "low", "m2", "mean", "n")

    def __init__(
        self, n: int = 0, mean: float = 0.0, m2: float = 0.0, low: float = math.inf,
        high: float = 0.0,
    ) -> None:  # fmt: skip
        self.n = n
        self.mean = mean
        self.m2 = m2
        self.low = low
        self.high = high

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        self.low = min(self.low, x)
        self.high = max(self.high, x)

    def merge(self, other: Latency) -> None:
        if not other.n:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    @property
    def mdev(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else 0.0


class Latencies(Plain):
    """What --histogram draws from: every latency up to KEEP of them, a uniform sample of
    KEEP beyond (`-c 0` runs for days; its memory must not)."""

    KEEP: ClassVar[int] = 100_000
    __slots__ = ("seen", "values")

    def __init__(self, values: array[float] | None = None, seen: int = 0) -> None:
        self.values = array("d") if values is None else values
        self.seen = seen

    def add(self, x: float) -> None:
        self.seen += 1
        if len(self.values) < self.KEEP:
            self.values.append(x)
        else:
            import random  # past KEEP latencies only, not at every start-up

            if (j := random.randrange(self.seen)) < self.KEEP:
                self.values[j] = x

    def merge(self, other: Latencies) -> None:
        for x in other.values:
            self.add(x)


class TargetStats(Plain):
    """One target (and address) in repeat mode: its outcomes and its open latencies."""

    __slots__ = ("kept", "latency", "outcomes")

    def __init__(
        self,
        outcomes: Counter[str] | None = None,
        latency: Latency | None = None,
        kept: Latencies | None = None,  # --histogram: the open latencies themselves
    ) -> None:
        self.outcomes = Counter() if outcomes is None else outcomes
        self.latency = Latency() if latency is None else latency
        self.kept = kept

    def merge(self, other: TargetStats) -> None:
        self.outcomes.update(other.outcomes)
        self.latency.merge(other.latency)
        if other.kept is not None:
            if self.kept is None:
                self.kept = Latencies()
            self.kept.merge(other.kept)


class ShareResult(Plain):
    """A share's counts, sent whole (pickled) from a worker to the parent; merged, the run's."""

    __slots__ = (
        "elapsed",
        "error",
        "excluded",
        "lag_max_ms",
        "lag_p99_ms",
        "lag_samples",
        "outcomes",
        "per_target",
        "ports",
        "seen",
        "stopped_by",
        "targets",
        "targets_without_open",
        "workers_died",
    )
    outcomes: Counter[str]
    seen: int
    targets: int
    targets_without_open: int
    excluded: int
    per_target: dict[HostKey, TargetStats]
    ports: dict[HostKey, dict[str, bytearray]] | None  # None: too many hosts to keep
    error: ProbeError | None
    stopped_by: int
    lag_p99_ms: float
    lag_max_ms: float
    lag_samples: int
    elapsed: float
    workers_died: int

    def __init__(
        self,
        outcomes: Counter[str] | None = None,
        seen: int = 0,  # endpoints of the input in this share, before --shard and exclusions
        targets: int = 0,  # endpoints probed to the end (every address, every attempt)
        targets_without_open: int = 0,
        excluded: int = 0,  # endpoints skipped: every address they had is excluded
        per_target: dict[HostKey, TargetStats] | None = None,  # repeat mode
        ports: dict[HostKey, dict[str, bytearray]] | None = None,  # None: {}
        error: ProbeError | None = None,  # the first error; its type decides the exit code
        stopped_by: int = 0,  # the signal that stopped the run
        lag_p99_ms: float = 0.0,
        lag_max_ms: float = 0.0,
        lag_samples: int = 0,
        elapsed: float = 0.0,
        workers_died: int = 0,  # worker processes that ended without a result
    ) -> None:
        self._set(locals())
        self.outcomes = Counter() if outcomes is None else outcomes
        self.per_target = {} if per_target is None else per_target
        self.ports = {} if ports is None else ports

    @property
    def attempts(self) -> int:
        return sum(self.outcomes.values())

    def note_lag(self, lag: Lag) -> None:
        """The runner's loop lag, for the summary's lag line."""
        self.lag_p99_ms = lag.quantile_ms(0.99)
        self.lag_max_ms = lag.max_ms
        self.lag_samples = lag.samples

    def merge(self, other: ShareResult) -> None:
        self.outcomes.update(other.outcomes)
        self.seen += other.seen
        self.targets += other.targets
        self.targets_without_open += other.targets_without_open
        self.excluded += other.excluded
        for key, stats in other.per_target.items():
            self.per_target.setdefault(key, TargetStats()).merge(stats)
        if self.ports is not None and other.ports is not None:
            for host, bitmaps in other.ports.items():
                mine = self.ports.setdefault(host, {})
                for outcome, bits in bitmaps.items():
                    have = mine.setdefault(outcome, bytearray(_BITMAP))
                    for i, byte in enumerate(bits):
                        if byte:
                            have[i] |= byte
            if len(self.ports) > HOSTS_SUMMARISED:
                self.ports = None
        else:
            self.ports = None
        self.error = self.error or other.error
        self.stopped_by = self.stopped_by or other.stopped_by
        self.lag_p99_ms = max(self.lag_p99_ms, other.lag_p99_ms)
        self.lag_max_ms = max(self.lag_max_ms, other.lag_max_ms)
        self.lag_samples = max(self.lag_samples, other.lag_samples)
        self.elapsed = max(self.elapsed, other.elapsed)
        self.workers_died += other.workers_died


class Tally:
    """Sees every record of a share (shown or not) and keeps what the summary needs."""

    def __init__(
        self, result: ShareResult, repeat: bool, track_ports: bool, histogram: bool = False
    ) -> None:
        self.result = result
        self.repeat = repeat
        self.histogram = histogram
        if not track_ports:
            result.ports = None

    def add(self, record: Record) -> None:
        result = self.result
        outcome = record.outcome
        if self.repeat:
            stats = result.per_target.get((record.target, record.address))
            if stats is None:
                stats = result.per_target[(record.target, record.address)] = TargetStats()
                if self.histogram:
                    stats.kept = Latencies()
            stats.outcomes[outcome] += 1
            if outcome == OPEN:
                stats.latency.add(record.latency_ms)
                if stats.kept is not None:
                    stats.kept.add(record.latency_ms)
        self.add_port(outcome, record.host, record.address, record.port)

    def add_port(self, outcome: str, host: str, address: str | None, port: int) -> None:
        """What a sweep keeps of an attempt: its outcome and, for a few hosts, the port."""
        result = self.result
        result.outcomes[outcome] += 1
        ports = result.ports
        if ports is None:
            return
        key = (host, address)
        bitmaps = ports.get(key)
        if bitmaps is None:
            if len(ports) >= HOSTS_SUMMARISED:
                result.ports = None
                return
            bitmaps = ports[key] = {PROBED: bytearray(_BITMAP)}
        byte, bit = port >> 3, 1 << (port & 7)
        bitmaps[PROBED][byte] |= bit
        if outcome == OPEN:
            return
        bits = bitmaps.get(outcome)
        if bits is None:
            bits = bitmaps[outcome] = bytearray(_BITMAP)
        bits[byte] |= bit


def port_ranges(bits: bytes | bytearray) -> list[tuple[int, int]]:
    """The set ports of a bitmap as inclusive ranges, ascending."""
    out: list[tuple[int, int]] = []
    start = -1
    for index, byte in enumerate(bits):
        if byte == 0 and start < 0:
            continue
        if byte == 0xFF and start >= 0:
            continue
        for bit in range(8):
            port = index * 8 + bit
            if byte >> bit & 1:
                if start < 0:
                    start = port
            elif start >= 0:
                out.append((start, port - 1))
                start = -1
    if start >= 0:
        out.append((start, len(bits) * 8 - 1))
    return out


def bridged_ranges(bits: bytes | bytearray, probed: bytes | bytearray) -> list[tuple[int, int]]:
    """The set ports of `bits` as ranges that run on across ports never probed (an
    interrupted sweep's workers, each every N-th port, stopped at different places), each
    range starting and ending on a port of `bits`."""
    have = int.from_bytes(bits, "little")
    gaps = ~int.from_bytes(probed, "little") & ((1 << (len(probed) * 8)) - 1)
    out: list[tuple[int, int]] = []
    for lo, hi in port_ranges((have | gaps).to_bytes(len(bits), "little")):
        inside = (have >> lo) & ((1 << (hi - lo + 1)) - 1)
        if inside:
            out.append((lo + (inside & -inside).bit_length() - 1, lo + inside.bit_length() - 1))
    return out


def unprobed_in(ranges: list[tuple[int, int]], probed: bytes | bytearray) -> int:
    """How many ports inside `ranges` were never probed."""
    value = int.from_bytes(probed, "little")
    return sum(
        (hi - lo + 1) - ((value >> lo) & ((1 << (hi - lo + 1)) - 1)).bit_count()
        for lo, hi in ranges
    )
