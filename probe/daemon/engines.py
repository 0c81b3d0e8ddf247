"""The daemon's two engines, the schedule's and GET /probe's, sized from one config.

`GET /probe` has an engine of its own so that its attempts never take the schedule's slots;
both share the descriptors this process may open (less the HTTP connections') and the local
port range of `engine.source`. Their options are made here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..engine import Attempt, Engine, EngineOptions, check_source
from ..engine.nofile import fit_concurrency
from .config import Config, engine_source
from .http import MAX_CONNECTIONS


def source_ports(config: Config) -> tuple[int, int] | None:
    """The local port range of `engine.source = "ADDR:LO-HI"`, None without one."""
    source = config.engine.source
    if source is None or not source.is_range:
        return None
    return source.port_lo, source.port_hi


def http_connections(room: int) -> int:
    """HTTP connections at once, for `room` descriptors: MAX_CONNECTIONS, or a quarter of
    a smaller room (at least 2), so that clients can never take the schedule's share."""
    return max(2, min(MAX_CONNECTIONS, room // 4))


def budget(config: Config, http: bool, room: int) -> tuple[int, int]:
    """(schedule's concurrency, /probe's): what fits in `room` descriptors once the HTTP
    connections and /probe's attempts have theirs."""
    connections = http_connections(room) if http else 0
    probes = config.metrics.probe_concurrency if http else 0  # below engine.concurrency
    probes = min(probes, max(1, room // 8))
    schedule = max(1, min(config.engine.concurrency, room - probes - connections))
    return schedule, max(1, min(probes, room - schedule - connections))


def engine_options(config: Config, concurrency: int, lag_limit_ms: float | None) -> EngineOptions:
    return EngineOptions(
        timeout=config.defaults.timeout,
        concurrency=concurrency,
        source=engine_source(config),
        source_ports=source_ports(config),  # one allocator for both engines (engine/ports.py)
        shortage_giveup=None,  # a daemon waits out a shortage, however long
        lag_limit_ms=lag_limit_ms,
        graceful_close=config.engine.graceful_close,
    )


class Engines:
    """The schedule's engine and /probe's, with /probe's share of the slots."""

    def __init__(self, config: Config, http: bool, log: Any) -> None:
        self.http = http
        self.log = log
        _, room = fit_concurrency(None)
        concurrency, self.probe_limit = budget(config, http, room)
        self.http_limit = http_connections(room)  # fixed from the start
        concurrency = self._fit_source_range(config, concurrency)
        options = engine_options(config, concurrency, config.engine.lag_limit_ms)
        self.schedule = Engine(options, report_lag=False)  # the lag limit's samples only
        # Loop lag holds the schedule's engine down, not this one.
        self.probe = Engine(engine_options(config, self.probe_limit, None), report_lag=False)
        self.both = (self.schedule, self.probe)

    def hook(
        self, on_close: Callable[[], None], on_port_shortage: Callable[[Attempt], None]
    ) -> None:
        """What the daemon hears from both engines: a failure that closed one, and a
        destination without a free local port (counted and logged, never a record)."""
        for engine in self.both:
            engine.on_close.append(on_close)
            engine.on_port_shortage = on_port_shortage

    @property
    def inflight(self) -> int:
        return self.schedule.inflight + self.probe.inflight

    @property
    def closed(self) -> bool:
        return any(engine.closed for engine in self.both)

    @staticmethod
    def check(old: Config | None, new: Config) -> None:
        """Whether `engine.source` can be bound (OSError if not): at start, and on a reload
        that changes it, before anything is applied."""
        source = engine_source(new)
        if source is not None and (old is None or new.engine.source != old.engine.source):
            check_source(source)

    def reconfigure(self, old: Config, new: Config) -> None:
        concurrency, self.probe_limit = budget(new, self.http, fit_concurrency(None)[1])
        if (new.engine.source, new.engine.concurrency) != (
            old.engine.source,
            old.engine.concurrency,
        ):
            concurrency = self._fit_source_range(new, concurrency)
        for engine, limit in ((self.schedule, concurrency), (self.probe, self.probe_limit)):
            engine.reconfigure(engine_options(new, limit, engine.options.lag_limit_ms))

    def _fit_source_range(self, config: Config, concurrency: int) -> int:
        """One attempt per port of `engine.source = "ADDR:LO-HI"`: a smaller range lowers
        the concurrency, said once (at start, or when a reload changes either)."""
        ports = source_ports(config)
        if ports is None or ports[1] - ports[0] + 1 >= concurrency:
            return concurrency
        size = ports[1] - ports[0] + 1
        address = config.engine.source.address if config.engine.source else ""
        self.log.info(
            "source_range",
            source=f"{address}:{ports[0]}-{ports[1]}",
            ports=size,
            concurrency=size,
            requested=concurrency,
        )
        return size

    async def drain(self, bound: float, abandon: asyncio.Event) -> bool:
        """Forget what is queued, wait for the attempts in flight; False when `abandon` (a
        second signal) or the safety-net bound ended the wait first."""
        loop = asyncio.get_running_loop()
        for engine in self.both:
            engine.drop_queued()
        drains = {loop.create_task(engine.drain()) for engine in self.both}
        stop = loop.create_task(abandon.wait())
        pending = set(drains)
        deadline = loop.time() + bound
        while pending and not stop.done():
            left = deadline - loop.time()
            if left <= 0:
                break
            done, _ = await asyncio.wait(
                {*pending, stop}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending -= done
        stop.cancel()
        for task in drains:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # a sink failure: the daemon already holds it as fatal
        return not pending

    def close(self) -> None:
        for engine in self.both:
            engine.close()
