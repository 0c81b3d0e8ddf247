"""docs/reliability.md's failure table, row by row: ROWS below names, for each row, the
tests that make that fault happen (real kernels: namespaces, iptables on their `lo`, prlimit,
a tmpfs, a DNS server of ours on a namespace's loopback) and check what the row says. The
tests in this file check what a row says and no older test did. A row without an
entry here, or an entry naming a test that is gone, fails `test_every_row_has_its_tests`.

docs/metrics.md's metric names are checked in daemon/test_metrics.py, test_daemon.py,
test_diagnostics.py, test_hostile.py and test_prometheus.py; the ones no test named before
are checked here: `probe_path_attempts_total`, `probe_path_connect_latency_seconds`,
`python_gc_*`, the RTT histogram's buckets, `probe_syn_retransmits_total` from a real resent
SYN, `probe_ip_protocol` 0 for a name that did not resolve, `/healthz` 503 while draining,
and `process_*` (that they describe the daemon's own process).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import (
    INTERVAL,
    ROOT,
    Daemon,
    DnsNetns,
    FullQueueListener,
    Netns,
    NsServer,
    RecordingListener,
    assert_local_endpoint,
    check_reading_stdin,
    closed_port,
    config_toml,
    draining,
    firewall,
    flood,
    hold_ports,
    kill,
    logging_one_target,
    metrics_of,
    need_tools,
    no_traceback,
    ns_get,
    parse_prometheus,
    parse_records,
    pipe_into_head,
    probe_cmd,
    record,
    skipped_total,
    socket_inodes,
    start_in,
    target_toml,
    tcp_by_inode,
    ts,
    value,
)

HERE = "faults/test_failure_table.py"
FAULTS = "faults/test_check_path.py"
DAEMON = "daemon/test_daemon.py"
HOSTILE = "faults/test_hostile.py"
METRICS = "daemon/test_metrics.py"
RESILIENCE = "faults/test_daemon_http.py"

# docs/reliability.md's failure table: the first cell of each row -> {file under tests/: tests}.
ROWS: dict[str, dict[str, tuple[str, ...]]] = {
    "SYN dropped (`iptables -j DROP`)": {
        FAULTS: (
            "test_firewall_answers_ipv4",
            "test_firewall_answers_ipv6",
            "test_json_timeout_has_local_port",
            "test_json_retries_after_timeout",
        ),
        HERE: ("test_dropped_syns_with_retries_are_each_recorded",),
    },
    "`REJECT --reject-with icmp-host-unreachable`": {
        FAULTS: ("test_firewall_answers_ipv4", "test_firewall_answers_ipv6"),
    },
    "`REJECT --reject-with icmp-net-unreachable`": {
        FAULTS: ("test_firewall_answers_ipv4", "test_firewall_answers_ipv6"),
    },
    "`REJECT --reject-with tcp-reset`, or nothing listening": {
        FAULTS: (
            "test_firewall_answers_ipv4",
            "test_firewall_answers_ipv6",
            "test_json_refused_has_local_port",
        ),
        DAEMON: ("test_refused_records_have_a_local_port",),
    },
    "`REJECT --reject-with icmp-proto-unreachable`": {
        FAULTS: ("test_icmp_protocol_unreachable_is_an_error_of_the_target",),
    },
    "a link-local address with its zone (`[fe80::1%v0]:22`, `%3`)": {
        "test_zones.py": (
            "test_check_connects_on_the_zones_interface",
            "test_without_a_zone_the_link_local_address_fails",
            "test_an_unknown_interface_is_a_usage_error_naming_it",
            "test_the_daemon_and_probe_connect_on_the_zone",
            "test_a_loopback_zone_is_judged_as_its_address",
        ),
    },
    "the name does not resolve": {
        FAULTS: ("test_unresolvable_name_in_namespace",),
        HERE: ("test_a_name_that_does_not_exist_is_eai_noname",),
    },
    "no free ephemeral port (`ip_local_port_range` narrowed)": {
        FAULTS: (
            "test_ten_local_ports_for_forty_dropped_ports",
            "test_two_local_ports_for_twenty_attempts_to_one_destination",
        ),
    },
    "one destination out of local ports (a 100-port range, every port in a connection to it)": {
        RESILIENCE: ("test_one_destination_out_of_ports_leaves_the_others_their_slots",),
    },
    "ports held by another process (none of ours in flight)": {
        FAULTS: ("test_ports_taken_by_another_process_are_a_shortage_not_an_error",),
        HERE: ("test_ports_held_elsewhere_for_good_end_in_exit_2_after_30_s",),
    },
    "slow standard input or a FIFO": {
        FAULTS: (
            "test_slow_stdin_does_not_stretch_a_timeout",
            "test_signal_while_waiting_for_stdin",
        ),
        HERE: (
            "test_a_slow_fifo_does_not_stretch_a_timeout",
            "test_a_signal_stops_a_check_waiting_for_a_fifo",
        ),
    },
    "no free descriptor (`prlimit --nofile=64`)": {
        FAULTS: (
            "test_sixty_four_descriptors_for_two_thousand_ports",
            "test_descriptor_limit_lowered_mid_run",
        ),
        HERE: ("test_a_low_descriptor_limit_is_said_in_one_line",),
    },
    "SIGINT or SIGTERM during `probe check`": {
        FAULTS: (
            "test_signal_mid_sweep",
            "test_ctrl_c_to_the_process_group_mid_sweep",
            "test_sigint_writes_whole_records_and_exits_130",
            "test_unresolvable_name_until_interrupted_in_namespace",  # the human summary
        ),
        "check/test_tcping.py": ("test_count_zero_runs_until_signal_then_summary",),
    },
    "SIGINT while standard input never ends": {
        RESILIENCE: ("test_sigint_with_endless_stdin_leaves_no_noise_on_stderr",),
    },
    "standard output closed early (`\\| head -1`)": {
        FAULTS: (
            "test_head_one_in_a_shell_pipeline",
            "test_head_one_after_a_sweep_with_workers",
            "test_reader_leaves_after_one_line_quietly",
        ),
        HERE: ("test_head_one_is_exit_141",),
    },
    "a bad line in `@FILE` or on stdin, met mid-run": {
        FAULTS: ("test_bad_line_3_of_target_file",),
        HERE: ("test_a_bad_stdin_line_lets_the_attempt_in_flight_finish",),
    },
    "SIGTERM / SIGINT to the daemon": {
        DAEMON: ("test_sigterm_finishes_the_attempt_in_flight", "test_sigint_exits_zero"),
        FAULTS: ("test_daemon_sockets_stay_within_concurrency_then_sigterm_drains",),
    },
    "SIGHUP during that drain": {HOSTILE: ("test_sighup_during_the_drain_is_ignored",)},
    "a second SIGTERM / SIGINT during the drain": {
        HOSTILE: ("test_a_second_signal_ends_the_drain_at_once",),
    },
    "SIGHUP storm while the config is rewritten": {
        DAEMON: ("test_sighup_storm_ends_on_the_last_valid_config",),
    },
    "the daemon's log is unwritable (`/dev/full`)": {
        DAEMON: ("test_log_to_dev_full_stops_the_daemon",),
        FAULTS: (
            "test_daemon_log_on_an_unwritable_path_is_loud",
            "test_daemon_log_on_a_read_only_mount_is_loud",
        ),
        HERE: ("test_a_daemon_logging_to_dev_full_exits_1_with_one_line",),
    },
    "the daemon's disk fills up (a 64 KiB tmpfs)": {
        HOSTILE: ("test_a_full_disk_leaves_only_whole_lines_and_the_next_run_appends_cleanly",),
    },
    "the daemon's log file is deleted or replaced": {
        HOSTILE: (
            "test_a_removed_log_file_is_reopened_within_a_second",
            "test_a_replaced_log_file_is_reopened_and_said_so",
        ),
    },
    "`[log] file` is a FIFO": {
        RESILIENCE: (
            "test_a_fifo_without_a_reader_as_log_file_is_one_line_and_exit_2",
            "test_a_fifo_log_nobody_reads_holds_neither_healthz_nor_sigterm",
        ),
    },
    "output nobody reads (an unread stdout or FIFO)": {
        RESILIENCE: (
            "test_sigterm_ends_probe_run_logging_to_an_unread_stdout",
            "test_sigterm_ends_a_continuous_check_into_an_unread_pipe",
        ),
    },
    "the log file's directory is removed": {
        HOSTILE: ("test_a_removed_log_directory_is_exit_1_naming_the_file",),
    },
    "a flood of `GET /probe` (to a port that drops SYNs)": {
        HOSTILE: ("test_probe_flood_to_a_dropped_port_leaves_the_schedule_its_slots",),
        FAULTS: ("test_probe_flood_shares_the_concurrency_bound",),
        HERE: ("test_probe_flood_gets_ten_slots_by_default_then_busy",),
        "daemon/test_config.py": ("test_probe_concurrency_stays_below_the_schedule",),
    },
    "DNS hangs for `GET /probe` names": {
        HOSTILE: ("test_hung_probe_lookups_do_not_starve_a_named_target_added_by_reload",),
        HERE: ("test_a_hung_probe_lookup_ends_at_the_attempts_timeout",),
    },
    "DNS fails or hangs when a scheduled name is re-resolved (every 60 s)": {
        HOSTILE: ("test_a_hung_re_resolution_keeps_the_last_good_address",),
        HERE: ("test_a_failed_re_resolution_keeps_the_last_good_address",),
    },
    "SIGTERM while a `GET /probe` waits on a hung lookup": {
        HOSTILE: ("test_sigterm_abandons_a_hung_probe_lookup_at_once",),
    },
    "600 half-sent requests (slowloris) under `prlimit --nofile=512`": {
        HOSTILE: ("test_slowloris_under_a_low_descriptor_limit_stops_neither_probes_nor_metrics",),
        HERE: ("test_http_headers_have_5_s_and_the_oldest_idle_connection_makes_room",),
    },
    "100 HTTP clients under `prlimit --nofile=64`": {
        RESILIENCE: ("test_http_clients_under_nofile_64_leave_the_schedule_its_slots",),
    },
    "80 clients that never read, each pipelining 20 `GET /metrics`": {
        RESILIENCE: ("test_clients_that_do_not_read_are_cut_and_healthz_keeps_answering",),
    },
    "300 malformed requests": {
        RESILIENCE: ("test_malformed_requests_are_one_log_line_not_tracebacks",),
    },
    "`HEAD /metrics` on a kept-alive connection": {
        RESILIENCE: ("test_head_metrics_has_no_body_and_the_next_answer_follows_cleanly",),
    },
    "a request, then the client's FIN (`shutdown(SHUT_WR)`, `nc -N`)": {
        RESILIENCE: ("test_a_half_closed_request_gets_its_answer",),
    },
    "any answer (`/probe` 400s and `debug=true` included)": {
        RESILIENCE: ("test_answers_say_nosniff_and_name_no_versions",),
    },
    "`/metrics` with thousands of targets": {
        HOSTILE: ("test_scrapes_of_a_big_page_do_not_delay_scheduled_starts",),
    },
    "the daemon stalls (SIGSTOP, an overloaded machine)": {
        HOSTILE: ("test_a_stalled_daemon_counts_and_logs_its_late_starts",),
        HERE: ("test_a_stall_skips_slots_and_does_not_make_them_up",),
        "daemon/test_schedule.py": ("test_stall_counts_missed_slots_and_resumes_without_burst",),
    },
    "the wall clock steps (back or forward an hour)": {
        HOSTILE: (
            "test_clock_step_re_anchors_the_schedule_unit",
            "test_a_wall_clock_step_neither_stops_nor_bursts_probing",
        ),
    },
    "`GET /probe` for an address outside `probe_allow` (after resolution)": {
        DAEMON: ("test_probe_outside_allow_is_403_and_connects_nowhere",),
        FAULTS: ("test_probe_allow_is_judged_after_name_resolution",),
        METRICS: ("test_probe_forbidden_keeps_403_and_connects_nowhere",),
    },
}


@pytest.fixture
def dns(netns: Netns, tmp_path: Path) -> Iterator[DnsNetns]:
    d = DnsNetns(netns, tmp_path)
    yield d
    d.close()


def ns_check(ns: Netns, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ns.prefix(), *probe_cmd(), "check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def plain(body: str) -> dict[str, float]:
    return {name: v for (name, labels), v in parse_prometheus(body).items() if not labels}


# -- probe check -------------------------------------------------------------------------------


def test_dropped_syns_with_retries_are_each_recorded(netns: Netns) -> None:
    need_tools(netns, "iptables")
    firewall(netns, "--dport", "5001", "-j", "DROP")
    result = ns_check(netns, "127.0.0.1:5001", "-t", "0.5", "--retries", "2", "--json")
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    recs = parse_records(result.stdout)
    assert [r["attempt"] for r in recs] == [1, 2, 3]
    for rec in recs:
        assert (rec["outcome"], rec["error"]) == ("timeout", "ETIMEDOUT"), rec
        assert_local_endpoint(rec)
        assert 450 <= rec["latency_ms"] < 3000, rec  # after -t, not before it
    assert len({r["local_port"] for r in recs}) == 3  # a socket of its own each


def test_a_name_that_does_not_exist_is_eai_noname(dns: DnsNetns) -> None:
    """Our DNS server answers NXDOMAIN for names outside .test: the resolver's own 'no such
    name', not a failure to ask (that is EAI_AGAIN, test_cli's namespace without a server)."""
    result = ns_check(dns.ns, "nosuch.invalid:80", "--json")
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    (rec,) = parse_records(result.stdout)
    assert (rec["outcome"], rec["error"]) == ("error", "EAI_NONAME"), rec
    assert rec["address"] is None and rec["family"] is None
    assert rec["local_address"] is None and rec["local_port"] is None


def test_ports_held_elsewhere_for_good_end_in_exit_2_after_30_s(netns: Netns) -> None:
    """Both ephemeral ports are bound by another process and never come back, and none of
    ours is in flight: after 30 s without progress, one line and exit 2, no record."""
    holder = hold_ports(netns, 40000, 40001)
    try:
        began = time.monotonic()
        result = ns_check(netns, "127.0.0.1:5001", "-t", "0.5", "--json", timeout=120)
        took = time.monotonic() - began
    finally:
        kill(holder)
    no_traceback(result.stderr)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # never a record blaming the target
    (line,) = result.stderr.splitlines()
    assert "no free file descriptor or local port" in line, line
    assert took >= 29.5, took


def test_a_low_descriptor_limit_is_said_in_one_line() -> None:
    ports = [closed_port() for _ in range(20)]
    result = subprocess.run(
        [
            "prlimit",
            "--nofile=64:64",
            *probe_cmd(),
            "check",
            *(f"127.0.0.1:{p}" for p in ports),
            "-C",
            "1000",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(r"probe: -C 1000 lowered to \d+: .*", line), line
    recs = parse_records(result.stdout)
    assert sorted(r["port"] for r in recs) == sorted(ports)
    assert {(r["outcome"], r["error"]) for r in recs} == {("refused", "ECONNREFUSED")}


FIFO_WRITER = """
import sys, time
first, second = sys.argv[2], sys.argv[3]
with open(sys.argv[1], "w") as out:
    out.write(first + "\\n")
    out.flush()
    time.sleep(3.0)
    out.write(second + "\\n")
