"""`probe serve [ADDR:PORT ...]`: the responder on its own, until SIGTERM or SIGINT.

Its records (`accept`, and `serving` once the sockets are bound) go to standard output as
JSON lines, the daemon's log form."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

from .. import loop as event_loop
from ..errors import EXIT_OK, EXIT_USAGE, SinkError, TargetError, UsageError, report
from ..output.log import configure, event_logger
from ..output.writer import RecordWriter, stdout_writer
from ..syntax.endpoint import parse_endpoint
from .answer import MAX_NAME
from .limits import ServeLimits
from .server import Server

DEFAULT_PORT = 7070  # `probe serve` with no ADDR:PORT: this port on every address
FLUSH_EVERY = 0.2  # seconds: accept records reach a pipe promptly, without a write each


def parse_listen(text: str) -> tuple[str, int]:
    """One `ADDR:PORT` or `[IPV6]:PORT` to listen on (port 0: the kernel picks)."""
    try:
        return parse_endpoint(text, allow_port_zero=True, allow_names=False)
    except TargetError as exc:
        raise UsageError(f"listen address: {exc}") from None


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise UsageError(f"--name: 1 to {MAX_NAME} printable characters, got {name!r}")
    return name


def default_name() -> str:
    return socket.gethostname()[:MAX_NAME] or "probe"


def run_serve(listens: list[str], name: str | None, limits: ServeLimits, fmt: str = "json") -> int:
    endpoints: list[tuple[str | None, int]] = [parse_listen(text) for text in listens]
    if not endpoints:
        endpoints = [(None, DEFAULT_PORT)]
    answer_as = check_name(name) if name is not None else default_name()
    try:
        writer = stdout_writer()
    except SinkError as exc:  # pragma: no cover - standard output closed at start
        report(str(exc))
        return EXIT_USAGE
    configure(writer, fmt)
    return event_loop.run(_serve(endpoints, answer_as, limits, writer))


async def _serve(
    endpoints: list[tuple[str | None, int]], name: str, limits: ServeLimits, writer: RecordWriter
) -> int:
    log = event_logger()
    server = Server(name, limits, log.info)
    try:
        bound = await server.start(endpoints)
    except OSError as exc:
        where = ", ".join(f"{h or '*'}:{p}" for h, p in endpoints)
        report(f"cannot listen on {where}: {exc.strerror or os.strerror(exc.errno or 0)}")
        return EXIT_USAGE
    log.info("serving", listen=bound, by=name)
    writer.flush()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_EVERY)
            writer.flush()
    finally:
        server.close()
        writer.close()
    return EXIT_OK
