"""`--rate R` starts R attempts per second with any number of workers, each worker's share
of the cadence interleaved with the others' (worker i of N at R/N, offset i/R), measured
from the records' own timestamps. And the lag throttle never cuts below what --rate needs
in flight. Margins hold on a loaded 2-core machine: the rate is judged over seconds, and
interleaving at a cadence (tens of ms) far coarser than scheduling jitter."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from datetime import datetime

import pytest
from helpers import FullQueueListener, closed_port, probe, records

from probe.engine import Attempt, Engine, EngineOptions
from probe.engine.core import RATE_SLACK
from probe.resolve import Address
from probe.syntax import Endpoint

pytestmark = pytest.mark.serial  # timing under load, or a fixed resource: one at a time


def _starts(stdout: str) -> list[float]:
    return sorted(datetime.fromisoformat(r["timestamp"]).timestamp() for r in records(stdout))


def _steady_rate(starts: list[float]) -> float:
    """Starts per second between the 5th and the 95th percentile: a worker forked late on a
    busy machine shifts the ends, not the cadence."""
    lo, hi = len(starts) // 20, len(starts) - 1 - len(starts) // 20
    return (hi - lo) / (starts[hi] - starts[lo])


def _most_in_window(starts: list[float], width: float) -> int:
    best = j = 0
    for i, t in enumerate(starts):
        while starts[j] < t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.mark.parametrize("workers", ["1", "2"])
def test_rate_is_delivered_with_any_number_of_workers(workers: str) -> None:
    rate = 400.0
    # 1,024 refused endpoints (nothing listens on that port on 127.0.1.0/22): 2.56 s.
    port = closed_port()
    result = probe("check", "127.0.1.0/22", "-p", str(port), "--rate", "400",
                   "--workers", workers, "--json")  # fmt: skip
    assert result.returncode == 1, result.stderr
    starts = _starts(result.stdout)
    assert len(starts) == 1024
    assert 0.93 * rate <= _steady_rate(starts) <= 1.05 * rate
    # Paced, never a burst: a quarter second holds its share, plus at most the catch-up
    # after a stall (the engine makes up RATE_SLACK of lateness, no more).
    assert _most_in_window(starts, 0.25) <= (0.25 + RATE_SLACK) * rate + 4


def test_workers_interleave_their_cadence() -> None:
    """Two workers at 50/s: each starts every 40 ms, the second 20 ms after the first, so
    consecutive starts are ~20 ms apart, not pairs at one instant every 40 ms."""
    rate = 50.0
    port = closed_port()
    result = probe("check", "127.0.1.0/26", "-p", str(port), "--rate", "50",
                   "--workers", "2", "--json")  # fmt: skip
    assert result.returncode == 1, result.stderr
    starts = _starts(result.stdout)
    assert len(starts) == 64
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert statistics.median(gaps) >= 0.6 / rate, sorted(gaps)
    assert sum(1 for g in gaps if g < 0.25 / rate) <= len(gaps) // 4, sorted(gaps)
    # (The rate itself is judged above, over longer runs: 64 starts are too few to weigh
    # one stall of a busy machine.)
    assert _steady_rate(starts) <= 1.07 * rate


async def test_lag_throttle_keeps_what_the_rate_needs(full_queue: FullQueueListener) -> None:
    """Timeouts at --rate 200 with a 0.5 s timeout need 100 attempts in flight. A loop that
    lags (a callback blocking 8 ms, again and again) must not hold the limit below that."""
    engine = Engine(EngineOptions(timeout=0.5, concurrency=400, rate=200.0))
    loop = asyncio.get_running_loop()
    stop = loop.time() + 1.0
    lowest = engine.limit

    def hog() -> None:
        nonlocal lowest
        time.sleep(0.008)  # the fault: a callback that blocks the loop
        lowest = min(lowest, engine.limit)
        if loop.time() < stop:
            loop.call_soon(hog)

    endpoint = Endpoint(full_queue.target, "127.0.0.1", full_queue.port)
    for _ in range(300):
        engine.submit(Attempt(endpoint, Address(2, "127.0.0.1")), lambda *_: None)
    loop.call_soon(hog)
    await asyncio.sleep(1.05)  # an observation window: the 1 s the hog runs
    engine.close()
    assert engine.stats.lag_throttles > 0  # the loop did lag, and the engine reacted
    assert lowest >= 100
