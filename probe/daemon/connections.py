"""Who may hold the daemon's HTTP connections, and for how long: no client can take what
/healthz, a scrape or the schedule needs.

- At most `cap` connections (inside the descriptor budget the daemon set aside). A new one
  past the cap takes the place of a client that has not read its answer for `STALLED`
  seconds, else of the oldest connection that is not handling a request, else of any
  client not reading; when every one is busy and reading, it is closed at once.
- Every response has a write deadline: a connection whose answer has waited in our buffer
  for `write_timeout` (its client does not read) is cut. A handler blocked on such a
  write counts as busy, so without the deadline a few non-reading clients hold every slot.
- `reserved` slots are kept for /healthz and /metrics: past `cap - reserved` busy
  connections (a client not reading its answer does not count), any other path gets 503
  at once.
- A request followed by the client's FIN (`shutdown(SHUT_WR)`, as `nc -N` does) still gets
  its answer; the connection closes after it.
- aiohttp's own errors (a malformed request, a client gone mid-answer) are one log event,
  at most one every `ERROR_LOG_EVERY` seconds with the count since the last, never a
  traceback on stderr: any client could otherwise flood the journal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

WRITE_TIMEOUT = 10.0  # seconds an answer may wait for a client that does not read
WATCH_EVERY = 0.5  # seconds between two looks at the connections' unsent bytes
RESERVED = 8  # connection slots only /healthz and /metrics may take
STALLED = 2.0  # seconds an answer has waited for its reader before a newcomer may take its slot
RESERVED_PATHS = frozenset({"/healthz", "/metrics"})
ERROR_LOG_EVERY = 10.0  # seconds between two http_error events


class Refused(asyncio.Protocol):
    """A connection past the cap: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


SERVER = "probe"  # the Server header: no library or interpreter versions for anyone asking


