"""tcping habits: a line per attempt whatever the count, `-c 0` until interrupted, the
summary on SIGINT and SIGTERM, and a progress line that stays on a terminal's stderr and
out of stdout's way (a real pty), or away entirely on pipes. Plus the plain cases that once
failed: one endpoint with any count, a one-line file, an empty share."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    MS,
    FullQueueListener,
    RecordingListener,
    closed_port,
    probe,
    probe_cmd,
    records,
    until_signal,
    without_lag,
)

ATTEMPT = re.compile(rf"127\.0\.0\.1:\d+ +(open|refused|timeout) +local 127\.0\.0\.1:\d+ +{MS}.*")


def test_one_endpoint_many_attempts_every_line(listener: RecordingListener) -> None:
    """Once: nothing printed, then a false `no targets in the input`, exit 2."""
    result = probe("check", listener.target, "-c", "40", "-i", "0.01")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = without_lag(result.stdout.splitlines())
    assert all(ATTEMPT.fullmatch(line) for line in lines[:40]), lines[:40]
    assert lines[40] == f"--- {listener.target} ---"
    assert lines[41].startswith("40 attempts, 40 open, 0 refused, 0 timeout, 0 other, 0.0% loss")
    assert lines[42].startswith("latency min/avg/max/mdev = ")
    assert len(lines) == 43


def test_one_endpoint_many_attempts_json(listener: RecordingListener) -> None:
    result = probe("check", listener.target, "-c", "40", "-i", "0.01", "--json")
    assert result.returncode == 0, result.stderr
    assert [r["attempt"] for r in records(result.stdout)] == list(range(1, 41))


def test_one_line_file(listener: RecordingListener, tmp_path: Path) -> None:
    listing = tmp_path / "one.txt"
    listing.write_text(f"{listener.target}\n")
    result = probe("check", f"@{listing}")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [line] = result.stdout.splitlines()
    assert ATTEMPT.fullmatch(line) and " open " in line


def test_more_workers_than_endpoints_leaves_empty_shares() -> None:
    ports = sorted({closed_port() for _ in range(40)})
    spec = "127.0.0.1:" + ",".join(map(str, ports))
    result = probe("check", spec, "--workers", "48", "--json")
    assert result.returncode == 1, result.stderr  # refused everywhere: not a usage error
    assert result.stderr == ""
    assert sorted(r["port"] for r in records(result.stdout)) == ports


def test_empty_shard_is_not_an_error(listener: RecordingListener) -> None:
    # The endpoint's hash puts it in one share of two; the other share is empty and fine.
    codes = set()
    for index in (0, 1):
        result = probe("check", listener.target, "--shard", f"{index}/2", "--json")
        assert result.stderr == ""
        codes.add((result.returncode, len(records(result.stdout))))
    assert codes == {(0, 1), (0, 0)}


# -- -c 0 and signals ------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_count_zero_runs_until_signal_then_summary(
    listener: RecordingListener, signum: int, code: int
) -> None:
    got, lines, stderr = until_signal(
        [listener.target, "-c", "0", "-i", "0.02"], signum, lines_before=5
    )
    assert got == code, stderr
    assert stderr == ""
    lines = without_lag(lines)
    attempts = [line for line in lines if ATTEMPT.fullmatch(line)]
    assert len(attempts) >= 5
    assert lines[: len(attempts)] == attempts  # every attempt its line, then the summary
    summary = lines[len(attempts) :]
    assert summary[0] == f"--- {listener.target} ---"
    n = len(attempts)
    assert summary[1] == (
        f"{n} attempt{'s' * (n != 1)}, {n} open, 0 refused, 0 timeout, 0 other, 0.0% loss"
    )
    stats = re.fullmatch(
        r"latency min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", summary[2]
    )
    assert stats, summary
    low, avg, high, mdev = map(float, stats.groups())
    assert 0 < low <= avg <= high and mdev <= high - low
    assert len(summary) == 3


def test_count_zero_refused_summary_shows_loss() -> None:
    target = f"127.0.0.1:{closed_port()}"
    code, lines, stderr = until_signal([target, "-c", "0", "-i", "0.02"], signal.SIGINT, 3)
    assert code == 130, stderr
    lines = without_lag(lines)
    n = sum(1 for line in lines if ATTEMPT.fullmatch(line))
    assert lines[-2:] == [
        f"--- {target} ---",
        f"{n} attempts, 0 open, {n} refused, 0 timeout, 0 other, 100.0% loss",
    ]


def test_count_zero_json_sigterm_whole_records(full_queue: FullQueueListener) -> None:
    code, lines, stderr = until_signal(
        [full_queue.target, "-c", "0", "-i", "0.05", "-t", "0.1", "--json"], signal.SIGTERM, 2
    )
    assert code == 143, stderr
    recs = records("".join(line + "\n" for line in lines))
    assert {r["outcome"] for r in recs} == {"timeout"}
    assert [r["attempt"] for r in recs] == list(range(1, len(recs) + 1))


def test_many_attempts_then_sigint_is_no_false_error() -> None:
    """Once: `-c 1000000 -i 0.2` on a refused port showed no lines, and Ctrl-C printed
    `no targets in the input`."""
    target = f"127.0.0.1:{closed_port()}"
    code, lines, stderr = until_signal([target, "-c", "1000000", "-i", "0.05"], signal.SIGINT, 3)
    assert code == 130
    assert stderr == ""
    assert lines[-3] == f"--- {target} ---"
    assert re.fullmatch(r"interrupted: \d+ of 1000000 attempts made", lines[-1]), lines


# -- the progress line -----------------------------------------------------------------------


def _sweep_args(listener: RecordingListener) -> list[str]:
    # 300 endpoints at 150/s: two seconds, so the progress line is drawn (every second)
    # before open lines come; three open ports spread through the sweep.
    closed = [closed_port() for _ in range(297)]
    ports = [*closed[:100], listener.port, *closed[100:200], listener.port, *closed[200:]]
    ports.append(listener.port)
    return ["check", "127.0.0.1:" + ",".join(map(str, ports)), "--rate", "150"]


def _screen(raw: str) -> list[str]:
    """What a terminal shows: \\r returns to column 0, ESC[K erases to the end of the line."""
    shown: list[str] = []
    for segment in raw.split("\n"):
        line: list[str] = []
        col = 0
        i = 0
        while i < len(segment):
            if segment.startswith("\033[K", i):
                del line[col:]
                i += 3
                continue
            ch = segment[i]
            if ch == "\r":
                col = 0
            else:
                if col < len(line):
                    line[col] = ch
                else:
                    line.append(ch)
                col += 1
            i += 1
        shown.append("".join(line))
    return shown


@pytest.mark.parametrize("workers", ["1", "2"])
def test_progress_on_a_terminal_never_runs_into_records(
    listener: RecordingListener, workers: str
) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [*probe_cmd(), *_sweep_args(listener), "--workers", workers],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        close_fds=True,
    )
    os.close(secondary)
    raw = bytearray()
    deadline = time.monotonic() + 30
    poller = select.poll()  # not select(): descriptor numbers may pass its 1024 limit
    poller.register(primary, select.POLLIN)
    try:
        while time.monotonic() < deadline:
            if not poller.poll(500):
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 1 << 16)
            except OSError:  # EIO: every writer closed
                break
            if not chunk:
                break
            raw += chunk
        code = proc.wait(timeout=10)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = raw.decode()
    assert code == 1, text
    progress = re.compile(r"\d+ attempts?, \d+ open, \d+/s")
    assert progress.search(text), text  # it was drawn
    shown = [line for line in _screen(text) if line]
    assert not any(progress.search(line) for line in shown), shown  # and always erased
    opened = [line for line in shown if " open " in line]
    assert len(opened) == 3 and all(ATTEMPT.fullmatch(line) for line in opened), shown
    assert any(line.startswith("300 attempts in ") for line in shown), shown


@pytest.mark.parametrize("workers", ["1", "2"])
def test_no_progress_on_pipes(listener: RecordingListener, workers: str) -> None:
    result = probe(*_sweep_args(listener), "--workers", workers)
    assert result.returncode == 1
    assert result.stderr == ""
    assert "attempts," not in result.stdout
    assert len([line for line in result.stdout.splitlines() if " open " in line]) == 3
