"""What every part of the harness uses: waiting on a condition with a deadline, killing a
process, no traceback on stderr, a process's time waiting for a CPU, the checkout's root."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Rec = dict[str, Any]
ROOT = Path(__file__).resolve().parent.parent.parent  # the checkout


def no_traceback(stderr: str | bytes) -> None:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 15.0, step: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline.
    A wait returns as soon as its condition holds, so a generous deadline costs a passing
    test nothing (a daemon's start-up can take seconds on a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def kill(proc: subprocess.Popen[Any]) -> None:
    """Kill a child this test started (by its own handle) and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def run_queue_wait(pid: int) -> float:
    """Seconds the process's main thread (a daemon's loop) has spent ready to run but
    waiting for a CPU (/proc/PID/schedstat: on-CPU ns, run-queue ns, slices): what a loaded
    machine, not the program, made late."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
