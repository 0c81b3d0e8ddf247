"""The connect engine: attempts in, records out. Knows nothing of the CLI or the daemon.

- `core`: the queue, pacing (`--rate`), the concurrency limit, polling and deadlines;
  a post-connect stage (banner read, TLS) would go in `core.Engine._complete`, between the
  answer and the close.
- `sockets`: the socket calls of one attempt (bind a source, read TCP_INFO).
- `lag`: how late the event loop runs; `limits`: what the open-files limit allows.
"""

from ..errors import LocalShortage
from .core import Attempt, Done, Engine, EngineOptions, EngineStats
from .sockets import check_source

__all__ = [
    "Attempt",
    "Done",
    "Engine",
    "EngineOptions",
    "EngineStats",
    "LocalShortage",
    "check_source",
]
