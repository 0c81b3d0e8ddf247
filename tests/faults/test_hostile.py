"""The daemon under hostile load, bad luck and clock steps: whatever arrives over
HTTP, from DNS or from the clock, scheduled probes keep their slots and records stay whole.

Every test runs the real daemon as a subprocess. Faults come from real kernels: network
namespaces with a DNS server of ours on their loopback (`/etc/netns/NAME/resolv.conf` points
the namespace's resolver at it; a name starting with `hang` is never answered), `prlimit`,
a small tmpfs for a full disk, SIGSTOP for a stalled daemon. The one thing injected is the
wall clock for the clock-step test: `time.time` is patched inside the daemon's process,
which is what a stepped system clock looks like to Python code (the monotonic clock, as in
a real step, is left alone). Only loopback, and addresses inside our namespaces, are used.
"""

from __future__ import annotations

import ast
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import (
    INTERVAL,
    ROOT,
    Daemon,
    DnsNetns,
    FullQueueListener,
    Netns,
    closed_port,
    config_toml,
    draining,
    http_get,
    logging_one_target,
    metrics_of,
    ns_get,
    parse_prometheus,
    skipped_total,
    start_in,
    target_toml,
    ts,
    value,
    wait_for,
)

pytestmark = pytest.mark.serial  # timing under load, or a fixed resource: one at a time

T = TypeVar("T")

# -- the namespaced daemon and its DNS -------------------------------------------------------------


@pytest.fixture
def dns(netns: Netns, tmp_path: Path) -> Iterator[DnsNetns]:
    d = DnsNetns(netns, tmp_path)
    yield d
    d.close()


