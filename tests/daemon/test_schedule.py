"""Unit tests of probe/scheduler.py: pure arithmetic and a heap, driven by an injected clock.

Every `now` here is a plain float; nothing sleeps and nothing reads the real clock, so the
assertions are about which slots come out and in what order, never about speed.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import pytest

from probe.daemon.schedule import Job, Schedule, next_start, phase_of

T0 = 1_700_000_000.0  # a wall-clock-sized epoch, so float rounding is realistic


def key(i: int) -> str:
    """Keys shaped like the daemon's (name, NUL, address)."""
    return f"target-{i}\0127.0.0.1:{1000 + i}"


def one_job(interval: float = 1.0, now: float = T0, k: str = "a") -> tuple[Schedule[str], Job[str]]:
    s: Schedule[str] = Schedule()
    s.update([(k, interval, k)], now)
    return s, s.jobs[k]


# -- phase_of -------------------------------------------------------------------------------


def test_phase_is_stable_for_the_same_key() -> None:
    for i in range(200):
        assert phase_of(key(i), 10.0) == phase_of(key(i), 10.0)
    # stable across processes too: the hash is not Python's salted hash()
    digest = hashlib.blake2b(b"seed\x00127.0.0.1:8080", digest_size=8).digest()
    expected = int.from_bytes(digest, "big") / 2**64 * 5.0
    assert phase_of("seed\x00127.0.0.1:8080", 5.0) == expected


@pytest.mark.parametrize("interval", [0.001, 0.2, 1.0, 10.0, 86_400.0])
def test_phase_is_inside_the_interval(interval: float) -> None:
    for i in range(2000):
        p = phase_of(key(i), interval)
        assert 0.0 <= p < interval


def test_phase_differs_across_keys() -> None:
    phases = {phase_of(key(i), 10.0) for i in range(1000)}
    assert len(phases) == 1000
    # also for near-identical keys (one character apart)
    assert phase_of("a", 10.0) != phase_of("b", 10.0)
    assert phase_of("x\0127.0.0.1:80", 10.0) != phase_of("x\0127.0.0.1:81", 10.0)


def test_phase_scales_with_interval() -> None:
    """The same key sits at the same fraction of any interval."""
    for i in range(100):
        assert phase_of(key(i), 20.0) == pytest.approx(2 * phase_of(key(i), 10.0))


def test_phases_spread_uniformly_over_10k_keys() -> None:
    interval = 10.0
    n = 10_000
    buckets = Counter(int(phase_of(key(i), interval) / interval * 10) for i in range(n))
    share = n / 10
    assert set(buckets) == set(range(10))
    for b in range(10):
        assert 0.5 * share < buckets[b] < 2 * share, buckets
    # and finer: 100 buckets, none more than twice its share, none empty
    fine = Counter(int(phase_of(key(i), interval) / interval * 100) for i in range(n))
    assert len(fine) == 100
    assert max(fine.values()) < 2 * n / 100
    # chi-square with 99 degrees of freedom: p=0.001 is ~149
    chi2 = sum((fine[b] - n / 100) ** 2 / (n / 100) for b in range(100))
    assert chi2 < 149


def test_phases_of_sequential_names_spread_too() -> None:
    """Names that differ only in a trailing counter (host1, host2, ...) do not cluster."""
    n = 10_000
    buckets = Counter(int(phase_of(f"host{i}", 1.0) * 10) for i in range(n))
    assert len(buckets) == 10
    assert max(buckets.values()) < 2 * n / 10
    assert min(buckets.values()) > 0.5 * n / 10


def test_phase_stays_below_interval_for_the_largest_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Top:
        def __init__(self, *_: object, **__: object) -> None:
            pass

        def digest(self) -> bytes:
            return b"\xff" * 8

    monkeypatch.setattr(hashlib, "blake2b", Top)  # the module scheduler uses
    assert phase_of("any", 10.0) < 10.0


# -- next_start -----------------------------------------------------------------------------


def test_next_start_exact_slot_is_that_slot() -> None:
    assert next_start(30.0, 0.0, 10.0) == 30.0
    assert next_start(32.5, 2.5, 10.0) == 32.5
    assert next_start(2.5, 2.5, 10.0) == 2.5


