#!/usr/bin/env python3
"""The status page left open: `probe run` with 10,000 targets at a 10 s interval (1,000
attempts/s), in a fresh network namespace (127.0.0.1:20001-29999, all refused, and the
metrics port, open), while a client polls `GET /` and `GET /api/targets` once a second each
(what a browser on the page does, and more). Reads the schedule lag histogram from /metrics
after the warm-up and at the end, and prints both the whole run (start-up included, as
daemon_cost.py does) and the measured window alone (the difference: start-up's stalls, when
10,000 targets' first records make their metrics and histories, are not the page's; the
first scrape's own stall is inside the window, the same with and without the page).
Goal: schedule lag p99 at most 5 ms. `--no-poll` measures the same without the page.
The durable store is on (a fresh directory; `--no-store`: off), as a daemon runs by default;
what its writer costs, in its own thread, is measured by status_memory.py --store.
`--detail` also fetches a target's page (`/target/NAME`, read from the store) each second.

Needs root and iproute2. Usage:
  sudo .venv/bin/python tests/bench/status_page.py [--seconds 120] [--no-poll] [--no-store]
      [--detail] [--tree DIR]
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

from _common import lag_buckets, print_lag

TARGETS = 10_000
BASE = "http://127.0.0.1:9464"
# Runs inside the namespace: GET / and /api/targets once a second each, for N seconds;
# prints one JSON line of what it saw.
POLLER = """
import json, sys, time, urllib.request as u
opener = u.build_opener(u.ProxyHandler({}))
took = {p: [] for p in sys.argv[3:]}
size = {}
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    tick = time.monotonic()
    for path in took:
        t = time.perf_counter()
        body = opener.open(sys.argv[2] + path, timeout=10).read()
        took[path].append(time.perf_counter() - t)
        size[path] = len(body)
    time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
print(json.dumps({"took": took, "size": size}))
"""
SCRAPE = f"import urllib.request as u; print(u.urlopen('{BASE}/metrics').read().decode())"


def scraped_lag(prefix: list[str]) -> list[tuple[float, float]]:
    text = subprocess.run([*prefix, sys.executable, "-c", SCRAPE], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    return lag_buckets(text)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--no-poll", action="store_true")
    ap.add_argument("--targets", type=int, default=TARGETS)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--nice", type=int, default=0, help="the daemon's niceness (e.g. -10)")
    ap.add_argument("--tree", help="run the daemon from this checkout (PYTHONPATH), e.g. main")
    ap.add_argument("--no-store", action="store_true", help='[store] path = ""')
    ap.add_argument("--detail", action="store_true", help="also GET /target/NAME each second")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("needs root and iproute2: the targets live in their own network namespace")
    tree = Path(a.tree).resolve() if a.tree else Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and the cwd: `-m` puts it first on the path
    work = Path(tempfile.mkdtemp())
    config = work / "config.toml"
    store = "" if a.no_store else str(work / "state")
    lines = [f'[defaults]\ninterval = {a.interval}\ntimeout = 1.0\n[log]\nfile = "/dev/null"\n',
             '[metrics]\nlisten = "127.0.0.1:9464"\n', f'[store]\npath = "{store}"\n']  # fmt: skip
    lines += [
        f'[[targets]]\naddress = "127.0.0.1:{p}"\nlabels = {{ team = "t{p % 10}" }}\n'
        for p in range(20001, 20000 + a.targets)
    ]
    lines.append('[[targets]]\naddress = "127.0.0.1:9464"\n')
    config.write_text("".join(lines))
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
    nice = ["nice", "-n", str(a.nice)] if a.nice else []
    daemon = subprocess.Popen(
        [*prefix, *nice, sys.executable, "-m", "probe", "run", "--config", str(config)],
        env=env,
        cwd=tree,
    )
    try:
        time.sleep(5 + a.interval)  # start-up and one full interval before measuring
        if daemon.poll() is not None:
            sys.exit("probe run exited early")
        before = scraped_lag(prefix)
        cpu = cpu_seconds(daemon.pid)  # `ip netns exec` and `nice` exec: this is probe run
        if a.no_poll:
            time.sleep(a.seconds)
            seen = None
        else:
            paths = ["/", "/api/targets"] + (["/target/127.0.0.1:20001"] if a.detail else [])
            poller = [*prefix, sys.executable, "-c", POLLER, str(a.seconds), BASE, *paths]
            out = subprocess.run(poller, capture_output=True, text=True, check=True).stdout
            seen = json.loads(out)
        # A scrape of 10,000 targets' series holds the loop for a while, and the starts it
        # delays are counted after it: the window below includes the first scrape's stall
        # (with and without polling alike); the whole run does not.
        cpu = cpu_seconds(daemon.pid) - cpu
        buckets = scraped_lag(prefix)
        print(f"{'no polling' if a.no_poll else 'polled'}, {a.seconds} s, {a.targets} targets "
              f"every {a.interval:g} s, store {'off' if a.no_store else 'on'}, "
              f"daemon from {tree}")  # fmt: skip
        if seen is not None:
            for path, took in seen["took"].items():
                took.sort()
                print(f"  GET {path}: {len(took)} answers, {seen['size'][path] / 1024:.0f} KiB, "
                      f"median {1000 * took[len(took) // 2]:.1f} ms, "
                      f"max {1000 * took[-1]:.1f} ms")  # fmt: skip
        print(f"daemon CPU in the window: {cpu:.1f} s ({100 * cpu / a.seconds:.1f} % of a core)")
        window = [(le, count - was) for (le, count), (_, was) in zip(buckets, before, strict=True)]
        for title, counts in (("whole run", buckets), ("measured window", window)):
            print(f"{title}: scheduled starts: {counts[-1][1]:.0f}")
            print_lag(counts, title)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(15)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
