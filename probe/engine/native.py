"""The native sweep core (`_native.c`), where it was built: a worker's whole share of a sweep,
one attempt per endpoint, run in C with the GIL released, its targets (addresses with
their port ranges, address ranges) handed in by a feed while it runs.

The extension is optional at build time; without it `available()` is False and the Python
engine (`core`) does everything. `IMPLEMENTS` names the engine options the core honours; a
run that sets any other option away from its default runs on the Python engine (the choice
is made in `probe.check.choice`).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

from ..address import literal
from ..plain import Plain
from ..record import OUTCOMES, RECORD_KEYS, outcome_of
from ..syntax import Target
from .lag import LAG_FLOOR, LagMonitor, quantile_ms
from .options import RATE_SLACK, EngineOptions

_native: Any
# Why the native core cannot run at all here (None: it can).
UNAVAILABLE: str | None = None
try:
    from . import _native  # type: ignore[attr-defined,no-redef,unused-ignore]
except ImportError:  # not built here (no compiler, not Linux): the Python engine runs
    _native = None
    UNAVAILABLE = "the native core is not built here"
else:
    try:  # one spec: the record's keys, outcomes (and each errno's), errno names, lag buckets
        _native.configure(
            errnames=errno.errorcode,
            outcomes=[str(o) for o in OUTCOMES],
            by_errno=[OUTCOMES.index(outcome_of(e)) for e in range(256)],
            keys=RECORD_KEYS,
            lag_bounds=LagMonitor.BOUNDS_MS,
        )
    except ValueError as exc:  # a key or an outcome the C writer does not know (yet)
        _native = None
        UNAVAILABLE = f"the native core is out of date: {exc}"
    if os.environ.get("PROBE_CORE") == "python":  # the Python engine, to compare the two
        _native = None
        UNAVAILABLE = "PROBE_CORE=python"

CORE = "python" if _native is None else "native"

# The `EngineOptions` fields the native core honours, each with the `_native.sweep` keywords
# it is handed in as: the one list, so a field cannot be declared here and not passed (or
# passed and not declared). Any other field away from its default (a source port range,
# anything added later) sends the run to the Python engine (`probe.check.choice`).
_SWEEP_ARGS: dict[str, Callable[[EngineOptions], dict[str, Any]]] = {
    "concurrency": lambda o: {"concurrency": o.concurrency},
    "graceful_close": lambda o: {"graceful": o.graceful_close},
    "lag_limit_ms": lambda o: {"lag_limit": o.lag_limit_ms or 0.0, "lag_floor": lag_floor(o)},
    "rate": lambda o: {"rate": o.rate or 0.0, "rate_slack": RATE_SLACK},
    "rate_epoch": lambda o: {"rate_epoch": -1.0 if o.rate_epoch is None else o.rate_epoch},
    "retries": lambda o: {"retries": o.retries},
    "shortage_giveup": lambda o: {"giveup": _or_never(o.shortage_giveup)},
    "source": lambda o: {"source": o.source},
    "timeout": lambda o: {"timeout": o.timeout},
}
IMPLEMENTS = frozenset(_SWEEP_ARGS)


def _or_never(seconds: float | None) -> float:
    return -1.0 if seconds is None else seconds


def available() -> bool:
    return _native is not None


class Lag:
    """How late the core's loop got to its lag timer: the figure `engine.lag.LagMonitor`
    gives for the event loop, from the same histogram."""

    def __init__(self, counts: list[int], max_ms: float) -> None:
        self.counts = counts
        self.max_ms = max_ms
        self.samples = sum(counts)

    def quantile_ms(self, q: float) -> float:
        return quantile_ms(self.counts, self.max_ms, q)


def lag_floor(options: EngineOptions) -> int:
    """The fewest attempts in flight that loop lag may hold the core to: the Python engine's
    floor, and what --rate needs in flight to keep its cadence."""
    floor = LAG_FLOOR
    if options.rate:
        floor = max(floor, min(options.concurrency, math.ceil(options.rate * options.timeout)))
    return floor


class SweepResult(Plain):
    """What `_native.sweep` returns (its dict, by keyword)."""

    __slots__ = (
        "error",
        "excluded",
        "lag_counts",
        "lag_max_ms",
        "lag_throttles",
        "late",
        "outcomes",
        "reused",
        "seen",
        "self_connects",
        "shortages",
        "started",
        "stopped",
        "targets",
        "targets_without_open",
    )
    outcomes: dict[str, int]
    lag_counts: list[int]
    lag_max_ms: float
    lag_throttles: int
    targets: int
    targets_without_open: int
    started: int
    shortages: int
    self_connects: int
    late: int
    reused: int
    seen: int
    excluded: int
    stopped: bool
    error: str | None

    def __init__(
        self,
        outcomes: dict[str, int] | None = None,
        lag_counts: list[int] | None = None,
        lag_max_ms: float = 0.0,
        lag_throttles: int = 0,  # times loop lag lowered the concurrency limit
        targets: int = 0,
        targets_without_open: int = 0,
        started: int = 0,
        shortages: int = 0,
        self_connects: int = 0,
        late: int = 0,
        reused: int = 0,  # attempts that took a refused attempt's socket (reuse=True)
        seen: int = 0,  # endpoints walked in this share, excluded ones too
        excluded: int = 0,  # endpoints skipped: every address they had is excluded
        stopped: bool = False,
        error: str | None = None,  # a local shortage it gave up on, a source address gone
    ) -> None:
        self._set(locals())
        self.outcomes = {} if outcomes is None else outcomes
        self.lag_counts = [] if lag_counts is None else lag_counts

    @property
    def lag(self) -> Lag:
        return Lag(self.lag_counts, self.lag_max_ms)


def sweep(
    fd: int,
    feed: Callable[[], list[tuple[Any, ...]] | None],
    options: EngineOptions,
    share: tuple[int, int] = (0, 1),
    stop_fd: int = -1,
    progress: Callable[[int, int], None] | None = None,
    reuse: bool = True,
    wake_fd: int = -1,
    file_fd: int = -1,
    open_only: tuple[bool, bool] = (False, False),
    exclude: tuple[Any, ...] | None = None,
    csv: bool = False,
) -> SweepResult:
    """Probe this share (index, count) of the targets `feed` hands in (see `_native.sweep`) once per
    endpoint, JSON records (`csv`: CSV rows) to `fd`, JSON records to `file_fd`;
    `open_only`: only open attempts' to each; `exclude`: addresses never probed
    (`check.native_feed.exclusion_spans`).

    `reuse`: a refused attempt's socket is reset (connect with AF_UNSPEC) and serves the next
    attempt: a third less CPU per attempt, and each attempt still sends its own SYN from its
    own kernel-assigned port (tests/engine/test_native.py checks that on a capture). Not
    with a source address: the socket would keep its bind.

    Returns when done, when `stop_fd` becomes readable, or when a local shortage lasted
    too long (`error`). A write failure raises OSError (EPIPE: the reader left)."""
    if _native is None:
        raise RuntimeError("the native sweep core is not built")
    raw: dict[str, Any] = _native.sweep(
        fd,
        feed,
        shard_index=share[0],
        shard_count=share[1],
        stop_fd=stop_fd,
        wake_fd=wake_fd,
        progress=progress,
        reuse=reuse,
        file_fd=file_fd,
        open_only_out=open_only[0],
        open_only_file=open_only[1],
        exclude=exclude,
        csv=csv,
        **{key: value for take in _SWEEP_ARGS.values() for key, value in take(options).items()},
    )
    return SweepResult(**raw)


def addresses(targets: Iterable[Target], family: int = 0) -> list[tuple[Any, ...]]:
    """Targets of IP literals as the core's feed hands them in (tests, benches)."""
    out: list[tuple[Any, ...]] = []
    for target in targets:
        for host in target.hosts():
            address = literal(host, family)
            assert address is not None, host
            ip = ((address.ip, address.scope_id),)
            out.append(("A", host, target.bracketed, ip, target.ports, 0, None))
    return out


