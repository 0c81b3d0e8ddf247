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
                  latency, latency / 2 if outcome == OPEN else None, 1)  # fmt: skip


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


async def page_cost(page: StatusPage, kind: str, rounds: int = 5) -> tuple[float, float]:
    """(median build ms, longest stretch between two loop turns, ms) of building `kind`."""
    builds: list[float] = []
    gaps: list[float] = []
    for _ in range(rounds):
        page._cache.clear()
        done = asyncio.Event()

        async def ticker(done: asyncio.Event) -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker(done))
        await asyncio.sleep(0)
        t = time.perf_counter()
        await page.answer(kind, Query())
        builds.append(time.perf_counter() - t)
        done.set()
        await task
    builds.sort()
    return 1000 * builds[len(builds) // 2], 1000 * max(gaps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=10_000)
    a = ap.parse_args()
    names = [f"target-{k:05d}" for k in range(a.targets)]
    now = T0 + 30
    timing = History()  # the cost of observe, untraced (tracemalloc slows every allocation)
    t = time.perf_counter()
    n = fill(timing, names[:1000], now)
    print(f"observe: {1e6 * (time.perf_counter() - t) / n:.2f} µs per record (with making it)")
    del timing
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    history = History()
    n = fill(history, names, now)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    print(f"targets: {a.targets}, records fed: {n}")
    print(f"history held after one hour: {held / 2**20:.1f} MiB, {held / a.targets:.0f} B/target")
    fill(history, names, now + BUCKETS * BUCKET_SECONDS)  # a second hour: nothing may grow
    gc.collect()
    held2 = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    print(f"after a second hour: {held2 / 2**20:.1f} MiB ({(held2 - held) / 2**10:+.1f} KiB)")

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
        for kind in ("html", "json"):
            build, gap = await page_cost(page, kind)
            print(f"{kind}: build {build:.1f} ms (page of 100 rows out of {a.targets}); "
                  f"longest stretch without yielding {gap:.2f} ms")  # fmt: skip

    asyncio.run(costs())


if __name__ == "__main__":
    main()
