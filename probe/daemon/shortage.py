"""No local port towards one destination, as the daemon shows it: never a record (the
target did not fail, this machine could not try), but a counter per destination and a
`port_shortage` log event, at most one per destination every `LOG_EVERY` seconds, saying
how many connects found no port since the last one. The engine keeps such attempts waiting
and goes on with other destinations (engine/held.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from ..address import host_port
from ..engine import Attempt

LOG_EVERY = 10.0  # seconds between two port_shortage events of one destination


def destination_of(attempt: Attempt) -> str:
    return host_port(attempt.address.ip, attempt.endpoint.port)


class PortShortages:
    """The engine's `on_port_shortage`: counts and logs, rate-limited per destination."""

    def __init__(
        self, counter: Counter, log: Any, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._counter = counter
        self._log = log
        self._clock = clock
        self._logged: dict[str, float] = {}  # destination → when its last event was written
        self._unlogged: dict[str, int] = {}  # destination → connects since that event

    def __call__(self, attempt: Attempt) -> None:
        where = destination_of(attempt)
        self._counter.labels(where).inc()
        count = self._unlogged.get(where, 0) + 1
        now = self._clock()
        last = self._logged.get(where)
        if last is not None and now - last < LOG_EVERY:
            self._unlogged[where] = count
            return
        self._logged[where] = now
        self._unlogged[where] = 0
        self._log.info(
            "port_shortage",
            destination=where,
            target=attempt.endpoint.target,
            connects=count,
        )
