#!/usr/bin/env python3
"""The operators' cost at scale: `probe run` with 10,000 targets at a 10 s interval, 90 %
refused and 10 % open, scraped by a real Prometheus every 15 s, all in a fresh network
namespace (targets 127.0.0.1:20001-30000, every tenth port listening).

Reports the daemon's CPU and RSS (10 s samples from /proc), the /metrics page (bytes plain
and gzipped, samples, series per target), Prometheus' own scrape duration of it
(`scrape_duration_seconds`, mean and max over the run), Prometheus' RSS and CPU per
scrape (less sensitive to the machine's load than the duration), and the records the
daemon logged (lines and bytes per minute).
Goals: CPU <= 15 % of a core, RSS <= 120 MiB, <= 12 series per target, scrape <= 0.3 s,
Prometheus <= 300 MB.

Needs root, iproute2 and prometheus. Usage:
    sudo .venv/bin/python tests/bench/operator_scale.py [--seconds 300]
        [--log-attempts all|failures|changes] [--histograms] [--save-page FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

TARGETS = 10_000
FIRST_PORT = 20001
OPEN_EVERY = 10  # every tenth target listens: 90 % refused
METRICS = "127.0.0.1:9464"
PROMETHEUS_LISTEN = "127.0.0.1:9090"
STATIC = "127.0.0.1:9465"

LISTENER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in range(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
            conn.close()
        except BlockingIOError:
            pass
"""

