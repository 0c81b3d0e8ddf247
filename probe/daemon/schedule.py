"""The daemon's schedule: each target at a fixed rate, on a phase derived from the target.

The n-th attempt of a target starts at `phase + n * interval` on the wall clock, so a slow
attempt or a busy moment never makes the schedule drift, and a restart (or a reload that
leaves the target alone) keeps the same instants. Phases are spread across the interval by
a hash of the target, so ten thousand targets never fire in one burst. A target whose
previous attempt is still running skips its slot; the skip is counted, not queued.

This module is arithmetic and a calendar, with the clock passed in: it can be tested
without a loop, and the daemon drives it with one timer. The calendar holds each job in the
bucket of its next slot (10 ms of slots each) and keeps a heap of the bucket numbers only:
at 10,000 targets a heap of every job cost each start ~14 comparisons of tuples spread over
memory (several µs of cache misses); a bucket is a list, taken whole when its time comes.

The wall clock can step (an operator, a VM resumed, NTP's first sync); the monotonic clock
cannot. `Clock` reads the wall clock once, then follows the monotonic one: slots are paced
on it, so an hour's step back neither stops probing for an hour nor, forward, bursts it. A
step is noticed by comparing the two (`Clock.step`), and `Schedule.reanchor` moves every job
to its first slot after the new time, without counting the slots in between as skipped.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


def phase_of(key: str, interval: float) -> float:
    """A stable offset in [0, interval) for this target: the same key, the same phase."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    fraction = (int.from_bytes(digest, "big") >> 11) / 2**53  # 53 bits: exactly below 1.0
    return min(fraction * interval, math.nextafter(interval, 0.0))


def slot_index(now: float, phase: float, interval: float) -> int:
    """n of the first slot `phase + n * interval` at or after `now`, exact at the boundary."""
    n = math.ceil((now - phase) / interval)
    if phase + (n - 1) * interval >= now:  # the division rounded up past an exact slot
        n -= 1
    return n


def next_start(now: float, phase: float, interval: float) -> float:
    """The first slot `phase + n * interval` at or after `now`."""
    return phase + slot_index(now, phase, interval) * interval


STEP = 0.25  # seconds the wall clock may move against the monotonic one before it is a step
BUCKETS_PER_SECOND = 100  # the calendar's buckets: 10 ms of slots each


def bucket_of(when: float) -> int:
    """The calendar bucket of an instant: monotonic in `when` (a product and a floor)."""
    return math.floor(when * BUCKETS_PER_SECOND)


