"""`probe check` under faults made for real: firewall answers, local shortages, signals,
slow input, broken sinks and what a record says of each, against real kernels rather than
mocks.

Traffic stays on loopback: inside a network namespace the test creates (iptables rules go on
its `lo`), or on the host's 127.0.0.1 to ports the test holds. Namespace tests skip when
there is no root, no `ip` or no `iptables`. Tests that look at time or hold a fixed resource
are marked `serial` one by one (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import (
    IO,
    Any,
)

import pytest
from helpers import (
    DnsNetns,
    FullQueueListener,
    Netns,
    NsServer,
    RecordingListener,
    assert_local_endpoint,
    check_in,
    check_reading_stdin,
    closed_port,
    firewall,
    hold_ports,
    kill,
    need_tools,
    no_traceback,
    one_line_error,
    parse_records,
    pipe_into_head,
    port_range,
    probe,
    probe_cmd,
    records,
    socket_inodes,
    tcp_by_inode,
    ts,
    until_signal,
    wait_for,
    without_lag,
)

Rec = dict[str, Any]


def ns_check(
    ns: Netns, *args: str, timeout: float = 60, wrap: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ns.prefix(), *wrap, *probe_cmd(), "check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class LineReader:
    """Reads a child's stdout (bytes) on a thread, so a test can wait for n lines."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.stream = proc.stdout
        self.data = bytearray()
        self.lines = 0
        self.first_at: float | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            chunk = os.read(self.stream.fileno(), 1 << 16)
            if not chunk:
                return
            with self.lock:
                if self.first_at is None:
                    self.first_at = time.monotonic()
                self.data += chunk
                self.lines += chunk.count(b"\n")

    def wait_lines(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.lines >= n:
                    return
            time.sleep(0.01)
        raise AssertionError(f"only {self.lines} lines within {timeout} s")

    def all(self) -> bytes:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return bytes(self.data)


# -- 1. network answers ----------------------------------------------------------------------------


V4_RULES: list[tuple[list[str], str, str]] = [
    (["-j", "DROP"], "timeout", "ETIMEDOUT"),
    (["-j", "REJECT", "--reject-with", "icmp-host-unreachable"], "unreachable", "EHOSTUNREACH"),
    (["-j", "REJECT", "--reject-with", "icmp-net-unreachable"], "unreachable", "ENETUNREACH"),
    (["-j", "REJECT", "--reject-with", "tcp-reset"], "refused", "ECONNREFUSED"),
    (["-j", "REJECT", "--reject-with", "icmp-port-unreachable"], "refused", "ECONNREFUSED"),
    (["-j", "REJECT", "--reject-with", "icmp-host-prohibited"], "unreachable", "EHOSTUNREACH"),
    (["-j", "REJECT", "--reject-with", "icmp-net-prohibited"], "unreachable", "ENETUNREACH"),
    (["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"], "unreachable", "EHOSTUNREACH"),
]


def test_firewall_answers_ipv4(netns: Netns) -> None:
    need_tools(netns, "iptables")
    expected: dict[int, tuple[str, str]] = {}
    for i, (rule, outcome, error) in enumerate(V4_RULES):
        port = 5001 + i
        firewall(netns, "--dport", str(port), *rule)
        expected[port] = (outcome, error)
    plain = 5001 + len(V4_RULES)  # no rule, nothing listening: the kernel's own reset
    expected[plain] = ("refused", "ECONNREFUSED")
    result = ns_check(netns, f"127.0.0.1:5001-{plain}", "--json", "-t", "0.5")
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    recs = parse_records(result.stdout)
    got = {r["port"]: (r["outcome"], r["error"]) for r in recs}
    assert len(recs) == len(expected)
    assert got == expected
    for rec in recs:
        assert rec["address"] == "127.0.0.1" and rec["family"] == "ipv4"
        assert_local_endpoint(rec)
        assert rec["local_address"] == "127.0.0.1"
        assert rec["rtt_ms"] is None
    drop = next(r for r in recs if r["port"] == 5001)
    assert drop["latency_ms"] >= 450  # it waited its timeout out


def test_icmp_protocol_unreachable_is_an_error_of_the_target(netns: Netns) -> None:
    need_tools(netns, "iptables")
    firewall(netns, "--dport", "5001", "-j", "REJECT", "--reject-with", "icmp-proto-unreachable")
    result = ns_check(netns, "127.0.0.1:5001", "--json", "-t", "0.5")
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    (rec,) = parse_records(result.stdout)
    assert (rec["outcome"], rec["error"]) == ("error", "ENOPROTOOPT")


V6_RULES: list[tuple[list[str], str, str]] = [
    (["-j", "DROP"], "timeout", "ETIMEDOUT"),
    (["-j", "REJECT", "--reject-with", "icmp6-addr-unreachable"], "unreachable", "EHOSTUNREACH"),
    (["-j", "REJECT", "--reject-with", "icmp6-no-route"], "unreachable", "ENETUNREACH"),
    (["-j", "REJECT", "--reject-with", "tcp-reset"], "refused", "ECONNREFUSED"),
]


def test_firewall_answers_ipv6(netns: Netns) -> None:
    need_tools(netns, "ip6tables")
    if "::1" not in netns.run("ip", "-6", "addr", "show", "dev", "lo").stdout:
        pytest.skip("no ::1 on the namespace's loopback (IPv6 disabled?)")
    expected: dict[int, tuple[str, str]] = {}
    for i, (rule, outcome, error) in enumerate(V6_RULES):
        port = 5001 + i
        firewall(netns, "--dport", str(port), *rule, tool="ip6tables")
        expected[port] = (outcome, error)
    plain = 5001 + len(V6_RULES)
    expected[plain] = ("refused", "ECONNREFUSED")
    # An ICMPv6 error may reach the socket as a soft error (the SYN is retried): Linux then
    # reports it when the connect gives up, and so may probe, at the timeout.
    result = ns_check(netns, f"[::1]:5001-{plain}", "--json", "-t", "0.5")
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    recs = parse_records(result.stdout)
    assert len(recs) == len(expected)
    assert {r["port"]: (r["outcome"], r["error"]) for r in recs} == expected
    for rec in recs:
        assert rec["address"] == "::1" and rec["family"] == "ipv6"
        assert rec["target"] == f"[::1]:{rec['port']}"
        assert_local_endpoint(rec)
        assert rec["local_address"] == "::1"


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


# -- 2. no free ephemeral port ---------------------------------------------------------------------


def test_ten_local_ports_for_forty_dropped_ports(netns: Netns) -> None:
    need_tools(netns, "iptables")
    port_range(netns, 40000, 40009)
    firewall(netns, "--dport", "5001:5040", "-j", "DROP")
    result = ns_check(netns, "127.0.0.1:5001-5040", "-C", "40", "-t", "1", "--json")
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    recs = parse_records(result.stdout)
    assert sorted(r["port"] for r in recs) == list(range(5001, 5041))
    assert Counter((r["outcome"], r["error"]) for r in recs) == {("timeout", "ETIMEDOUT"): 40}
    for rec in recs:
        assert_local_endpoint(rec, (40000, 40009))


def test_two_local_ports_for_twenty_attempts_to_one_destination(netns: Netns) -> None:
    """Ten attempts at once to ONE dropped ip:port, ten to one closed ip:port, with two local
    ports: at most two 4-tuples to each destination exist, so most attempts must wait for a
    port. None may end as an error blaming the target, and the run must finish."""
    need_tools(netns, "iptables")
    port_range(netns, 40000, 40001)
    firewall(netns, "--dport", "5001", "-j", "DROP")
    tokens = ["127.0.0.1:5001"] * 10 + ["127.0.0.1:5002"] * 10
    result = ns_check(netns, *tokens, "-C", "20", "-t", "0.5", "--json", timeout=60)
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    recs = parse_records(result.stdout)
    outcomes = Counter((r["port"], r["outcome"], r["error"]) for r in recs)
    assert outcomes == {(5001, "timeout", "ETIMEDOUT"): 10, (5002, "refused", "ECONNREFUSED"): 10}
    for rec in recs:
        assert_local_endpoint(rec, (40000, 40001))


def test_ports_taken_by_another_process_are_a_shortage_not_an_error(netns: Netns) -> None:
    need_tools(netns, "iptables")
    firewall(netns, "--dport", "5001", "-j", "DROP")
    holder = hold_ports(netns, 40000, 40001)
    probe = None
    try:
        assert holder.stdout is not None and holder.stdin is not None
        probe = subprocess.Popen(
            [*netns.prefix(), *probe_cmd(), "check", "127.0.0.1:5001", "-t", "0.5", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # the machine is out of ports for a second, then they come back
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        out, err = probe.communicate(timeout=30)
    finally:
        if probe is not None:
            kill(probe)
        kill(holder)
    no_traceback(err)
    (rec,) = parse_records(out)
    assert (rec["outcome"], rec["error"]) == ("timeout", "ETIMEDOUT"), rec
    assert_local_endpoint(rec, (40000, 40001))


@pytest.mark.slow  # 30 s of waiting
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


# -- 3. no free file descriptor --------------------------------------------------------------------


def test_sixty_four_descriptors_for_two_thousand_ports(netns: Netns) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("no prlimit on this machine")
    server = NsServer(netns, 6000, 6500)
    try:
        result = ns_check(
            netns,
            "127.0.0.1",
            "-p",
            "5001-7000",
            "-C",
            "1000",
            "--json",
            "-t",
            "1",
            wrap=("prlimit", "--nofile=64:64"),
            timeout=120,
        )
    finally:
        server.close()
    no_traceback(result.stderr)
    assert result.returncode == 1, result.stderr
    assert "EMFILE" not in result.stdout and "EMFILE" not in result.stderr
    for line in result.stderr.splitlines():
        assert re.fullmatch(r"probe: -C 1000 lowered to \d+: .*", line), result.stderr
    recs = parse_records(result.stdout)
    assert sorted(r["port"] for r in recs) == list(range(5001, 7001))
    opened = {r["port"] for r in recs if r["outcome"] == "open"}
    assert opened == {6000, 6500}
    others = Counter((r["outcome"], r["error"]) for r in recs if r["port"] not in opened)
    assert others == {("refused", "ECONNREFUSED"): 1998}
    for rec in recs:
        assert_local_endpoint(rec)


def test_descriptor_limit_lowered_mid_run(netns: Netns) -> None:
    """The open-files limit drops below what is in flight while attempts run (prlimit on the
    running process): new sockets fail with EMFILE until enough attempts end. Every port
    still gets exactly one record, none an error."""
    need_tools(netns, "iptables")
    if shutil.which("prlimit") is None:
        pytest.skip("no prlimit on this machine")
    firewall(netns, "--dport", "5001:5200", "-j", "DROP")
    proc = subprocess.Popen(
        [
            *netns.prefix(),
            *probe_cmd(),
            "check",
            "127.0.0.1:5001-5200",
            "-C",
            "200",
            "--rate",
            "400",
            "-t",
            "0.5",
            "--workers",
            "1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{proc.pid}/fd")) < 60:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "never had 60 descriptors open"
            time.sleep(0.005)
        subprocess.run(["prlimit", "--pid", str(proc.pid), "--nofile=40:40"], check=True)
        out, err = proc.communicate(timeout=60)
    finally:
        kill(proc)
    no_traceback(err)
    assert proc.returncode == 1, err
    assert "EMFILE" not in out and "EMFILE" not in err
    recs = parse_records(out)
    assert sorted(r["port"] for r in recs) == list(range(5001, 5201))
    assert Counter((r["outcome"], r["error"]) for r in recs) == {("timeout", "ETIMEDOUT"): 200}


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


# -- 4. signals mid-run ----------------------------------------------------------------------------


def sweep(ns: Netns, *extra: str, session: bool = False) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*ns.prefix(), *probe_cmd(), "check", "127.0.0.1", "-p", "1-65535", "--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=session,
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_sweep(netns: Netns, sig: signal.Signals, code: int) -> None:
    """One process (--workers 1), paced so the signal lands mid-run: whole lines only, each
    port at most once, every finished attempt written (no hole below the last port written,
    but for the few in flight), prompt exit, 128 + signal."""
    proc = sweep(netns, "--rate", "5000", "-C", "50", "--workers", "1")
    try:
        reader = LineReader(proc)
        reader.wait_lines(1000, timeout=30)
        proc.send_signal(sig)
        proc.wait(timeout=2.0)
        data = reader.all()
        assert proc.stderr is not None
        err = proc.stderr.read()
    finally:
        kill(proc)
    no_traceback(err)
    assert proc.returncode == code, err
    recs = parse_records(data)
    ports = [r["port"] for r in recs]
    assert len(ports) == len(set(ports)), "a port written twice"
    assert 1000 <= len(ports) < 65535
    assert {r["outcome"] for r in recs} == {"refused"}
    top = max(ports)
    holes = set(range(1, top + 1)) - set(ports)
    assert all(p > top - 50 for p in holes), sorted(holes)[:20]


def test_ctrl_c_to_the_process_group_mid_sweep(netns: Netns) -> None:
    """Ctrl-C in a terminal signals every process of the group: the parent and its workers
    each get SIGINT (and the parent forwards one more). Still whole lines, no duplicates,
    only the interruption said on stderr, 130."""
    proc = sweep(netns, "--rate", "5000", session=True)
    try:
        reader = LineReader(proc)
        reader.wait_lines(1000, timeout=30)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=2.0)
        data = reader.all()
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert re.fullmatch(r"probe: interrupted: \d+ of 65535 endpoints probed\n", err), err
    recs = parse_records(data)
    ports = [r["port"] for r in recs]
    assert len(ports) == len(set(ports))
    assert 1000 <= len(ports) < 65535


# Not serial: it looks at exit codes and stderr, not at the clock, and holds nothing fixed.
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
                    time.sleep(0.002)  # the feed's pace

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


# -- 5. slow input: standard input and FIFOs -------------------------------------------------------


def wait_reading_stdin(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Until `proc` catches SIGINT and SIGTERM and one of its threads is blocked reading the
    stdin pipe (from /proc: start-up alone can take over a second on a loaded machine)."""
    want = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "never blocked reading standard input"
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            chans = [(t / "wchan").read_text() for t in Path(f"/proc/{proc.pid}/task").iterdir()]
        except OSError:  # a thread ended between the listing and the read
            continue
        m = re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)
        if m and int(m[1], 16) & want == want:
            if any("pipe_read" in c for c in chans):
                return
            if not any(c.strip("0\n") for c in chans):  # wchan hidden here: the old wait
                time.sleep(1.0)
                return
        time.sleep(0.01)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_waiting_for_stdin(sig: signal.Signals, code: int) -> None:
    proc = subprocess.Popen(
        [*probe_cmd(), "check", "-", "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_reading_stdin(proc)  # started, reading standard input, which has nothing yet
        proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            rc = None
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        finally:
            kill(proc)
    assert rc == code, f"still running 3 s after {sig.name}"


def test_slow_stdin_does_not_stretch_a_timeout(full_queue: FullQueueListener) -> None:
    closed = closed_port()
    proc = check_reading_stdin(full_queue.target, "-t", "0.5")
    try:
        time.sleep(3.0)  # the next target comes much later than the first one's timeout
        out, err = proc.communicate(f"127.0.0.1:{closed}\n", timeout=20)
    finally:
        kill(proc)
    no_traceback(err)
    recs = {r["target"]: r for r in parse_records(out)}
    first = recs[full_queue.target]
    assert first["outcome"] == "timeout"
    assert first["latency_ms"] < 2000, first  # 0.5 s asked; 4x slack for a busy machine


FIFO_WRITER = """
import sys, time
first, second = sys.argv[2], sys.argv[3]
with open(sys.argv[1], "w") as out:
    out.write(first + "\\n")
    out.flush()
    time.sleep(3.0)  # the fault: a writer that is slow to send the next line
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
        wait_for("a thread blocked opening the FIFO", lambda: _opening_a_fifo(proc.pid), 20)
        time.sleep(0.2)  # an observation window: it stays blocked there
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=3.0)
    finally:
        kill(proc)
    no_traceback(err)
    assert proc.returncode == code, err
    assert out == ""


# -- 6. broken sinks -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_head_one_in_a_shell_pipeline(
    tmp_path: Path, fmt: str, listener: RecordingListener
) -> None:
    cmd = [*probe_cmd(), "check", listener.target, "-c", "1000000", "-i", "0"]
    if fmt == "json":
        cmd.append("--json")
    out, code, err = pipe_into_head(cmd, tmp_path)
    assert err == ""
    assert code not in (0, 1, 2), code  # stopped at the broken pipe, not a verdict or an error
    assert out.count("\n") == 1
    if fmt == "json":
        (rec,) = parse_records(out)
        assert rec["target"] == listener.target and rec["outcome"] == "open"
    else:
        assert listener.target in out and "open" in out


def test_head_one_after_a_sweep_with_workers(netns: Netns, tmp_path: Path) -> None:
    """The worker processes' parent is the one writing to the pipe: the same quiet exit."""
    cmd = [*probe_cmd(), "check", "127.0.0.1", "-p", "1-65535", "--json", "--workers", "2"]
    out, code, err = pipe_into_head(cmd, tmp_path, netns.prefix())
    assert err == ""
    assert code not in (0, 1, 2), code
    (rec,) = parse_records(out)
    assert rec["outcome"] == "refused"


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_head_one_is_exit_141(tmp_path: Path, fmt: str, listener: RecordingListener) -> None:
    cmd = [*probe_cmd(), "check", listener.target, "-c", "1000000", "-i", "0"]
    if fmt == "json":
        cmd.append("--json")
    out, code, err = pipe_into_head(cmd, tmp_path)
    assert (code, err) == (141, "")
    assert out.count("\n") == 1 and listener.target in out


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_reader_leaves_after_one_line_quietly(fmt: str, listener: RecordingListener) -> None:
    # `probe check ... | head -1`: enough attempts that probe is still writing afterwards.
    args = ["check", listener.target, "-c", "1000", "-i", "0.01"]
    if fmt == "json":
        args.append("--json")
    proc = subprocess.Popen(
        [*probe_cmd(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert listener.target in first
        proc.stdout.close()
        code = proc.wait(timeout=20)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr
    assert stderr == ""
    assert code not in (0, 2), code  # it stopped at the broken pipe, and not as an error


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_check_into_dev_full_is_loud(fmt: str) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    port = closed_port()
    cmd = [*probe_cmd(), "check", f"127.0.0.1:{port}", "-c", "3", "-i", "0"]
    if fmt == "json":
        cmd.append("--json")
    script = " ".join(map(shlex.quote, cmd)) + " >/dev/full"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    no_traceback(result.stderr)
    (line,) = result.stderr.splitlines()
    assert "standard output" in line and "No space left" in line, line


# -- 7. what a record says of a fault, and what the run does ---------------------------------------


def test_json_refused_has_local_port() -> None:
    port = closed_port()
    result = probe("check", f"127.0.0.1:{port}", "--json")
    assert result.returncode == 1
    [rec] = records(result.stdout)
    assert rec["outcome"] == "refused"
    assert rec["error"] == "ECONNREFUSED"
    assert rec["local_address"] == "127.0.0.1"
    assert isinstance(rec["local_port"], int)
    assert rec["local_port"] != port


def test_json_timeout_has_local_port(full_queue: FullQueueListener) -> None:
    result = probe("check", full_queue.target, "-t", "0.3", "--json")
    assert result.returncode == 1
    [rec] = records(result.stdout)
    assert rec["outcome"] == "timeout"
    assert rec["error"] == "ETIMEDOUT"
    assert rec["local_address"] == "127.0.0.1"
    assert isinstance(rec["local_port"], int)
    assert rec["latency_ms"] >= 250  # the time waited, not the time to give up early


def test_json_retries_after_timeout(full_queue: FullQueueListener) -> None:
    result = probe("check", full_queue.target, "-t", "0.2", "--retries", "2", "--json")
    assert result.returncode == 1
    recs = records(result.stdout)
    assert [r["attempt"] for r in recs] == [1, 2, 3]
    assert {r["outcome"] for r in recs} == {"timeout"}


def test_bad_line_3_of_target_file(tmp_path: Path) -> None:
    first, second = closed_port(), closed_port()
    listing = tmp_path / "targets.txt"
    listing.write_text(f"127.0.0.1:{first}\n127.0.0.1:{second}\n127.0.0.1:nope\n127.0.0.1:1\n")
    result = probe("check", f"@{listing}", "--json")
    line = one_line_error(result)
    assert str(listing) in line
    assert "line 3" in line
    assert "nope" in line
    recs = records(result.stdout)
    assert sorted(r["port"] for r in recs) == sorted([first, second])  # lines 1-2 were probed


def test_a_bad_stdin_line_lets_the_attempt_in_flight_finish(
    full_queue: FullQueueListener,
) -> None:
    proc = check_reading_stdin(full_queue.target, "-t", "1", "--workers", "1")
    try:
        # its attempt in flight (1 s to a full accept queue): a socket to that port
        wait_for(
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


def test_sigint_writes_whole_records_and_exits_130(full_queue: FullQueueListener) -> None:
    args = [full_queue.target, "-c", "1000", "-i", "0.05", "-t", "0.2", "--json"]
    code, lines, stderr = until_signal(args, signal.SIGINT, 2)  # once records are coming
    assert code == 130, (code, stderr)
    assert "Traceback" not in stderr
    recs = records("".join(line + "\n" for line in lines))
    assert len(recs) >= 2
    assert {r["outcome"] for r in recs} == {"timeout"}
    assert [r["attempt"] for r in recs] == list(range(1, len(recs) + 1))


def test_unresolvable_name_in_namespace(netns: Netns) -> None:
    # Only `lo` exists in the namespace and its resolver points at 127.0.0.1, where nothing
    # answers: the lookup fails here and cannot reach the machine's DNS server.
    with netns.etc("resolv.conf", "nameserver 127.0.0.1\n"):
        seen = netns.run("cat", "/etc/resolv.conf").stdout
        assert seen.split() == ["nameserver", "127.0.0.1"], seen
        result = check_in(netns, "no-such-host.invalid:80", "-c", "2", "-i", "0.01", "--json")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    recs = records(result.stdout)
    assert [r["attempt"] for r in recs] == [1, 2]
    for rec in recs:
        assert rec["target"] == "no-such-host.invalid:80"
        assert rec["host"] == "no-such-host.invalid"
        assert rec["outcome"] == "error"
        assert rec["error"] in ("EAI_NONAME", "EAI_AGAIN", "EAI_NODATA", "EAI_FAIL")
        assert rec["address"] is None
        assert rec["family"] is None
        assert rec["local_address"] is None
        assert rec["local_port"] is None


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


def test_unresolvable_name_until_interrupted_in_namespace(netns: Netns) -> None:
    """`-c 0` on a name that does not resolve: an `error` line every interval, then on
    SIGINT the summary counts them as `other`, exit 130."""
    with netns.etc("resolv.conf", "nameserver 127.0.0.1\n"):
        args = ["no-such-host.invalid:80", "-c", "0", "-i", "0.05"]
        code, lines, _ = until_signal(args, signal.SIGINT, 3, netns.prefix(), wait=30)
    assert code == 130
    lines = without_lag(lines)
    attempts = [line for line in lines if line.startswith("no-such-host.invalid:80 ")]
    assert len(attempts) >= 3
    assert all(" error " in line and line.split()[-1].startswith("EAI_") for line in attempts)
    n = len(attempts)
    assert lines[n:] == [
        "--- no-such-host.invalid:80 ---",
        f"{n} attempts, 0 open, 0 refused, 0 timeout, {n} other, 100.0% loss",
    ]
