"""The daemon's HTTP side, on aiohttp and the daemon's own loop: /metrics, /healthz, /probe.

The handlers only translate HTTP; what a probe is and who may be probed is decided by the
`on_probe` callback the daemon passes in.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from .metrics import CONTENT_TYPE


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


ProbeHandler = Callable[[web.Request], Awaitable[Answer]]


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        exposition: Callable[[], bytes],
        healthy: Callable[[], bool],
        on_probe: ProbeHandler,
        routes: Iterable[web.RouteDef] = (),
    ) -> None:
        self.host, self.port = host, port
        self._exposition = exposition
        self._healthy = healthy
        self._on_probe = on_probe
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/probe", self._probe)
        app.add_routes(routes)  # the status page's, when the daemon has one
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)

    async def start(self) -> tuple[str, int]:
        """Listen; returns the address bound (the port is the kernel's when 0 was asked)."""
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self.host, self.port

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self._exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, _: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="stopping\n")

    async def _probe(self, request: web.Request) -> web.Response:
        answer = await self._on_probe(request)
        return web.Response(status=answer.status, body=answer.body,
                            headers={"Content-Type": answer.content_type})  # fmt: skip
