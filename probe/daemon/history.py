"""Each target's recent past for the status page, in memory that does not grow with time.

A target keeps a ring of BUCKETS one-minute buckets (attempts by outcome, latency p50 and
max), a reservoir of at most SAMPLES latencies for the bucket being filled (its p50 is taken
when the minute closes: exact up to SAMPLES answers a minute, a uniform sample beyond), its
last CHANGES state changes and the fields of its last record. The daemon calls `observe` with
every finished record: O(1), a few array stores, no allocation but the reservoir's.
"""

from __future__ import annotations

import math
import random
from array import array
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from ..record import OPEN, OUTCOMES, REFUSED, Record
from . import store

BUCKET_SECONDS = 60
BUCKETS = 60  # one hour
SAMPLES = 32  # latencies kept for the open bucket's p50
CHANGES = 10  # state changes kept per target
MOVED = 4096  # names of targets whose state changed, kept for the page to catch up on
COUNT_MAX = 0xFFFF  # per-bucket counters saturate here (an interval under ~1 ms)
# Keyed by the enum members and by their strings (hashes differ): either finds the index.
_OUTCOME: dict[str, int] = {o: i for i, o in enumerate(OUTCOMES)} | {
    str(o.value): i for i, o in enumerate(OUTCOMES)
}
_N = len(OUTCOMES)
_OPEN, _NAN = _OUTCOME[OPEN], math.nan


def updown(up: bool | None) -> str:
    return "unknown" if up is None else ("up" if up else "down")


class Change(NamedTuple):
    """A state change and what caused it: the error of the record that made it. (A tuple
    of plain values: the garbage collector stops tracking it, 10 per target add no scan.)"""

    at: float  # the record's start, epoch seconds
    before: str  # "up", "down" or "unknown"
    after: str
    reason: str | None  # None when it came up


class Bucket(NamedTuple):
    """One minute of a target, as read for the page (a tuple: cheap to make by the hour)."""

    start: float  # epoch seconds
    attempts: int
    failures: int  # attempts not open
    outcomes: tuple[int, ...]  # counts in the order of record.OUTCOMES
    p50_ms: float | None  # latency of answered attempts (open or refused)
    max_ms: float | None


