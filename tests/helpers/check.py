"""What the `probe check` tests share: the console script in a subprocess, its records
parsed and checked against the contract, its one-line errors, a line reader with deadlines."""

from __future__ import annotations

import queue
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .records import parse_records
from .run import probe_cmd, run_probe

RUN_TIMEOUT = 30
MS = r"\d+\.\d\d ms"
RTT = rf"  rtt {MS}" if sys.platform == "linux" else rf"(  rtt {MS})?"


def probe(
    *args: str, input: str | None = None, cwd: Path | None = None, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return run_probe(*args, cwd=cwd, input=input, timeout=timeout)


def probe_env(
    env: dict[str, str], *args: str, timeout: float = RUN_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`probe` with these environment variables added (PROBE_CORE=python, ...)."""
    return run_probe(*args, env=env, timeout=timeout)


def records(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line as a record: anything that is not one fails the test."""
    return parse_records(stdout, check=True)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The run ended in exit 2 with exactly one line on stderr and no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# Below the kernel's ephemeral ports (32768 up): a port from there can become some loopback
# connect's source between this look and the test's own bind (a full machine makes many), while
# these are only ever taken by an explicit bind. Clear of the fixed blocks the tests bind (19090,
# source ranges from 20000, 21000 and 22000 up, knocks from 30000).
FREE_PORTS = range(24000, 29900)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody has bound right now (not held: for a listener or `-s ADDR:PORT`)."""
    for port in random.sample(FREE_PORTS, 100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in {FREE_PORTS} on {host}")


class Lines:
    """Reads a child's stdout on a thread so the test can wait for lines with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.stream = proc.stdout
        self.lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.put(line)
        self.lines.put("")  # EOF

    def get(self, timeout: float = 10.0) -> str:
        return self.lines.get(timeout=timeout)

    def rest(self) -> list[str]:
        self.thread.join(10)
        out = []
        while True:
            line = self.lines.get_nowait() if not self.lines.empty() else ""
            if not line:
                return out
            out.append(line)


def until_signal(
    args: list[str],
    signum: int,
    lines_before: int,
    prefix: Sequence[str] = (),
    wait: float = 10.0,
) -> tuple[int, list[str], str]:
    """`probe check ARGS` (after `prefix`: `ip netns exec NS`) until `lines_before` lines
    are out (each within `wait` s), then `signum`: (exit code, every stdout line without its
    newline, stderr)."""
    proc = subprocess.Popen(
        [*prefix, *probe_cmd(), "check", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        reader = Lines(proc)
        seen = [reader.get(wait) for _ in range(lines_before)]
        assert all(seen), f"the run ended before {lines_before} lines: {seen}"
        proc.send_signal(signum)
        code = proc.wait(timeout=10)
        out = seen + reader.rest()
        assert proc.stderr is not None
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, [line.rstrip("\n") for line in out], stderr


def compact_ports(ports: list[int]) -> str:
    """How the human summary lists a host's non-open ports: runs as LO-HI, at most 24 of
    them, then how many more (written out here, not taken from probe/)."""
    runs: list[list[int]] = []
    for port in sorted(ports):
        if runs and runs[-1][1] == port - 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    parts = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs]
    more = f",… ({len(parts) - 24} more ranges)" if len(parts) > 24 else ""
    return ",".join(parts[:24]) + more


LAG_LINE = re.compile(r"event loop lag p99 \d+\.\d ms, max \d+\.\d ms")


def without_lag(lines: list[str]) -> list[str]:
    """The lines but the loop-lag line, which a loaded machine may add to any run."""
    return [line for line in lines if not LAG_LINE.fullmatch(line)]
