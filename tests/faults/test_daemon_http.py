"""The daemon when one destination runs out of local ports, readers stall, output stalls
and HTTP clients misbehave: other targets keep their slots, the process stays stoppable,
and what cannot be measured is said, never invented.

Faults come from real kernels: network namespaces with a narrowed ephemeral port range and
connections held in them, `prlimit`, FIFOs and pipes nobody reads, raw sockets that send
malformed or half-closed requests. Only loopback, and addresses inside our namespaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from helpers import (
    Daemon,
    Netns,
    NsServer,
    RecordingListener,
    closed_port,
    config_toml,
    free_port_block,
    http_fetch,
    http_get,
    in_netns,
    kill,
    metrics_of,
    ns_get,
    port_range,
    probe_cmd,
    start_in,
    target_toml,
    ts,
    value,
    wait_for,
)

pytestmark = pytest.mark.serial  # timing under load, or a fixed resource: one at a time

# A listener on PORT, then connections to it until connect() finds no local port left
# (EADDRNOTAVAIL three times in a row, 50 ms apart: a port a probe held for a moment comes
# back), all kept open until the line "release" (then reset: no TIME_WAIT). Prints how
# many it holds. The listener stays.
PORT_FILLER = """
import errno, socket, struct, sys, threading, time
port = int(sys.argv[1])
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", port))
lst.listen(4096)
kept = []
def accept():
    while True:
        kept.append(lst.accept()[0])
threading.Thread(target=accept, daemon=True).start()
print("listening", flush=True)
sys.stdin.readline()
held, misses, clients = 0, 0, []
while misses < 3:
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", port))
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise
        c.close()
        misses += 1
        time.sleep(0.05)
        continue
    clients.append(c)
    held += 1
    misses = 0
print(held, flush=True)
sys.stdin.readline()
for c in clients:
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
print("released", flush=True)
sys.stdin.read()
"""


class PortFiller:
    """A listener in `ns` on `port`; `fill()` then takes every local port towards it."""

    def __init__(self, ns: Netns, port: int) -> None:
        self.proc = ns.popen(
            sys.executable,
            "-c",
            PORT_FILLER,
            str(port),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        assert self.proc.stdout.readline().strip() == "listening"

    def _say(self, line: str) -> str:
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def fill(self) -> int:
        return int(self._say("fill"))

    def release(self) -> None:
        assert self._say("release") == "released"

    def close(self) -> None:
        kill(self.proc)


def test_one_destination_out_of_ports_leaves_the_others_their_slots(
    netns: Netns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A 100-port ephemeral range, every port of it in a connection to 127.0.0.1:5001:
    that destination's attempts wait (no record blames it), counted per destination and
    logged; its probe_up is withdrawn rather than left frozen; 127.0.0.1:5002 keeps every
    slot. When the ports come back, so do the attempts and probe_up."""
    port_range(netns, 40000, 40099)
    other = NsServer(netns, 5002)
    filler = PortFiller(netns, 5001)
    try:
        log = tmp_path / "probe.log"
        targets = target_toml("stuck", "127.0.0.1:5001") + target_toml("other", "127.0.0.1:5002")
        d = start_in(tmp_path, config_toml(log, targets, interval=0.25), log, daemons, netns)
        d.wait_event("state", name="stuck", to="up")
        d.wait_event("state", name="other", to="up")
        mport = int(d.events("listening")[0]["address"].rpartition(":")[2])

        def page() -> dict[object, float]:
            return metrics_of(lambda path: ns_get(netns, mport, path))

        assert filler.fill() >= 90
        filled = time.time()
        event = d.wait_event("port_shortage", destination="127.0.0.1:5001")
        assert event["target"] == "127.0.0.1:5001" and event["connects"] >= 1, event
        # Twenty slots of the other target (5 s at 0.25 s) come while the shortage lasts.
        recs = d.wait_records("other", 20, after=filled, timeout=20)
        assert all(r["outcome"] == "open" for r in recs), recs
        assert ts(recs[19]) - filled < 5.0 + 2.0, (filled, [ts(r) for r in recs])
        assert not [r for r in d.records("stuck") if ts(r) > filled and r["outcome"] != "open"]
        d.wait("probe_up of stuck withdrawn", lambda: value(page(), "probe_up", target="stuck")
               is None)  # fmt: skip
        s = page()
        shortages = value(s, "probe_port_shortages_total", destination="127.0.0.1:5001")
        assert shortages is not None and shortages >= 1, shortages
        assert value(s, "probe_port_shortages_total", destination="127.0.0.1:5002") is None
        assert value(s, "probe_up", target="other") == 1.0
        assert len(d.events("port_shortage")) <= 2  # rate-limited: one per 10 s at most
        filler.release()
        released = time.time()
        d.wait_records("stuck", 1, after=released, timeout=10)
        d.wait("probe_up of stuck back", lambda: value(page(), "probe_up", target="stuck") == 1.0)
    finally:
        filler.close()
        other.close()
    assert d.stop() == 0


