"""Output that stalls, fills or goes away: pipes, FIFOs and stdouts nobody reads, a log that
cannot be written, a full disk, a log file removed or replaced. Records stay whole lines,
the process stays stoppable, and what was not written is counted, never invented.

Faults come from real kernels: FIFOs and pipes nobody reads, `/dev/full`, read-only and
64 KiB tmpfs mounts. Tests that look at time or hold a fixed resource are marked `serial` or
`serial_long` (tests/conftest.py's two lanes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    Daemon,
    closed_port,
    config_toml,
    free_port_block,
    http_get,
    kill,
    logging_one_target,
    no_traceback,
    probe_cmd,
    start_in,
    target_toml,
    wait_for,
)

# -- output nobody reads ---------------------------------------------------------------------------


def busy_config(log: Path | None, listen: str = "127.0.0.1:0") -> str:
    """Ten closed ports every 50 ms: a 64 KiB pipe is full within seconds."""
    targets = "".join(target_toml(f"t{i}", f"127.0.0.1:{closed_port()}") for i in range(10))
    return config_toml(log, targets, interval=0.05, timeout=0.3, listen=listen)


class Unread:
    """The read end of a pipe nobody reads: `stalled()` once it has held 32 KiB or more,
    unchanged, for `quiet` seconds (its writer cannot put more in: records are waiting)."""

    def __init__(self, fd: int, quiet: float = 1.0) -> None:
        self.fd = fd
        self.quiet = quiet
        self.held = -1
        self.since = 0.0

    def stalled(self) -> bool:
        waiting = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        held, now = int.from_bytes(waiting, sys.byteorder), time.monotonic()
        if held != self.held:
            self.held, self.since = held, now
            return False
        return held >= 32768 and now - self.since >= self.quiet


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


# Not serial: no clock, no fixed resource.
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


@pytest.mark.serial_long
def test_a_fifo_log_nobody_reads_holds_neither_healthz_nor_sigterm(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A reader opens the FIFO and never reads: the daemon goes on (/healthz answers), and
    SIGTERM ends it within the drain limit, the unwritten records counted on stderr."""
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        # A fixed port (the unread log cannot tell one), from a block no other test uses:
        # source ranges elsewhere bind from 21000 up.
        port = free_port_block(1, 22000)
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


@pytest.mark.serial_long
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


@pytest.mark.serial_long
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


def read_to_end(fd: int, proc: subprocess.Popen[str], timeout: float = 120.0) -> bytes:
    """Everything the writer writes, until it closes the pipe (or the deadline)."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while time.monotonic() < deadline:
        if not poller.poll(1000):
            continue
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    kill(proc)
    raise AssertionError(f"the check did not finish within {timeout} s")


SWEPT = 65535  # at ~370 bytes a JSON record, well past the 16 MiB a check may leave unread
SWEPT_ADDRESS = "127.0.0.113"  # away from 127.0.0.1, where other tests' listeners are


def listening_ports() -> set[int]:
    """Ports a socket listens on for every address: connects to one whose backlog is full
    time out for real."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and address in ("00000000", "7100007F"):
            ports.add(int(port, 16))
    return ports


@pytest.mark.serial_long
@pytest.mark.parametrize(
    ("workers", "core"),
    [
        ((), "native"),
        (("--workers", "1"), "native"),
        ((), "python"),
        (("--workers", "1"), "python"),
    ],
    ids=["workers-native", "one-process-native", "workers-python", "one-process-python"],
)
def test_a_late_reader_gets_every_record_and_no_false_timeout(
    workers: tuple[str, ...], core: str
) -> None:
    """The reader starts reading only after the pipe has stood full for 3 s: the check waits
    for it (no record lost, no error), and waiting turns no connect into a timeout: every
    port of a loopback address refuses (or, where another test's listener is, answers or,
    its backlog full, times out)."""
    env = dict(os.environ)
    if core == "python":
        env["PROBE_CORE"] = "python"
    else:
        env.pop("PROBE_CORE", None)
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*probe_cmd(), "check", SWEPT_ADDRESS, "-p", f"1-{SWEPT}", "--json", "-t", "1", *workers],
        stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    os.close(w)
    try:
        wait_for("a reader 3 s late", Unread(r, quiet=3.0).stalled, timeout=60)
        data = read_to_end(r, proc)
        code = proc.wait(timeout=30)
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        kill(proc)
        os.close(r)
    assert stderr == "", stderr
    records = [json.loads(line) for line in data.splitlines()]
    outcomes = Counter(record["outcome"] for record in records)
    assert sum(outcomes.values()) == SWEPT, outcomes
    assert set(outcomes) <= {"refused", "open", "timeout"}, outcomes
    timed_out = {record["port"] for record in records if record["outcome"] == "timeout"}
    assert timed_out <= listening_ports(), outcomes
    assert code == (0 if outcomes["open"] == SWEPT else 1)


