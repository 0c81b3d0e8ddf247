"""What the sweep benchmarks share: a throwaway network namespace to sweep in, and the
memory of a whole process tree (a `probe check` and the workers it forks).

The scripts run as `python3 tests/bench/NAME.py`, so this directory is on sys.path."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def namespace(tag: str = "bench") -> Iterator[list[str]]:
    """A fresh network namespace holding only `lo` (up), as the command prefix that runs in
    it; removed on the way out. Exits with a message without root or iproute2."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("needs root and iproute2: the sweep runs in its own network namespace")
    name = f"{tag}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    prefix = ["ip", "netns", "exec", name]
    try:
        subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
        yield prefix
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def tree(pid: int) -> list[int]:
    """The process and all its descendants."""
    pids, i = [pid], 0
    while i < len(pids):
        try:
            kids = Path(f"/proc/{pids[i]}/task/{pids[i]}/children").read_text().split()
        except OSError:
            kids = []
        pids += [int(k) for k in kids]
        i += 1
    return pids


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed(
    cmd: list[str], env: dict[str, str] | None = None, out: Path | None = None
) -> tuple[float, float, int, int]:
    """Run `cmd` with output to /dev/null (or to the file `out`): (wall s, CPU s of the
    whole tree, peak RSS KiB summed over the tree, sampled every 20 ms, exit status).
    `ip netns exec` execs the command in place, so the tree below the child is the
    command's own."""
    t0 = time.perf_counter()
    with contextlib.ExitStack() as files:  # the child keeps its own descriptor
        sink = subprocess.DEVNULL if out is None else files.enter_context(out.open("wb"))
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.DEVNULL, env=env)
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, sum(rss_kib(p) for p in tree(proc.pid)))
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped above
    return wall, usage.ru_utime + usage.ru_stime, peak, proc.returncode


def lag_buckets(metrics: str) -> list[tuple[float, float]]:
    """`probe_schedule_lag_seconds`' buckets from a /metrics page: (le, cumulative count)."""
    out: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith("probe_schedule_lag_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out.append((float(le), float(line.rsplit(" ", 1)[1])))
    return out


def print_lag(counts: list[tuple[float, float]], title: str = "") -> None:
    """The share of starts within each bucket and the bucket that holds the 99th percentile."""
    total = max(counts[-1][1], 1)
    for le, count in counts:
        print(f"  lag <= {le * 1000:7.1f} ms: {100 * count / total:6.2f}%")
    p99 = next((le for le, count in counts if count >= 0.99 * total), float("inf"))
    print(f"{title}{': ' if title else ''}schedule lag p99 <= {p99 * 1000:.1f} ms")