class Handler(web.RequestHandler):
    """aiohttp's connection handler with two changes. A client's FIN after its request
    (`shutdown(SHUT_WR)`, `nc -N`) keeps the connection for the answer: asyncio closes a
    transport whose `eof_received` says nothing. And aiohttp's own error answers (a
    malformed request) carry our headers too, which the app's response hook never sees."""

    def __init__(self, server: web.Server, guard: Guard) -> None:
        super().__init__(server, loop=asyncio.get_running_loop(), **server._kwargs)
        self.guard = guard

    def eof_received(self) -> bool:  # type: ignore[override]  # asyncio reads the bool
        self.guard.half_closed.add(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.force_close()  # between requests (or in a half-sent one): nothing to answer
        else:
            self.close()  # a request came before the FIN: close once it is answered
        return True  # keep the write side meanwhile

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.half_closed.discard(self)
        super().connection_lost(exc)
        # Requests pipelined behind the one being answered are never handled now. Dropped
        # here, they go by reference counting; kept, they lived as long as this handler,
        # which a cut client's exception cycle leaves to the slow full collection.
        self._messages.clear()

    def force_close(self) -> None:
        """Close now, whatever is still unsent (a newcomer taking an idle slot, a FIN, a
        keep-alive timeout). aiohttp's close waits for the unsent bytes, for a client that
        does not read forever, and forgets the transport at once: the connection would hold
        its descriptor out of the guard's sight, never cut by the write deadline."""
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()
        super().force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        secure_headers(response)
        return response


def secure_headers(response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER
    response.headers["X-Content-Type-Options"] = "nosniff"


class Guard:
    """The connection cap, the reserved slots, the write deadline and half-closes, for one
    aiohttp server (`runner.server`, known once it is set up)."""

    def __init__(
        self, cap: int, reserved: int = RESERVED, write_timeout: float = WRITE_TIMEOUT
    ) -> None:
        self.cap = cap
        self.reserved = min(reserved, cap // 2)
        self.write_timeout = write_timeout
        self.busy: set[object] = set()  # connections whose request is being handled
        self.half_closed: set[object] = set()  # the client sent its FIN
        self._unsent: dict[object, float] = {}  # connection → since when it has unsent bytes
        self.cut = 0  # connections cut by the write deadline
        self._server: web.Server | None = None
        self._watch: asyncio.TimerHandle | None = None

    def start(self, server: web.Server) -> None:
        self._server = server
        self._watch = asyncio.get_running_loop().call_later(WATCH_EVERY, self._look)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def connection(self) -> asyncio.BaseProtocol:
        """The protocol for a new connection (the server's protocol factory)."""
        server = self._server
        assert server is not None
        # oldest first; one closed a moment ago is still listed until its connection_lost
        connections = [c for c in server.connections if c.transport is not None]
        if len(connections) >= self.cap:
            unsent = self._unsent
            stalled = min(unsent, key=unsent.__getitem__) if unsent else None
            idle = next((c for c in connections if c not in self.busy), None)
            if stalled is not None and time.monotonic() - unsent[stalled] >= STALLED:
                self._cut(stalled)  # a client that has not read for a while gives way first
            elif idle is not None:
                idle.force_close()  # a half-sent request or an idle keep-alive: make room
            elif stalled is not None:
                self._cut(stalled)
            elif (waiting := _unsent_now(connections)) is not None:
                self._cut(waiting)  # not reading since the last look (a loaded loop looks late)
            else:
                return Refused()
        return Handler(server, self)

    def admits(self, request: web.Request) -> bool:
        """May this request be handled now? Paths other than /healthz and /metrics may not
        take the last `reserved` slots."""
        if request.path in RESERVED_PATHS:
            return True
        stalled = sum(1 for conn in self._unsent if conn in self.busy)  # not reading: not work
        return len(self.busy) - stalled < self.cap - self.reserved

    def prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Headers every answer carries; no keep-alive after the client's FIN."""
        secure_headers(response)
        if request.protocol in self.half_closed:
            response.force_close()

    def _look(self) -> None:
        """Cut connections whose answer has waited longer than the write deadline."""
        self._watch = None
        server = self._server
        if server is None:
            return
        now = time.monotonic()
        unsent: dict[object, float] = {}
        for conn in server.connections:
            transport = conn.transport
            if transport is None or not transport.get_write_buffer_size():
                continue
            since = unsent[conn] = self._unsent.get(conn, now)
            if now - since > self.write_timeout:
                del unsent[conn]
                self._cut(conn)
        self._unsent = unsent
        self._watch = asyncio.get_running_loop().call_later(WATCH_EVERY, self._look)

    def _cut(self, conn: Any) -> None:
        self._unsent.pop(conn, None)
        self.cut += 1
        transport = conn.transport
        if transport is not None:
            transport.abort()  # close() would wait for the bytes the client will not take


def _unsent_now(connections: list[Any]) -> Any:
    """The first connection whose answer waits in our buffer now, if any."""
    for conn in connections:
        transport = conn.transport
        if transport is not None and transport.get_write_buffer_size():
            return conn
    return None


class ErrorLog(logging.Handler):
    """aiohttp's server logger, as a `http_error` event at most every ERROR_LOG_EVERY
    seconds, with the first error's name and how many came since the last event."""

    def __init__(self, log: Any) -> None:
        super().__init__(logging.DEBUG)
        self._log = log
        self._last = -ERROR_LOG_EVERY
        self._count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            return
        self._count += 1
        now = time.monotonic()
        if now - self._last < ERROR_LOG_EVERY:
            return
        self._last = now
        exc = record.exc_info[1] if record.exc_info else None
        what = record.getMessage() if exc is None else f"{type(exc).__name__}: {exc}"
        self._log.info("http_error", error=" ".join(what.split())[:200], count=self._count)
        self._count = 0


def server_logger(log: Any) -> logging.Logger:
    """A logger of our own for aiohttp's server (not the `aiohttp.server` one, which writes
    tracebacks to stderr through the root logger's last-resort handler)."""
    logger = logging.Logger("probe.http")
    logger.addHandler(ErrorLog(log))
    return logger