@pytest.mark.serial_long
@pytest.mark.parametrize(
    ("workers", "core"),
    [((), "native"), ((), "python"), (("--workers", "1"), "python")],
    ids=["workers-native", "workers-python", "one-process-python"],
)
def test_sigterm_ends_a_check_waiting_for_its_reader(workers: tuple[str, ...], core: str) -> None:
    """A check held by a reader that never reads: SIGTERM ends it within the drain limit,
    whole lines written, the last stderr line counting the rest."""
    env = dict(os.environ)
    if core == "python":
        env["PROBE_CORE"] = "python"
    else:
        env.pop("PROBE_CORE", None)
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*probe_cmd(), "check", SWEPT_ADDRESS, "-p", f"1-{SWEPT}", "--json", *workers],
        stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    os.close(w)
    try:
        wait_for("a stalled pipe", Unread(r, quiet=2.0).stalled, timeout=60)
        assert proc.poll() is None, "the check gave up on its reader"
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 143
        assert time.monotonic() - began < 2.0 + 1.5
        assert proc.stderr is not None
        assert whole_lines_then_count(read_all(r), proc.stderr.read()) > 0
    finally:
        kill(proc)
        os.close(r)


@pytest.mark.serial_long
def test_a_reader_that_leaves_while_the_check_waits_ends_it_quietly() -> None:
    """Workers held for a slow reader that then closes the pipe: they are stopped at once
    (nobody will read what they find), and the check exits 141 without a word."""
    env = {**os.environ, "PROBE_CORE": "python"}  # the slower engine: far from done
    r, w = os.pipe()
    proc = subprocess.Popen(
        [*probe_cmd(), "check", "127.0.0.112/30", "-p", f"1-{SWEPT}", "--json", "--workers", "2"],
        stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    os.close(w)
    try:
        wait_for("a stalled pipe", Unread(r, quiet=2.0).stalled, timeout=60)
        os.close(r)
        began = time.monotonic()
        assert proc.wait(timeout=30) == 141
        assert time.monotonic() - began < 2.0
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        kill(proc)


# -- a log that cannot be written ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/proc/version", "/sys/probe-test.log"])
def test_daemon_log_on_an_unwritable_path_is_loud(
    tmp_path: Path, daemons: list[Daemon], path: str
) -> None:
    if not os.path.exists(os.path.dirname(path)):
        pytest.skip(f"no {os.path.dirname(path)}")
    port = closed_port()
    text = config_toml(path, target_toml("t0", f"127.0.0.1:{port}"), timeout=0.5, interval=1.0)
    d = Daemon.start(tmp_path, text, Path(path))
    daemons.append(d)
    assert d.wait_exit() != 0
    err = d.stderr
    no_traceback(err)
    (line,) = err.splitlines()
    assert path in line, line


def test_daemon_log_on_a_read_only_mount_is_loud(tmp_path: Path, daemons: list[Daemon]) -> None:
    """A bind mount remounted read-only, in a mount namespace of its own (root ignores
    permission bits, not a read-only mount). The log file already exists there."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs root, unshare and mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    log = ro / "probe.log"
    log.write_text("")
    probe = shlex.quote(str(ro))
    inner = f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} {probe} && exec"
    port = closed_port()
    text = config_toml(log, target_toml("t0", f"127.0.0.1:{port}"), timeout=0.5, interval=1.0)
    check = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"{inner} touch {probe}/x"], capture_output=True, text=True
    )
    if "Read-only" not in check.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {check.stderr.strip()}")
    d = Daemon.start(tmp_path, text, log, wrap=["unshare", "-m", "sh", "-c", f'{inner} "$@"', "sh"])
    daemons.append(d)
    assert d.wait_exit() != 0
    err = d.stderr
    no_traceback(err)
    (line,) = err.splitlines()
    assert str(log) in line and "Read-only" in line, line
    assert log.read_text() == ""


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


# -- a log that fills its disk or goes away --------------------------------------------------------


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


# Not serial: no clock, and the small disk is a tmpfs of its own.
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


@pytest.mark.serial
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


@pytest.mark.serial
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


@pytest.mark.serial
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
