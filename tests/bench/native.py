#!/usr/bin/env python3
"""The native sweep core against the Python engine and `nmap -sT`, side by side in one run.

Scenarios, each inside a throwaway network namespace holding only `lo`:

  v4       127.0.0.1, ports 1-65535
  v6       [::1], ports 1-65535
  hosts    127.0.0.1-254 x ports 1-256, from a target file
  file8    127.0.0.1-8 x ports 1-65535, from a target file (524,280 attempts)
  filtered 127.0.0.1, ports 1-10000 with every SYN dropped (iptables in the namespace),
           -t 1, against nmap -sT --max-rtt-timeout 1000ms --min-parallelism 1000 (goal 3)

For each: `probe check ... --json > /dev/null` on the native core, the same with
PROBE_CORE=python, and nmap -sT (-n -Pn --max-retries 0). Rounds alternate the commands so
drift in machine speed hits all alike. Prints median wall, median CPU (the process and its
workers), peak RSS summed over every process of the tree, and the same-run ratios.

Needs root, iproute2 and nmap. Usage:
  sudo PATH=$PWD/.venv/bin:$PATH python3 tests/bench/native.py [--rounds 3] [--busy]
       [--only v4,v6,hosts,file8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import namespace, timed

FILTER = ["INPUT", "-p", "tcp", "--syn", "--dport", "1:10000", "-j", "DROP"]


def scenarios(tmp: Path) -> dict[str, tuple[list[str], list[str], int]]:
    """name → (probe args, nmap args, attempts)."""
    hosts = tmp / "hosts.txt"
    hosts.write_text("".join(f"127.0.0.{n}:1-256\n" for n in range(1, 255)))
    file8 = tmp / "file8.txt"
    file8.write_text("".join(f"127.0.0.{n}:1-65535\n" for n in range(1, 9)))
    nmap_hosts = tmp / "nmap_hosts.txt"
    nmap_hosts.write_text("".join(f"127.0.0.{n}\n" for n in range(1, 255)))
    nmap_file8 = tmp / "nmap_file8.txt"
    nmap_file8.write_text("".join(f"127.0.0.{n}\n" for n in range(1, 9)))
    return {
        "v4": (["127.0.0.1", "-p", "1-65535"], ["-p1-65535", "127.0.0.1"], 65535),
        "v6": (["[::1]:1-65535"], ["-6", "-p1-65535", "::1"], 65535),
        "hosts": ([f"@{hosts}"], ["-p1-256", "-iL", str(nmap_hosts)], 254 * 256),
        "file8": ([f"@{file8}"], ["-p1-65535", "-iL", str(nmap_file8)], 8 * 65535),
        "filtered": (
            ["127.0.0.1:1-10000", "-t", "1"],
            ["--max-rtt-timeout", "1000ms", "--min-parallelism", "1000", "-p1-10000", "127.0.0.1"],
            10000,
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", action="store_true", help="keep one core busy during the run")
    ap.add_argument("--only", default="v4,v6,hosts,file8")
    ap.add_argument("--no-python", action="store_true", help="skip the Python engine")
    a = ap.parse_args()
    probe = shutil.which("probe")
    if not probe or not shutil.which("nmap") or os.geteuid() != 0:
        sys.exit("needs root, probe on PATH and nmap")
    with namespace("bench-native") as prefix:
        run(a, probe, prefix)


def run(a: argparse.Namespace, probe: str, prefix: list[str]) -> None:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None
    tmp = Path(tempfile.mkdtemp())
    try:
        print(f"uptime before: {os.getloadavg()}")
        for name, (pargs, nargs, attempts) in scenarios(tmp).items():
            if name not in a.only.split(","):
                continue
            if name == "filtered":
                subprocess.run([*prefix, "iptables", "-A", *FILTER], check=True)
            base = {**os.environ}
            cmds = {
                "probe native": ([*prefix, probe, "check", *pargs, "--json"], base),
                "probe python": (
                    [*prefix, probe, "check", *pargs, "--json"],
                    {**base, "PROBE_CORE": "python"},
                ),
                "nmap -sT": (
                    [*prefix, "nmap", "-sT", "-n", "-Pn", "--max-retries", "0", *nargs],
                    base,
                ),
            }
            if a.no_python:
                del cmds["probe python"]
            runs: dict[str, list[tuple[float, float, int]]] = {k: [] for k in cmds}
            for _ in range(a.rounds):
                for k, (cmd, env) in cmds.items():
                    runs[k].append(timed(cmd, env)[:3])
            print(f"\n{name}: {attempts} attempts, {a.rounds} rounds")
            med = {k: statistics.median(w for w, _, _ in v) for k, v in runs.items()}
            cpu = {k: statistics.median(c for _, c, _ in v) for k, v in runs.items()}
            for k, v in runs.items():
                rss = max(m for _, _, m in v) / 1024
                print(
                    f"  {k:13} wall {med[k]:6.2f} s  {attempts / med[k]:8.0f}/s  "
                    f"cpu {cpu[k]:6.2f} s ({cpu[k] / attempts * 1e6:5.1f} us/attempt)  "
                    f"peak RSS (all processes) {rss:6.1f} MiB"
                )
                print(f"  {'':13} rounds: " + " ".join(f"{w:.2f}" for w, _, _ in v))
            nm = "nmap -sT"
            for k in cmds:
                if k.startswith("probe"):
                    print(f"  {k} / nmap: wall {med[k] / med[nm]:.2f}, cpu {cpu[k] / cpu[nm]:.2f}")
        print(f"\nuptime after: {os.getloadavg()}")
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
