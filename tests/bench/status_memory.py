#!/usr/bin/env python3
"""The status page's history for 10,000 targets: bytes held (tracemalloc), and what building
the page costs the loop (wall time per build, longest stretch between two yields).

Every target is filled to its worst case: every bucket of the hour used, its reservoir full,
CHANGES state changes with reasons, a last record with a local endpoint. No sockets.

Usage: .venv/bin/python tests/bench/status_memory.py [--targets 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from types import MappingProxyType

from probe.daemon.config import ResolvedTarget
from probe.daemon.history import BUCKET_SECONDS, BUCKETS, CHANGES, SAMPLES, History
from probe.daemon.status import Query, StatusPage
from probe.record import OPEN, REFUSED, TIMEOUT, Record

T0 = 1_800_000_000.0


def record(port: int, at: float, outcome: str, latency: float) -> Record:
    error = {OPEN: None, REFUSED: "ECONNREFUSED", TIMEOUT: "ETIMEDOUT"}[outcome]
    return Record(at, f"127.0.0.1:{port}", "127.0.0.1", port, "127.0.0.1", "ipv4",
                  "127.0.0.1", 30000 + int(at * 7) % 30000, outcome, error,  # type: ignore[arg-type]
                  latency, latency / 2 if outcome == OPEN else None, 0, 0.0, 1)  # fmt: skip


def fill(history: History, names: list[str], now: float) -> int:
    n = 0
    for k, name in enumerate(names):
        port = 20000 + k
        start = now - BUCKETS * BUCKET_SECONDS
        # three attempts a minute over the whole window; a flap every few minutes
        for minute in range(BUCKETS):
            for j in range(3):
                at = start + minute * BUCKET_SECONDS + j * 20 + 1
                up = not (minute % 5 == 4 and j == 2)
                outcome = OPEN if up else (REFUSED if minute % 2 else TIMEOUT)
                history.observe(name, record(port, at, outcome, 0.05 + (minute % 7) / 10), up)
                n += 1
        for j in range(2 * SAMPLES):  # the current minute busy enough to fill the reservoir
            history.observe(name, record(port, now - 30 + j * 0.1, OPEN, 0.2 + j / 100), True)
            n += 1
        assert len(history.targets[name].changes) == CHANGES
    return n


async def page_cost(page: StatusPage, kind: str, cold: bool, rounds: int = 5) -> str:
    """Building `kind` from scratch (`cold`: every row made anew, as when every target has
    just had a record; else rows kept from the last build): median wall and CPU time of a
    build, and the longest stretch of CPU time the loop was held between two turns (CPU
    time: on a shared machine wall-clock gaps mostly measure the other processes)."""
    walls: list[float] = []
    cpus: list[float] = []
    stretch = 0.0
    for _ in range(rounds):
        page._cache.clear()
        if cold:
            page._rows.clear()
        done = asyncio.Event()
        gaps: list[float] = []

        async def ticker(done: asyncio.Event, gaps: list[float]) -> None:
            last = time.thread_time()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.thread_time()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker(done, gaps))
        await asyncio.sleep(0)
        t, c = time.perf_counter(), time.thread_time()
        await page.answer(kind, Query())
        walls.append(time.perf_counter() - t)
        cpus.append(time.thread_time() - c)
        done.set()
        await task
        stretch = max(stretch, *gaps)
    walls.sort()
    cpus.sort()
    return (
        f"{kind} {'cold' if cold else 'warm'}: build {1000 * walls[len(walls) // 2]:.1f} ms "
        f"wall, {1000 * cpus[len(cpus) // 2]:.1f} ms CPU; longest hold of the loop "
        f"{1000 * stretch:.2f} ms CPU"
    )


def measure_memory(names: list[str], now: float) -> History:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = History()
    n = fill(history, names, now)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    print(f"targets: {len(names)}, records fed: {n}")
    print(f"history held after one hour: {held / 2**20:.1f} MiB, {held / len(names):.0f} B/target")
    fill(history, names, now + BUCKETS * BUCKET_SECONDS)  # a second hour: nothing may grow
    gc.collect()
    held2 = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"after a second hour: {held2 / 2**20:.1f} MiB ({(held2 - held) / 2**10:+.1f} KiB)")
    return history


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--no-memory", action="store_true", help="only the page's cost")
    a = ap.parse_args()
    names = [f"target-{k:05d}" for k in range(a.targets)]
    now = T0 + 30
    timing = History()  # the cost of observe, untraced (tracemalloc slows every allocation)
    t = time.perf_counter()
    n = fill(timing, names[:1000], now)
    print(f"observe: {1e6 * (time.perf_counter() - t) / n:.2f} µs per record (with making it)")
    del timing
    if a.no_memory:
        history = History()
        fill(history, names, now)
    else:
        history = measure_memory(names, now)  # two hours: the page shows the second
        now += BUCKETS * BUCKET_SECONDS

    targets = [
        ResolvedTarget(
            name,
            f"127.0.0.1:{20000 + k}",
            "127.0.0.1",
            20000 + k,
            10.0,
            1.0,
            MappingProxyType({"team": f"t{k % 10}"}),
        )
        for k, name in enumerate(names)
    ]
    page = StatusPage(lambda: targets, history, clock=lambda: now)

    async def costs() -> None:
        print(f"a page of 100 rows out of {a.targets} targets:")
        for cold in (True, False):
            for kind in ("html", "json"):
                print("  " + await page_cost(page, kind, cold))

    asyncio.run(costs())


if __name__ == "__main__":
    main()
