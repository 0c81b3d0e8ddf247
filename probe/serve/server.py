"""The responder: for every accepted connection, one `accept` record through the log path
and one line telling the client the endpoint it was seen as; then close.

A client gets nothing it can hold: the answer is written at once and the connection closed
(what it sends is not read, beyond a small cap that cuts the connection); a write that does
not finish by the deadline is aborted; connections over the bound, or over their source's
rate, are reset at once without an answer or a record (counted, and summarised in one
`serve_shed` event at most every `SHED_REPORT` seconds)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from .answer import encode_answer, endpoint_text
from .limits import READ_CAP, ServeLimits, SourceRates

SHED_REPORT = 10.0  # seconds between two `serve_shed` events
BACKLOG = 1024

Log = Callable[..., Any]  # structlog's bound `info`: log("accept", peer=..., local=...)


@dataclass(slots=True)
class ServeStats:
    accepted: int = 0  # answered (one record each)
    busy: int = 0  # reset: max_connections were open
    rate: int = 0  # reset: over their source's rate
    cut: int = 0  # sent more than READ_CAP bytes
    late: int = 0  # the answer was not handed over by the write deadline


class Responder(asyncio.Protocol):
    """One connection. Everything happens in `connection_made`; the rest is cleanup."""

    __slots__ = ("_counted", "_got", "_server", "_timer", "_transport")

    def __init__(self, server: Server) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        server = self._server
        peer = transport.get_extra_info("peername")
        if peer is None:  # the client is already gone
            transport.abort()
            return
        if server.active >= server.limits.max_connections:
            server.shed("busy")
            transport.abort()
            return
        now = time.time()
        if not server.rates.allow(str(peer[0]), now):
            server.shed("rate")
            transport.abort()
            return
        server.active += 1
        self._counted = True
        server.stats.accepted += 1
        seen = endpoint_text(peer)
        server.log("accept", peer=seen, local=endpoint_text(transport.get_extra_info("sockname")))
        transport.write(encode_answer(seen, server.name, now))
        transport.close()  # after the answer is flushed
        self._timer = server.loop.call_later(server.limits.write_timeout, self._late)

    def data_received(self, data: bytes) -> None:
        self._got += len(data)
        if self._got > READ_CAP and self._transport is not None:
            self._server.stats.cut += 1
            self._transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._server.active -= 1
        self._transport = None

    def _late(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._server.stats.late += 1
            self._transport.abort()


class Server:
    """Listening sockets answering as `name`. `start` binds them all or raises OSError."""

    def __init__(self, name: str, limits: ServeLimits, log: Log) -> None:
        self.name = name
        self.limits = limits
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.rates = SourceRates(limits.rate, limits.burst)
        self.stats = ServeStats()
        self.active = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._shed_timer: asyncio.TimerHandle | None = None
        self._shed_reported = (0, 0)

    async def start(self, listens: Sequence[tuple[str | None, int]]) -> list[str]:
        """Bind every `(host, port)` (host None: every address); the bound endpoints."""
        bound: list[str] = []
        try:
            for host, port in listens:
                server = await self.loop.create_server(
                    lambda: Responder(self),
                    host,
                    port,
                    backlog=BACKLOG,
                    reuse_address=True,
                    family=socket.AF_UNSPEC,
                )
                self._servers.append(server)
                for sock in server.sockets:
                    bound.append(endpoint_text(sock.getsockname()))
        except BaseException:
            self.close()
            raise
        return bound

    def set_limits(self, limits: ServeLimits) -> None:
        """New limits (a reload); the per-source buckets start full again."""
        self.limits = limits
        self.rates = SourceRates(limits.rate, limits.burst)

    def shed(self, why: str) -> None:
        if why == "busy":
            self.stats.busy += 1
        else:
            self.stats.rate += 1
        if self._shed_timer is None:
            self._shed_timer = self.loop.call_later(SHED_REPORT, self._report_shed)

    def _report_shed(self) -> None:
        self._shed_timer = None
        busy, rate = self.stats.busy, self.stats.rate
        last_busy, last_rate = self._shed_reported
        self._shed_reported = (busy, rate)
        self.log("serve_shed", busy=busy - last_busy, rate=rate - last_rate)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._shed_timer is not None:
            self._shed_timer.cancel()
            self._shed_timer = None
