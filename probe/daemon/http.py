"""The daemon's HTTP side, on aiohttp and the daemon's own loop: /metrics, /healthz, /probe.

The handlers only translate HTTP; what a probe is and who may be probed is decided by the
`on_probe` callback the daemon passes in, which gets a `ProbeRequest` (plain data, so the
daemon does not know aiohttp). The server is hardened so that no client can take what the
schedule needs: connections.py caps them inside the descriptor budget the daemon set aside,
keeps slots for /healthz and /metrics and cuts clients that do not read; request headers
must arrive within `header_timeout` (slowloris); and /metrics is made a slice at a time,
one render at a time, shared by the scrapes that wait for it, so a big page never holds up
the event loop for long.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from ..output.log import event_logger
from .connections import Guard, server_logger
from .metrics import CONTENT_TYPE

PROBE_TIMEOUT_MAX = 30.0  # seconds a GET /probe may ask for
MAX_CONNECTIONS = 64  # HTTP connections at once; the daemon reserves descriptors for them
HEADER_TIMEOUT = 5.0  # seconds a connection may take to send a request's headers, or idle
SHUTDOWN_GRACE = 1.0  # seconds handlers still running at shutdown get to answer
RENDER_BURST = 0.001  # seconds of /metrics work between two pauses
RENDER_PAUSE = 0.001  # seconds the loop is left to itself between them
# Kernel send buffer of each HTTP connection (the kernel doubles it). Left to autotuning, a
# loopback connection takes ~3 MB that its client never reads: copied on the loop, and held
# in kernel memory for every connection. A LAN's bandwidth-delay product fits in it (1 Gbit/s
# over a 2 ms round trip is 250 KB).
SEND_BUFFER = 128 * 1024
# zlib level for /metrics: 1 makes a page 8-10x smaller at a fraction of level 6's CPU,
# and the CPU is the daemon's, taken from the schedule at every scrape.
GZIP_LEVEL = 1


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding value accepts gzip (`gzip` or `*`, without `q=0`)."""
    for part in header.split(","):
        coding, _, params = part.partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        q = params.strip().lower().removeprefix("q=").strip() if params else "1"
        try:
            if float(q) > 0:
                return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """GET /probe, parsed: what the daemon needs, nothing of HTTP."""

    target: str
    timeout: float | None = None  # None: the config's default
    debug: bool = False
    scrape_timeout: float | None = None  # Prometheus' X-Prometheus-Scrape-Timeout-Seconds
    module: str | None = None  # ?module=NAME: a [modules.NAME] table's stages


ProbeHandler = Callable[[ProbeRequest], Awaitable[Answer]]


