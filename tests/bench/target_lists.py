#!/usr/bin/env python3
"""A 200,000-target fleet in a list outside the config (`targets_file`), across 8 shards.

Writes a config and a list of 200,000 loopback targets (127.1.0.1:80 ...; `--json` writes
each line as a JSON object with a name and a label instead of an address alone), then
times `probe validate` on it and, for each shard I of 8, `probe run --shard I/8` from the
command to its `started` event (the whole list read and checked, its 25,000 targets
scheduled), in a fresh network namespace where every target is loopback and refused.
Goals: validate <= 10 s; each shard started <= 15 s.

Needs root and iproute2 (for the namespace). Usage:
    sudo .venv/bin/python tests/bench/target_lists.py [--targets 200000] [--shards 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def address(i: int) -> str:
    return f"127.{1 + i // 62_500}.{(i // 250) % 250}.{i % 250 + 1}:80"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=200_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("needs root and iproute2: the shards run in their own network namespace")
    probe = str(Path(sys.executable).with_name("probe"))
    tmp = Path(tempfile.mkdtemp())
    with (tmp / "targets.list").open("w") as out:
        for i in range(a.targets):
            if a.json:
                line = {"address": address(i), "name": f"t{i}", "labels": {"team": f"team{i % 7}"}}
                out.write(json.dumps(line) + "\n")
            else:
                out.write(address(i) + "\n")
    log = tmp / "probe.log"
    (tmp / "config.toml").write_text(
        'targets_file = "targets.list"\n[defaults]\ninterval = 10.0\ntimeout = 1.0\n'
        f'[log]\nformat = "json"\nfile = "{log}"\nattempts = "changes"\n'
        '[metrics]\nlisten = ""\n[store]\npath = ""\n'
    )
    size = (tmp / "targets.list").stat().st_size
    print(f"{a.targets:,} targets, list {size / 1e6:.1f} MB ({'JSON' if a.json else 'addresses'})")
    began = time.monotonic()
    done = subprocess.run([probe, "validate", str(tmp / "config.toml")], capture_output=True,
                          text=True)  # fmt: skip
    print(f"probe validate: {time.monotonic() - began:.2f} s: {done.stdout.strip()}"
          f"{done.stderr.strip()}")  # fmt: skip
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
    try:
        for shard in range(a.shards):
            log.unlink(missing_ok=True)
            began = time.monotonic()
            daemon = subprocess.Popen(
                [*prefix, probe, "run", "--config", str(tmp / "config.toml"),
                 "--shard", f"{shard}/{a.shards}"], stdin=subprocess.DEVNULL,
            )  # fmt: skip
            started = None
            while started is None and daemon.poll() is None and time.monotonic() - began < 120:
                if log.exists():
                    for line in log.read_text().splitlines():
                        if '"event": "started"' in line or '"event":"started"' in line:
                            started = json.loads(line)
                            break
                time.sleep(0.05)
            took = time.monotonic() - began
            rss = 0.0
            if daemon.poll() is None:
                status = Path(f"/proc/{daemon.pid}/status").read_text()
                rss = next(int(ln.split()[1]) for ln in status.splitlines()
                           if ln.startswith("VmHWM:")) / 1024  # fmt: skip
            count = started and started.get("targets")
            print(f"shard {shard}/{a.shards}: started after {took:.2f} s, {count} targets, "
                  f"peak RSS {rss:.0f} MiB")  # fmt: skip
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
        with open("/proc/loadavg") as f:
            print(f"load average at the end: {f.read().split()[:3]}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
