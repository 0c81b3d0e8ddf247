#!/usr/bin/env python3
"""Peak memory of a sweep, summed over every probe process (the parent and its workers).

Runs `probe check @FILE --json > /dev/null` inside a fresh network namespace for a target
file of one address (65,535 attempts) and of eight loopback addresses (524,280 attempts),
sampling VmRSS of the whole process tree every 20 ms. The goal: at most 120 MiB, and the
same peak for both sizes (memory follows concurrency, not the number of targets).

Needs root and iproute2. Usage: sudo .venv/bin/python tests/bench/memory.py [-- EXTRA ARGS]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from _common import namespace, timed


def measure(prefix: list[str], probe: str, addresses: int, extra: list[str]) -> tuple[float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        for n in range(1, addresses + 1):
            fh.write(f"127.0.0.{n}:1-65535\n")
        path = fh.name
    try:
        wall, _, peak, _ = timed([*prefix, probe, "check", f"@{path}", "--json", *extra])
    finally:
        os.unlink(path)
    return wall, peak


def main() -> int:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    probe = str(Path(sys.executable).with_name("probe"))
    with namespace() as prefix:
        for addresses in (1, 8):
            wall, peak = measure(prefix, probe, addresses, extra)
            attempts = addresses * 65535
            print(
                f"{attempts:7d} attempts  {wall:6.2f} s  {attempts / wall:8.0f}/s  "
                f"peak RSS, all processes: {peak / 1024:6.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
