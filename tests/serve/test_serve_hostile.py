"""A hostile client of `probe serve`: 10,000 connections from one source, a slowloris
holding connections open a byte at a time, clients sending a megabyte each. The responder's
descriptors and memory stay bounded and a well-behaved client from another address is still
answered, at once, meanwhile."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Responder, wait_for

pytestmark = pytest.mark.serial  # timing under load, or a fixed resource: one at a time

FLOOD = 10_000
SLOWLORIS = 200
MAX_CONNECTIONS = 64
BATCH = 400  # flood sockets open at once on our side


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    r = Responder(
        tmp_path, "127.0.0.1:0", "--name", "calm", "--max-connections", str(MAX_CONNECTIONS)
    )
    yield r
    r.close()


def flood(port: int, stop: threading.Event) -> int:
    """FLOOD connects from 127.0.0.2, every third sending 1 MB it never gets read."""
    junk = b"x" * (1 << 20)
    made = 0
    while made < FLOOD and not stop.is_set():
        batch = []
        for _ in range(min(BATCH, FLOOD - made)):
            s = socket.socket()
            s.setblocking(False)
            s.bind(("127.0.0.2", 0))
            err = s.connect_ex(("127.0.0.1", port))
            assert err in (0, errno.EINPROGRESS), os.strerror(err)
            batch.append(s)
            made += 1
        for i, s in enumerate(batch):
            if i % 3 == 0:
                with contextlib.suppress(OSError):
                    s.send(junk)
        for s in batch:
            s.close()
    return made


def slowloris(port: int, stop: threading.Event) -> None:
    socks = []
    for _ in range(SLOWLORIS):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind(("127.0.0.3", 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    while not stop.is_set():
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"G")
        stop.wait(0.1)
    for s in socks:
        s.close()


def ask() -> tuple[float, dict[str, str]]:
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", PORT[0]), timeout=5) as s:
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return time.perf_counter() - began, json.loads(data)


PORT = [0]


def test_hostile_clients_leave_the_responder_bounded(responder: Responder) -> None:
    pid = responder.proc.pid
    PORT[0] = port = responder.port
    ask()
    base_fds, base_rss = fds(pid), rss_kb(pid)
    stop = threading.Event()
    peaks = {"fds": 0, "rss": 0}

    def sample() -> None:
        while not stop.is_set():
            peaks["fds"] = max(peaks["fds"], fds(pid))
            peaks["rss"] = max(peaks["rss"], rss_kb(pid))
            time.sleep(0.02)  # the sampling period

    made: list[int] = []
    threads = [
        threading.Thread(target=sample),
        threading.Thread(target=slowloris, args=(port, stop)),
        threading.Thread(target=lambda: made.append(flood(port, stop))),
    ]
    for t in threads:
        t.start()
    waits = []
    try:
        while threads[2].is_alive():
            took, answer = ask()  # a client from another address is answered meanwhile
            assert answer["by"] == "calm"
            waits.append(took)
            time.sleep(0.05)  # the calm client's pace while the hostile ones run
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert made == [FLOOD]
    assert waits, "the flood ended before a single well-behaved ask"
    assert max(peaks["fds"] - base_fds, 0) <= MAX_CONNECTIONS + 8, peaks
    assert peaks["rss"] - base_rss < 30_000, peaks  # kB
    assert sorted(waits)[len(waits) // 2] < 0.5, waits  # the median ask
    # afterwards: nothing held, and still answering
    wait_for("descriptors back", lambda: fds(pid) <= base_fds + 2, 10)
    assert ask()[1]["by"] == "calm"
    accepts = responder.events("accept")
    flood_accepts = [a for a in accepts if a["peer"].startswith("127.0.0.2:")]
    assert len(flood_accepts) < FLOOD // 4  # most of the flood was shed at its rate