def test_next_start_just_after_a_slot_is_the_next_one() -> None:
    assert next_start(32.5 + 1e-9, 2.5, 10.0) == pytest.approx(42.5)
    assert next_start(32.6, 2.5, 10.0) == pytest.approx(42.5)
    assert next_start(42.4, 2.5, 10.0) == pytest.approx(42.5)


def test_next_start_before_the_phase() -> None:
    assert next_start(0.0, 2.5, 10.0) == 2.5
    assert next_start(1.0, 2.5, 10.0) == 2.5


def test_next_start_is_on_the_grid_and_within_one_interval() -> None:
    rng = random.Random(7)
    for _ in range(10_000):
        interval = rng.choice([0.2, 0.5, 1.0, 5.0, 10.0, 60.0])
        phase = rng.uniform(0, interval)
        now = T0 + rng.uniform(0, 1e6)
        s = next_start(now, phase, interval)
        assert now <= s < now + interval + 1e-6
        n = (s - phase) / interval
        assert abs(n - round(n)) < 1e-6


def test_next_start_exact_slot_with_float_rounding() -> None:
    phase, interval = 0.1, 0.1
    now = phase + 2 * interval
    assert next_start(now, phase, interval) == now


# -- Schedule.update -------------------------------------------------------------------------


def test_update_reports_added_removed_kept() -> None:
    s: Schedule[str] = Schedule()
    added, removed, kept = s.update([("a", 1.0, "A"), ("b", 2.0, "B")], T0)
    assert (sorted(added), removed, kept) == (["a", "b"], [], [])
    added, removed, kept = s.update([("b", 2.0, "B2"), ("c", 1.0, "C")], T0 + 0.5)
    assert (added, removed, kept) == (["c"], ["a"], ["b"])
    assert set(s.jobs) == {"b", "c"}
    assert s.jobs["b"].item == "B2"  # the item is refreshed for kept jobs
    added, removed, kept = s.update([], T0 + 1)
    assert (added, sorted(removed), kept) == ([], ["b", "c"], [])
    assert s.next_due() is None


def test_new_job_gets_its_phase_and_first_slot() -> None:
    s, job = one_job(10.0, T0 + 3.3, "a")
    assert job.phase == phase_of("a", 10.0)
    assert job.due == next_start(T0 + 3.3, job.phase, 10.0)
    assert T0 + 3.3 <= job.due < T0 + 13.3
    assert s.next_due() == job.due


def test_kept_job_keeps_phase_due_and_running_state() -> None:
    s, job = one_job(1.0, T0, "a")
    s.pop_due(job.due)  # start one attempt
    job.running = True
    job.skipped = 3
    due, phase = job.due, job.phase
    added, removed, kept = s.update([("a", 1.0, "a2"), ("z", 1.0, "z")], T0 + 0.7)
    assert kept == ["a"] and removed == [] and added == ["z"]
    same = s.jobs["a"]
    assert same is job
    assert (same.phase, same.due, same.running, same.skipped) == (phase, due, True, 3)
    assert same.active


def test_changed_interval_is_a_new_job() -> None:
    s, old = one_job(1.0, T0, "a")
    added, _removed, kept = s.update([("a", 2.0, "a")], T0 + 0.5)
    assert added == ["a"]
    assert kept == []
    new = s.jobs["a"]
    assert new is not old
    assert new.interval == 2.0
    assert new.phase == phase_of("a", 2.0)
    assert new.due == next_start(T0 + 0.5, new.phase, 2.0)


def test_changed_interval_old_job_never_comes_back() -> None:
    s, _ = one_job(1.0, T0, "a")
    s.update([("a", 2.0, "a")], T0 + 0.5)
    new = s.jobs["a"]
    popped = []
    for step in range(1, 2001):
        popped += s.pop_due(T0 + 0.5 + step * 0.01)
    assert popped, "the new job must fire"
    assert all(job is new for job, _, _ in popped)
    assert len(popped) == 10  # 20 s at a 2 s interval


def test_removed_jobs_never_come_back_from_the_heap() -> None:
    s: Schedule[str] = Schedule()
    s.update([(key(i), 1.0, key(i)) for i in range(100)], T0)
    gone = {key(i) for i in range(50)}
    s.update([(key(i), 1.0, key(i)) for i in range(50, 100)], T0 + 0.1)
    seen: Counter[str] = Counter()
    for step in range(1, 1001):
        for job, _, _ in s.pop_due(T0 + 0.1 + step * 0.01):
            seen[job.key] += 1
    assert not gone & set(seen)
    assert set(seen) == {key(i) for i in range(50, 100)}
    assert all(9 <= n <= 11 for n in seen.values()), seen


