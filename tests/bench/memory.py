#!/usr/bin/env python3
"""Peak memory of a sweep, summed over every probe process (the parent and its workers).

Runs `probe check @FILE --json > /dev/null` inside a fresh network namespace for a target
file of one address (65,535 attempts) and of eight loopback addresses (524,280 attempts),
sampling VmRSS of the whole process tree every 20 ms. The goal: at most 120 MiB, and the
same peak for both sizes (memory follows concurrency, not the number of targets).

Needs root and iproute2. Usage: sudo .venv/bin/python tests/bench/memory.py [-- EXTRA ARGS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def tree(pid: int) -> list[int]:
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


def measure(prefix: list[str], probe: str, addresses: int, extra: list[str]) -> tuple[float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        for n in range(1, addresses + 1):
            fh.write(f"127.0.0.{n}:1-65535\n")
        path = fh.name
    cmd = [*prefix, probe, "check", f"@{path}", "--json", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        # ip netns exec execs probe in place: the tree below Popen's pid is probe's.
        peak = max(peak, sum(rss_kib(p) for p in tree(proc.pid)))
        time.sleep(0.02)
    os.unlink(path)
    return time.perf_counter() - t0, peak


def main() -> int:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("needs root and iproute2: the sweep runs in its own network namespace")
    probe = str(Path(sys.executable).with_name("probe"))
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
    try:
        for addresses in (1, 8):
            wall, peak = measure(prefix, probe, addresses, extra)
            attempts = addresses * 65535
            print(
                f"{attempts:7d} attempts  {wall:6.2f} s  {attempts / wall:8.0f}/s  "
                f"peak RSS, all processes: {peak / 1024:6.1f} MiB"
            )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
