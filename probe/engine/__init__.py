"""The connect engine: attempts in, records out. Knows nothing of the CLI or the daemon.

- `core`: the queue, pacing (`--rate`), the concurrency limit and shortage handling; each
  attempt's `Result` becomes a `Record` there. Post-connect stages (TLS, send/expect) are
  `probe.stages`, started from `core.Engine._run_stages` on the connected socket.
- `attempt`: what goes in (`Attempt`) and what one connect found (`Result`).
- `deadlines`: timeouts, a FIFO queue per timeout and one sweep timer.
- `held`: attempts waiting for a local port towards their destination (EADDRNOTAVAIL).
- `poller`: which sockets have their answer (one epoll set, or the loop's writers).
- `sockets`: the socket calls of one attempt (bind a source, read TCP_INFO).
- `ports`: local ports from a fixed range (`-s ADDR:LO-HI`), shared by engines.
- `options`: what an engine is asked to do (no asyncio: the native core shares it).
- `lag`: how late the event loop runs; `nofile`: what the open-files limit allows.
- `native` and `_native.c`: the C sweep core for literal addresses x port ranges.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .options import EngineOptions

if TYPE_CHECKING:
    from ..errors import LocalShortage
    from .attempt import Attempt, Done, Result
    from .core import Engine, EngineStats
    from .sockets import check_source

# The asyncio engine is imported on first use: the native core and the CLI's plan need only
# the options, and asyncio is ~25 ms of start-up.
_LAZY = {
    "Attempt": ".attempt",
    "Done": ".attempt",
    "Result": ".attempt",
    "Engine": ".core",
    "EngineStats": ".core",
    "LocalShortage": "..errors",
    "check_source": ".sockets",  # socket and struct: only a run with -s binds
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(where, __name__), name)


__all__ = [
    "Attempt",
    "Done",
    "Engine",
    "EngineOptions",
    "EngineStats",
    "LocalShortage",
    "Result",
    "check_source",
]
