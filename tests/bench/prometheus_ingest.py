#!/usr/bin/env python3
"""Prometheus' own cost of taking in a page, apart from the daemon's: each PAGE file (a
saved /metrics, `operator_scale.py --save-page FILE`) is served as it is by a trivial
server, gzipped (level 1, made once) when asked and allowed, and scraped by a fresh real
Prometheus every INTERVAL seconds for SECONDS, all in a fresh network namespace. The pages
run one after another, ROUNDS times over (alternating, on a shared machine), and each run
reports Prometheus' CPU per scrape after its first 20 s (its first scrape creates every
series, a cost paid once: its duration is shown apart), `scrape_duration_seconds` (median
and max of the later scrapes) and Prometheus' RSS at the end.

Needs root, iproute2 and prometheus. Usage:
    sudo .venv/bin/python tests/bench/prometheus_ingest.py PAGE [PAGE ...]
        [--seconds 60] [--interval 5] [--rounds 2] [--plain]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

SERVER = r"""
import gzip, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
body = open(sys.argv[2], "rb").read()
packed = gzip.compress(body, 1) if sys.argv[3] == "gzip" else None
class Page(BaseHTTPRequestHandler):
    def do_GET(self):
        zipped = packed is not None and "gzip" in self.headers.get("Accept-Encoding", "")
        data = packed if zipped else body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        if zipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Page).serve_forever()
"""
PAGE_PORT = 9465
PROMETHEUS = "127.0.0.1:9090"
SETTLE = 20.0  # seconds before the CPU window: the first, series-creating scrape is done


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(page: Path, seconds: int, interval: int, encoding: str) -> str:
    tmp = Path(tempfile.mkdtemp())
    ns = f"ingest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
    (tmp / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": f"{interval}s", "scrape_timeout": f"{interval}s"},
                "scrape_configs": [
                    {
                        "job_name": "page",
                        "static_configs": [{"targets": [f"127.0.0.1:{PAGE_PORT}"]}],
                    }
                ],
            }
        )
    )
    procs: list[subprocess.Popen[bytes]] = []

    def query(expr: str) -> list[dict[str, object]]:
        url = f"http://{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        out = subprocess.run([*prefix, "curl", "-s", url], capture_output=True, check=True)
        result: list[dict[str, object]] = json.loads(out.stdout)["data"]["result"]
        return result

    try:
        server = [sys.executable, "-c", SERVER, str(PAGE_PORT), str(page), encoding]
        procs.append(subprocess.Popen([*prefix, *server]))
        time.sleep(1)
        prom = subprocess.Popen(
            [*prefix, "prometheus", f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address={PROMETHEUS}",
             "--log.level=warn"],
        )  # fmt: skip
        procs.append(prom)
        time.sleep(SETTLE)
        c0, t0 = cpu_seconds(prom.pid), time.monotonic()
        time.sleep(seconds - SETTLE)
        cpu, took = cpu_seconds(prom.pid) - c0, time.monotonic() - t0
        rss = rss_mib(prom.pid)
        series = query(f'scrape_duration_seconds{{job="page"}}[{seconds + 5}s]')[0]["values"]
        durations = [float(v) for _, v in series]  # type: ignore[attr-defined]
        samples = query('scrape_samples_scraped{job="page"}')[0]["value"][1]  # type: ignore[index]
        later = durations[1:]
        return (
            f"{page.name} ({encoding}): {samples} samples; Prometheus CPU "
            f"{cpu / took * interval:.3f} s a scrape; first scrape {durations[0]:.3f} s, later "
            f"median {statistics.median(later):.3f} s, max {max(later):.3f} s "
            f"({len(later)}); RSS {rss:.1f} MiB"
        )
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("pages", nargs="+", type=Path)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--interval", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--plain", action="store_true", help="also serve each page without gzip")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("prometheus"):
        sys.exit("needs root, iproute2 and prometheus (each run lives in a namespace)")
    if a.seconds <= SETTLE + 2 * a.interval:
        sys.exit(f"--seconds must leave a few scrapes after the first {SETTLE:.0f} s")
    for _ in range(a.rounds):
        for page in a.pages:
            for encoding in ("gzip", "plain") if a.plain else ("gzip",):
                with open("/proc/loadavg") as f:
                    load = f.read().split()[0]
                print(f"load {load}: {run(page, a.seconds, a.interval, encoding)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
