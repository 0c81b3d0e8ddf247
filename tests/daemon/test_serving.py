"""The HTTP side's cost to the loop, in-process on real sockets: what a client that does not
read may make the daemon copy and hold; and the collector kept away from long-lived state."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import socket
import struct
import termios
import time
from collections.abc import Iterator

from probe.daemon.collector import SETTLE_MARGIN, Collector
from probe.daemon.http import SEND_BUFFER, Answer, HttpServer, ProbeRequest, SharedRender

PIECE = b'probe_demo_metric{target="t"} 1.0\n' * 2000  # ~70 KB
PAGE_PIECES = 240  # ~17 MB: far more than any socket buffer holds


def big_page() -> Iterator[bytes | None]:
    for _ in range(PAGE_PIECES):
        yield PIECE
        yield None


async def no_probe(_: ProbeRequest) -> Answer:
    return Answer(404, b"")


async def serve() -> HttpServer:
    server = HttpServer("127.0.0.1", 0, big_page, lambda: True, no_probe)
    await server.start()
    return server


def queued_in_kernel(fd: int) -> int:
    """Bytes written to a socket that its peer has not yet acknowledged (TIOCOUTQ)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])


async def test_a_client_that_does_not_read_holds_a_bounded_kernel_buffer() -> None:
    """Left to autotuning, a loopback connection's send buffer grows to ~3 MB: copied from
    the loop for each client that never reads, and held in kernel memory for each."""
    server = await serve()
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", server.port))
        client.send(b"GET /metrics HTTP/1.1\r\nHost: probe\r\n\r\n")
        transports = []
        deadline = time.monotonic() + 15.0
        while not transports:  # the kernel took what it would: the rest waits with us
            assert time.monotonic() < deadline, "the answer never filled the send buffer"
            await asyncio.sleep(0.02)
            transports = [
                c.transport
                for c in server.guard._server.connections  # type: ignore[union-attr]
                if c.transport is not None and c.transport.get_write_buffer_size()
            ]
        fd = transports[0].get_extra_info("socket").fileno()
        assert queued_in_kernel(fd) <= 2 * SEND_BUFFER
    finally:
        client.close()
        await server.stop()


async def test_state_built_after_start_is_frozen_once_the_first_round_is_over() -> None:
    collector = Collector(asyncio.get_running_loop())
    try:
        before = gc.get_freeze_count()
        collector.settled(0.05)
        at_start = gc.get_freeze_count()
        assert at_start >= before
        state = [[i] for i in range(10_000)]  # what the first records build
        deadline = time.monotonic() + 0.05 + SETTLE_MARGIN + 5.0
        while collector.freezes < 2:  # the round's end, then the freeze after it
            assert time.monotonic() < deadline, "no freeze after the first round"
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > at_start + len(state) // 2
        assert not any(o is state for o in gc.get_objects())  # out of every generation
        assert collector.freezes == 2
    finally:
        collector.stop()
        gc.unfreeze()


async def test_a_scrape_never_gets_a_render_begun_before_it_arrived() -> None:
    """A render runs over many loop turns. A scrape arriving during one waits for the next
    (shared by all that arrive meanwhile), so it shows every record made before it came."""
    value = [1]
    renders = [0]

    def pieces() -> Iterator[bytes | None]:
        renders[0] += 1
        seen = value[0]  # the state is read as the render begins
        for _ in range(20):
            time.sleep(0.002)  # a burst of work, then a pause in which the loop runs
            yield None
        yield f"{seen}\n".encode()

    shared = SharedRender(pieces)
    first = asyncio.ensure_future(shared.get())
    await asyncio.sleep(0.01)  # the first render has begun and read value 1
    value[0] = 2  # a record arrives
    later = [asyncio.ensure_future(shared.get()) for _ in range(5)]
    assert await first == [b"1\n"]
    assert [await got for got in later] == [[b"2\n"]] * 5
    assert renders[0] == 2  # the five scrapes that came during the first shared one render
    assert await shared.get() == [b"2\n"]  # nothing running: a render of its own
    assert renders[0] == 3


async def test_a_client_cut_mid_answer_leaves_no_garbage_cycle() -> None:
    """Every cut slow reader used to leave its error tied to its request, task and frames in
    a cycle (~50 objects) that only a full collection frees, and cuts come by the hundred."""
    server = await serve()
    loop = asyncio.get_running_loop()
    clients = []
    try:
        for _ in range(3):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.setblocking(False)
            await loop.sock_connect(client, ("127.0.0.1", server.port))
            client.send(b"GET /metrics HTTP/1.1\r\nHost: probe\r\n\r\n")
            clients.append(client)
        deadline = time.monotonic() + 15.0
        while len(waiting(server)) < 3:  # every answer is held up by its reader
            assert time.monotonic() < deadline, "the answers never filled the send buffers"
            await asyncio.sleep(0.02)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds is kept in gc.garbage
        server.guard.write_timeout = 0.5  # the write deadline, made short: they are cut
        while server.guard._server.connections:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the clients were never cut"
            await asyncio.sleep(0.02)
        assert server.guard.cut == 3
        await asyncio.sleep(0.1)  # the handlers end
        gc.collect()
        errors = [o for o in gc.garbage if isinstance(o, ConnectionError)]
        assert not errors, errors
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        for client in clients:
            client.close()
        await server.stop()


def waiting(server: HttpServer) -> list[asyncio.BaseTransport]:
    """The server's transports holding bytes their client has not taken."""
    return [
        c.transport
        for c in server.guard._server.connections  # type: ignore[union-attr]
        if c.transport is not None and c.transport.get_write_buffer_size()
    ]