class Clock:
    """Wall-clock instants paced on the monotonic clock; both sources injectable for tests."""

    def __init__(
        self,
        wall: Callable[[], float] | None = None,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall or (lambda: time.time())  # looked up at call time, like the kernel's
        self._mono = mono
        self._anchor_wall = self._wall()
        self._anchor_mono = mono()

    def now(self) -> float:
        """The wall time as of the last anchor, advanced by the monotonic clock."""
        return self._anchor_wall + (self._mono() - self._anchor_mono)

    def mono(self) -> float:
        return self._mono()

    def step(self) -> float | None:
        """How far the wall clock stepped since the last anchor (None: it did not); a step
        re-anchors the clock on the new wall time."""
        wall, mono = self._wall(), self._mono()
        offset = wall - (self._anchor_wall + (mono - self._anchor_mono))
        if abs(offset) <= STEP:
            return None
        self._anchor_wall, self._anchor_mono = wall, mono
        return offset


@dataclass(eq=False)
class Job(Generic[T]):
    """One scheduled target. `running` is set by whoever starts its attempt."""

    key: str
    interval: float
    item: T
    phase: float = 0.0
    slot: int = 0  # index of the next slot: due = phase + slot * interval, never a running sum
    due: float = 0.0
    running: bool = False
    skipped: int = 0  # slots missed because the previous attempt was still running
    active: bool = True  # False once removed: stale heap entries are dropped lazily


Entry = tuple[float, int, Job[T]]  # (slot, sequence, job): a job's slot, as queued


@dataclass
class Schedule(Generic[T]):
    """Jobs in a calendar by their next slot: buckets of entries, a heap of bucket numbers.
    An entry whose job moved on (removed, or its slot changed) is stale, dropped when met."""

    jobs: dict[str, Job[T]] = field(default_factory=dict)
    _buckets: dict[int, list[Entry[T]]] = field(default_factory=dict)
    _heap: list[int] = field(default_factory=list)  # the keys of _buckets
    _entries: int = 0  # entries in the buckets, stale ones included
    _seq: int = 0

    def _push(self, job: Job[T]) -> None:
        self._seq += 1
        number = bucket_of(job.due)
        bucket = self._buckets.get(number)
        if bucket is None:
            self._buckets[number] = bucket = []
            heapq.heappush(self._heap, number)
        bucket.append((job.due, self._seq, job))
        self._entries += 1

    def _rebuild(self, entries: list[Entry[T]]) -> None:
        self._buckets = {}
        for entry in entries:
            self._buckets.setdefault(bucket_of(entry[0]), []).append(entry)
        self._heap = list(self._buckets)
        heapq.heapify(self._heap)
        self._entries = len(entries)

    def update(
        self, items: Iterable[tuple[str, float, T]], now: float
    ) -> tuple[list[str], list[str], list[str]]:
        """Replace the job list. (key, interval, item) triples; the key identifies a target
        and must include everything that changes its schedule. Returns (added, removed,
        kept): kept jobs keep their phase, their next slot and their running state."""
        new: dict[str, Job[T]] = {}
        added: list[str] = []
        kept: list[str] = []
        for key, interval, item in items:
            job = self.jobs.get(key)
            if job is not None and job.interval == interval:
                job.item = item
                new[key] = job
                kept.append(key)
                continue
            if job is not None:
                job.active = False  # same target, new interval: the old grid ends here
            job = Job(key, interval, item, phase=phase_of(key, interval))
            job.slot = slot_index(now, job.phase, interval)
            job.due = job.phase + job.slot * interval
            new[key] = job
            self._push(job)
            added.append(key)
        removed = [key for key in self.jobs if key not in new]
        for key in removed:
            self.jobs[key].active = False
        self.jobs = new
        if self._entries > 2 * len(new) + 64:
            self._rebuild([e for bucket in self._buckets.values() for e in bucket if e[2].active])
        return added, removed, kept

    def reanchor(self, now: float) -> None:
        """The clock stepped to `now`: every job goes to its first slot at or after `now`.
        Nothing is skipped or made up: a step is not a stall."""
        for job in self.jobs.values():
            job.slot = slot_index(now, job.phase, job.interval)
            job.due = job.phase + job.slot * job.interval
        self._rebuild([(job.due, i, job) for i, job in enumerate(self.jobs.values())])
        self._seq = self._entries

    def next_due(self) -> float | None:
        heap, buckets = self._heap, self._buckets
        while heap:
            bucket = buckets[heap[0]]
            live = [entry[0] for entry in bucket if entry[2].active]
            if live:
                return min(live)
            del buckets[heapq.heappop(heap)]
            self._entries -= len(bucket)
        return None

    def pop_due(self, now: float, early: float = 0.0) -> list[tuple[Job[T], float, bool]]:
        """Jobs whose slot has come, or comes within `early`: (job, planned time, start?).
        A job still running from its last slot is skipped (counted in `job.skipped`); every
        job moves on to its next slot after `now`, so a stall is never followed by a burst
        of make-up attempts."""
        limit = now + early
        last = bucket_of(limit)
        heap, buckets = self._heap, self._buckets
        entries: list[Entry[T]] = []
        while heap and heap[0] <= last:
            number = heapq.heappop(heap)
            bucket = buckets.pop(number)
            if number == last:  # the bucket of the limit itself: some may come after it
                bucket.sort()
                cut = bisect.bisect_right(bucket, (limit, math.inf))
                if cut < len(bucket):
                    buckets[number] = bucket[cut:]
                    heapq.heappush(heap, number)
                    del bucket[cut:]
                entries += bucket
                break
            entries += bucket  # an earlier bucket: every slot in it is before the limit
        self._entries -= len(entries)
        entries.sort()  # by slot, then by when queued: the sequence numbers are unique
        popped: list[tuple[Job[T], float, bool]] = []
        for planned, _, job in entries:
            if not job.active or planned != job.due:
                continue
            start = not job.running
            if not start:
                job.skipped += 1
            # The next slot after now; slots passed over while we were stalled are gone.
            nxt = max(job.slot + 1, slot_index(now, job.phase, job.interval))
            while job.phase + nxt * job.interval <= now:
                nxt += 1
            job.skipped += nxt - job.slot - 1
            job.slot = nxt
            job.due = job.phase + nxt * job.interval
            self._push(job)
            popped.append((job, planned, start))
        return popped