class TargetHistory:
    """One target's ring; written only by `add`, read by `buckets` and the fields."""

    __slots__ = (
        "changes",
        "counts",
        "error",
        "high",
        "last_at",
        "latency_ms",
        "local_address",
        "local_port",
        "median",
        "open_done",
        "open_slot",
        "outcome",
        "rtt_ms",
        "sample_slot",
        "samples",
        "seen",
        "since",
        "slots",
        "state",
    )

    def __init__(self) -> None:
        self.slots = array("i", [-1]) * BUCKETS  # minute number held by each ring entry
        self.counts = array("H", bytes(2 * BUCKETS * _N))  # per bucket, per outcome
        self.median = array("f", [_NAN]) * BUCKETS  # p50 of a closed bucket
        self.high = array("f", [_NAN]) * BUCKETS  # max latency
        self.sample_slot = -1  # the minute the reservoir belongs to
        self.samples = array("f")
        self.seen = 0  # answered attempts offered to the reservoir this minute
        self.open_slot = -1  # the newest minute with records, not yet handed to the store
        self.open_done = False  # True: that minute is in the store already (restored)
        self.changes: list[Change] = []
        self.state: bool | None = None
        self.since: float | None = None  # when the current state began
        self.last_at: float | None = None
        self.outcome: str | None = None
        self.error: str | None = None
        self.local_address: str | None = None
        self.local_port: int | None = None
        self.latency_ms: float | None = None
        self.rtt_ms: float | None = None

    def add(self, record: Record, up: bool | None) -> bool:
        """Take one finished record; `up` is the daemon's state for the target after it.
        True when that state changed."""
        started = record.started
        self.last_at = started
        self.outcome, self.error = record.outcome, record.error
        self.local_address, self.local_port = record.local_address, record.local_port
        self.latency_ms, self.rtt_ms = record.latency_ms, record.rtt_ms
        if up is not self.state:
            reason = None if up else record.error
            change = Change(started, updown(self.state), updown(up), reason)
            self.changes.append(change)
            if len(self.changes) > CHANGES:
                del self.changes[0]
            self.state, self.since = up, started
            moved = True
        else:
            moved = False
        slot = int(started // BUCKET_SECONDS)
        i = slot % BUCKETS
        held = self.slots[i]
        if held != slot:
            if held > slot:
                return moved  # older than the window (a clock step back): nothing to add it to
            self.slots[i] = slot
            base = i * _N
            for k in range(base, base + _N):
                self.counts[k] = 0
            self.median[i] = self.high[i] = _NAN
        k = i * _N + _OUTCOME[record.outcome]
        if self.counts[k] < COUNT_MAX:
            self.counts[k] += 1
        if record.outcome != OPEN and record.outcome != REFUSED:
            return moved  # no answer: its latency is the time we waited, not the target's
        latency = record.latency_ms
        high = self.high[i]
        if not latency <= high:  # also when high is NaN
            self.high[i] = latency
        self._sample(slot, latency)
        return moved

    def minute(self, name: str, slot: int) -> store.Minute | None:
        """The ring's bucket for minute `slot`, for the store; None when it left the ring."""
        i = slot % BUCKETS
        if self.slots[i] != slot:
            return None
        outcomes = self.counts[i * _N : i * _N + _N]
        attempts = sum(outcomes)
        median = self.median[i]
        if slot == self.sample_slot and self.samples:
            median = _median(self.samples)
        high = self.high[i]
        return store.Minute(name, slot, outcomes.tobytes(), attempts, attempts - outcomes[_OPEN],
                            None if math.isnan(median) else median,
                            None if math.isnan(high) else high)  # fmt: skip

    def unstored(self, name: str) -> store.Minute | None:
        """The newest minute with records when the store does not have it yet."""
        if self.open_slot < 0 or self.open_done:
            return None
        return self.minute(name, self.open_slot)

    def restore(self, saved: store.Saved, now: float) -> None:
        """Take back what the store kept: state, since, changes, the last attempt's fields
        and the complete minutes of the window (already stored: never handed back)."""
        self.state, self.since = saved.up, saved.since
        self.changes = [Change(*c) for c in saved.changes[-CHANGES:]]
        last = saved.last
        if last is not None:
            self.last_at, self.outcome, self.error = last.at, last.outcome, last.error
            self.local_address, self.local_port = last.local_address, last.local_port
            self.latency_ms, self.rtt_ms = last.latency_ms, last.rtt_ms
        current = int(now // BUCKET_SECONDS)
        for slot, outcomes, p50, high in saved.minutes:
            if not current - BUCKETS < slot < current or len(outcomes) != _N:
                continue
            i = slot % BUCKETS
            self.slots[i] = slot
            for k, count in enumerate(outcomes):
                self.counts[i * _N + k] = min(count, COUNT_MAX)
            self.median[i] = _NAN if p50 is None else p50
            self.high[i] = _NAN if high is None else high
            if slot > self.open_slot:
                self.open_slot, self.open_done = slot, True

    def _sample(self, slot: int, latency: float) -> None:
        if slot != self.sample_slot:
            if slot < self.sample_slot:
                return  # a late answer for a closed minute: counted, not sampled
            self._close()
            self.sample_slot, self.seen = slot, 0
            del self.samples[:]
        self.seen += 1
        if len(self.samples) < SAMPLES:
            self.samples.append(latency)
        else:  # reservoir sampling (Algorithm R): every answer equally likely to be kept
            j = random.randrange(self.seen)
            if j < SAMPLES:
                self.samples[j] = latency

    def _close(self) -> None:
        """The reservoir's minute is over: keep its p50 in its bucket, if still in the ring."""
        slot = self.sample_slot
        if slot >= 0 and self.samples and self.slots[slot % BUCKETS] == slot:
            self.median[slot % BUCKETS] = _median(self.samples)

    def buckets(self, now: float) -> list[Bucket | None]:
        """The window ending at `now`, oldest first; None for a minute with no record."""
        current = int(now // BUCKET_SECONDS)
        slots, counts, medians, highs = self.slots, self.counts, self.median, self.high
        isnan = math.isnan
        out: list[Bucket | None] = []
        for slot in range(current - BUCKETS + 1, current + 1):
            i = slot % BUCKETS
            if slots[i] != slot:
                out.append(None)
                continue
            outcomes = tuple(counts[i * _N : i * _N + _N])
            attempts = sum(outcomes)
            median = medians[i]
            if slot == self.sample_slot and self.samples:
                median = _median(self.samples)
            high = highs[i]
            out.append(
                Bucket(
                    float(slot * BUCKET_SECONDS),
                    attempts,
                    attempts - outcomes[_OPEN],
                    outcomes,
                    None if isnan(median) else median,
                    None if isnan(high) else high,
                )
            )
        return out


def _alone(name: str, slot: int, record: Record) -> store.Minute:
    """One record as a minute of its own (added to a minute the store already has)."""
    counts = array("H", bytes(2 * _N))
    counts[_OUTCOME[record.outcome]] = 1
    answered = record.outcome == OPEN or record.outcome == REFUSED
    latency = record.latency_ms if answered else None
    failed = int(record.outcome != OPEN)
    return store.Minute(name, slot, counts.tobytes(), 1, failed, latency, latency)


def _median(values: array[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class History:
    """Every target's history, by name (the same key as the metrics' `target` label).

    `moved` names the targets whose state changed (the newest MOVED of them) and `moves`
    counts every such change: the status page keeps its up/down order by catching up on
    these, instead of looking at every target for every build."""

    def __init__(self, sink: Callable[[store.Write], None] | None = None) -> None:
        self.targets: dict[str, TargetHistory] = {}
        self.moved: deque[str] = deque(maxlen=MOVED)
        self.moves = 0
        self.sink = sink  # the durable store's `put`, when there is one

    def observe(self, name: str, record: Record, up: bool | None) -> None:
        history = self.targets.get(name)
        if history is None:
            history = self.targets[name] = TargetHistory()
        sink = self.sink
        if sink is None:
            if history.add(record, up):
                self.moved.append(name)
                self.moves += 1
            return
        # A minute goes to the store once a record of a later minute comes (or at `flush`).
        slot = int(record.started // BUCKET_SECONDS)
        open_slot = history.open_slot
        if slot > open_slot and (closed := history.unstored(name)) is not None:
            sink(closed)
        moved = history.add(record, up)
        if slot > open_slot:
            history.open_slot, history.open_done = slot, False
        elif slot < open_slot or history.open_done:  # a minute already stored: add this one
            sink(_alone(name, slot, record))
        sink(store.Seen(name, record.started, record.outcome, record.error,
                        record.local_address, record.local_port, record.latency_ms,
                        record.rtt_ms))  # fmt: skip
        if moved:
            self.moved.append(name)
            self.moves += 1
            change = history.changes[-1]
            sink(store.Change(name, change.at, change.before, change.after, change.reason,
                              history.state, change.at))  # fmt: skip

    def restore(self, saved: dict[str, store.Saved], now: float) -> None:
        for name, kept in saved.items():
            history = self.targets.get(name)
            if history is None:
                history = self.targets[name] = TargetHistory()
            history.restore(kept, now)
            self.moved.append(name)
            self.moves += 1

    def flush(self) -> None:
        """Hand every minute still open to the store (at shutdown; the rest of a minute
        written after a restart adds to it)."""
        sink = self.sink
        if sink is None:
            return
        for name, history in self.targets.items():
            minute = history.unstored(name)
            if minute is not None:
                sink(minute)
            history.open_done = True

    def get(self, name: str) -> TargetHistory | None:
        return self.targets.get(name)

    def forget(self, name: str) -> None:
        if self.targets.pop(name, None) is not None:
            self.moved.append(name)  # back to unknown
            self.moves += 1
