"""End-to-end tests of `probe run`: the daemon as a subprocess, real loopback sockets.

Every daemon here writes its log to a file in tmp_path (or stdout, for the shipped config);
tests poll that file with deadlines rather than sleeping a fixed time. Only 127.0.0.0/8 is
ever connected to; the only name resolved is `localhost` (in /etc/hosts).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import (
    CONTRACT_KEYS,
    INTERVAL,
    ROOT,
    TIMESTAMP,
    Daemon,
    FullQueueListener,
    RecordingListener,
    closed_port,
    config_toml,
    http_get,
    parse_prometheus,
    read_lines,
    run_probe,
    run_queue_wait,
    target_toml,
    ts,
    unlabelled,
    value,
)

from probe.daemon.app import _job_key
from probe.daemon.config import ResolvedTarget
from probe.daemon.schedule import phase_of

T = TypeVar("T")
Line = dict[str, Any]

PROBE_KEYS = {*CONTRACT_KEYS, "name"}
GRID_SLACK = 0.05  # seconds a start may sit off its slot (a busy machine's loop lag)


# -- helpers ---------------------------------------------------------------------------------


def grid_offset(start: float, origin: float, interval: float) -> float:
    """How far `start` sits from the nearest slot `origin + k * interval`, in seconds."""
    k = (start - origin) / interval
    return abs(k - round(k)) * interval


@pytest.fixture
def start(tmp_path: Path, daemons: list[Daemon]) -> Callable[..., Daemon]:
    def go(text: str, log: Path | None = None, cwd: Path | None = None) -> Daemon:
        d = Daemon.start(tmp_path, text, log, cwd)
        daemons.append(d)
        return d

    return go


# -- one daemon shared by the read-only tests -------------------------------------------------


@dataclass
class Shared:
    d: Daemon
    web: RecordingListener  # open all along
    shut: int  # a closed port: refused all along
    flip_port: int  # open, then its listener was closed: up, then down
    flip_closed_at: float
    waited: float  # the daemon loop's run-queue time when it started listening


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    tmp = tmp_path_factory.mktemp("shared")
    web = RecordingListener()
    flip = RecordingListener()
    shut = closed_port()
    log = tmp / "probe.log"
    targets = (
        target_toml("web", web.target, labels={"team": "core", "tier": "1"}, histograms=True)
        + target_toml("shut", f"127.0.0.1:{shut}", histograms=True)
        + target_toml("flip", flip.target, histograms=True)
    )
    text = config_toml(log, targets, extra='probe_allow = ["127.0.0.1/32"]\n')
    d = Daemon.start(tmp, text, log)
    try:
        d.port  # noqa: B018 - waits for the listening event
        waited = run_queue_wait(d.proc.pid)
        d.wait_records("flip", 3)
        flip.close()
        closed_at = time.time()
        d.wait_event("state", name="flip", to="down")
        # at least ~2.8 s of schedule for every target
        for name in ("web", "shut"):
            d.wait_records(name, 14)
        yield Shared(d, web, shut, flip.port, closed_at, waited)
    finally:
        if d.proc.poll() is None:
            d.stop()
        d.kill()
        web.close()


# -- 1. records --------------------------------------------------------------------------------


@pytest.mark.serial
def test_every_log_line_is_json_and_records_have_the_contract_keys(shared: Shared) -> None:
    lines = shared.d.lines()  # fails on any line that is not JSON
    assert lines
    assert all(isinstance(line.get("event"), str) for line in lines)
    assert all(TIMESTAMP.fullmatch(line["timestamp"]) for line in lines)
    records = [line for line in lines if line["event"] == "probe"]
    names = {r["name"] for r in records}
    assert {"web", "shut", "flip"} <= names
    for r in records:
        missing = PROBE_KEYS - set(r)
        assert not missing, (missing, r)
        assert isinstance(r["port"], int) and isinstance(r["attempt"], int)
        assert r["attempt"] >= 1
        assert r["family"] == "ipv4" and r["address"] == "127.0.0.1"
        assert r["host"] == "127.0.0.1"
        assert isinstance(r["latency_ms"], int | float) and r["latency_ms"] >= 0
        assert r["target"] == f"127.0.0.1:{r['port']}"
    web = [r for r in records if r["name"] == "web"]
    assert all(r["labels"] == {"team": "core", "tier": "1"} for r in web)
    assert all(not r.get("labels") for r in records if r["name"] == "shut")


@pytest.mark.serial
def test_open_records_local_endpoint_is_what_the_listener_saw(shared: Shared) -> None:
    web = shared.d.records("web")
    assert web and all(r["outcome"] == "open" and r["error"] is None for r in web)
    peers = set(shared.web.wait_peers(len(web)))
    for r in web:
        assert (r["local_address"], r["local_port"]) in peers, r
        # the kernel's sample of the SYN's round trip, inside the connect (None: resent SYN)
        assert r["rtt_ms"] is None or 0 < r["rtt_ms"] <= r["latency_ms"], r
    assert len({r["local_port"] for r in web}) == len(web)  # a fresh socket each attempt


@pytest.mark.serial
def test_refused_records_have_a_local_port(shared: Shared) -> None:
    shut = shared.d.records("shut")
    assert shut
    for r in shut:
        assert r["outcome"] == "refused" and r["error"] == "ECONNREFUSED"
        assert r["local_address"] == "127.0.0.1"
        assert isinstance(r["local_port"], int) and 0 < r["local_port"] < 65536
        assert r["rtt_ms"] is None


# -- 2. schedule -------------------------------------------------------------------------------


@pytest.mark.serial
@pytest.mark.parametrize("name", ["web", "shut"])
def test_fixed_rate_schedule_without_drift(shared: Shared, name: str) -> None:
    recs = shared.d.records(name)
    # while the loop was ready to run but other processes had both cores
    waited = run_queue_wait(shared.d.proc.pid) - shared.waited
    assert [r["attempt"] for r in recs] == list(range(1, len(recs) + 1))
    starts = [ts(r) for r in recs]
    # How far each start is behind its slot, the slots counted from the least late start.
    behind = [s - k * INTERVAL for k, s in enumerate(starts)]
    late = [b - min(behind) for b in behind]
    # No drift: a late start does not move the ones after it, so the later half of the run
    # still has a start on its slot (a drifting schedule has every one of them behind).
    assert min(late[len(late) // 2 :]) < GRID_SLACK, late
    # A start is late only as far as the loop waited for a CPU.
    assert max(late) < GRID_SLACK + waited, (late, waited)
    # and the grid is the target's own phase, the same in every run of the daemon
    address = recs[0]["target"]
    key = _job_key(ResolvedTarget(name, address, "127.0.0.1", recs[0]["port"], INTERVAL, 0.3))
    phase = phase_of(key, INTERVAL)
    assert grid_offset(min(behind), phase, INTERVAL) < GRID_SLACK


@pytest.mark.serial
def test_about_ten_attempts_in_two_seconds(shared: Shared) -> None:
    by_name = {n: [ts(r) for r in shared.d.records(n)] for n in ("web", "shut")}
    window = max(starts[0] for starts in by_name.values())
    for name, starts in by_name.items():
        assert starts[-1] > window + 2.0, name  # the daemon ran past the window
        count = sum(window <= s < window + 2.0 for s in starts)
        assert 8 <= count <= 12, (name, count)


# -- 3. state events ---------------------------------------------------------------------------


@pytest.mark.serial
def test_state_events(shared: Shared) -> None:
    states: dict[str, list[tuple[str, str]]] = {}
    for ev in shared.d.events("state"):
        states.setdefault(ev["name"], []).append((ev["from"], ev["to"]))
    assert states["web"] == [("unknown", "up")]
    assert states["shut"] == [("unknown", "down")]
    assert states["flip"] == [("unknown", "up"), ("up", "down")]
    flip = shared.d.records("flip")
    first_refused = next(r for r in flip if r["outcome"] == "refused")
    assert ts(first_refused) > shared.flip_closed_at - 0.01
    down = next(
        ev for ev in shared.d.events("state") if ev["name"] == "flip" and ev["to"] == "down"
    )
    assert ts(down) >= ts(first_refused)
    assert down["target"] == f"127.0.0.1:{shared.flip_port}"
    assert down["error"] == "ECONNREFUSED"  # what the attempt that made it down met
    up = next(ev for ev in shared.d.events("state") if ev["name"] == "web")
    assert up["to"] == "up" and up["error"] is None


# -- 4. metrics --------------------------------------------------------------------------------


@pytest.mark.serial
def test_metrics_endpoint(shared: Shared) -> None:
    logged_web = len(shared.d.records("web"))
    status, ctype, body = shared.d.get("/metrics")
    assert status == 200
    assert ctype.startswith("text/plain") and "version=" in ctype
    # label order inside {} is not significant in the text format
    assert re.search(
        r'^probe_attempts_total\{(target="web",outcome="open"|outcome="open",target="web")\} ',
        body,
        re.M,
    )
    assert "# TYPE probe_connect_latency_seconds histogram" in body
    assert "probe_connect_latency_seconds_bucket{" in body
    m = parse_prometheus(body)
    opened = value(m, "probe_attempts_total", target="web", outcome="open")
    assert opened is not None and opened >= logged_web >= 1
    assert (value(m, "probe_attempts_total", target="shut", outcome="refused") or 0) >= 1
    assert (value(m, "probe_attempts_total", target="flip", outcome="open") or 0) >= 1
    assert (value(m, "probe_attempts_total", target="flip", outcome="refused") or 0) >= 1
    assert value(m, "probe_attempts_total", target="web", outcome="refused") in (None, 0.0)
    assert value(m, "probe_up", target="web") == 1.0
    assert value(m, "probe_up", target="shut") == 0.0
    assert value(m, "probe_up", target="flip") == 0.0
    inflight = value(m, "probe_inflight")
    # three targets, each with at most one attempt in flight (a leak would count up)
    assert inflight is not None and inflight in (0.0, 1.0, 2.0, 3.0), inflight
    # the histogram: open and refused attempts, one observation each
    for name, outcome in (("web", "open"), ("shut", "refused")):
        count = value(m, "probe_connect_latency_seconds_count", target=name)
        inf = value(m, "probe_connect_latency_seconds_bucket", target=name, le="+Inf")
        assert count == inf == value(m, "probe_attempts_total", target=name, outcome=outcome)
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (metric, labels), value in m.items()
            if metric == "probe_connect_latency_seconds_bucket" and ("target", name) in labels
        )
        assert len(buckets) > 5
        assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative


@pytest.mark.serial
def test_healthz(shared: Shared) -> None:
    status, _, body = shared.d.get("/healthz")
    assert status == 200 and body.strip() == "ok"
    assert shared.d.get("/nonexistent")[0] == 404


# -- 5. /probe ---------------------------------------------------------------------------------


def probe_answer(d: Daemon, target: str) -> tuple[int, str, dict[str, float]]:
    status, _, body = d.get(f"/probe?target={urllib.parse.quote(target, safe='')}")
    values = {}
    if status == 200:
        values = unlabelled(body)
    return status, body, values


@pytest.mark.serial
def test_probe_open_target(shared: Shared) -> None:
    before = len(shared.web.peers)
    status, body, v = probe_answer(shared.d, shared.web.target)
    assert status == 200, body
    assert v["probe_success"] == 1.0
    assert 0 < v["probe_duration_seconds"] < 5, v  # measured, and no more than a stall
    local_port = int(v["probe_local_port"])
    peers = shared.web.wait_peers(before + 1)
    assert ("127.0.0.1", local_port) in peers


@pytest.mark.serial
def test_probe_closed_target(shared: Shared) -> None:
    status, body, v = probe_answer(shared.d, f"127.0.0.1:{shared.shut}")
    assert status == 200, body
    assert v["probe_success"] == 0.0
    assert 0 < v["probe_local_port"] < 65536


@pytest.mark.serial
@pytest.mark.parametrize(
    "query",
    [
        "/probe",
        "/probe?target=",
        "/probe?target=nonsense",
        "/probe?target=127.0.0.1:0",
        "/probe?target=127.0.0.1:70000",
        "/probe?target=127.0.0.1:abc",
        "/probe?target=127.0.0.1:80,81",
        "/probe?target=127.0.0.1:1-3",
        "/probe?target=%5B::1",
        "/probe?target=:80",
    ],
)
def test_probe_bad_target_is_400(shared: Shared, query: str) -> None:
    status, _, _ = shared.d.get(query)
    assert status == 400


@pytest.mark.serial
@pytest.mark.parametrize("form", ["127.0.0.2:{port}", "[::ffff:127.0.0.2]:{port}"])
def test_probe_outside_allow_is_403_and_connects_nowhere(shared: Shared, form: str) -> None:
    other = RecordingListener("127.0.0.2")
    try:
        status, body, _ = probe_answer(shared.d, form.format(port=other.port))
        assert status == 403, body
        other.assert_not_reached()
    finally:
        other.close()


@pytest.mark.serial
def test_probe_localhost_resolves_inside_allow(shared: Shared) -> None:
    status, body, v = probe_answer(shared.d, f"localhost:{shared.web.port}")
    assert status == 200, body
    assert v["probe_success"] == 1.0


# -- 6. SIGHUP ---------------------------------------------------------------------------------


@pytest.mark.serial  # the kept target's starts stay within GRID_SLACK of its grid
def test_reload_adds_and_removes_targets_and_keeps_the_kept_one(
    start: Callable[..., Daemon], tmp_path: Path, listener: RecordingListener
) -> None:
    log = tmp_path / "probe.log"
    gone, new = closed_port(), closed_port()
    keep = target_toml("keep", listener.target)
    d = start(config_toml(log, keep + target_toml("gone", f"127.0.0.1:{gone}")), log)
    d.port  # noqa: B018 - waits for the listening event
    waited = run_queue_wait(d.proc.pid)
    d.wait_records("keep", 4)
    d.wait_records("gone", 2)
    # the kept target also changes what does not touch its schedule: timeout and labels
    keep2 = target_toml("keep", listener.target, timeout=0.25, labels={"env": "new"})
    d.rewrite(config_toml(log, keep2 + target_toml("new", f"127.0.0.1:{new}")))
    d.send(signal.SIGHUP)
    reload = d.wait_event("reload", result="ok")
    counts = tuple(reload[k] for k in ("added", "removed", "changed", "kept"))
    assert counts == (1, 1, 1, 0)  # "keep" changed its timeout and labels
    at = ts(reload)
    d.wait_records("new", 3)
    d.wait_records("keep", 3, after=at)
    # the removed target stopped: nothing of it starts after the reload event (which is
    # stamped after the schedule was updated), let alone after one more interval
    assert not [r for r in d.records("gone") if ts(r) > at]
    # the kept one: the same grid and the same attempt count across the reload
    keep_recs = d.records("keep")
    assert [r["attempt"] for r in keep_recs] == list(range(1, len(keep_recs) + 1))
    starts = [ts(r) for r in keep_recs]
    waited = run_queue_wait(d.proc.pid) - waited  # a start is late only as far as this
    key = _job_key(ResolvedTarget("keep", listener.target, "127.0.0.1", listener.port, 1, 1))
    offsets = [grid_offset(s, phase_of(key, INTERVAL), INTERVAL) for s in starts]
    assert max(offsets) < GRID_SLACK + waited, (offsets, waited)
    assert min(b - a for a, b in itertools.pairwise(starts)) > INTERVAL / 2
    after = [r for r in keep_recs if ts(r) > at]
    assert after and all(r.get("labels") == {"env": "new"} for r in after)
    # metrics follow: the removed target's series are gone, the new one's are there
    _, _, body = d.get("/metrics")
    assert 'target="gone"' not in body
    assert 'probe_up{target="new"} 0.0' in body
    assert d.stop() == 0


def test_reload_with_invalid_config_keeps_the_old_one(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    port = closed_port()
    d = start(config_toml(log, target_toml("a", f"127.0.0.1:{port}")), log)
    d.wait_records("a", 2)
    d.rewrite(config_toml(log, target_toml("a", "127.0.0.1:99999")))
    d.send(signal.SIGHUP)
    failed = d.wait_event("reload", result="failed")
    d.wait_records("a", 3, after=ts(failed) + 0.05)
    assert d.proc.poll() is None
    err = d.wait("stderr line", lambda: d.stderr)
    assert str(d.config) in err and "targets[0].address" in err, err
    assert "Traceback" not in err
    # and a good config afterwards is taken
    d.rewrite(config_toml(log, target_toml("b", f"127.0.0.1:{port}")))
    d.send(signal.SIGHUP)
    ok = d.wait_event("reload", result="ok")
    d.wait_records("b", 2)
    assert not [r for r in d.records("a") if ts(r) > ts(ok) + INTERVAL]
    assert d.stop() == 0


def test_sighup_reopens_the_log_file(start: Callable[..., Daemon], tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    rotated = tmp_path / "probe.log.1"
    d = start(config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}")), log)
    d.wait_records("a", 3)
    os.rename(log, rotated)
    d.send(signal.SIGHUP)
    fresh = d.wait("records in a fresh log", lambda: d.records("a", log) if log.exists() else None)
    d.wait_records("a", 3)
    old_size = rotated.stat().st_size
    d.wait_records("a", len(d.records("a")) + 3)  # three more attempts, all into the fresh file
    assert rotated.stat().st_size == old_size  # the old file is let go
    old = read_lines(rotated)
    assert rotated.read_bytes().endswith(b"\n")
    assert [line for line in d.lines() if line["event"] == "reload"]
    old_recs = [r for r in old if r["event"] == "probe"]
    assert old_recs and max(ts(r) for r in old_recs) < min(ts(r) for r in fresh)
    attempts = [r["attempt"] for r in old_recs + d.records("a")]
    assert attempts == list(range(1, len(attempts) + 1))  # nothing lost, nothing twice
    assert d.stop() == 0


def test_reload_failing_to_open_the_new_log_keeps_the_old_one(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    bad = tmp_path / "no-such-dir" / "probe.log"
    target = target_toml("a", f"127.0.0.1:{closed_port()}")
    d = start(config_toml(log, target), log)
    d.wait_records("a", 2)
    d.rewrite(config_toml(bad, target))
    d.send(signal.SIGHUP)
    err = d.wait("stderr line", lambda: d.stderr)
    assert str(bad) in err and "Traceback" not in err, err
    failed = d.wait_event("reload", result="failed")
    assert str(bad) in failed["error"]
    d.wait_records("a", 3, after=ts(failed))  # still probing, still into the old file
    assert d.proc.poll() is None
    assert not bad.parent.exists()
    assert d.stop() == 0


@pytest.mark.serial
def test_reload_changing_the_interval_replaces_the_schedule(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    port = closed_port()
    d = start(config_toml(log, target_toml("a", f"127.0.0.1:{port}")), log)
    d.wait_records("a", 3)
    d.rewrite(config_toml(log, target_toml("a", f"127.0.0.1:{port}", interval=0.5)))
    d.send(signal.SIGHUP)
    at = ts(d.wait_event("reload", result="ok"))
    d.wait_records("a", 5, after=at + 0.05, timeout=10)
    starts = [ts(r) for r in d.records("a") if ts(r) > at + 0.05]
    assert len(starts) >= 3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) > 0.4, gaps


def test_reload_counts_a_changed_interval_as_changed(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    """One of two targets changes its interval: 0 added, 0 removed, 1 changed, 1 kept,
    which add up to the two targets before and after."""
    log = tmp_path / "probe.log"
    a, b = (target_toml(n, f"127.0.0.1:{closed_port()}") for n in ("a", "b"))
    d = start(config_toml(log, a + b), log)
    d.wait_records("b", 1)
    d.rewrite(config_toml(log, a + b.replace("[[targets]]\n", "[[targets]]\ninterval = 0.3\n")))
    d.send(signal.SIGHUP)
    reload = d.wait_event("reload", result="ok")
    counts = tuple(reload[k] for k in ("added", "removed", "changed", "kept"))
    assert counts == (0, 0, 1, 1), reload
    assert d.stop() == 0


def test_reload_from_no_targets_starts_probing(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    d = start(config_toml(log, ""), log)
    assert d.wait_event("started")["targets"] == 0
    d.rewrite(config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}")))
    d.send(signal.SIGHUP)
    assert d.wait_event("reload", result="ok")["added"] == 1
    recs = d.wait_records("a", 3)
    assert [r["attempt"] for r in recs[:3]] == [1, 2, 3]
    assert d.stop() == 0


def test_sighup_when_the_log_cannot_be_reopened_stops_loudly(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "probe.log"
    d = start(config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}")), log)
    d.wait_records("a", 2)
    (tmp_path / "logs").rename(tmp_path / "gone")  # the log's directory disappears
    d.send(signal.SIGHUP)
    rc = d.proc.wait(timeout=5)
    assert rc != 0
    err = d.stderr
    assert str(log) in err and "Traceback" not in err, err
    read_lines(tmp_path / "gone" / "probe.log")  # what was written is whole JSON lines


def fds_to(pid: int, path: Path) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                found.append(fd)
        except OSError:
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_sighup_rotation_lets_go_of_the_rotated_file(
    start: Callable[..., Daemon], tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    rotated = tmp_path / "probe.log.1"
    d = start(config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}")), log)
    d.wait_records("a", 2)
    assert fds_to(d.proc.pid, log)
    os.rename(log, rotated)
    d.send(signal.SIGHUP)
    d.wait("records in a fresh log", lambda: d.records("a", log) if log.exists() else None)
    assert fds_to(d.proc.pid, log)
    assert fds_to(d.proc.pid, rotated) == []


def test_reload_log_file_to_stdout(start: Callable[..., Daemon], tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    target = target_toml("a", f"127.0.0.1:{closed_port()}")
    d = start(config_toml(log, target), log)
    d.wait_records("a", 2)
    d.rewrite(config_toml(None, target))
    d.send(signal.SIGHUP)
    stdout = tmp_path / "stdout"
    try:
        d.wait("records on stdout", lambda: d.records("a", stdout), timeout=2)
    finally:
        d.stop()
    # The reload event itself already goes to the new sink, standard output.
    reload = next(e for e in d.lines(stdout) if e["event"] == "reload")
    assert not [r for r in d.records("a") if ts(r) > ts(reload)]


# -- 7. a storm of SIGHUPs -----------------------------------------------------------------------


def test_sighup_storm_ends_on_the_last_valid_config(
    start: Callable[..., Daemon], tmp_path: Path, listener: RecordingListener
) -> None:
    log = tmp_path / "probe.log"
    a = target_toml("a", listener.target)
    storm = [closed_port() for _ in range(3)]
    final_port = closed_port()
    d = start(config_toml(log, a), log)
    d.wait_records("a", 2)
    invalid = [
        config_toml(log, a + target_toml("x", "127.0.0.1:99999")),
        config_toml(log, a) + "[defaults\n",
        config_toml(log, a).replace("[defaults]", "[defaults]\nintervall = 1"),
    ]
    for i in range(50):
        if i == 49:
            text = config_toml(log, a + target_toml("final", f"127.0.0.1:{final_port}"))
        elif i % 2:
            text = config_toml(log, a + target_toml(f"s{i % 3}", f"127.0.0.1:{storm[i % 3]}"))
        else:
            text = invalid[i % 3]
        d.rewrite(text)
        d.send(signal.SIGHUP)
        time.sleep(0.015)  # the storm's pace: 50 signals in under a second
    t_end = time.time()
    d.wait_records("final", 3)
    # records of "final" follow the reload that took the final file, and the log is in
    # order: every reload event is in the log by now
    reloads = d.events("reload")
    assert 1 <= len(reloads) <= 50
    last = reloads[-1]
    assert last["result"] == "ok", last
    assert ts(last) >= t_end - 0.05
    d.wait_records("a", 3, after=ts(last) + INTERVAL)
    late = {r["name"] for r in d.records() if ts(r) > ts(last) + INTERVAL}
    assert late == {"a", "final"}
    assert d.proc.poll() is None
    assert d.get("/healthz")[0] == 200
    _, _, body = d.get("/metrics")
    assert not re.search(r'target="s\d"', body)
    assert str(d.config) in d.stderr
    attempts = [r["attempt"] for r in d.records("a")]
    assert attempts == list(range(1, len(attempts) + 1))
    assert d.stop() == 0


# -- 8. SIGTERM / SIGINT -----------------------------------------------------------------------


@pytest.mark.serial  # aims SIGTERM at a moment of the schedule, an attempt 1 s in flight
def test_sigterm_finishes_the_attempt_in_flight(
    start: Callable[..., Daemon], tmp_path: Path, full_queue: FullQueueListener
) -> None:
    log = tmp_path / "probe.log"
    shut = closed_port()
    targets = target_toml("hang", full_queue.target, timeout=1.0) + target_toml(
        "shut", f"127.0.0.1:{shut}"
    )
    d = start(config_toml(log, targets), log)
    first = d.wait_records("hang", 1, timeout=5)[0]
    assert first["outcome"] == "timeout"
    end = ts(first) + first["latency_ms"] / 1000
    # the next attempt starts at the next slot (<= 0.2 s after `end`) and runs 1 s:
    # signal 0.3-0.5 s after `end`, midway between two slots of "shut"
    shut_origin = ts(d.wait_records("shut", 1)[0])
    base = end + 0.3
    when = base + (INTERVAL / 2 - (base - shut_origin)) % INTERVAL
    time.sleep(max(0.0, when - time.time()))  # aims the signal at a moment of the schedule
    sent = time.time()
    d.send(signal.SIGTERM)
    assert d.proc.wait(timeout=1.0 + 1.0 + 1.5) == 0
    data = log.read_bytes()
    assert data.endswith(b"\n")
    lines = d.lines()  # all JSON
    assert lines[-1]["event"] == "stopped"
    hang = d.records("hang")
    in_flight = [r for r in hang if sent - 1.0 < ts(r) < sent]
    assert in_flight, [(ts(r) - sent, r["outcome"]) for r in hang]
    assert in_flight[-1]["outcome"] == "timeout"
    assert ts(in_flight[-1]) + in_flight[-1]["latency_ms"] / 1000 > sent  # it outlived SIGTERM
    assert in_flight[-1]["latency_ms"] >= 900
    late = [r for r in d.records() if ts(r) > sent + 0.02]
    assert late == []
    assert "Traceback" not in d.stderr


def test_sigterm_answers_a_probe_request_in_flight(
    start: Callable[..., Daemon], tmp_path: Path, full_queue: FullQueueListener
) -> None:
    log = tmp_path / "probe.log"
    d = start(config_toml(log, "", timeout=1.0), log)
    port = d.port
    answer: list[tuple[int, str, str]] = []
    thread = threading.Thread(
        target=lambda: answer.append(http_get(port, f"/probe?target={full_queue.target}"))
    )
    thread.start()
    d.wait_inflight()  # the attempt (1 s, the default timeout)
    d.send(signal.SIGTERM)
    assert d.proc.wait(timeout=1.0 + 1.0 + 1.5) == 0
    thread.join(5)
    assert answer and answer[0][0] == 200, answer
    assert "probe_success 0.0" in answer[0][2]
    recs = [r for r in d.records() if r["target"] == full_queue.target]
    assert [r["outcome"] for r in recs] == ["timeout"]


def test_sigterm_lets_a_long_probe_request_finish(
    start: Callable[..., Daemon], tmp_path: Path, full_queue: FullQueueListener
) -> None:
    log = tmp_path / "probe.log"
    d = start(config_toml(log, "", timeout=0.2), log)
    port = d.port
    answer: list[tuple[int, str, str]] = []
    query = f"/probe?target={full_queue.target}&timeout=2.5"
    thread = threading.Thread(target=lambda: answer.append(http_get(port, query)))
    thread.start()
    d.wait_inflight()  # the attempt (2.5 s)
    d.send(signal.SIGTERM)
    assert d.proc.wait(timeout=2.5 + 1.0 + 1.5) == 0
    thread.join(5)
    recs = [r for r in d.records() if r["target"] == full_queue.target]
    assert [r["outcome"] for r in recs] == ["timeout"]
    assert answer and answer[0][0] == 200, answer


def test_sigint_exits_zero(start: Callable[..., Daemon], tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    d = start(config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}")), log)
    d.wait_records("a", 2)
    assert d.stop(signal.SIGINT) == 0
    assert d.lines()[-1]["event"] == "stopped"
    assert "Traceback" not in d.stderr


# -- 9. bad configs ------------------------------------------------------------------------------


BAD_CONFIGS = [
    ('[[targets]]\naddress = "127.0.0.1:99999"\n', "targets[0].address"),
    ('[[targets]]\naddress = "127.0.0.1"\n', "targets[0].address"),
    ("[defaults]\nintervall = 1.0\n", "defaults.intervall"),
    ("[defaults]\ninterval = -1.0\n", "defaults.interval"),
    ('[metrics]\nprobe_allow = ["127.0.0.1/8"]\n', "metrics.probe_allow[0]"),
]


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_run_with_a_missing_config(tmp_path: Path) -> None:
    out = run_probe("run", "--config", "missing.toml", cwd=tmp_path)
    assert out.returncode == 2
    assert "missing.toml" in one_line(out.stderr)
    assert out.stdout == ""


@pytest.mark.parametrize(("text", "key"), BAD_CONFIGS)
def test_run_with_an_invalid_config(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = run_probe("run", "--config", str(path), cwd=tmp_path)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert str(path) in line and key in line, line


@pytest.mark.parametrize(("text", "key"), BAD_CONFIGS)
def test_validate_bad(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = run_probe("validate", str(path), cwd=tmp_path)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert str(path) in line and key in line, line


def test_validate_good_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(config_toml(None, target_toml("a", "127.0.0.1:8080")))
    out = run_probe("validate", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout
    out = run_probe("validate", "missing.toml", cwd=tmp_path)
    assert out.returncode == 2
    assert "missing.toml" in one_line(out.stderr)


def test_shipped_config_validates() -> None:
    out = run_probe("validate", str(ROOT / "config.toml"), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    out = run_probe("validate", cwd=ROOT)  # PATH defaults to config.toml
    assert out.returncode == 0, out.stderr


# -- 10. a log that cannot be written -------------------------------------------------------------


def test_log_to_dev_full_stops_the_daemon(start: Callable[..., Daemon], tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    d = start(config_toml(Path("/dev/full"), target_toml("a", f"127.0.0.1:{closed_port()}")))
    rc = d.proc.wait(timeout=10)
    assert rc != 0
    err = d.stderr
    assert "/dev/full" in err, err
    assert "Traceback" not in err


def test_log_in_a_missing_directory_is_exit_2(start: Callable[..., Daemon], tmp_path: Path) -> None:
    bad = tmp_path / "no-such-dir" / "probe.log"
    d = start(config_toml(bad, target_toml("a", f"127.0.0.1:{closed_port()}")))
    assert d.proc.wait(timeout=10) == 2
    line = one_line(d.stderr)
    assert str(bad) in line


# -- 11. the shipped config ------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.serial  # 127.0.0.1:9464
def test_the_shipped_config_runs(start: Callable[..., Daemon], tmp_path: Path) -> None:
    if not port_is_free(9464):
        pytest.skip("127.0.0.1:9464 is taken on this machine")
    shutil.copy(ROOT / "config.toml", tmp_path / "config.toml")
    # no --config: the default is config.toml in the working directory; the log is stdout
    d = Daemon.start(tmp_path, None, args=())
    try:
        d.wait("start or exit", lambda: d.events("started") or d.proc.poll() is not None)
        if d.proc.poll() is not None and "cannot listen" in d.stderr:
            pytest.skip("127.0.0.1:9464 was taken meanwhile")
        started = d.wait_event("started")
        assert d.port == 9464
        # the shipped intervals are 10 s and 5 s: the first slots are up to that far away
        mine = d.wait_records("self-metrics", 1, timeout=12)[0]
        seed = d.wait_records("seed", 1, timeout=12)[0]
        assert mine["outcome"] == "open", mine
        assert seed["outcome"] in ("refused", "open"), seed
        key = _job_key(ResolvedTarget("self-metrics", "127.0.0.1:9464", "127.0.0.1", 9464, 10, 1))
        assert grid_offset(ts(mine), phase_of(key, 10.0), 10.0) < GRID_SLACK
        assert ts(mine) - ts(started) < 10.0 + GRID_SLACK
        m = parse_prometheus(http_get(9464, "/metrics")[2])
        assert value(m, "probe_up", target="self-metrics") == 1.0
        assert d.stop() == 0
    finally:
        d.kill()