# -- HTTP: clients that do not read, malformed and half-closed requests ----------------------


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


def cut_or_answering(sock: socket.socket) -> bool:
    """True when the daemon cut this connection (a reset after what it had sent); False
    when it still answers (reading makes it go on: it then runs out of answers)."""
    sock.settimeout(1.0)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True  # closed by the daemon


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
        while time.monotonic() - began < 12.0:  # past the write deadline
            status, _, body = ns_get(netns, port, "/healthz", timeout=3.0)
            assert (status, body) == (200, "ok\n")
            status, _, body = ns_get(netns, port, "/metrics", timeout=5.0)
            assert status == 200 and "probe_targets 120.0" in body
        assert all(cut_or_answering(s) for s in hogs)
    finally:
        for s in hogs:
            s.close()
    assert d.stop() == 0


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


# -- output nobody reads -------------------------------------------------------------------


def busy_config(log: Path | None, listen: str = "127.0.0.1:0") -> str:
    """Ten closed ports every 50 ms: a 64 KiB pipe is full within seconds."""
    targets = "".join(target_toml(f"t{i}", f"127.0.0.1:{closed_port()}") for i in range(10))
    return config_toml(log, targets, interval=0.05, timeout=0.3, listen=listen)


class Unread:
    """The read end of a pipe nobody reads: `stalled()` once it has held 32 KiB or more,
    unchanged, for a second (its writer cannot put more in: records are waiting)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.held = -1
        self.since = 0.0

    def stalled(self) -> bool:
        waiting = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        held, now = int.from_bytes(waiting, sys.byteorder), time.monotonic()
        if held != self.held:
            self.held, self.since = held, now
            return False
        return held >= 32768 and now - self.since >= 1.0


def whole_lines_then_count(data: bytes, stderr: str) -> int:
    """The records that reached the reader are whole lines; the last stderr line counts
    the ones that did not."""
    assert data.endswith(b"\n") or data == b"", data[-200:]
    last = stderr.strip().splitlines()[-1]
    found = re.search(r"(\d+) records not written", last)
    assert found, stderr
    return int(found.group(1))


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    return data


def test_a_fifo_without_a_reader_as_log_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    (tmp_path / "config.toml").write_text(busy_config(fifo))
    result = subprocess.run(
        [*probe_cmd(), "run", "--config", str(tmp_path / "config.toml")],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()
    assert str(fifo) in line and "FIFO with no reader" in line, line


def test_a_fifo_log_nobody_reads_holds_neither_healthz_nor_sigterm(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A reader opens the FIFO and never reads: the daemon goes on (/healthz answers), and
    SIGTERM ends it within the drain limit, the unwritten records counted on stderr."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        port = free_port_block(1, 21000)
        d = Daemon.start(tmp_path, busy_config(fifo, listen=f"127.0.0.1:{port}"))
        daemons.append(d)
        d.wait("a stalled pipe", Unread(reader).stalled, timeout=30)
        for _ in range(3):
            assert http_get(port, "/healthz", timeout=3.0)[0] == 200
        began = time.monotonic()
        d.send(signal.SIGTERM)
        assert d.wait_exit(timeout=10) == 1
        assert time.monotonic() - began < 0.3 + 1.0 + 2.0 + 1.5  # timeout + 1 s, + 2 s output
        assert whole_lines_then_count(read_all(reader), d.stderr) > 0
    finally:
        os.close(reader)


def test_sigterm_ends_probe_run_logging_to_an_unread_stdout(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(busy_config(None))
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*probe_cmd(), "run", "--config", str(tmp_path / "config.toml")],
        stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    os.close(w)
    try:
        wait_for("a stalled pipe", Unread(r).stalled, timeout=30)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 1
        assert time.monotonic() - began < 0.3 + 1.0 + 2.0 + 1.5
        assert proc.stderr is not None
        assert whole_lines_then_count(read_all(r), proc.stderr.read()) > 0
    finally:
        kill(proc)
        os.close(r)


def test_sigterm_ends_a_continuous_check_into_an_unread_pipe() -> None:
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*probe_cmd(), "check", f"127.0.0.1:{closed_port()}", "-c", "0", "-i", "0.001", "--json"],
        stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    os.close(w)
    try:
        wait_for("a stalled pipe", Unread(r).stalled, timeout=30)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
        assert time.monotonic() - began < 2.0 + 1.5
        assert proc.stderr is not None
        assert whole_lines_then_count(read_all(r), proc.stderr.read()) > 0
    finally:
        kill(proc)
        os.close(r)


# -- few descriptors, many HTTP clients ----------------------------------------------------


def test_http_clients_under_nofile_64_leave_the_schedule_its_slots(
    tmp_path: Path, daemons: list[Daemon], listener: RecordingListener
) -> None:
    """`prlimit --nofile=64`: the HTTP connection cap shrinks to a quarter of what is left
    (said in the `listening` event), so 100 clients holding connections cannot take the
    descriptors the schedule's attempts need: twenty slots in 5 s, twenty attempts."""
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("a", listener.target), interval=0.25)
    d = start_in(tmp_path, text, log, daemons, prefix=("prlimit", "--nofile=64:64"))
    event = d.wait_event("listening")
    assert 2 <= event["connections"] < 16, event
    port = int(event["address"].rpartition(":")[2])
    d.wait_records("a", 1)
    clients: list[socket.socket] = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        began = time.time()
        recs = d.wait_records("a", 20, after=began, timeout=15)
        assert ts(recs[19]) - began < 5.0 + 2.0, [ts(r) - began for r in recs]
        assert all(r["outcome"] == "open" for r in recs), recs
        status, _, body = http_get(port, "/healthz", timeout=3.0)  # a held slot gives way
        assert (status, body) == (200, "ok\n")
    finally:
        for s in clients:
            s.close()
    assert d.stop() == 0
    assert "EMFILE" not in log.read_text()


# -- SIGINT while standard input never ends ------------------------------------------------


def test_sigint_with_endless_stdin_leaves_no_noise_on_stderr() -> None:
    """A line on stdin every 2 ms, for ever; SIGINT once records flow. Exit 130, and stderr
    holds no traceback, no `Event loop is closed`, no `never awaited` (the input thread
    used to hand its next line to a loop that had just closed). Eight runs: it was timing."""
    port = closed_port()
    for _ in range(8):
        proc = subprocess.Popen(
            [*probe_cmd(), "check", "-", "--json", "-c", "3", "-i", "0.01"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        def feed(stdin: IO[bytes]) -> None:
            with contextlib.suppress(OSError, ValueError):
                while True:
                    stdin.write(f"127.0.0.1:{port}\n".encode())
                    stdin.flush()
                    time.sleep(0.002)

        threading.Thread(target=feed, args=(proc.stdin,), daemon=True).start()
        try:
            assert proc.stdout.readline()  # records flow
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 130
            err = proc.stderr.read().decode()
        finally:
            kill(proc)
        for noise in ("Traceback", "Event loop is closed", "never awaited", "Exception in"):
            assert noise not in err, err