def once(items: list[tuple[Any, ...]]) -> Callable[[], list[tuple[Any, ...]] | None]:
    """A feed that hands in `items` at once, then ends."""
    left = [items]
    return lambda: left.pop() if left else None


@contextlib.contextmanager
def stop_on_signals(
    on_signal: Callable[[int], None], signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
) -> Iterator[int]:
    """A stop fd for `sweep`: readable once one of `signals` arrived. The handler only notes
    the signal (`on_signal`); the byte that wakes the C loop is written by the interpreter's
    own C-level handler to its wakeup fd, which is this pipe (and by the handler itself,
    for a signal that came before the sweep began)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    seen: list[int] = []

    def handler(signum: int, _: FrameType | None) -> None:
        seen.append(signum)
        on_signal(signum)
        with contextlib.suppress(OSError):  # also for a signal handled before the call
            os.write(w, b"\0")

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield r
    finally:
        signal.set_wakeup_fd(old_wakeup)
        os.close(r)
        os.close(w)
        if seen:
            # Stopping: the same Ctrl-C reaches a worker twice (from the terminal and from
            # the parent). A late one must not raise KeyboardInterrupt into the wind-down.
            for sig in signals:
                signal.signal(sig, lambda signum, _: on_signal(signum))
        else:
            for sig, old in previous.items():
                signal.signal(sig, old)
