"""What an engine is asked to do. Kept apart from `core` so that the CLI's plan and the
native core can hold engine options without importing asyncio (~25 ms of start-up)."""

from __future__ import annotations

from ..plain import Frozen

RATE_SLACK = 0.25  # seconds of lateness --rate makes up after a stall (both engines)


class EngineOptions(Frozen):
    """The engine's knobs for one run (or one share of it)."""

    __slots__ = (
        "concurrency",
        "graceful_close",
        "lag_limit_ms",
        "rate",
        "rate_epoch",
        "retries",
        "shortage_giveup",
        "source",
        "source_ports",
        "timeout",
    )
    timeout: float
    concurrency: int
    rate: float | None  # most new attempts per second
    retries: int  # extra attempts after a timeout
    source: tuple[str, int] | None  # bind to (address, port) first; port 0 = kernel's
    source_ports: tuple[int, int] | None  # -s ADDR:LO-HI: local ports from this range
    graceful_close: bool  # FIN instead of RST for open connections
    shortage_giveup: float | None  # seconds stuck with nothing in flight, then fail
    lag_limit_ms: float | None  # loop lag that makes the engine hold concurrency down
    # --rate's cadence: the loop.time() of the first slot. Worker processes share one epoch,
    # each offset by i/R, so their starts interleave instead of bunching. None: now.
    rate_epoch: float | None

    def __init__(
        self,
        timeout: float = 1.0,
        concurrency: int = 1000,
        rate: float | None = None,
        retries: int = 0,
        source: tuple[str, int] | None = None,
        source_ports: tuple[int, int] | None = None,
        graceful_close: bool = False,
        shortage_giveup: float | None = 30.0,
        lag_limit_ms: float | None = 2.0,
        rate_epoch: float | None = None,
    ) -> None:
        self._set(locals())
