"""The mesh's cost and its matrix's render time, on real namespaces: N daemons on a bridge
in mesh mode (every node serves and probes the N-1 others every interval), plus one daemon
with neither [serve] nor [mesh] and no targets beside them, the baseline.

    PYTHONPATH=tests python3 tests/bench/mesh.py --nodes 20 --interval 10 --seconds 60

Prints each daemon's CPU over the window as a share of one core (whole process, from
/proc/PID/stat), the baseline's, and GET /mesh on node 0: cold (every peer's row fetched)
and warm (cached), 5 of each, median and max. Needs root and iproute2."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from helpers import MESH_HTTP, MeshNet, http_get, in_netns, start_in, wait_for

TICKS = os.sysconf("SC_CLK_TCK")
BASELINE = """\
[metrics]
listen = "127.0.0.1:9465"

[log]
format = "json"
file = "{log}"
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: the daemons run in network namespaces")
    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()
        mesh = MeshNet(Path(tmp), args.nodes, interval=args.interval, timeout=1.0)
        try:
            base_dir = Path(tmp) / "baseline"
            base_dir.mkdir()
            base = start_in(base_dir, BASELINE.format(log=base_dir / "log"), base_dir / "log",
                            mesh.daemons, ns=mesh.hub)  # fmt: skip
            base.wait_event("started", timeout=60)
            n = args.nodes

            def all_up() -> bool:
                _, cells = mesh.matrix()
                return sum(css in ("up", "warn") for css, _ in cells.values()) == n * (n - 1)

            wait_for("every pair up", all_up, timeout=120 + 3 * args.interval, step=1.0)
            print(
                f"{n} nodes, interval {args.interval:g} s: every pair up "
                f"{time.monotonic() - began:.1f} s after the first namespace was made"
            )
            pids = [d.proc.pid for d in mesh.daemons]
            before = [cpu_seconds(p) for p in pids]
            t0 = time.monotonic()
            time.sleep(args.seconds)
            took = time.monotonic() - t0
            shares = [100 * (cpu_seconds(p) - b) / took for p, b in zip(pids, before, strict=True)]
            nodes, baseline = shares[:-1], shares[-1]
            print(
                f"CPU over {took:.0f} s, % of one core: mesh daemons median "
                f"{statistics.median(nodes):.2f}, max {max(nodes):.2f}; baseline daemon "
                f"(no serve, no mesh, no targets) {baseline:.2f}"
            )
            cold, warm = [], []
            for _ in range(5):
                time.sleep(5.5)  # past the page's cache: every row fetched again
                t = time.monotonic()
                status, _, body = in_netns(mesh.nodes[0], http_get, MESH_HTTP, "/mesh", 10)
                cold.append(time.monotonic() - t)
                t = time.monotonic()
                in_netns(mesh.nodes[0], http_get, MESH_HTTP, "/mesh", 10)
                warm.append(time.monotonic() - t)
                assert status == 200, body
                if "rows not fetched" in body:
                    print("rows not fetched:", body[body.index("rows not fetched") :][:600])
            print(
                f"GET /mesh ({len(body)} bytes, {n} rows): cold median "
                f"{1000 * statistics.median(cold):.0f} ms max {1000 * max(cold):.0f} ms; "
                f"warm median {1000 * statistics.median(warm):.1f} ms"
            )
        finally:
            mesh.close()


if __name__ == "__main__":
    main()