"""


def test_a_slow_fifo_does_not_stretch_a_timeout(
    tmp_path: Path, full_queue: FullQueueListener
) -> None:
    fifo = tmp_path / "targets.fifo"
    os.mkfifo(fifo)
    later = f"127.0.0.1:{closed_port()}"
    writer = subprocess.Popen(
        [sys.executable, "-c", FIFO_WRITER, str(fifo), full_queue.target, later]
    )
    try:
        result = subprocess.run(
            [*probe_cmd(), "check", f"@{fifo}", "--json", "-t", "0.5", "--workers", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        kill(writer)
    no_traceback(result.stderr)
    recs = {r["target"]: r for r in parse_records(result.stdout)}
    assert set(recs) == {full_queue.target, later}
    first = recs[full_queue.target]
    assert first["outcome"] == "timeout"
    assert first["latency_ms"] < 2000, first  # 0.5 s asked; the next line came 3 s later
    assert ts(recs[later]) - ts(first) > 2.0  # the writer was slow indeed


def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _opening_a_fifo(pid: int) -> bool:
    """Is a thread of `pid` blocked in open() on a FIFO that has no writer yet?"""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            if (task / "wchan").read_text() == "wait_for_partner":
                return True
    return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_check_waiting_for_a_fifo(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """No writer yet: opening the FIFO blocks. The signal still ends the run."""
    fifo = tmp_path / "targets.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [*probe_cmd(), "check", f"@{fifo}", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until("a thread blocked opening the FIFO", lambda: _opening_a_fifo(proc.pid))
        time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=3.0)
    finally:
        kill(proc)
    no_traceback(err)
    assert proc.returncode == code, err
    assert out == ""


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_head_one_is_exit_141(tmp_path: Path, fmt: str, listener: RecordingListener) -> None:
    cmd = [*probe_cmd(), "check", listener.target, "-c", "1000000", "-i", "0"]
    if fmt == "json":
        cmd.append("--json")
    out, code, err = pipe_into_head(cmd, tmp_path)
    assert (code, err) == (141, "")
    assert out.count("\n") == 1 and listener.target in out


def test_a_bad_stdin_line_lets_the_attempt_in_flight_finish(
    full_queue: FullQueueListener,
) -> None:
    proc = check_reading_stdin(full_queue.target, "-t", "1", "--workers", "1")
    try:
        # its attempt in flight (1 s to a full accept queue): a socket to that port
        wait_until(
            "the first attempt in flight",
            lambda: full_queue.port in {tcp_by_inode().get(i) for i in socket_inodes(proc.pid)},
        )
        out, err = proc.communicate("127.0.0.1:nope\n", timeout=20)
    finally:
        kill(proc)
    no_traceback(err)
    assert proc.returncode == 2, err
    (line,) = err.splitlines()
    assert "<stdin>" in line and "line 2" in line and "nope" in line, line
    (rec,) = parse_records(out)
    assert rec["target"] == full_queue.target and rec["outcome"] == "timeout"
    assert rec["latency_ms"] >= 900  # finished, not cut short by the error


# -- the daemon ----------------------------------------------------------------------------------


def test_a_daemon_logging_to_dev_full_exits_1_with_one_line(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    text = config_toml(Path("/dev/full"), target_toml("a", f"127.0.0.1:{closed_port()}"))
    d = Daemon.start(tmp_path, text)
    daemons.append(d)
    assert d.wait_exit() == 1, d.stderr
    no_traceback(d.stderr)
    (line,) = d.stderr.splitlines()
    assert "/dev/full" in line, line


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


@pytest.mark.serial
def test_a_failed_re_resolution_keeps_the_last_good_address(
    dns: DnsNetns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The DNS server dies (its port answers ICMP unreachable: the lookup fails at once,
    rather than hangs as in test_hostile): the last good address is kept."""
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("named", "good.test:9"))
    d = start_in(
        tmp_path, text, log, daemons, dns.ns, {"RESOLVE_TTL": 1.0, "RESOLVE_DEADLINE": 1.0}
    )
    d.wait_records("named", 2)
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
    port = int(d.events("listening")[0]["address"].rpartition(":")[2])
    samples = metrics_of(lambda path: ns_get(dns.ns, port, path))
    assert skipped_total(samples) == 0
    assert (value(samples, "probe_resolve_failures_total", target="named") or 0) >= 1
    d.kill()


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


