#!/usr/bin/env python3
"""Daemon cost: `probe run` with 10,000 targets at a 10 s interval (1,000 attempts/s), in a
fresh network namespace (127.0.0.1:20001-29999, all refused, and the metrics port, open).
Samples CPU and RSS every 10 s and reads the schedule lag histogram from /metrics at the end.
Goals: CPU at most 25% of one core; schedule lag p99 at most 5 ms; RSS flat.

Needs root and iproute2. Usage: sudo .venv/bin/python tests/bench/daemon_cost.py [--seconds 600]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import lag_buckets, print_lag

TARGETS = 10_000
SCRAPE = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9464/metrics').read().decode())"
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=600)
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("needs root and iproute2: the targets live in their own network namespace")
    probe = str(Path(sys.executable).with_name("probe"))
    config = Path(tempfile.mkdtemp()) / "config.toml"
    lines = ['[defaults]\ninterval = 10.0\ntimeout = 1.0\n[log]\nfile = "/dev/null"\n',
             '[metrics]\nlisten = "127.0.0.1:9464"\n',
             f'[store]\npath = "{config.parent / "store"}"\n']  # fmt: skip
    lines += [f'[[targets]]\naddress = "127.0.0.1:{p}"\n' for p in range(20001, 20000 + TARGETS)]
    lines.append('[[targets]]\naddress = "127.0.0.1:9464"\n')
    config.write_text("".join(lines))
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
    daemon = subprocess.Popen([*prefix, probe, "run", "--config", str(config)])
    try:
        time.sleep(12)  # start-up and one full interval before measuring
        if daemon.poll() is not None:
            sys.exit("probe run exited early")
        pid = daemon.pid  # ip netns exec execs probe in place
        t0, c0 = time.monotonic(), cpu_seconds(pid)
        last_t, last_c = t0, c0
        print("   t      cpu% (last 10 s)   RSS MiB")
        while time.monotonic() - t0 < a.seconds:
            time.sleep(10)
            t, c = time.monotonic(), cpu_seconds(pid)
            print(f"{t - t0:5.0f} s  {100 * (c - last_c) / (t - last_t):6.1f}%          "
                  f"{rss_mib(pid):6.1f}", flush=True)  # fmt: skip
            last_t, last_c = t, c
        t, c = time.monotonic(), cpu_seconds(pid)
        print(f"mean CPU over {t - t0:.0f} s: {100 * (c - c0) / (t - t0):.1f}% of one core")
        text = subprocess.run([*prefix, sys.executable, "-c", SCRAPE], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        buckets = lag_buckets(text)
        print(f"scheduled starts: {buckets[-1][1]:.0f}")
        print_lag(buckets)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