def parse_probe(query: Mapping[str, str], headers: Mapping[str, str]) -> ProbeRequest | Answer:
    """The request, or the 400 answer that says what is wrong with it."""
    target = query.get("target", "")
    if not target:
        return text_answer(400, "missing ?target=HOST:PORT")
    timeout: float | None = None
    if "timeout" in query:
        try:
            timeout = float(query["timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= PROBE_TIMEOUT_MAX:
            return text_answer(400, f"bad timeout: seconds > 0, at most {PROBE_TIMEOUT_MAX:g}")
    scrape: float | None = None
    raw = headers.get("X-Prometheus-Scrape-Timeout-Seconds")
    if raw is not None:
        try:
            scrape = float(raw)
        except ValueError:
            scrape = None
        if scrape is not None and not (math.isfinite(scrape) and scrape > 0):
            scrape = None
    debug = query.get("debug", "").lower() in ("1", "true", "yes")
    module = query.get("module") or None
    return ProbeRequest(target, timeout, debug, scrape, module)


def text_answer(status: int, message: str) -> Answer:
    return Answer(status, (message + "\n").encode())


class Pace:
    """Pauses inside a long piece of work (a render, a gzip): after each RENDER_BURST of it
    the loop runs (due starts go first) and the process sleeps a moment: a loop busy for a
    whole render loses the CPU to its neighbours for their time slices, and starts wait for
    them."""

    def __init__(self) -> None:
        self._began = time.perf_counter()

    async def turn(self) -> None:
        if time.perf_counter() - self._began >= RENDER_BURST:
            await asyncio.sleep(RENDER_PAUSE)
            self._began = time.perf_counter()


class SharedRender:
    """The exposition, made on the loop in bursts of at most ~RENDER_BURST (a few targets'
    text, a piece of a family joined), with a pause of RENDER_PAUSE after each in which the
    loop runs (scheduled starts first) or the process sleeps: starts wait for one burst at
    most. (A thread held the GIL for seconds; a forked child cost a fork of the whole
    daemon and a second CPU-bound process beside the loop, once per scrape.)

    One render at a time, shared: a scrape never gets a render begun before it arrived (a
    /metrics read right after a record shows it), so one arriving while a render runs waits
    for the next, which every scrape arriving meanwhile shares. However many scrapes come,
    at most two renders are wanted at once."""

    def __init__(self, pieces: Callable[[], Iterable[bytes | None]]) -> None:
        self._pieces = pieces
        self._running: asyncio.Task[list[bytes]] | None = None
        self._next: asyncio.Task[list[bytes]] | None = None  # starts when _running ends

    async def get(self) -> list[bytes]:
        """The page, in the pieces it was made in: sent as they are, never joined (a 15 MB
        copy on the loop is milliseconds every scheduled start would wait for)."""
        loop = asyncio.get_running_loop()
        running, ahead = self._running, self._next
        if ahead is None and running is None:
            self._running = running = loop.create_task(self._make())
            running.add_done_callback(self._ended)
            return await asyncio.shield(running)
        if ahead is None:
            assert running is not None
            self._next = ahead = loop.create_task(self._after(running))
        return await asyncio.shield(ahead)

    def _ended(self, task: asyncio.Task[list[bytes]]) -> None:
        if self._running is task:
            self._running = None

    async def _after(self, previous: asyncio.Task[list[bytes]]) -> list[bytes]:
        await asyncio.wait([previous])  # its outcome is its own scrapes'
        self._running, self._next = self._next, None
        assert self._running is not None
        self._running.add_done_callback(self._ended)
        return await self._make()

    async def _make(self) -> list[bytes]:
        chunks: list[bytes] = []
        pace = Pace()
        for piece in self._pieces():
            if piece is not None:
                chunks.append(piece)
            else:
                await pace.turn()
        return chunks

    def close(self) -> None:
        for task in (self._next, self._running):
            if task is not None:
                task.cancel()


class HttpServer:
    def __init__(
        self,
        host: str,
        port: int,
        exposition: Callable[[], Iterable[bytes | None]],
        healthy: Callable[[], bool],
        on_probe: ProbeHandler,
        routes: Iterable[web.RouteDef] = (),
        max_connections: int = MAX_CONNECTIONS,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.guard = Guard(max_connections)
        self._render = SharedRender(exposition)
        self._healthy = healthy
        self._on_probe = on_probe
        app = web.Application(middlewares=[self._mark_busy])
        app.on_response_prepare.append(self._prepare)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/probe", self._probe)
        app.add_routes(routes)  # the status page's, when the daemon has one
        # aiohttp closes a connection still waiting for a whole request when its keep-alive
        # timer runs out, whatever it sent meanwhile: that timer is the header timeout.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=header_timeout,
            shutdown_timeout=SHUTDOWN_GRACE,
            logger=server_logger(event_logger()),
        )
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> tuple[str, int]:
        """Listen; returns the address bound (the port is the kernel's when 0 was asked)."""
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)  # accepted inherit it
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        assert self._runner.server is not None
        self.guard.start(self._runner.server)
        self._server = await loop.create_server(self.guard.connection, sock=sock, backlog=128)
        return self.host, self.port

    async def _prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        self.guard.prepare(request, response)

    @web.middleware
    async def _mark_busy(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        guard = self.guard
        if not guard.admits(request):
            return web.Response(status=503, text="busy: the last connections are kept for "
                                "/healthz and /metrics\n")  # fmt: skip
        protocol = request.protocol
        guard.busy.add(protocol)
        try:
            return await handler(request)
        finally:
            guard.busy.discard(protocol)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.guard.stop()
        await self._runner.cleanup()
        self._render.close()

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        chunks = await self._render.get()
        gzip = accepts_gzip(request.headers.get("Accept-Encoding", ""))
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        if not gzip:
            response.content_length = sum(len(chunk) for chunk in chunks)
        await response.prepare(request)
        if request.method == "HEAD":  # the headers a GET would get, and no body
            return response
        try:
            if gzip:
                await self._write_gzip(response, chunks)
            else:
                for chunk in chunks:
                    await response.write(chunk)  # waits for the socket to drain: the loop runs
            await response.write_eof()
        except ConnectionError:
            # The client is gone (cut for not reading, or it closed): nothing is left to send.
            # Let out of the handler, the error would tie the request, its task and their
            # frames into a cycle only a full collection frees, at every cut slow reader.
            pass
        return response

    @staticmethod
    async def _write_gzip(response: web.StreamResponse, chunks: list[bytes]) -> None:
        """The page gzipped piece by piece (one compressor per request, the render shared),
        with the loop let run between bursts as while rendering."""
        packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        pace = Pace()
        for chunk in chunks:
            packed = packer.compress(chunk)
            if packed:
                await response.write(packed)
            await pace.turn()
        await response.write(packer.flush())

    async def _healthz(self, _: web.Request) -> web.Response:
        if self._healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="stopping\n")

    async def _probe(self, request: web.Request) -> web.Response:
        parsed = parse_probe(request.query, request.headers)
        answer = parsed if isinstance(parsed, Answer) else await self._on_probe(parsed)
        return web.Response(status=answer.status, body=answer.body,
                            headers={"Content-Type": answer.content_type})  # fmt: skip
