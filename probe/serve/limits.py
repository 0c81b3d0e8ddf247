"""How much a responder lets its clients take: a bound on connections at once, a token
bucket per source address (with a bounded table of sources), a write deadline."""

from __future__ import annotations

from ..plain import Frozen

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_RATE = 50.0  # new connections per second from one source address
DEFAULT_WRITE_TIMEOUT = 1.0  # seconds to hand the answer over and close
MAX_SOURCES = 4096  # source addresses whose buckets are remembered; the oldest go first
READ_CAP = 1024  # bytes a client may send before its connection is cut


class ServeLimits(Frozen):
    """(`probe.plain`, not a dataclass: the command line imports this module.)"""

    __slots__ = ("max_connections", "rate", "write_timeout")
    max_connections: int
    rate: float  # 0: no per-source limit
    write_timeout: float

    def __init__(
        self,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        rate: float = DEFAULT_RATE,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        self._set(locals())

    @property
    def burst(self) -> float:
        return max(1.0, 2 * self.rate)


class SourceRates:
    """A token bucket per source address. The table holds at most `max_sources` entries:
    a flood from many addresses evicts the least recently seen, so memory stays bounded
    (an evicted source starts again with a full bucket, which is the cheap failure)."""

    __slots__ = ("_buckets", "_max", "burst", "rate")

    def __init__(self, rate: float, burst: float, max_sources: int = MAX_SOURCES) -> None:
        self.rate = rate
        self.burst = burst
        self._max = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)

    def allow(self, source: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        buckets = self._buckets
        held = buckets.pop(source, None)  # re-inserted below: the dict's order is recency
        if held is None:
            tokens = self.burst
            if len(buckets) >= self._max:
                del buckets[next(iter(buckets))]
        else:
            tokens, at = held
            tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
