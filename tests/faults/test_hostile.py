"""The daemon under hostile load, bad luck and clock steps: whatever arrives over
HTTP, from DNS or from the clock, scheduled probes keep their slots and records stay whole;
a drain ends as asked.

Every test runs the real daemon as a subprocess. Faults come from real kernels: network
namespaces with a DNS server of ours on their loopback (`/etc/netns/NAME/resolv.conf` points
the namespace's resolver at it; a name starting with `hang` is never answered), `prlimit`,
a small tmpfs for a full disk, SIGSTOP for a stalled daemon. The one thing injected is the
wall clock for the clock-step test: `time.time` is patched inside the daemon's process,
which is what a stepped system clock looks like to Python code (the monotonic clock, as in
a real step, is left alone). Only loopback, and addresses inside our namespaces, are used.

Tests that look at time or hold a fixed resource are marked `serial` (tests/conftest.py).
"""

from __future__ import annotations

import resource
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import (
    Any,
    TypeVar,
)

import pytest
from helpers import (
    INTERVAL,
    Daemon,
    DnsNetns,
    FullQueueListener,
    closed_port,
    config_toml,
    draining,
    http_get,
    logging_one_target,
    metrics_of,
    ns_get,
    parse_prometheus,
    run_queue_wait,
    skipped_total,
    start_in,
    target_toml,
    ts,
    value,
    wait_for,
)

T = TypeVar("T")


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


@pytest.mark.serial
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


@pytest.mark.serial
def test_a_hung_re_resolution_keeps_the_last_good_address(
    dns: DnsNetns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("named", "good.test:9"))
    d = start_in(
        tmp_path, text, log, daemons, dns.ns, {"RESOLVE_TTL": 1.0, "RESOLVE_DEADLINE": 1.0}
    )
    d.wait_records("named", 2)
    port = int(d.events("listening")[0]["address"].rpartition(":")[2])
    get = lambda path: ns_get(dns.ns, port, path)  # noqa: E731
    skipped, waited = skipped_total(metrics_of(get)), run_queue_wait(d.proc.pid)
    dns.hang()
    mark = len(d.lines())
    # the answer expires after 1 s; the re-resolution hangs; 1 s later it is given up
    time.sleep(3.5)  # an observation window: the schedule's slots through all of that
    after = records_between(d, "named", mark)
    span = ts_span(after)
    lost = (run_queue_wait(d.proc.pid) - waited) / (INTERVAL / 2)  # as assert_no_skip_but_for_waits
    # every slot of the 3.5 s since the DNS died was probed, on the old address
    assert len(after) >= 3.5 / INTERVAL - 3 - lost and span > 3.0, (len(after), span, lost)
    assert {r["address"] for r in after} == {"127.0.0.1"}
    assert {r["outcome"] for r in after} == {"refused"}
    stale = d.wait_event("resolve", result="stale", host="good.test")
    assert stale["error"] == "EAI_AGAIN"
    assert stale["names"] == ["named"]
    samples = metrics_of(get)
    assert_no_skip_but_for_waits(skipped_total(samples) - skipped, d, waited)
    failures = value(samples, "probe_resolve_failures_total", target="named")
    assert failures is not None and failures >= 1


