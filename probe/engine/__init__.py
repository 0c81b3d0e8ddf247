"""The connect engine: attempts in, records out. Knows nothing of the CLI or the daemon.

- `core`: the queue, pacing (`--rate`), the concurrency limit and shortage handling; each
  attempt's `Result` becomes a `Record` there. A post-connect stage (banner read, TLS)
  goes in `core.Engine._post_connect`, between the answer and the close.
- `attempt`: what goes in (`Attempt`) and what one connect found (`Result`).
- `deadlines`: timeouts, a FIFO queue per timeout and one sweep timer.
- `poller`: which sockets have their answer (one epoll set, or the loop's writers).
- `sockets`: the socket calls of one attempt (bind a source, read TCP_INFO).
- `lag`: how late the event loop runs; `limits`: what the open-files limit allows.
"""

from ..errors import LocalShortage
from .attempt import Attempt, Done, Result
from .core import Engine, EngineOptions, EngineStats
from .sockets import check_source

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
