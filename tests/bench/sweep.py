#!/usr/bin/env python3
"""The 65,535-port loopback sweep, checked and timed, inside a throwaway network namespace.

Starts listeners on a few ports inside the namespace, runs
`probe check 127.0.0.1 -p 1-65535 --json`, and checks the output: one record per port,
`open` exactly where something listens, every other port `refused` (none a timeout), a
local port on every record. Prints wall time, attempts/s and peak RSS per round.

Needs root and iproute2 (the sweep must never touch this machine's own services, which
listen on loopback too). Usage: sudo .venv/bin/python tests/bench/sweep.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from _common import namespace

LISTEN = (22, 80, 8080, 40000, 65535)
LISTENER = """
import socket, sys, time
socks = []
for p in map(int, sys.argv[1:]):
    s = socket.socket(); s.bind(("127.0.0.1", p)); s.listen(4096); socks.append(s)
print("ready", flush=True)
time.sleep(3600)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("extra", nargs="*", help="extra probe arguments")
    a = ap.parse_args()
    probe = Path(sys.executable).with_name("probe")
    with namespace() as prefix, tempfile.TemporaryDirectory() as tmp:
        listeners = subprocess.Popen(
            [*prefix, sys.executable, "-c", LISTENER, *map(str, LISTEN)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert listeners.stdout is not None
            assert listeners.stdout.readline().strip() == "ready"
            walls = []
            cpus = []
            for n in range(a.rounds):
                out = Path(tmp) / f"{n}.jsonl"
                cmd = [*prefix, str(probe), "check", "127.0.0.1", "-p", "1-65535", "--json"]
                t0 = time.perf_counter()
                with out.open("wb") as fh:
                    p = subprocess.Popen([*cmd, *a.extra], stdout=fh)
                    _, status, usage = os.wait4(p.pid, 0)
                wall = time.perf_counter() - t0
                walls.append(wall)
                cpu = usage.ru_utime + usage.ru_stime  # the process and its workers
                cpus.append(cpu)
                verdict = check(out)
                out.unlink()
                print(
                    f"round {n + 1}: {wall:.2f} s  {65535 / wall:.0f} attempts/s  cpu {cpu:.2f} s"
                    f"  peak {usage.ru_maxrss / 1024:.0f} MiB"
                    f"  exit {os.waitstatus_to_exitcode(status)}  {verdict}"
                )
            print(
                f"median {statistics.median(walls):.2f} s, cpu {statistics.median(cpus):.2f} s "
                f"over {a.rounds} rounds"
            )
        finally:
            listeners.kill()
            listeners.wait()
    return 0


def check(path: Path) -> str:
    outcomes: Counter[str] = Counter()
    ports: set[int] = set()
    opened: set[int] = set()
    problems: list[str] = []
    with path.open() as fh:
        for line in fh:
            r = json.loads(line)
            outcomes[r["outcome"]] += 1
            if r["port"] in ports:
                problems.append(f"port {r['port']} twice")
            ports.add(r["port"])
            if r["outcome"] == "open":
                opened.add(r["port"])
            if r["local_port"] is None:
                problems.append(f"port {r['port']} without local_port")
    if len(ports) != 65535:
        problems.append(f"{len(ports)} ports recorded")
    if opened != set(LISTEN):
        problems.append(f"open {sorted(opened)} != listening {sorted(LISTEN)}")
    if outcomes["timeout"]:
        problems.append(f"{outcomes['timeout']} timeouts")
    return "ok " + dict(outcomes).__repr__() if not problems else "WRONG: " + "; ".join(problems)


if __name__ == "__main__":
    sys.exit(main())