@pytest.mark.serial
def test_a_failed_re_resolution_keeps_the_last_good_address(
    dns: DnsNetns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The DNS server dies (its port answers ICMP unreachable: the lookup fails at once,
    rather than hangs as above): the last good address is kept."""
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("named", "good.test:9"))
    d = start_in(
        tmp_path, text, log, daemons, dns.ns, {"RESOLVE_TTL": 1.0, "RESOLVE_DEADLINE": 1.0}
    )
    d.wait_records("named", 2)
    port = int(d.events("listening")[0]["address"].rpartition(":")[2])
    get = lambda path: ns_get(dns.ns, port, path)  # noqa: E731
    skipped, waited = skipped_total(metrics_of(get)), run_queue_wait(d.proc.pid)
    dns.server.kill()
    dns.server.wait(5)
    killed = time.time()
    stale = d.wait_event("resolve", result="stale", host="good.test")
    assert stale["names"] == ["named"]
    recs = d.wait_records("named", 5, after=ts(stale))
    assert {(r["address"], r["outcome"]) for r in recs} == {("127.0.0.1", "refused")}
    after = [r for r in d.records("named") if ts(r) > killed]
    span = ts(after[-1]) - ts(after[0])
    assert len(after) >= span / INTERVAL - 2, (len(after), span)  # no slot lost
    samples = metrics_of(get)
    assert_no_skip_but_for_waits(skipped_total(samples) - skipped, d, waited)
    assert (value(samples, "probe_resolve_failures_total", target="named") or 0) >= 1
    d.kill()


def assert_no_skip_but_for_waits(skipped: float, d: Daemon, waited: float) -> None:
    """No slot skipped since the daemon's loop had `waited` for a CPU, but those a loaded
    machine took: one per half an interval it has since spent ready to run without one (on a
    quiet machine: none)."""
    waited = run_queue_wait(d.proc.pid) - waited
    assert skipped <= waited / (INTERVAL / 2), (skipped, waited)


def ts_span(records: list[dict[str, Any]]) -> float:
    return ts(records[-1]) - ts(records[0]) if len(records) > 1 else 0.0


@pytest.mark.serial
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


def plain(body: str) -> dict[str, float]:
    return {name: v for (name, labels), v in parse_prometheus(body).items() if not labels}


def test_a_hung_probe_lookup_ends_at_the_attempts_timeout(
    dns: DnsNetns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = start_in(tmp_path, config_toml(log, ""), log, daemons, dns.ns)
    port = int(d.wait("listening", lambda: d.events("listening"))[0]["address"].rpartition(":")[2])
    began = time.monotonic()
    status, _, body = ns_get(dns.ns, port, "/probe?target=hang.test:80&timeout=1", 15)
    took = time.monotonic() - began
    assert status == 200, body
    v = plain(body)
    assert v["probe_success"] == 0.0
    assert v["probe_ip_protocol"] == 0.0  # the name did not resolve
    assert value(parse_prometheus(body), "probe_failed_due_to", reason="EAI_AGAIN") == 1.0
    assert 0.9 <= took < 5.0, took  # the attempt's 1 s, not the resolver's 30 s
    (rec,) = d.wait("the record", lambda: [r for r in d.records() if r["host"] == "hang.test"])
    assert (rec["outcome"], rec["error"], rec["address"]) == ("error", "EAI_AGAIN", None)
    # and a name that does not exist: NXDOMAIN, the same 0
    status, _, body = ns_get(dns.ns, port, "/probe?target=nosuch.invalid:80", 10)
    assert status == 200, body
    assert plain(body)["probe_ip_protocol"] == 0.0
    assert value(parse_prometheus(body), "probe_failed_due_to", reason="EAI_NONAME") == 1.0
    d.kill()


# -- 2. the schedule owns its slots ----------------------------------------------------------------


@pytest.mark.serial
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
    time.sleep(3.0)  # an observation window: the schedule's slots while the flood holds
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


@pytest.mark.serial
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
        time.sleep(3.0)  # an observation window: the schedule's slots beside the slowloris
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


@pytest.mark.serial
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


@pytest.mark.serial
def test_a_stalled_daemon_counts_and_logs_its_late_starts(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = logging_one_target(tmp_path, log, daemons)
    before = value(metrics_of(d.get), "probe_late_starts_total") or 0  # a loaded machine's
    stopped = time.time()
    d.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.5)  # the fault: a stall of 0.5 s
    d.proc.send_signal(signal.SIGCONT)

    def since() -> list[dict[str, Any]]:
        return [e for e in d.events("late") if ts(e) > stopped]

    d.wait("a late event after the stall", since)
    lates = since()  # each counted before it was logged: all in the samples taken next
    samples = metrics_of(d.get)
    # a slot fell due in the stall's first 0.2 s: its start is at least 0.3 s late
    assert min(e["starts"] for e in lates) >= 1 and max(e["worst_ms"] for e in lates) > 250
    starts = sum(e["starts"] for e in lates)
    assert (value(samples, "probe_late_starts_total") or 0) >= before + starts, lates


@pytest.mark.serial
def test_a_stall_skips_slots_and_does_not_make_them_up(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = logging_one_target(tmp_path, log, daemons)
    skipped = skipped_total(metrics_of(d.get))  # 0 unless the machine stalled it already
    d.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.2)  # six slots of 0.2 s
    resumed = time.time()
    d.proc.send_signal(signal.SIGCONT)
    d.wait_event("late")
    d.wait_records("a", 4, after=resumed)
    samples = metrics_of(d.get)
    assert skipped_total(samples) - skipped >= 3, samples
    assert (value(samples, "probe_late_starts_total") or 0) >= 1
    first = [ts(r) for r in d.records("a") if resumed <= ts(r) < resumed + 0.5]
    assert len(first) <= 4, first  # 0.5 s holds 2-3 slots; a make-up burst would add 5
    assert d.stop() == 0


# -- 3. the clock ----------------------------------------------------------------------------------


def test_clock_step_re_anchors_the_schedule_unit() -> None:  # fake clocks: not serial
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


@pytest.mark.serial
def test_a_wall_clock_step_neither_stops_nor_bursts_probing(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """An hour back on one daemon and an hour forward on another, side by side."""
    runs = []
    for step in (-3600.0, 3600.0):
        home = tmp_path / f"step{step:+.0f}"
        home.mkdir()
        log = home / "probe.log"
        text = config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}"))
        flag = home / "step-now"
        d = start_in(home, text, log, daemons, patches={"_clock_step": [step, str(flag)]})
        runs.append((step, flag, d))
    for _, _, d in runs:
        d.wait_records("a", 2)
    for _, flag, _ in runs:
        flag.touch()
    # the step is noticed on the next flush tick (0.1 s)
    events = [d.wait_event("clock") for _, _, d in runs]
    marks = [len(d.lines()) for _, _, d in runs]
    time.sleep(2.0)  # an observation window: neither a stop nor a burst
    for (step, _, d), event, mark in zip(runs, events, marks, strict=True):
        after = records_between(d, "a", mark)
        assert 2.0 / INTERVAL - 3 <= len(after) <= 2.0 / INTERVAL + 2, (step, len(after))
        assert skipped_total(metrics_of(d.get)) == 0, step
        assert event["step_s"] == pytest.approx(step, abs=1.0)
        assert d.stop() == 0


# -- 4. signals during the drain -------------------------------------------------------------------


@pytest.mark.serial
def test_sighup_during_the_drain_is_ignored(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    d = draining(tmp_path, daemons, full_queue)
    d.send(signal.SIGHUP)
    time.sleep(0.3)  # an observation window: neither a reload nor an end comes
    assert d.proc.poll() is None  # still draining: not killed, not reloaded
    assert d.events("reload") == []
    d.send(signal.SIGTERM)
    assert d.proc.wait(timeout=3) == 0


@pytest.mark.serial
def test_a_second_signal_ends_the_drain_at_once(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    """SIGTERM, then SIGTERM again on one daemon and SIGINT on another, side by side."""
    seconds = (signal.SIGTERM, signal.SIGINT)
    homes = [tmp_path / second.name for second in seconds]
    for home in homes:
        home.mkdir()

    def second_signal(home: Path, second: signal.Signals) -> tuple[Daemon, int, float]:
        """Sent as soon as this daemon drains: its attempt (2.9 s) may start a whole
        interval before the other's, so waiting for both drains could outlast it."""
        d = draining(home, daemons, full_queue)
        at = time.monotonic()
        d.send(second)
        code = d.proc.wait(timeout=3)
        return d, code, time.monotonic() - at

    with ThreadPoolExecutor(len(seconds)) as pool:  # both drains at once: one wait for both
        ended = list(pool.map(second_signal, homes, seconds))
    for (d, code, took), second in zip(ended, seconds, strict=True):
        assert code == 0, second
        assert took < 2.0, second
        lines = d.lines()
        assert lines[-1]["event"] == "stopped"
        abandoned = [line for line in lines if line.get("event") == "abandoned"]
        assert len(abandoned) == 1 and abandoned[0]["names"] == ["slow"]
        # the attempt in flight has no record: its outcome is unknown, so none is claimed
        assert d.records("slow") == []
        assert "Traceback" not in d.stderr