FETCH = """
import sys, time, urllib.request as u
req = u.Request(sys.argv[1], headers=dict(h.split(": ", 1) for h in sys.argv[2:]))
began = time.monotonic()
body = u.urlopen(req, timeout=30).read()
sys.stderr.write(f"{time.monotonic() - began:.4f}")
sys.stdout.buffer.write(body)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--log-attempts", choices=["all", "failures", "changes"])
    ap.add_argument("--histograms", action="store_true")
    ap.add_argument(
        "--static-copy",
        action="store_true",
        help="also scrape a static copy of the page (python -m http.server): Prometheus' own "
        "share of the scrape duration, apart from the daemon's",
    )
    ap.add_argument("--no-store", action="store_true", help='[store] path = "" (no store)')
    ap.add_argument(
        "--save-page", type=Path, help="write the last /metrics here (prometheus_ingest.py's input)"
    )
    a = ap.parse_args()
    prometheus = shutil.which("prometheus")
    if os.geteuid() != 0 or not shutil.which("ip") or prometheus is None:
        sys.exit("needs root, iproute2 and prometheus (the targets live in a namespace)")
    probe = str(Path(sys.executable).with_name("probe"))
    tmp = Path(tempfile.mkdtemp())
    log = tmp / "probe.log"
    head = f"[defaults]\ninterval = 10.0\ntimeout = 1.0\nhistograms = {str(a.histograms).lower()}\n"
    head += f'[log]\nformat = "json"\nfile = "{log}"\n'
    if a.log_attempts:
        head += f'attempts = "{a.log_attempts}"\n'
    head += f'[metrics]\nlisten = "{METRICS}"\n'
    ports = range(FIRST_PORT, FIRST_PORT + TARGETS)
    head += f'[store]\npath = "{"" if a.no_store else tmp / "store"}"\n'
    (tmp / "config.toml").write_text(
        head + "".join(f'[[targets]]\naddress = "127.0.0.1:{p}"\n' for p in ports)
    )
    (tmp / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "15s", "scrape_timeout": "10s"},
                "scrape_configs": [
                    {"job_name": "probe", "static_configs": [{"targets": [METRICS]}]},
                    *(
                        [{"job_name": "static", "static_configs": [{"targets": [STATIC]}]}]
                        if a.static_copy
                        else []
                    ),
                ],
            }
        )
    )
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
    procs: list[subprocess.Popen[bytes]] = []

    took: list[float] = []

    def fetch(url: str, *headers: str) -> bytes:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", FETCH, url, *headers], capture_output=True, check=True
        )
        took.append(float(done.stderr))
        return done.stdout

    def query(expr: str) -> float:
        url = f"http://{PROMETHEUS_LISTEN}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        result = json.loads(fetch(url))["data"]["result"]
        return float(result[0]["value"][1]) if result else float("nan")

    try:
        listener = subprocess.Popen(
            [*prefix, sys.executable, "-c", LISTENER, str(FIRST_PORT), str(FIRST_PORT + TARGETS),
             str(OPEN_EVERY)], stdout=subprocess.PIPE,
        )  # fmt: skip
        procs.append(listener)
        assert listener.stdout is not None and listener.stdout.readline().strip() == b"ready"
        started = time.monotonic()
        daemon = subprocess.Popen([*prefix, probe, "run", "--config", str(tmp / "config.toml")])
        procs.append(daemon)
        while b"listening" not in (log.read_bytes() if log.exists() else b""):
            if daemon.poll() is not None:
                sys.exit("probe run exited early")
            time.sleep(0.1)
        print(f"daemon listening after {time.monotonic() - started:.1f} s")
        if a.static_copy:
            time.sleep(12)  # every target attempted: the page at its full size
            (tmp / "static").mkdir()
            (tmp / "static" / "metrics").write_bytes(fetch(f"http://{METRICS}/metrics"))
            procs.append(subprocess.Popen(
                [*prefix, sys.executable, "-m", "http.server", STATIC.rsplit(":", 1)[1],
                 "--bind", "127.0.0.1", "--directory", str(tmp / "static")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        prom = subprocess.Popen(
            [*prefix, prometheus, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address={PROMETHEUS_LISTEN}",
             "--log.level=warn"],
        )  # fmt: skip
        procs.append(prom)
        # Measure from Prometheus' second scrape on: its first one creates every series, a
        # cost paid once (seconds at 100,000 series), which would land in the window or
        # not depending on when Prometheus happened to schedule it.
        while True:
            time.sleep(1)
            with contextlib.suppress(subprocess.CalledProcessError):  # not listening yet
                if query('count(scrape_samples_scraped{job="probe"})') == 1:
                    break
            if time.monotonic() - started > 120:
                sys.exit("Prometheus has not scraped the daemon")
        time.sleep(2)
        pid = daemon.pid  # ip netns exec execs in place
        t0, c0, b0 = time.monotonic(), cpu_seconds(pid), log.stat().st_size
        prom_c0 = cpu_seconds(prom.pid)
        lines0 = sum(1 for _ in log.open("rb"))
        last_t, last_c = t0, c0
        print("   t      cpu% (last 10 s)   RSS MiB   Prometheus RSS MiB")
        while time.monotonic() - t0 < a.seconds:
            time.sleep(10)
            t, c = time.monotonic(), cpu_seconds(pid)
            print(f"{t - t0:5.0f} s  {100 * (c - last_c) / (t - last_t):6.1f}%          "
                  f"{status_mib(pid):6.1f}   {status_mib(prom.pid):6.1f}", flush=True)  # fmt: skip
            last_t, last_c = t, c
        t, c = time.monotonic(), cpu_seconds(pid)
        prom_cpu = cpu_seconds(prom.pid) - prom_c0
        minutes = (t - t0) / 60
        lines = sum(1 for _ in log.open("rb")) - lines0
        size = log.stat().st_size - b0
        print(f"mean CPU over {t - t0:.0f} s: {100 * (c - c0) / (t - t0):.1f}% of one core")
        print(f"daemon RSS {status_mib(pid):.1f} MiB (peak {status_mib(pid, 'VmHWM'):.1f} MiB)")
        plain = fetch(f"http://{METRICS}/metrics")
        took.clear()
        for _ in range(5):
            packed = fetch(f"http://{METRICS}/metrics", "Accept-Encoding: gzip")
            time.sleep(1)
        times = " ".join(f"{t:.3f}" for t in took)
        print(f"GET /metrics (gzip) from the namespace, 5 times: {times} s")
        if a.save_page is not None:
            a.save_page.write_bytes(plain)
        text = plain.decode()
        samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
        targeted = [ln for ln in samples if 'target="' in ln]
        print(f"/metrics: {len(plain):,} bytes, gzip {len(packed):,} bytes "
              f"({len(gzip.decompress(packed)):,} unpacked), {len(samples):,} samples, "
              f"{len(targeted) / TARGETS:.2f} series per target")  # fmt: skip
        window = f"[{int(t - t0)}s]"
        job = 'scrape_duration_seconds{job="probe"}'
        mean = query(f"avg_over_time({job}{window})")
        worst = query(f"max_over_time({job}{window})")
        scraped = query('scrape_samples_scraped{job="probe"}')
        scrapes = query(f"count_over_time({job}{window})")  # the first one is before it
        print(f"Prometheus scrape_duration_seconds over the run: mean {mean:.3f} s, "
              f"max {worst:.3f} s; samples scraped {scraped:,.0f}")  # fmt: skip
        print(f"Prometheus CPU over the run: {prom_cpu:.2f} s, {scrapes:.0f} scrapes of the daemon "
              f"({prom_cpu / scrapes:.3f} s a scrape, with its own background work)")  # fmt: skip
        if a.static_copy:
            job = 'scrape_duration_seconds{job="static"}'
            print(f"  the static copy of the page: mean "
                  f"{query(f'avg_over_time({job}{window})'):.3f} s, max "
                  f"{query(f'max_over_time({job}{window})'):.3f} s")  # fmt: skip
        print(f"Prometheus RSS {status_mib(prom.pid):.1f} MiB "
              f"(peak {status_mib(prom.pid, 'VmHWM'):.1f} MiB)")  # fmt: skip
        print(f"logged: {lines / minutes:,.0f} lines/min, {size / minutes / 1e6:.2f} MB/min "
              f"({size / minutes * 1440 / 1e9:.2f} GB/day)")  # fmt: skip
        with open("/proc/loadavg") as f:
            print(f"load average at the end: {f.read().split()[:3]}")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