@pytest.mark.serial
def test_a_stall_skips_slots_and_does_not_make_them_up(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    d = logging_one_target(tmp_path, log, daemons)
    assert skipped_total(metrics_of(d.get)) == 0
    d.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.2)  # six slots of 0.2 s
    resumed = time.time()
    d.proc.send_signal(signal.SIGCONT)
    d.wait_event("late")
    d.wait_records("a", 4, after=resumed)
    samples = metrics_of(d.get)
    assert skipped_total(samples) >= 3, samples
    assert (value(samples, "probe_late_starts_total") or 0) >= 1
    first = [ts(r) for r in d.records("a") if resumed <= ts(r) < resumed + 0.5]
    assert len(first) <= 4, first  # 0.5 s holds 2-3 slots; a make-up burst would add 5
    assert d.stop() == 0


# -- metrics no other test names ---------------------------------------------------------------


def test_path_series_of_a_name_with_addresses_all(
    tmp_path: Path, daemons: list[Daemon], listener: RecordingListener
) -> None:
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo("localhost", None)}
    except socket.gaierror:
        pytest.skip("localhost does not resolve here")
    if "127.0.0.1" not in resolved:
        pytest.skip(f"localhost is {sorted(resolved)} here")
    log = tmp_path / "probe.log"
    target = target_toml("all", f"localhost:{listener.port}", addresses="all", histograms=True)
    d = start_in(tmp_path, config_toml(log, target), log, daemons)
    d.wait_event("state", name="all", address="127.0.0.1", to="up")
    s = metrics_of(d.get)
    v4 = {"target": "all", "address": "127.0.0.1", "family": "ipv4"}
    assert (value(s, "probe_path_attempts_total", outcome="open", **v4) or 0) >= 1
    assert value(s, "probe_path_attempts_total", outcome="refused", **v4) in (None, 0.0)
    count = value(s, "probe_path_connect_latency_seconds_count", **v4)
    assert count is not None and count >= 1
    assert value(s, "probe_path_connect_latency_seconds_bucket", le="+Inf", **v4) == count
    assert value(s, "probe_path_up", **v4) == 1.0
    assert d.stop() == 0


