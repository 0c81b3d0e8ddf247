#!/usr/bin/env python3
"""The sweep shapes people type, on the native core, against `nmap -sT -Pn -n` in the same
run, inside a throwaway network namespace holding only `lo` (every 127/8 address answers):

  slash16    127.0.0.0/16 -p 22                      vs nmap -sT -Pn -n -p 22 127.0.0.0/16
  file100k   100,000 addresses from a file, -p 22    vs nmap -sT -Pn -n -p 22 -iL FILE
  open-o     slash16 with --open -o FILE             (goal: within 10 % of slash16's CPU)
  exclude    slash16 with --exclude 127.0.5.0/24     (same)
  rate       slash16 with --rate 20000 alone         (same; the delivered rate within 5 %)
  rate-cores 127.0.0.0/18 -p 22 --rate 20000 on each core: the delivered rates side by side
  million    127.0.0.0/12 -p 22: 1,048,576 attempts  (goal: every process's RSS < 120 MiB)

Rounds alternate the commands, so drift in the machine's speed hits all alike. The variants
(plain, open-o, exclude, rate) each write standard output to a file of their own, the same
sink for all; the delivered rate is read from the rate arm's records there. Prints the
median wall and CPU (the process and its workers), peak RSS summed over the process tree,
the same-run ratios, and the load average before and after.

Needs root, iproute2 and nmap. Usage:
  sudo PATH=$PWD/.venv/bin:$PATH python3 tests/bench/shapes.py [--rounds 3]
       [--only slash16,file100k,open-o,exclude,rate,rate-cores,million]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from _common import namespace, timed

RATE = 20000


def delivered(path: Path) -> float:
    """Attempts per second from the first start to the last, from the records' timestamps."""
    stamps = []
    with path.open("rb") as fh:
        for line in fh:
            text = json.loads(line)["timestamp"]
            stamps.append(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp())
    stamps.sort()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="slash16,file100k,open-o,exclude,rate,rate-cores,million")
    a = ap.parse_args()
    probe = shutil.which("probe")
    if not probe or not shutil.which("nmap") or os.geteuid() != 0:
        sys.exit("needs root, probe on PATH and nmap")
    only = a.only.split(",")
    tmp = Path(tempfile.mkdtemp())
    try:
        with namespace("bench-shapes") as prefix:
            run(a.rounds, only, probe, prefix, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(rounds: int, only: list[str], probe: str, prefix: list[str], tmp: Path) -> None:
    listing = tmp / "100k.txt"
    listing.write_text("".join(f"127.{n >> 16}.{n >> 8 & 255}.{n & 255}\n" for n in range(100000)))
    found = tmp / "found.jsonl"
    plain = [probe, "check", "127.0.0.0/16", "-p", "22", "--json"]
    nmap = ["nmap", "-sT", "-Pn", "-n", "-p", "22"]
    groups = {
        "slash16": {"probe": plain, "nmap": [*nmap, "127.0.0.0/16"]},
        "file100k": {
            "probe": [probe, "check", "-iL", str(listing), "-p", "22", "--json"],
            "nmap": [*nmap, "-iL", str(listing)],
        },
        "variants": {
            "plain": plain,
            **({"open-o": [*plain, "--open", "-o", str(found)]} if "open-o" in only else {}),
            **({"exclude": [*plain, "--exclude", "127.0.5.0/24"]} if "exclude" in only else {}),
            **({"rate": [*plain, "--rate", str(RATE)]} if "rate" in only else {}),
        },
        "million": {"probe": [probe, "check", "127.0.0.0/12", "-p", "22", "--json"]},
        "rate-cores": {
            core: [probe, "check", "127.0.0.0/18", "-p", "22", "--rate", str(RATE), "--json"]
            for core in ("native", "python")
        },
    }
    print(f"load average before: {os.getloadavg()}")
    for name, cmds in groups.items():
        if name not in only and not (name == "variants" and len(cmds) > 1):
            continue
        runs: dict[str, list[tuple[float, float, int]]] = {k: [] for k in cmds}
        for _ in range(1 if name == "million" else rounds):
            for k, cmd in cmds.items():
                env = {**os.environ, "PROBE_CORE": "python"} if k == "python" else None
                out = tmp / f"{k}.out" if name in ("variants", "rate-cores") else None
                runs[k].append(timed([*prefix, *cmd], env, out)[:3])
        print(f"\n{name}: {rounds} rounds")
        wall = {k: statistics.median(w for w, _, _ in v) for k, v in runs.items()}
        cpu = {k: statistics.median(c for _, c, _ in v) for k, v in runs.items()}
        for k, v in runs.items():
            rss = max(m for _, _, m in v) / 1024
            print(
                f"  {k:8} wall {wall[k]:6.2f} s  cpu {cpu[k]:6.2f} s  "
                f"peak RSS (all processes) {rss:6.1f} MiB   rounds: "
                + " ".join(f"{w:.2f}/{c:.2f}" for w, c, _ in v)
            )
        if "nmap" in cmds:
            print(
                f"  probe / nmap: wall {wall['probe'] / wall['nmap']:.2f}, "
                f"cpu {cpu['probe'] / cpu['nmap']:.2f}"
            )
        if name == "variants":
            for k in cmds:
                if k != "plain":
                    pairs = zip(runs[k], runs["plain"], strict=True)
                    paired = sorted(a[1] / b[1] for a, b in pairs)
                    print(
                        f"  {k} / plain: cpu {cpu[k] / cpu['plain']:.2f} (medians); round by "
                        f"round {statistics.median(paired):.3f} median, "
                        f"{paired[0]:.3f}-{paired[-1]:.3f}"
                    )
            if "rate" in cmds:
                got = delivered(tmp / "rate.out")
                print(f"  --rate {RATE}: delivered {got:.0f}/s ({got / RATE:.3f} of asked)")
        if name == "rate-cores":
            for core in cmds:
                got = delivered(tmp / f"{core}.out")
                print(f"  {core}: --rate {RATE} delivered {got:.0f}/s ({got / RATE:.3f}), last run")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
