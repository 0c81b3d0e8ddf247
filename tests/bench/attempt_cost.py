#!/usr/bin/env python3
"""The daemon's CPU per attempt on its record path, in-process: what the loop spends from
the engine's answer to the log (the record made, the damped state, the status page's
history, the metrics, the log sink, the store's queue), and what a /metrics page costs.

10,000 targets as operator_scale.py has them (10 s interval, every tenth open, the rest
refused, `[log] attempts = "changes"`, the store on), their records fed straight into the
runner round after round with the clock moved 10 s a round: no sockets, no timers, so the
figures are CPU time of this thread (and of the store's writer thread), far less sensitive
to the machine's load than a whole daemon's CPU share. The first rounds (state being built)
are not counted. A page is rendered and gzipped (level 1, as served) after every round.

With `--connect` the attempts are real instead: each round starts every target through the
runner (`_start`, as its timer would) and the engine, against 127.0.0.1 (a port nothing
listens on, and for every tenth target one a child process accepts on): the whole path
from the slot to the record, the kernel's share of the sockets included.

Usage: .venv/bin/python tests/bench/attempt_cost.py [--rounds 12] [--no-store] [--connect]
    [--cold] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import errno
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from probe import loop as event_loop
from probe.address import literal
from probe.daemon.config import load_config
from probe.daemon.http import GZIP_LEVEL
from probe.daemon.metrics import Metrics
from probe.daemon.paths import path_of
from probe.daemon.runner import Runner, own_targets
from probe.engine import Engine, EngineOptions
from probe.output.log import configure, event_logger
from probe.output.writer import stdout_writer
from probe.record import OPEN, REFUSED, Record, errno_name

TARGETS = 10_000
FIRST_PORT = 20001
OPEN_EVERY = 10
INTERVAL = 10.0
WARMUP = 2  # rounds not counted: the first builds every target's state
COLD_EVERY = 10  # --cold: attempts between two evictions (~one wake-up's starts)
EVICT = bytearray(16 << 20)
EVICT_LINES = bytes(len(EVICT[::64]))


def thread_cpu(thread: threading.Thread | None) -> float:
    if thread is None or thread.ident is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def page_cost(metrics: Metrics) -> tuple[float, int]:
    """CPU seconds of one page, rendered and gzipped as served; its gzipped size."""
    began = time.thread_time()
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    size = 0
    for piece in metrics.pieces():
        if piece is not None:
            size += len(packer.compress(piece))
    size += len(packer.flush())
    return time.thread_time() - began, size


ACCEPTOR = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
while True:
    s.accept()[0].close()
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def target_lines(listening: int | None) -> str:
    if listening is None:
        ports = range(FIRST_PORT, FIRST_PORT + TARGETS)
        return "".join(f'[[targets]]\naddress = "127.0.0.1:{p}"\n' for p in ports)
    refused = closed_port()  # named targets: every one on one of two ports
    return "".join(
        f'[[targets]]\nname = "t{i}"\n'
        f'address = "127.0.0.1:{listening if i % OPEN_EVERY == 0 else refused}"\n'
        for i in range(TARGETS)
    )


async def bench(a: argparse.Namespace, tmp: Path, listening: int | None) -> None:
    head = f"[defaults]\ninterval = {INTERVAL}\ntimeout = 1.0\n"
    head += f'[log]\nformat = "json"\nfile = "{tmp / "probe.log"}"\nattempts = "changes"\n'
    head += f'[store]\npath = "{"" if a.no_store else tmp / "store"}"\n'
    (tmp / "config.toml").write_text(head + target_lines(listening))
    config = load_config(str(tmp / "config.toml"), None)
    targets, _ = own_targets(str(tmp / "config.toml"), config, None)
    writer = stdout_writer(config.log.file)
    write_record = configure(writer, "json")
    engine = Engine(EngineOptions(timeout=1.0, concurrency=1000, lag_limit_ms=None), False)
    metrics = Metrics(lambda: 0.0)
    runner = Runner(engine, (60.0, 5.0, 4), metrics, writer, write_record, sys.exit, event_logger())
    runner.log_attempts = config.log.attempts
    await runner.open_store(config.store, targets)
    runner.apply(targets)  # not started: no timer fires, the records below are the only ones
    if runner.store is not None:
        runner.store.start()
    jobs = sorted(runner.schedule.jobs.values(), key=lambda job: job.phase)
    work = []
    for job in jobs:
        target = job.item
        address = literal(target.host)
        assert address is not None
        path = path_of(target.name, target.addresses, address)
        extra = runner._shared[target.name][1]
        opened = target.port == listening if listening else target.port % OPEN_EVERY == 1
        work.append((job, target, address, path, extra, opened))
    refused = errno.ECONNREFUSED
    started = time.time()
    per_attempt: list[float] = []
    store_per_attempt: list[float] = []
    pages: list[float] = []
    profile = cProfile.Profile() if a.profile else None
    store_thread = getattr(runner.store, "_thread", None)
    for r in range(a.rounds + WARMUP):
        counted = r >= WARMUP
        if profile is not None and counted:
            profile.enable()
        cpu0, store0 = time.thread_time(), thread_cpu(store_thread)
        if listening is not None:
            runner.running = True
            for start in range(0, len(work), 100):  # a hundred slots a turn, as ~0.1 s of them
                for job, *_ in work[start : start + 100]:
                    runner._start(job)
                await asyncio.sleep(0)
            runner.running = False
            await engine.drain()
            assert engine.stats.finished == (r + 1) * len(work), engine.stats
        evicting = 0.0
        for i, (job, target, address, path, extra, is_open) in enumerate([] if listening else work):
            if a.cold and i % COLD_EVERY == 0:
                began = time.thread_time()
                EVICT[::64] = EVICT_LINES  # what other processes leave in the caches
                evicting += time.thread_time() - began
            # What the engine's _deliver and the runner's done() do with an answer.
            err = 0 if is_open else refused
            outcome = OPEN if is_open else REFUSED
            job.running = True
            record = Record(
                started=started + job.phase + r * INTERVAL,
                target=target.address,
                host=target.host,
                port=target.port,
                address=address.ip,
                family=address.family_name,
                local_address="127.0.0.1",
                local_port=40000 + (r * 7 + target.port) % 20000,
                outcome=outcome,
                error=None if is_open else errno_name(err),
                latency_ms=0.05 + (target.port % 7) * 0.01,
                rtt_ms=0.02 if is_open else None,
                syn_retransmits=0,
                dns_ms=0.0,
                attempt=r + 1,
                stages=None,
            )
            record.extra = extra
            runner._finished(job, record, path)
        writer.flush()
        cpu = time.thread_time() - cpu0 - evicting
        if profile is not None and counted:
            profile.disable()
        page, size = page_cost(metrics)
        if runner.store is not None:
            runner.store.flush_now()
            await asyncio.sleep(0.3)  # the writer's batch, on its own thread
        if counted:
            per_attempt.append(cpu / len(work) * 1e6)
            store_per_attempt.append((thread_cpu(store_thread) - store0) / len(work) * 1e6)
            pages.append(page * 1000)
    loop_us = statistics.median(per_attempt)
    store_us = statistics.median(store_per_attempt)
    page_ms = statistics.median(pages)
    print(f"{len(work):,} targets, {a.rounds} rounds counted (after {WARMUP}), store "
          f"{'off' if a.no_store else 'on'}, gzipped page {size:,} bytes")  # fmt: skip
    path = "slot to record, real connects" if listening else "record path"
    print(f"{path} on the loop: median {loop_us:.2f} µs an attempt "
          f"(min {min(per_attempt):.2f}, max {max(per_attempt):.2f})")  # fmt: skip
    print(f"store writer thread: median {store_us:.2f} µs an attempt")
    print(f"page rendered and gzipped: median {page_ms:.1f} ms (min {min(pages):.1f})")
    rate = TARGETS / INTERVAL
    share = (loop_us + store_us) * rate / 1e4 + page_ms / 15.0 / 10.0
    print(f"at {rate:,.0f} attempts/s and a page every 15 s: {share:.2f} % of a core")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    await runner.close()
    engine.close()
    writer.close(1.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--no-store", action="store_true", help='[store] path = "" (no store)')
    ap.add_argument("--connect", action="store_true", help="real connects from the slot on")
    ap.add_argument(
        "--cold",
        action="store_true",
        help=f"evict the caches every {COLD_EVERY} attempts (not counted), as the daemon's "
        "wake-ups find them after other processes ran",
    )
    ap.add_argument("--profile", action="store_true", help="cProfile the counted rounds")
    a = ap.parse_args()
    acceptor = None
    listening = None
    if a.connect:
        acceptor = subprocess.Popen([sys.executable, "-c", ACCEPTOR], stdout=subprocess.PIPE)
        assert acceptor.stdout is not None
        listening = int(acceptor.stdout.readline())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            event_loop.run(bench(a, Path(tmp), listening))
    finally:
        if acceptor is not None:
            acceptor.kill()
            acceptor.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