def test_removed_then_readded_key_is_one_job() -> None:
    s, _ = one_job(1.0, T0, "a")
    s.update([], T0 + 0.1)
    s.update([("a", 1.0, "a")], T0 + 0.2)
    out = []
    for step in range(1, 501):
        out += s.pop_due(T0 + 0.2 + step * 0.01)
    assert len(out) == 5  # 5 s, one slot a second: no stale duplicate
    assert all(job is s.jobs["a"] for job, _, _ in out)


def test_calendar_is_compacted_after_churn() -> None:
    s: Schedule[str] = Schedule()
    for round_ in range(50):
        s.update([(f"{round_}-{i}", 1.0, "") for i in range(100)], T0 + round_)
    assert s._entries <= 2 * 100 + 64 + 100
    assert s._entries == sum(len(bucket) for bucket in s._buckets.values())
    assert sorted(s._heap) == sorted(s._buckets)


def test_a_slot_popped_early_is_started_once_per_call() -> None:
    """A slot within `early` whose next slot is within it too (an interval shorter than the
    margin) starts once per call: the next one waits for the next call."""
    s, job = one_job(0.001)
    first = job.due
    assert s.pop_due(first, early=0.005) == [(job, first, True)]
    second = job.due
    assert second == pytest.approx(first + 0.001)
    assert s.pop_due(first, early=0.005) == [(job, second, True)]


def test_pop_due_at_a_bucket_edge() -> None:
    """Slots on both sides of the limit in its calendar bucket: only those up to it."""
    s: Schedule[str] = Schedule()
    s.update([(key(i), 1.0, key(i)) for i in range(2000)], T0)
    dues = sorted(job.due for job in s.jobs.values())
    limit = dues[1000]
    popped = s.pop_due(limit)
    assert [p for _, p, _ in popped] == dues[:1001]
    assert s.next_due() == dues[1001]


# -- pop_due ---------------------------------------------------------------------------------


def test_pop_due_nothing_before_the_slot() -> None:
    s, job = one_job(1.0)
    first = job.due
    assert s.pop_due(first - 1e-6) == []
    assert s.pop_due(first) == [(job, first, True)]
    assert job.due == first + 1.0


def test_pop_due_early_starts_a_slot_within_the_margin_and_skips_nothing() -> None:
    """The daemon pops slots a few ms ahead (one wake-up starts them all): such a slot
    starts once, its next slot is the one after it, and none counts as skipped, even at
    the smallest interval the config allows."""
    s, job = one_job(0.001)
    first = job.due
    assert s.pop_due(first - 0.0011, early=0.001) == []
    assert s.pop_due(first - 0.0009, early=0.001) == [(job, first, True)]
    assert job.due == pytest.approx(first + 0.001) and job.skipped == 0
    job.running = True  # still running at its next slot: that one is skipped, counted once
    assert s.pop_due(first + 0.0001, early=0.001) == [(job, first + 0.001, False)]
    assert job.skipped == 1 and job.due == pytest.approx(first + 0.002)


def test_pop_due_in_time_order() -> None:
    s: Schedule[str] = Schedule()
    s.update([(key(i), 1.0, key(i)) for i in range(500)], T0)
    popped = s.pop_due(T0 + 0.999)  # a late call: everything due so far, at once
    planned = [p for _, p, _ in popped]
    assert len(popped) > 400
    assert planned == sorted(planned)
    assert all(start for _, _, start in popped)
    assert len({job.key for job, _, _ in popped}) == len(popped)
    # and planned is each job's slot on its own grid
    for job, p, _ in popped:
        assert p == pytest.approx(next_start(T0, job.phase, 1.0))


def test_fixed_rate_no_drift_over_1000_intervals() -> None:
    """However late inside the interval pop_due is called, the n-th slot is phase+n*interval."""
    interval = 0.2
    s, job = one_job(interval, T0, "drift")
    first = job.due
    rng = random.Random(1)
    planned: list[float] = []
    for n in range(1000):
        slot = first + n * interval
        now = slot + rng.uniform(0, 0.95 * interval)  # jittered call, inside the interval
        out = s.pop_due(now)
        assert len(out) == 1, (n, out)
        got_job, p, start = out[0]
        assert got_job is job and start
        planned.append(p)
    for n, p in enumerate(planned):
        assert abs(p - (first + n * interval)) < 1e-3, n
        # and on the grid of the phase, in absolute terms
        k = (p - job.phase) / interval
        assert abs(k - round(k)) * interval < 1e-3
    assert job.skipped == 0


