"""The daemon's HTTP server at its edges: clients that never read, half-sent, malformed and
half-closed requests, `HEAD`, the headers on every answer, and `/probe`'s allow-list judged
after resolution. The schedule keeps its slots and no answer is a traceback.

Every test runs the real daemon as a subprocess and talks to it over raw sockets on loopback.
Tests that look at time or hold a fixed resource are marked `serial` or `serial_long`
(tests/conftest.py's two lanes).
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest
from helpers import (
    Daemon,
    Netns,
    RecordingListener,
    closed_port,
    config_toml,
    http_fetch,
    in_netns,
    ns_get,
    socket_inodes,
    start_in,
    target_toml,
)


def many_targets_daemon(
    tmp_path: Path, daemons: list[Daemon], n: int = 30, ns: Netns | None = None
) -> Daemon:
    """A daemon with `n` targets (closed ports, each every second)."""
    log = tmp_path / "probe.log"
    targets = "".join(target_toml(f"t{i}", f"127.0.0.1:{closed_port()}") for i in range(n))
    d = start_in(tmp_path, config_toml(log, targets, interval=1.0), log, daemons, ns)
    d.wait_records("t0", 1)
    return d


def listening_port(d: Daemon) -> int:
    return int(d.wait_event("listening")["address"].rpartition(":")[2])


def still_held(pid: int, clients: list[socket.socket]) -> list[int]:
    """Which of `clients` the daemon `pid` still holds a connection from (their local ports
    among its sockets' peers, in its namespace's TCP table). Asked of the kernel, not by
    reading: a read would take the answers waiting for the client and un-stall it, and a
    cut with answers unsent shows the client nothing until it reads."""
    mine = socket_inodes(pid)
    peers = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in mine:
            peers.add(int(fields[2].rpartition(":")[2], 16))
    return [i for i, s in enumerate(clients) if s.getsockname()[1] in peers]


# -- clients that do not read or never finish their headers ----------------------------------------


@pytest.mark.serial_long
def test_clients_that_do_not_read_are_cut_and_healthz_keeps_answering(
    netns: Netns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """80 clients with a 4 KiB receive buffer pipeline 20 GET /metrics each and never read
    (the namespace's send buffers are small, so the daemon's writes block soon): /healthz
    and a scrape that reads still get their answers, and every one of the 80 is cut by the
    write deadline (10 s) instead of holding its slot."""
    netns.run("sysctl", "-w", "net.ipv4.tcp_wmem=4096 16384 65536")
    d = many_targets_daemon(tmp_path, daemons, n=120, ns=netns)  # a page of ~90 KB
    port = listening_port(d)
    pipelined = b"GET /metrics HTTP/1.1\r\nHost: probe\r\n\r\n" * 20

    def hog() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(pipelined)
        return s

    hogs: list[socket.socket] = []
    try:
        for _ in range(80):
            hogs.append(in_netns(netns, hog))
        began = time.monotonic()
        # Past the write deadline, and on until every hog is cut: each one 10 s after its
        # answers stopped going out, and a loaded machine starts some of the 80 late.
        while time.monotonic() - began < 10.0 or (held := still_held(d.proc.pid, hogs)):
            assert time.monotonic() - began < 40.0, f"hogs not cut: {held}"
            status, _, body = ns_get(netns, port, "/healthz", timeout=3.0)
            assert (status, body) == (200, "ok\n")
            status, _, body = ns_get(netns, port, "/metrics", timeout=5.0)
            assert status == 200 and "probe_targets 120.0" in body
    finally:
        for s in hogs:
            s.close()
    assert d.stop() == 0


def _half_sent(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_http_headers_have_5_s_and_the_oldest_idle_connection_makes_room(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = start_in(tmp_path, config_toml(log, ""), log, daemons)
    port = d.port
    # a request whose headers never end is closed after 5 s
    s = _half_sent(port)
    began = time.monotonic()
    s.settimeout(30)
    with contextlib.suppress(ConnectionResetError):  # closed, either way
        assert s.recv(100) == b""
    took = time.monotonic() - began
    s.close()
    assert 4.5 <= took < 15.0, took
    # 70 half-sent requests: 64 are kept, the 6 oldest make room for the newest
    socks = [_half_sent(port) for _ in range(70)]
    try:
        closed: list[int] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            closed = [i for i, c in enumerate(socks) if i in closed or _closed_by_peer(c)]
            if len(closed) >= 6:
                break
            time.sleep(0.05)
        assert closed == list(range(6)), closed
        assert d.get("/healthz")[0] == 200  # and a scraper still gets in
    finally:
        for c in socks:
            c.close()
    assert d.stop() == 0


# -- malformed and half-closed requests ------------------------------------------------------------


def raw_exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Send `data` on one connection (then SHUT_WR if asked) and read until the daemon
    closes it (or 3 s pass without a byte)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3.0) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            pass
        return got


# Not serial: no clock, no fixed resource (a daemon of its own on a free port).
def test_malformed_requests_are_one_log_line_not_tracebacks(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = many_targets_daemon(tmp_path, daemons, n=1)
    for i in range(300):
        junk = [
            b"GARBAGE\r\n\r\n",
            b"GET /x HTTP/9.9\r\n\r\n",
            b"GET / HTTP/1.1\r\nA\x00: b\r\n\r\n",
        ]
        answer = raw_exchange(d.port, junk[i % 3])
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), answer[:100]
    status, _, _ = d.get("/healthz")
    assert status == 200
    assert d.stop() == 0
    assert "Traceback" not in d.stderr and "aiohttp" not in d.stderr, d.stderr[:2000]
    errors = d.events("http_error")
    assert 1 <= len(errors) <= 2, errors  # rate-limited: one per 10 s
    assert errors[0]["count"] >= 1


# Not serial: no clock, no fixed resource (a daemon of its own on a free port).
def test_head_metrics_has_no_body_and_the_next_answer_follows_cleanly(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = many_targets_daemon(tmp_path, daemons, n=1)
    for extra in (b"", b"Accept-Encoding: gzip\r\n"):
        got = raw_exchange(
            d.port,
            b"HEAD /metrics HTTP/1.1\r\nHost: probe\r\n" + extra + b"\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n",
        )
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), got[:200]
        assert rest.startswith(b"HTTP/1.1 200 "), rest[:200]  # nothing between the two
        assert rest.endswith(b"\r\n\r\nok\n"), rest[-200:]
    assert d.stop() == 0


@pytest.mark.serial_long
def test_a_half_closed_request_gets_its_answer(tmp_path: Path, daemons: list[Daemon]) -> None:
    """As `nc -N` sends: the request, then FIN. The answer comes, then the daemon closes."""
    d = many_targets_daemon(tmp_path, daemons, n=1)
    began = time.monotonic()
    got = raw_exchange(d.port, b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n", half_close=True)
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nok\n"), got
    assert time.monotonic() - began < 2.5  # closed after the answer, not at the keep-alive's end
    got = raw_exchange(d.port, b"GET /metrics HTTP/1.0\r\n\r\n", half_close=True)
    assert got.startswith(b"HTTP/1.") and b"probe_targets 1.0" in got, got[:300]
    assert d.stop() == 0


# Not serial: no clock, no fixed resource (a daemon of its own on a free port).
def test_answers_say_nosniff_and_name_no_versions(tmp_path: Path, daemons: list[Daemon]) -> None:
    d = many_targets_daemon(tmp_path, daemons, n=1)
    closed = f"127.0.0.1:{closed_port()}"
    paths = ["/probe?target=nonsense", f"/probe?target={closed}&timeout=x"]
    paths += [f"/probe?target={closed}&debug=true", "/metrics", "/healthz"]
    for path in paths:
        status, headers, _ = http_fetch(d.port, path)
        assert headers.get("X-Content-Type-Options") == "nosniff", (path, status, headers)
        server = headers.get("Server", "")
        assert "aiohttp" not in server and "Python" not in server, (path, server)
    got = raw_exchange(d.port, b"GARBAGE\r\n\r\n")
    assert b"aiohttp" not in got and b"Python" not in got, got
    assert d.stop() == 0


# -- /probe's allow-list ---------------------------------------------------------------------------


def test_probe_allow_is_judged_after_name_resolution(
    tmp_path: Path, daemons: list[Daemon], listener: RecordingListener
) -> None:
    """`localhost` is 127.0.0.1 (in /etc/hosts); with only ::1 allowed, the name must not be
    a detour to an address outside probe_allow."""
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo("localhost", None)}
    except socket.gaierror:
        pytest.skip("localhost does not resolve here")
    if not resolved or not all(ip.startswith("127.") for ip in resolved):
        pytest.skip(f"localhost resolves to {sorted(resolved)} here, not only to 127.0.0.0/8")
    log = tmp_path / "probe.log"
    text = config_toml(log, "", timeout=0.5, interval=1.0, extra='probe_allow = ["::1/128"]\n')
    d = Daemon.start(tmp_path, text, log)
    daemons.append(d)
    status, _, body = d.get(f"/probe?target=localhost:{listener.port}")
    assert status == 403, body
    listener.assert_not_reached()
    assert not [x for x in d.lines() if x.get("event") == "probe"]
