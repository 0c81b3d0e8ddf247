#!/usr/bin/env python3
"""Schedule lag with TLS: `probe run` with 1,000 targets at a 10 s interval (100 attempts/s)
against two `openssl s_server`s on loopback, once as plain connects and once with
`tls = true` (a full handshake per attempt, certificates checked against a test CA), one
after the other in the same run. Reads probe_schedule_lag_seconds and the daemon's CPU.
Goal: the lag distribution unchanged by TLS (p99 in the same bucket).

Usage: .venv/bin/python tests/bench/tls_lag.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import trustme
from _common import lag_buckets, print_lag

TARGETS = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(probe: str, tmp: Path, ports: list[int], tls: str, seconds: int) -> None:
    listen = free_port()
    lines = [
        f"[defaults]\ninterval = 10.0\ntimeout = 1.0\n{tls}\n",
        '[log]\nfile = "/dev/null"\n',
        f'[metrics]\nlisten = "127.0.0.1:{listen}"\n',
        f'[store]\npath = "{tmp / "store"}"\n',  # never the user's ~/.local/state
    ]
    lines += [
        f'[[targets]]\nname = "t{i}"\naddress = "127.0.0.1:{ports[i % len(ports)]}"\n'
        for i in range(TARGETS)
    ]
    config = tmp / "config.toml"
    config.write_text("".join(lines))
    daemon = subprocess.Popen([probe, "run", "--config", str(config)], cwd=tmp)
    try:
        time.sleep(12)  # start-up and one full interval before measuring
        if daemon.poll() is not None:
            sys.exit("probe run exited early")
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(seconds)
        cpu = 100 * (cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t0)
        url = f"http://127.0.0.1:{listen}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        opened = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('probe_attempts_total{outcome="open"')
        )
        failed = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("probe_attempts_total{") and 'outcome="open"' not in line
        )
        title = "tls" if tls else "plain"
        print(f"{title}: daemon CPU {cpu:.1f}% of one core over {seconds} s; attempts open "
              f"{opened:.0f}, not open {failed:.0f}")  # fmt: skip
        print_lag(lag_buckets(text), title)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    a = ap.parse_args()
    probe = str(Path(sys.executable).with_name("probe"))
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(tmp / "server.pem")
        )
        ports = [free_port(), free_port()]
        servers = [
            subprocess.Popen(
                [
                    "openssl",
                    "s_server",
                    "-accept",
                    f"127.0.0.1:{port}",
                    "-cert",
                    str(tmp / "server.pem"),
                    "-quiet",
                    "-naccept",
                    "100000000",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for port in ports
        ]
        try:
            time.sleep(1)
            run(probe, tmp, ports, "", a.seconds)
            tls = f"tls = {{ ca_file = {json.dumps(str(tmp / 'ca.pem'))} }}"
            run(probe, tmp, ports, tls, a.seconds)
        finally:
            for server in servers:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