def background(fn: Callable[[], T]) -> tuple[threading.Thread, list[T | BaseException]]:
    out: list[T | BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # reported by the test that joins
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def records_between(d: Daemon, name: str, first: int) -> list[dict[str, Any]]:
    """Records of `name` after the first `first` lines of the log (file order, not time)."""
    return [r for r in d.lines()[first:] if r.get("event") == "probe" and r.get("name") == name]


# -- 1. lookups with bounds ------------------------------------------------------------------------


def test_hung_probe_lookups_do_not_starve_a_named_target_added_by_reload(
    dns: DnsNetns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = start_in(tmp_path, config_toml(log, ""), log, daemons, dns.ns)
    port = d.wait("listening", lambda: d.events("listening"))[0]["address"].rpartition(":")[2]
    hung = [
        background(
            lambda i=i: ns_get(dns.ns, int(port), f"/probe?target=hang{i}.test:80&timeout=20", 25)
        )
        for i in range(8)
    ]
    from probe.daemon.app import LOOKUP_THREADS  # here: the daemon tests run on old trees

    # every thread of /probe's lookup pool hangs (the other requests queue behind them)
    wait_for("/probe's lookup threads hanging", lambda: len(dns.asked()) >= LOOKUP_THREADS)
    d.rewrite(config_toml(log, target_toml("named", "good.test:9")))
    d.send(signal.SIGHUP)
    recs = d.wait_records("named", 3, timeout=5)
    assert recs[0]["address"] == "127.0.0.1"
    assert recs[0]["outcome"] == "refused"
    assert all(t.is_alive() for t, _ in hung)  # still hung: the two pools are apart
    d.kill()


def test_a_hung_re_resolution_keeps_the_last_good_address(
    dns: DnsNetns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("named", "good.test:9"))
    d = start_in(
        tmp_path, text, log, daemons, dns.ns, {"RESOLVE_TTL": 1.0, "RESOLVE_DEADLINE": 1.0}
    )
    d.wait_records("named", 2)
    dns.hang()
    mark = len(d.lines())
    # the answer expires after 1 s; the re-resolution hangs; 1 s later it is given up
    time.sleep(3.5)
    after = records_between(d, "named", mark)
    span = ts_span(after)
    # every slot of the 3.5 s since the DNS died was probed, on the old address
    assert len(after) >= 3.5 / INTERVAL - 3 and span > 3.0, (len(after), span)
    assert {r["address"] for r in after} == {"127.0.0.1"}
    assert {r["outcome"] for r in after} == {"refused"}
    stale = d.wait_event("resolve", result="stale", host="good.test")
    assert stale["error"] == "EAI_AGAIN"
    assert stale["names"] == ["named"]
    port = int(d.events("listening")[0]["address"].rpartition(":")[2])
    samples = metrics_of(lambda path: ns_get(dns.ns, port, path))
    assert skipped_total(samples) == 0
    failures = value(samples, "probe_resolve_failures_total", target="named")
    assert failures is not None and failures >= 1


def ts_span(records: list[dict[str, Any]]) -> float:
    return ts(records[-1]) - ts(records[0]) if len(records) > 1 else 0.0


def test_sigterm_abandons_a_hung_probe_lookup_at_once(
    dns: DnsNetns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = start_in(tmp_path, config_toml(log, "", timeout=0.5), log, daemons, dns.ns)
    port = int(d.wait("listening", lambda: d.events("listening"))[0]["address"].rpartition(":")[2])
    thread, answer = background(
        lambda: ns_get(dns.ns, port, "/probe?target=hang.test:80&timeout=20", 25)
    )
    wait_for("the /probe lookup hanging", lambda: "hang.test" in dns.asked())
    sent = time.monotonic()
    d.send(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 0
    took = time.monotonic() - sent
    thread.join(5)
    assert answer and not isinstance(answer[0], BaseException), answer
    assert answer[0][0] == 503, answer
    assert took < 5.0, took  # not the lookup's 30 s, nor aiohttp's 60 s grace
    assert d.lines()[-1]["event"] == "stopped"
    assert "Traceback" not in d.stderr


# -- 2. the schedule owns its slots ----------------------------------------------------------------


def test_probe_flood_to_a_dropped_port_leaves_the_schedule_its_slots(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    log = tmp_path / "probe.log"
    shut = closed_port()
    text = config_toml(log, target_toml("sched", f"127.0.0.1:{shut}"), extra="")
    text = text.replace("[metrics]", "[engine]\nconcurrency = 20\n\n[metrics]")
    d = start_in(tmp_path, text, log, daemons)
    d.wait_records("sched", 1)
    port = d.port
    flood = [
        background(lambda: http_get(port, f"/probe?target={full_queue.target}&timeout=10", 15))
        for _ in range(24)
    ]
    d.wait_inflight(10)  # /probe's own limit (probe_concurrency, default 10) is full
    mark = len(d.lines())
    time.sleep(3.0)
    after = records_between(d, "sched", mark)
    assert len(after) >= 3.0 / INTERVAL - 3, len(after)  # ~15 slots, all probed
    samples = metrics_of(d.get)  # answered while the flood holds /probe's slots
    assert skipped_total(samples) == 0
    d.send(signal.SIGTERM)
    d.wait_draining()
    d.send(signal.SIGTERM)  # no need to wait out the flood's 10 s attempts
    statuses = []
    for thread, out in flood:
        thread.join(15)
        statuses.append(out[0][0] if out and not isinstance(out[0], BaseException) else None)
    assert 503 in statuses  # past /probe's own limit: busy, not a slot of the schedule's
    assert d.proc.wait(15) == 0


def _slowloris(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and never the rest
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def test_slowloris_under_a_low_descriptor_limit_stops_neither_probes_nor_metrics(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs util-linux's prlimit")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip("the test process needs 2048 descriptors for its clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("sched", f"127.0.0.1:{closed_port()}"))
    d = start_in(tmp_path, text, log, daemons, prefix=("prlimit", "--nofile=512"))
    d.wait_records("sched", 1)
    port = d.port
    socks = _slowloris(port, 600)
    try:
        mark = len(d.lines())
        time.sleep(3.0)
        status, _, body = http_get(port, "/metrics", timeout=3)
        after = records_between(d, "sched", mark)
    finally:
        for s in socks:
            s.close()
    assert status == 200
    assert "probe_up" in body
    assert len(after) >= 3.0 / INTERVAL - 3, len(after)
    assert {r["outcome"] for r in after} == {"refused"}  # never EMFILE, never a shortage
    assert skipped_total(parse_prometheus(body)) == 0
    assert d.stop() == 0


def test_scrapes_of_a_big_page_do_not_delay_scheduled_starts(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    shut = closed_port()
    n = 2000
    targets = "".join(target_toml(f"t{i:05d}", f"127.0.0.1:{shut}", interval=2.0) for i in range(n))
    d = start_in(tmp_path, config_toml(log, targets, interval=2.0), log, daemons)
    d.wait("a first round", lambda: len(d.records()) >= n, timeout=20)
    scrape = lambda path: d.get(path, timeout=30)  # noqa: E731  a 3 MB page on a busy machine
    before = metrics_of(scrape)
    waited = run_queue_wait(d.proc.pid)
    # At least three scrapes back to back and at least 6 s of schedule beside them: the
    # window is counted in pages and seconds both, so a slow machine lengthens it instead of
    # failing it.
    began = time.monotonic()
    pages = 0
    while pages < 3 or time.monotonic() - began < 6.0:
        status, _, _ = scrape("/metrics")
        assert status == 200
        pages += 1
    after = metrics_of(scrape)
    waited = run_queue_wait(d.proc.pid) - waited

    def over(samples: dict[Any, float], bound: str) -> float:
        total = value(samples, "probe_schedule_lag_seconds_count") or 0.0
        within = value(samples, "probe_schedule_lag_seconds_bucket", le=bound) or 0.0
        return total - within

    starts = (value(after, "probe_schedule_lag_seconds_count") or 0) - (
        value(before, "probe_schedule_lag_seconds_count") or 0
    )
    late = over(after, "0.25") - over(before, "0.25")
    assert starts >= 2 * n, (starts, pages)
    # Starts the scrapes delayed, not the machine: while the loop was ready to run but other
    # processes had both cores, at most the starts falling due then (n per 2 s) were late.
    assert late <= starts * 0.001 + waited * n / 2.0, (late, starts, pages, waited)


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread (the daemon's loop) has spent ready to run but
    waiting for a CPU (/proc/PID/schedstat: on-CPU ns, run-queue ns, slices)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def test_a_stalled_daemon_counts_and_logs_its_late_starts(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = logging_one_target(tmp_path, log, daemons)
    assert value(metrics_of(d.get), "probe_late_starts_total") == 0
    d.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.5)
    d.proc.send_signal(signal.SIGCONT)
    late = d.wait_event("late")
    assert late["starts"] >= 1 and late["worst_ms"] > 100
    samples = metrics_of(d.get)
    assert (value(samples, "probe_late_starts_total") or 0) >= 1


# -- 3. the clock ----------------------------------------------------------------------------------


def test_clock_step_re_anchors_the_schedule_unit() -> None:
    from probe.daemon.schedule import Clock, Schedule  # here: the daemon tests run on old trees

    wall, mono = [1_000_000.0], [50.0]
    clock = Clock(lambda: wall[0], lambda: mono[0])
    schedule: Schedule[str] = Schedule()
    schedule.update([("a", 1.0, "a"), ("b", 1.0, "b")], clock.now())
    mono[0] += 2.5
    wall[0] += 2.5
    assert clock.step() is None  # both moved together: no step
    popped = schedule.pop_due(clock.now())
    assert len(popped) == 2 and all(job.skipped <= 2 for job, _, _ in popped)
    for job, _, _ in popped:
        job.skipped = 0
    # the wall clock steps back an hour while a second passes
    mono[0] += 1.0
    wall[0] += 1.0 - 3600.0
    assert clock.now() == pytest.approx(1_000_003.5)  # paced on the monotonic clock
    step = clock.step()
    assert step == pytest.approx(-3600.0)
    schedule.reanchor(clock.now())
    due = schedule.next_due()
    assert due is not None and 0 < due - clock.now() <= 1.0  # the next slot, not an hour away
    mono[0] += 1.0
    wall[0] += 1.0
    popped = schedule.pop_due(clock.now())
    assert len(popped) == 2 and all(start and job.skipped == 0 for job, _, start in popped)
    # forward an hour: re-anchored, nothing skipped, no burst of make-up attempts
    mono[0] += 0.01
    wall[0] += 3600.01
    assert clock.step() == pytest.approx(3600.0)
    schedule.reanchor(clock.now())
    mono[0] += 1.0
    wall[0] += 1.0
    popped = schedule.pop_due(clock.now())
    assert len(popped) == 2 and all(job.skipped == 0 for job, _, _ in popped)


@pytest.mark.parametrize("step", [-3600.0, 3600.0])
def test_a_wall_clock_step_neither_stops_nor_bursts_probing(
    tmp_path: Path, daemons: list[Daemon], step: float
) -> None:
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}"))
    flag = tmp_path / "step-now"
    d = start_in(tmp_path, text, log, daemons, patches={"_clock_step": [step, str(flag)]})
    d.wait_records("a", 2)
    flag.touch()
    event = d.wait_event("clock")  # the step is noticed on the next flush tick (0.1 s)
    mark = len(d.lines())
    time.sleep(2.0)
    after = records_between(d, "a", mark)
    assert 2.0 / INTERVAL - 3 <= len(after) <= 2.0 / INTERVAL + 2, len(after)
    assert skipped_total(metrics_of(d.get)) == 0
    assert event["step_s"] == pytest.approx(step, abs=1.0)
    assert d.stop() == 0


# -- 4. the log ------------------------------------------------------------------------------------


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    _mount_tmpfs(where, "64k")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_leaves_only_whole_lines_and_the_next_run_appends_cleanly(
    tmp_path: Path, daemons: list[Daemon], small_disk: Path
) -> None:
    log = small_disk / "probe.log"
    shut = closed_port()
    targets = "".join(target_toml(f"t{i}", f"127.0.0.1:{shut}", interval=0.05) for i in range(40))
    run1 = tmp_path / "run1"
    run1.mkdir()
    d = start_in(run1, config_toml(log, targets), log, daemons)
    assert d.proc.wait(timeout=30) == 1
    stderr = d.stderr.strip().splitlines()
    assert len(stderr) == 1 and str(log) in stderr[0] and "No space left" in stderr[0], stderr
    data = log.read_bytes()
    assert len(data) > 30_000 and data.endswith(b"\n"), data[-200:]
    first = d.lines()  # every line JSON: read_lines fails on a torn one
    # room again: the next run's lines start on a line of their own
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    run2 = tmp_path / "run2"
    run2.mkdir()
    d2 = start_in(run2, config_toml(log, target_toml("again", f"127.0.0.1:{shut}")), log, daemons)
    d2.wait_records("again", 2)
    assert d2.stop() == 0
    lines = d2.lines()
    assert lines[: len(first)] == first
    assert lines[-1]["event"] == "stopped"


def test_a_removed_log_file_is_reopened_within_a_second(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "logs" / "probe.log"
    log.parent.mkdir()
    d = logging_one_target(tmp_path, log, daemons)
    log.unlink()
    removed = time.monotonic()
    d.wait("the log file again", log.exists, timeout=2)
    assert time.monotonic() - removed < 1.5
    event = d.wait_event("log", result="reopened")
    assert event["file"] == str(log)
    d.wait_records("a", 3)
    assert d.stop() == 0
    assert d.lines()[-1]["event"] == "stopped"


def test_a_replaced_log_file_is_reopened_and_said_so(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "probe.log"
    d = logging_one_target(tmp_path, log, daemons)
    new = tmp_path / "replacement"
    new.write_text("")
    os.replace(new, log)  # another file now has the name
    event = d.wait_event("log", result="reopened", timeout=3)
    assert event["file"] == str(log)
    d.wait_records("a", 2)  # in the new file
    assert d.stop() == 0


def test_a_removed_log_directory_is_exit_1_naming_the_file(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "logs" / "probe.log"
    log.parent.mkdir()
    d = logging_one_target(tmp_path, log, daemons)
    shutil.rmtree(log.parent)
    assert d.proc.wait(timeout=2) == 1
    stderr = d.stderr.strip().splitlines()
    assert len(stderr) == 1 and str(log) in stderr[0], stderr


# -- 5. signals during the drain -------------------------------------------------------------------


def test_sighup_during_the_drain_is_ignored(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    d = draining(tmp_path, daemons, full_queue)
    d.send(signal.SIGHUP)
    time.sleep(0.3)
    assert d.proc.poll() is None  # still draining: not killed, not reloaded
    assert d.events("reload") == []
    d.send(signal.SIGTERM)
    assert d.proc.wait(timeout=3) == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_ends_the_drain_at_once(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener, second: signal.Signals
) -> None:
    d = draining(tmp_path, daemons, full_queue)
    sent = time.monotonic()
    d.send(second)
    assert d.proc.wait(timeout=3) == 0
    assert time.monotonic() - sent < 2.0
    lines = d.lines()
    assert lines[-1]["event"] == "stopped"
    abandoned = [line for line in lines if line.get("event") == "abandoned"]
    assert len(abandoned) == 1 and abandoned[0]["names"] == ["slow"]
    # the attempt in flight has no record: its outcome is unknown, so none is claimed
    assert d.records("slow") == []
    assert "Traceback" not in d.stderr


# -- 6. objects with one life ----------------------------------------------------------------------


def test_parse_probe_request() -> None:
    from probe.daemon.http import Answer, ProbeRequest, parse_probe

    got = parse_probe(
        {"target": "127.0.0.1:80", "timeout": "2.5", "debug": "true"},
        {"X-Prometheus-Scrape-Timeout-Seconds": "4"},
    )
    assert got == ProbeRequest("127.0.0.1:80", 2.5, True, 4.0)
    assert parse_probe({"target": "a:1"}, {}) == ProbeRequest("a:1")
    for query in (
        {},
        {"target": ""},
        {"target": "a:1", "timeout": "x"},
        {"target": "a:1", "timeout": "31"},
    ):
        bad = parse_probe(query, {})
        assert isinstance(bad, Answer) and bad.status == 400, query


def _daemon_class() -> ast.ClassDef:
    tree = ast.parse((ROOT / "probe" / "daemon" / "app.py").read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Daemon")


def test_app_does_not_import_aiohttp() -> None:
    tree = ast.parse((ROOT / "probe" / "daemon" / "app.py").read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [name for name in imported if name.startswith("aiohttp")]


def test_every_daemon_attribute_is_created_in_init() -> None:
    created: set[str] = set()
    assigned: dict[str, set[str]] = {}
    for method in _daemon_class().body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(method):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign | ast.AugAssign)
                else []
            )
            for target in targets:
                for t in ast.walk(target):
                    if (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        if method.name == "__init__":
                            created.add(t.attr)
                        else:
                            assigned.setdefault(method.name, set()).add(t.attr)
    outside = {m: attrs - created for m, attrs in assigned.items() if attrs - created}
    assert outside == {}


def test_reload_reconfigures_the_engine_through_its_method() -> None:
    source = ast.unparse(_daemon_class())
    assert ".options = " not in source
    assert "reconfigure(" in source


def test_reload_timeout_change_reaches_new_attempts(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("t", full_queue.target), timeout=0.2, interval=1.0)
    d = start_in(tmp_path, text, log, daemons)
    d.wait_records("t", 1)
    port = d.port
    d.rewrite(config_toml(log, target_toml("t", full_queue.target), timeout=0.6, interval=1.0))
    d.send(signal.SIGHUP)
    d.wait_event("reload", result="ok")
    status, _, _ = http_get(port, f"/probe?target={full_queue.target}")  # the default timeout
    assert status == 200
    recs = d.wait_records(full_queue.target, 1)  # the /probe record, named by its target
    assert 550 <= recs[-1]["latency_ms"] < 1500
    assert d.stop(timeout=5) == 0
