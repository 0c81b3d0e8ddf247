"""`[serve]` and per-target `reflect = true` in a real `probe run` on loopback: accept
records in the daemon's log, reflected records, and the reflect metrics. And a hostile
client of the daemon's responder: the schedule keeps its cadence, descriptors stay bounded."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Daemon, Responder, config_toml, free_port, target_toml, value

SERVE_PORT_CONFIG = '[serve]\nlisten = ["127.0.0.1:{port}"]\nname = "daemon-a"\n\n'


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    r = Responder(tmp_path, "127.0.0.1:0", "--name", "far")
    yield r
    r.close()


def test_reflect_target_records_and_metrics(tmp_path: Path, responder: Responder) -> None:
    log = tmp_path / "log"
    port = free_port()
    targets = target_toml("far", f"127.0.0.1:{responder.port}") + "reflect = true\n"
    targets += target_toml("self", f"127.0.0.1:{port}") + "reflect = true\n"
    text = config_toml(log, targets, interval=0.2, timeout=1.0)
    d = Daemon.start(tmp_path, SERVE_PORT_CONFIG.format(port=port) + text, log)
    try:
        d.wait_records("far", 4)
        d.wait_records("self", 2)
        for rec in d.records("far"):
            assert rec["seen_as"] == f"127.0.0.1:{rec['local_port']}", rec
            assert rec["translated"] is False and rec["seen_by"] == "far"
        assert {r["seen_by"] for r in d.records("self")} == {"daemon-a"}
        accepts = d.events("accept")  # the daemon's own responder, in the same log
        assert accepts and all(a["local"] == f"127.0.0.1:{port}" for a in accepts)
        _, samples = d.metrics()
        reflected = value(samples, "probe_reflected_attempts_total", target="far")
        assert reflected is not None and reflected >= 4
        assert value(samples, "probe_translated_attempts_total", target="far") in (None, 0.0)
        assert value(samples, "probe_port_preserved_attempts_total", target="far") == reflected
        assert d.stop() == 0, d.stderr
    finally:
        d.kill()


def test_a_listen_port_in_use_is_exit_2(tmp_path: Path, responder: Responder) -> None:
    log = tmp_path / "log"
    text = SERVE_PORT_CONFIG.format(port=responder.port) + config_toml(log, "")
    d = Daemon.start(tmp_path, text, log)
    try:
        assert d.wait_exit() == 2
        assert "serve.listen" in d.stderr and d.stderr.count("\n") == 1, d.stderr
    finally:
        d.kill()


@pytest.mark.serial
def test_a_hostile_client_leaves_the_schedule_alone(tmp_path: Path) -> None:
    """10,000 connections, a slowloris, a megabyte each: the daemon's own target keeps its
    0.2 s cadence and its descriptors stay under the responder's bound."""
    log = tmp_path / "log"
    port = free_port()
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(4096)
    text = config_toml(log, target_toml("steady", f"127.0.0.1:{target.getsockname()[1]}"),
                       interval=0.2, timeout=1.0)  # fmt: skip
    serve = f'[serve]\nlisten = ["127.0.0.1:{port}"]\nmax_connections = 64\n\n'
    d = Daemon.start(tmp_path, serve + text, log)
    stop = threading.Event()
    try:
        d.wait_records("steady", 3)
        pid = d.proc.pid
        base = len(os.listdir(f"/proc/{pid}/fd"))
        peak = [base]

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], len(os.listdir(f"/proc/{pid}/fd")))
                time.sleep(0.02)  # the sampling period

        def flood() -> None:
            junk = b"x" * (1 << 20)
            for _batch in range(25):
                socks = []
                for _ in range(400):
                    s = socket.socket()
                    s.setblocking(False)
                    s.bind(("127.0.0.2", 0))
                    s.connect_ex(("127.0.0.1", port))
                    socks.append(s)
                for i, s in enumerate(socks):
                    if i % 3 == 0:
                        with contextlib.suppress(OSError):
                            s.send(junk)
                for s in socks:
                    s.close()

        def slowloris() -> None:
            socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
            while not stop.is_set():
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.send(b"G")
                stop.wait(0.1)
            for s in socks:
                s.close()

        began = time.time()
        threads = [threading.Thread(target=f) for f in (sample, flood, slowloris)]
        for t in threads:
            t.start()
        threads[1].join(120)
        time.sleep(1.0)  # an observation window: the slowloris alone, after the flood
        stop.set()
        for t in threads:
            t.join(30)
        ended = time.time()
        assert peak[0] - base <= 64 + 16, (base, peak)
        from helpers import ts

        during = sorted(ts(r) for r in d.records("steady") if began <= ts(r) <= ended)
        gaps = [b - a for a, b in itertools.pairwise(during)]
        assert len(during) >= (ended - began) / 0.2 * 0.7, (len(during), ended - began)
        assert max(gaps) < 0.6, gaps  # no slot of 0.2 s missed twice in a row
        _, samples = d.metrics()
        assert (value(samples, "probe_late_starts_total") or 0) <= 2
        assert d.stop() == 0, d.stderr
    finally:
        stop.set()
        target.close()
        d.kill()
