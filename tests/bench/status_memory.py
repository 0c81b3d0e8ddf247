#!/usr/bin/env python3
"""The status page's history for 10,000 targets: bytes held (tracemalloc), and what building
the page costs the loop (wall time per build, longest stretch between two yields).

Every target is filled to its worst case: every bucket of the hour used, its reservoir full,
CHANGES state changes with reasons, a last record with a local endpoint. No sockets.

With --store DIR, also the durable store's cost at that scale: what handing records to it
adds to `observe` on the loop, and what its writer thread spends committing them (simulated
time: 10,000 targets every 10 s, 90 % refused, 1 % flapping every 5 minutes, one 0.5 s
batch after another, each committed as the writer does), the file's size and growth, the
read-back at start and a pruning pass.

Usage: .venv/bin/python tests/bench/status_memory.py [--targets 10000] [--store DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from pathlib import Path
from types import MappingProxyType

from probe.daemon.config import ResolvedTarget
from probe.daemon.history import BUCKET_SECONDS, BUCKETS, CHANGES, SAMPLES, History
from probe.daemon.status import Query, StatusPage
from probe.daemon.store import FLUSH_EVERY, Store, open_store
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


def file_size(store: Store) -> int:
    """The database file's size with its write-ahead log folded in."""
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return store.path.stat().st_size


def store_cost(directory: Path, names: list[str], minutes: int, interval: float) -> None:
    """Records of `names` every `interval` s for `minutes` simulated minutes through a History
    feeding a real store; each FLUSH_EVERY s of records committed as one batch."""
    store = open_store(directory, 90, lambda *a, **k: print("store:", a, k), lambda: T0)
    assert store is not None
    history = History(sink=store.put)
    plain = History()
    per_batch = len(names) * FLUSH_EVERY / interval
    start = T0
    batches: list[float] = []
    fed = 0
    loop_with = loop_without = 0.0
    steps = int(minutes * 60 / FLUSH_EVERY)
    for step in range(steps):
        first = int(step * per_batch)
        last = int((step + 1) * per_batch)
        batch = []
        for k in range(first, last):
            name = names[k % len(names)]
            at = start + k * interval / len(names)
            n = k % len(names)
            up = n % 10 == 0 or (n % 100 == 1 and k // len(names) % 30 == 0)  # 1 % flap
            outcome = OPEN if up else REFUSED
            batch.append((name, record(20000 + n, at, outcome, 0.05), up))
        t = time.thread_time()
        for name, rec, up in batch:
            plain.observe(name, rec, up)
        loop_without += time.thread_time() - t
        t = time.thread_time()
        for name, rec, up in batch:
            history.observe(name, rec, up)
        loop_with += time.thread_time() - t
        fed += len(batch)
        t = time.perf_counter()
        store._flush()  # what the writer thread does every FLUSH_EVERY s
        batches.append(time.perf_counter() - t)
        if step == steps // 2:
            half = file_size(store)
    batches.sort()
    size = file_size(store)
    per_minute = (size - half) / (minutes / 2)
    print(f"store, {len(names)} targets every {interval:g} s, {minutes} simulated minutes, "
          f"{fed} records:")  # fmt: skip
    print(f"  observe on the loop: {1e6 * loop_without / fed:.2f} µs without the store, "
          f"{1e6 * loop_with / fed:.2f} µs with it (queueing)")  # fmt: skip
    median, p99 = batches[len(batches) // 2], batches[int(len(batches) * 0.99)]
    share = 100 * sum(batches) / (steps * FLUSH_EVERY)
    print(f"  writer commit per {FLUSH_EVERY:g} s batch ({per_batch:.0f} records): median "
          f"{1000 * median:.1f} ms, p99 {1000 * p99:.1f} ms, max {1000 * batches[-1]:.1f} ms; "
          f"{share:.1f} % of a core (its own thread)")  # fmt: skip
    day = per_minute * 1440 / 2**20
    print(f"  file: {size / 2**20:.1f} MiB after {minutes} minutes, growing "
          f"{per_minute / 2**10:.0f} KiB a minute: ~{day:.0f} MiB for the day of one-minute "
          "rows kept")  # fmt: skip
    store.close()
    store = open_store(directory, 90, lambda *a, **k: None, lambda: T0)
    assert store is not None
    t = time.perf_counter()
    saved = store.load(names, start + minutes * 60, BUCKETS)
    print(f"  read back at start: {len(saved)} targets in {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    store._prune()
    print(f"  one pruning pass: {time.perf_counter() - t:.2f} s (its thread, in chunks)")
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=10_000)
    ap.add_argument("--no-memory", action="store_true", help="only the page's cost")
    ap.add_argument("--store", help="measure the durable store in this (new) directory")
    ap.add_argument("--store-minutes", type=int, default=10)
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
    if a.store:
        directory = Path(a.store)
        directory.mkdir(parents=True, exist_ok=False)
        store_cost(directory, names, a.store_minutes, 10.0)


if __name__ == "__main__":
    main()