def test_fixed_rate_no_drift_over_a_long_run() -> None:
    interval = 0.2
    s, job = one_job(interval, T0, "drift")
    first = job.due
    n = 200_000
    for i in range(n):
        s.pop_due(first + i * interval + interval / 2)
    assert abs(job.due - (first + n * interval)) < 1e-3


def test_running_job_is_returned_with_start_false_and_counted() -> None:
    s, job = one_job(1.0)
    first = job.due
    assert s.pop_due(first) == [(job, first, True)]
    job.running = True  # the daemon marks it when it starts the attempt
    assert s.pop_due(first + 1.0) == [(job, first + 1.0, False)]
    assert job.skipped == 1
    assert s.pop_due(first + 2.0) == [(job, first + 2.0, False)]
    assert job.skipped == 2
    job.running = False
    assert s.pop_due(first + 3.0) == [(job, first + 3.0, True)]
    assert job.skipped == 2


def test_stall_counts_missed_slots_and_resumes_without_burst() -> None:
    interval = 1.0
    s, job = one_job(interval)
    first = job.due
    assert len(s.pop_due(first)) == 1
    # the loop stalls: next call 5.5 intervals after the slot that was due next
    slot1 = first + interval
    out = s.pop_due(slot1 + 5.5 * interval)
    assert len(out) == 1  # exactly one entry: no make-up burst
    got, planned, start = out[0]
    assert got is job and start and planned == slot1
    assert job.skipped == 5  # slot1+1 .. slot1+5 are gone
    assert job.due == pytest.approx(slot1 + 6 * interval)  # the next slot on the grid
    assert s.pop_due(slot1 + 5.99 * interval) == []
    out = s.pop_due(slot1 + 6 * interval + 0.01)
    assert [(j, round(p - first, 9), st) for j, p, st in out] == [(job, 7.0, True)]


def test_stall_with_many_jobs_gives_one_entry_each() -> None:
    s: Schedule[str] = Schedule()
    s.update([(key(i), 1.0, key(i)) for i in range(200)], T0)
    out = s.pop_due(T0 + 10.5)
    assert len(out) == 200
    assert len({job.key for job, _, _ in out}) == 200
    for job, planned, _ in out:
        assert job.due > T0 + 10.5
        assert job.due - (T0 + 10.5) <= 1.0
        assert planned < T0 + 1.0  # the first slot, the one that was due


def test_stall_ending_exactly_on_a_slot_gives_one_entry() -> None:
    interval = 0.2
    for k in range(2, 60):
        s, job = one_job(interval, T0, "exact")
        planned = job.due
        out = s.pop_due(planned + k * interval)
        assert len(out) == 1, (k, [(p, st) for _, p, st in out])


@pytest.mark.serial
def test_10k_jobs_pop_at_most_a_few_per_millisecond() -> None:
    """10,000 targets at a 10 s interval: about 1 per ms, never a burst."""
    interval = 10.0
    n = 10_000
    s: Schedule[str] = Schedule()
    s.update([(key(i), interval, key(i)) for i in range(n)], T0)
    per_ms: list[int] = []
    ms = 0.001
    for step in range(1, int(interval / ms) + 1):
        per_ms.append(len(s.pop_due(T0 + step * ms)))
    assert sum(per_ms) == n  # every job exactly once in one interval
    expected = n / len(per_ms)  # 1.0
    assert max(per_ms) <= 10 * expected
    # and no 100 ms window holds more than twice its share
    windows = [sum(per_ms[i : i + 100]) for i in range(0, len(per_ms), 100)]
    assert max(windows) < 2 * 100 * expected
    assert min(windows) > 0.5 * 100 * expected


def test_next_due_skips_removed_jobs() -> None:
    s: Schedule[str] = Schedule()
    s.update([("a", 1.0, "a"), ("b", 1.0, "b")], T0)
    a, b = s.jobs["a"], s.jobs["b"]
    s.update([("b", 1.0, "b")], T0)
    assert s.next_due() == b.due
    assert not a.active
    assert math.isfinite(b.due)
