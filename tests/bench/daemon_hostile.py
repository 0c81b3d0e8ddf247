#!/usr/bin/env python3
"""The daemon under hostile load: `probe run` with 10,000 targets at a 10 s
interval (1,000 attempts/s; 127.0.0.1:20001-30000 inside a fresh network namespace, all
refused), `/metrics` scraped every 5 s and 100 `GET /probe` requests per second beside it,
for --seconds. Reads the daemon's own `probe_schedule_lag_seconds` histogram and
`probe_skipped_slots_total` at the start and at the end of the window, and reports the
difference: schedule lag p99 and skipped slots. Goal: p99 <= 5 ms, no skipped slot.

`--tls N` adds N targets with stages after the connect, in thirds: a full TLS handshake
with an `openssl s_server`, a TLS handshake with a server that accepts and never speaks
(each one stalls to its 1 s deadline), and an expect against a server that streams bytes
without a newline (each reads its 64 KiB limit); none of them may move the lag. The
servers run at nice 19, so the daemon's lag is its own, not theirs for the CPU.

`--port-exhaustion N` narrows the namespace's ephemeral range to 100 ports, fills every one
of them with a connection held to 127.0.0.1:19998 and adds N targets there: their attempts
find no local port (EADDRNOTAVAIL) and wait; the other targets may neither lag nor skip.
`--slow-readers N` adds N clients with a 4 KiB receive buffer, each pipelining 20
`GET /metrics` and never reading (one opened again whenever the daemon cuts it).
Skipped slots are reported for the other targets (names not starting with `stuck`).

`--tree DIR` runs the daemon from another checkout (PYTHONPATH=DIR), e.g. the layout commit
in a temporary worktree, for the "before" figure.

Needs root and iproute2. Usage:
    sudo .venv/bin/python tests/bench/daemon_hostile.py [--seconds 60] [--tree DIR]
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
PORT = 9464

# The load, run inside the namespace: one thread scrapes /metrics every 5 s, eight threads
# send /probe requests paced to 100/s in all, each on a kept-alive connection (as Prometheus
# does: a new connection per request would run a 100-port range out of ports by itself).
# Prints one JSON line at the end.
CLIENT = r"""
import http.client, json, sys, threading, time
seconds, rate, port = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
every = float(sys.argv[4])
stop = time.monotonic() + seconds
scrapes, probes, lock = [], {}, threading.Lock()