def test_healthz_and_probe_say_503_while_the_daemon_drains(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    d = draining(tmp_path, daemons, full_queue)  # SIGTERM sent, one attempt still in flight
    status, _, body = d.get("/healthz")
    assert status == 503, body
    status, _, body = d.get(f"/probe?target=127.0.0.1:{closed_port()}")
    assert status == 503 and "shutting down" in body, (status, body)
    assert d.proc.wait(timeout=5) == 0


def _started_at(pid: int) -> float:
    """When `pid` started, from /proc (the kernel's own clock ticks since boot)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")


def test_process_metrics_describe_the_daemon(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "probe.log"
    d = logging_one_target(tmp_path, log, daemons)
    time.sleep(1.5)  # a render started now, in a child, would say "started just now"
    s = metrics_of(d.get)
    started = value(s, "process_start_time_seconds")
    assert started is not None
    assert abs(started - _started_at(d.proc.pid)) < 1.0, (started, _started_at(d.proc.pid))
    assert d.stop() == 0


def test_a_resent_syn_counts_in_the_daemons_metrics(
    netns: Netns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Every other SYN to the port is dropped (the first of each attempt): each attempt
    opens after the kernel's resend, so probe_syn_retransmits_total sums them, and the RTT
    histogram, which takes real samples only, has none of them (Karn's rule)."""
    need_tools(netns, "iptables")
    server = NsServer(netns, 0)
    try:
        (port,) = server.ports
        netns.run(
            "iptables", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "--syn",
            "--dport", str(port),
            "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0",
            "-j", "DROP",
        )  # fmt: skip
        log = tmp_path / "probe.log"
        target = target_toml("resent", f"127.0.0.1:{port}", timeout=3.0, histograms=True)
        d = start_in(tmp_path, config_toml(log, target, interval=4.0), log, daemons, netns)
        before = d.wait_records("resent", 1, timeout=20)
        mport = int(d.events("listening")[0]["address"].rpartition(":")[2])
        s = metrics_of(lambda path: ns_get(netns, mport, path))
        recs = d.records("resent")  # the page counted `before`, and maybe one more
    finally:
        server.close()
    assert all(r["outcome"] == "open" and r["syn_retransmits"] == 1 for r in recs), recs
    sent_again = value(s, "probe_syn_retransmits_total", target="resent")
    assert sent_again is not None
    assert len(before) <= sent_again <= sum(r["syn_retransmits"] for r in recs), (sent_again, recs)
    assert (value(s, "probe_connect_latency_seconds_count", target="resent") or 0) >= 1
    assert value(s, "probe_tcp_rtt_seconds_count", target="resent") in (None, 0.0)
    d.kill()


def test_rtt_histogram_has_the_latency_buckets_and_gc_series_are_there() -> None:
    from probe.daemon.metrics import Metrics

    m = Metrics(lambda: 0.0)
    s = parse_prometheus(m.exposition().decode())
    assert any(name.startswith("python_gc_") for name, _ in s)

    class Target:
        def __init__(self) -> None:
            self.name = "a"
            self.labels: dict[str, str] = {}
            self.histograms = True

    m.set_targets([Target()])
    m.observe("a", record("open", None, 0.5, 0.04))  # a histogram's series start at a sample
    text = m.exposition().decode()

    def bounds(metric: str) -> list[str]:
        return re.findall(rf'^{metric}_bucket\{{.*le="([^"]+)".*\}}', text, re.M)

    assert bounds("probe_tcp_rtt_seconds")
    assert bounds("probe_tcp_rtt_seconds") == bounds("probe_connect_latency_seconds")


# -- the map itself ----------------------------------------------------------------------------


def test_every_row_has_its_tests() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text()
    section = page.split("\n## Failure table\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    faults = [row[2:].split(" | ", 1)[0] for row in rows]
    assert faults and len(faults) == len(set(faults))
    assert sorted(faults) == sorted(ROWS), set(faults) ^ set(ROWS)
    here = ROOT / "tests"
    defined: dict[str, set[str]] = {}
    for tests in ROWS.values():
        for path, names in tests.items():
            if path not in defined:
                tree = ast.parse((here / path).read_text())
                defined[path] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            missing = set(names) - defined[path]
            assert not missing, (path, missing)
