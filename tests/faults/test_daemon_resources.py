"""The daemon short of local ports, descriptors or attempt slots: the concurrency bound holds
for scheduled attempts and `GET /probe` alike, a destination out of ports waits alone, and
HTTP clients cannot take the descriptors the schedule needs.

Traffic stays on loopback: inside a network namespace the test creates (iptables rules go on
its `lo`), or on the host's 127.0.0.1 to ports the test holds. Namespace tests skip when
there is no root, no `ip` or no `iptables`. Tests that look at time or hold a fixed resource
are marked `serial` or `serial_long` one by one (tests/conftest.py's two lanes).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from helpers import (
    Daemon,
    FullQueueListener,
    Netns,
    NsServer,
    RecordingListener,
    SocketSampler,
    assert_local_endpoint,
    config_toml,
    flood,
    http_get,
    kill,
    metrics_of,
    no_traceback,
    ns_get,
    port_range,
    socket_inodes,
    start_in,
    target_toml,
    ts,
    value,
)

# -- local ports -----------------------------------------------------------------------------------


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


@pytest.mark.serial_long  # twenty slots in 5 s, 2 s of margin
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


# -- the concurrency bound -------------------------------------------------------------------------


def targets_toml(address: str, n: int) -> str:
    return "".join(f'[[targets]]\naddress = "{address}"\nname = "t{i}"\n\n' for i in range(n))


# A daemon's own sockets besides its attempts: the HTTP listener, the loop's wake-up pair,
# a resolver socket or two. Generous, but far below what the attempts could add.
OVERHEAD = 12


@pytest.mark.serial
def test_daemon_sockets_stay_within_concurrency_then_sigterm_drains(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    """200 targets that all time out, concurrency 20: the daemon never holds more than 20
    attempt sockets. Then SIGTERM with 20 attempts in flight: they finish, exit 0, whole
    lines, each attempt recorded once."""
    log = tmp_path / "probe.log"
    text = config_toml(
        log, targets_toml(full_queue.target, 200), timeout=0.5, interval=1.0, concurrency=20
    )
    d = Daemon.start(tmp_path, text, log)
    daemons.append(d)
    d.port  # noqa: B018 - waits for the listening event
    sampler = SocketSampler(d.proc.pid, full_queue.port)

    def enough() -> bool:  # counted in records and samples: a slow machine lengthens it
        return sampler.samples > 10 and len([x for x in d.lines() if x["event"] == "probe"]) >= 60

    try:
        d.wait("60 records and 10 samples of the sockets", enough)
    finally:
        sampler.stop()
    assert sampler.samples > 10
    assert sampler.most_out == 20  # the bound was reached, and never passed
    assert sampler.most_total <= 20 + OVERHEAD, sampler.most_total
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=0.5 + 2.5) == 0, d.stderr
    assert time.monotonic() - sent < 3.0
    no_traceback(d.stderr)
    assert d.log.read_bytes().endswith(b"\n")
    lines = d.lines()
    assert lines[-1]["event"] == "stopped"
    recs = [x for x in lines if x["event"] == "probe"]
    keys = [(r["name"], r["attempt"]) for r in recs]
    assert len(keys) == len(set(keys)), "an attempt recorded twice"
    assert {(r["outcome"], r["error"]) for r in recs} == {("timeout", "ETIMEDOUT")}
    for rec in recs:
        assert_local_endpoint(rec)


def test_probe_flood_shares_the_concurrency_bound(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    """200 concurrent GET /probe of a target that times out, concurrency 20: every request
    is answered 200 or 503 (never a dropped connection or a 500), no more than 20 attempt
    sockets at once, and the daemon keeps serving afterwards."""
    log = tmp_path / "probe.log"
    d = Daemon.start(tmp_path, config_toml(log, "", timeout=0.5, interval=1.0, concurrency=20), log)
    daemons.append(d)
    d.port  # noqa: B018 - waits for the listening event
    query = f"/probe?target={urllib.parse.quote(full_queue.target)}&timeout=1"
    answers, sampler = flood(d, query, 200, full_queue.port, timeout=30)
    assert len(answers) == 200
    errors = [a for a in answers if isinstance(a, str)]
    assert errors == []
    statuses = Counter(a[0] for a in answers if not isinstance(a, str))
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 1
    for a in answers:
        if not isinstance(a, str) and a[0] == 200:
            assert "probe_success 0" in a[2], a[2]
    assert 1 <= sampler.most_out <= 20, sampler.most_out
    assert d.proc.poll() is None, d.stderr
    assert d.get("/healthz")[0] == 200
    assert d.wait("sockets back down", lambda: len(socket_inodes(d.proc.pid)) <= OVERHEAD)
    no_traceback(d.stderr)


def test_probe_flood_gets_ten_slots_by_default_then_busy(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    """No probe_concurrency in the config: at most 10 /probe attempts at once; past them,
    503 'busy' at once."""
    log = tmp_path / "probe.log"
    d = start_in(tmp_path, config_toml(log, ""), log, daemons)
    port = d.port
    query = f"/probe?target={urllib.parse.quote(full_queue.target)}&timeout=2"
    answers, sampler = flood(d, query, 30, full_queue.port, timeout=20)
    assert len(answers) == 30
    assert not [a for a in answers if isinstance(a, str)], answers  # no dropped connection
    statuses = Counter(a[0] for a in answers if not isinstance(a, str))
    assert set(statuses) == {200, 503}, statuses
    assert all("busy" in a[2] for a in answers if not isinstance(a, str) and a[0] == 503)
    assert sampler.most_out <= 10, sampler.most_out
    assert d.get("/healthz")[0] == 200 and port == d.port
    assert d.stop() == 0


# -- descriptors -----------------------------------------------------------------------------------


@pytest.mark.serial_long  # twenty slots in 5 s, 2 s of margin
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