def get(box, path, timeout):
    # (status, body) on the thread's kept-alive connection, made again once if it was closed
    for again in (False, True):
        if box[0] is None:
            box[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            box[0].request("GET", path)
            resp = box[0].getresponse()
            return resp.status, resp.read()
        except (http.client.HTTPException, OSError):
            box[0].close()
            box[0] = None
            if again:
                raise

def scraper():
    box = [None]
    while every and time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            size = len(get(box, "/metrics", 30)[1])
            scrapes.append((time.monotonic() - t0, size))
        except Exception as exc:
            scrapes.append((time.monotonic() - t0, repr(exc)))
        time.sleep(max(0.0, every - (time.monotonic() - t0)))

def prober(k, n):
    box = [None]
    start = time.monotonic()
    i = 0
    while rate:
        due = start + (i * n + k) / rate
        if due >= stop:
            return
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            status = get(box, "/probe?target=127.0.0.1:19999", 10)[0]
        except Exception as exc:
            status = type(exc).__name__
        with lock:
            probes[status] = probes.get(status, 0) + 1
        i += 1

slow = int(sys.argv[5])
cut = [0]

def slow_reader():
    # Pipelines 20 scrapes and never reads; opens another connection when cut. A cut is
    # seen by sending: the daemon's reset may not get through our zero window, but the
    # reset that answers a segment of ours does.
    import socket
    while time.monotonic() < stop:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: probe\r\n\r\n" * 20)
            while time.monotonic() < stop:
                time.sleep(0.5)
                s.send(b"\r\n")  # an empty line between requests: harmless while alive
        except OSError:
            with lock:
                cut[0] += 1
        finally:
            s.close()

threads = [threading.Thread(target=scraper)] + [
    threading.Thread(target=prober, args=(k, 8)) for k in range(8)
] + [threading.Thread(target=slow_reader, daemon=True) for _ in range(slow)]
for t in threads:
    t.start()
for t in threads:
    t.join()
time.sleep(max(0.0, stop - time.monotonic()))  # the window lasts --seconds, load or none
print(json.dumps({"scrapes": scrapes, "probes": {str(k): v for k, v in probes.items()},
                  "slow_cut": cut[0]}))
"""

SCRAPE = (
    "import urllib.request as u; "
    f"print(u.urlopen('http://127.0.0.1:{PORT}/metrics', timeout=120).read().decode())"
)


# Inside the namespace: a listener that accepts and never speaks, and one that streams
# bytes without a newline to every connection (until the reader goes).
STAGE_SERVERS = r"""
import socket, sys, threading
def silent(s):
    held = []
    while True:
        held.append(s.accept()[0])
def flood(s):
    while True:
        c = s.accept()[0]
        def pour(c=c):
            try:
                while True:
                    c.sendall(b"x" * 65536)
            except OSError:
                c.close()
        threading.Thread(target=pour, daemon=True).start()
for port, body in ((int(sys.argv[1]), silent), (int(sys.argv[2]), flood)):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    threading.Thread(target=body, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""
TLS_PORT, SILENT_PORT, FLOOD_PORT = 31001, 31002, 31003
STUCK_PORT = 19998

# Inside the namespace: a listener on STUCK_PORT, then connections to it until connect()
# finds no local port (three times, 50 ms apart), all held until stdin closes.
PORT_FILLER = r"""
import errno, socket, sys, threading, time
port = int(sys.argv[1])
lst = socket.socket()
lst.bind(("127.0.0.1", port))
lst.listen(4096)
kept = []
def accept():
    while True:
        kept.append(lst.accept()[0])
threading.Thread(target=accept, daemon=True).start()
held, misses = 0, 0
while misses < 3:
    c = socket.socket()
    try:
        c.connect(("127.0.0.1", port))
    except OSError as exc:
        if exc.errno != errno.EADDRNOTAVAIL:
            raise
        c.close()
        misses += 1
        time.sleep(0.05)
        continue
    kept.append(c)
    held += 1
    misses = 0
print(held, flush=True)
sys.stdin.read()
"""


def stage_targets(n: int) -> list[str]:
    """n targets with stages, in thirds: TLS to s_server, TLS to a silent server, expect
    against a flood."""
    kinds = [
        (TLS_PORT, "tls = { insecure_skip_verify = true }"),
        (SILENT_PORT, "tls = true"),
        (FLOOD_PORT, 'expect = "^never"'),
    ]
    out = []
    for i in range(n):
        port, stage = kinds[i % 3]
        out.append(f'[[targets]]\nname = "stage{i}"\naddress = "127.0.0.1:{port}"\n{stage}\n')
    return out


def read_metrics(prefix: list[str]) -> tuple[list[tuple[float, float]], float, float]:
    """(lag histogram buckets as (le, cumulative count), skipped slots of the targets not
    made to wait (`stuck*`), port shortages counted)."""
    text = subprocess.run([*prefix, sys.executable, "-c", SCRAPE], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    lines = text.splitlines()
    skipped = sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("probe_skipped_slots_total") and 'target="stuck' not in line
    )
    shortages = sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("probe_port_shortages_total")
    )
    return lag_buckets(text), skipped, shortages


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its reaped children (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_queue_seconds(pid: int) -> float:
    """Time the process' main thread (the daemon's loop) was ready to run but waited for a
    CPU other processes held (/proc/PID/schedstat: on-CPU ns, run-queue ns, slices): the
    part of the lag a loaded machine adds, not the daemon."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=100.0, help="GET /probe per second (0: none)")
    ap.add_argument("--scrape-every", type=float, default=5.0, help="seconds (0: no scrapes)")
    ap.add_argument("--tree", help="run the daemon from this checkout (PYTHONPATH)")
    ap.add_argument("--nice", type=int, default=0, help="the daemon's niceness (e.g. -10)")
    ap.add_argument("--tls", type=int, default=0, help="targets with stages (see above)")
    ap.add_argument(
        "--port-exhaustion",
        type=int,
        default=0,
        metavar="N",
        help="N targets at a destination with no local port left (see above)",
    )
    ap.add_argument(
        "--slow-readers",
        type=int,
        default=0,
        metavar="N",
        help="N clients pipelining scrapes and never reading (see above)",
    )
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("needs root and iproute2: the targets live in their own network namespace")
    config = Path(tempfile.mkdtemp()) / "config.toml"
    lines = ['[defaults]\ninterval = 10.0\ntimeout = 1.0\n[log]\nfile = "/dev/null"\n',
             f'[metrics]\nlisten = "127.0.0.1:{PORT}"\n',
             f'[store]\npath = "{config.parent / "store"}"\n']  # fmt: skip
    lines += [f'[[targets]]\naddress = "127.0.0.1:{p}"\n' for p in range(20001, 20001 + TARGETS)]
    lines += stage_targets(a.tls)
    lines += [f'[[targets]]\nname = "stuck{i}"\naddress = "127.0.0.1:{STUCK_PORT}"\n'
              for i in range(a.port_exhaustion)]  # fmt: skip
    config.write_text("".join(lines))
    env = dict(os.environ)
    tree = Path(a.tree).resolve() if a.tree else Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = str(tree)  # and the cwd: `python -m` puts the cwd first on the path
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], check=True)
    helpers: list[subprocess.Popen[str]] = []
    if a.tls:
        pem = config.with_name("server.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-subj", "/CN=127.0.0.1", "-days", "30", "-keyout", str(pem),
             "-out", str(pem)],
            check=True, capture_output=True,
        )  # fmt: skip
        low = ["nice", "-n", "19"]  # the servers never take the daemon's CPU
        helpers.append(subprocess.Popen(
            [*prefix, *low, "openssl", "s_server", "-accept", f"127.0.0.1:{TLS_PORT}",
             "-cert", str(pem), "-quiet"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True,
        ))  # fmt: skip
        stages = subprocess.Popen(
            [*prefix, *low, sys.executable, "-c", STAGE_SERVERS, str(SILENT_PORT),
             str(FLOOD_PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        helpers.append(stages)
        assert stages.stdout is not None
        stages.stdout.readline()  # ready
    if a.port_exhaustion:
        subprocess.run([*prefix, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40099"],
                       check=True)  # fmt: skip
        filler = subprocess.Popen(
            [*prefix, sys.executable, "-c", PORT_FILLER, str(STUCK_PORT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        helpers.append(filler)
        assert filler.stdout is not None
        print(f"connections held to 127.0.0.1:{STUCK_PORT}: {filler.stdout.readline().strip()}")
    nice = ["nice", "-n", str(a.nice)] if a.nice else []  # nice execs: the pid is probe's
    daemon = subprocess.Popen(
        [*prefix, *nice, sys.executable, "-m", "probe", "run", "--config", str(config)],
        env=env,
        cwd=tree,
    )
    try:
        time.sleep(15)  # start-up and one full interval before measuring
        if daemon.poll() is not None:
            sys.exit("probe run exited early")
        print(f"daemon from {tree}, nice {a.nice}")
        b0, s0, p0 = read_metrics(prefix)
        cpu = cpu_seconds(daemon.pid)  # `ip netns exec` execs: this is probe run itself
        waited = run_queue_seconds(daemon.pid)
        load = subprocess.run(
            [*prefix, sys.executable, "-c", CLIENT, str(a.seconds), str(a.rate), str(PORT),
             str(a.scrape_every), str(a.slow_readers)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        b1, s1, p1 = read_metrics(prefix)
        cpu = cpu_seconds(daemon.pid) - cpu
        waited = run_queue_seconds(daemon.pid) - waited
        result = json.loads(load.stdout)
        starts = b1[-1][1] - b0[-1][1]
        print(f"window: {a.seconds:.0f} s, scheduled starts in it: {starts:.0f}")
        ok = [d for d, size in result["scrapes"] if isinstance(size, int)]
        failed = [size for _, size in result["scrapes"] if not isinstance(size, int)]
        sizes = [size for _, size in result["scrapes"] if isinstance(size, int)]
        print(f"/metrics scrapes: {len(ok)} answered (max {max(ok, default=0):.2f} s, "
              f"{max(sizes, default=0) / 1e6:.1f} MB), {len(failed)} failed "
              f"{failed[:2]}")  # fmt: skip
        print(f"/probe answers: {result['probes']}")
        if a.slow_readers:
            print(f"slow readers cut by the write deadline: {result['slow_cut']}")
        if a.port_exhaustion:
            print(f"connects that found no local port (probe_port_shortages_total): {p1 - p0:.0f}")
        print(f"daemon CPU in the window (with any renderer children): {cpu:.1f} s")
        print(f"the daemon loop's run-queue time (waiting for a CPU): {waited:.2f} s")
        print_lag([(le, c1 - c0) for (le, c1), (_, c0) in zip(b1, b0, strict=True)])
        print(f"skipped slots in the window (targets not made to wait): {s1 - s0:.0f}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
        for helper in helpers:
            helper.kill()
            helper.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
