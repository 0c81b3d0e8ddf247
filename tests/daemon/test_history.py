"""The per-target history behind the status page: buckets, p50/max, state changes, bounds."""

from __future__ import annotations

import tracemalloc

from helpers import make_record

from probe.daemon.history import (
    BUCKET_SECONDS,
    BUCKETS,
    CHANGES,
    MOVED,
    SAMPLES,
    History,
    TargetHistory,
)
from probe.record import ERROR, OPEN, REFUSED, TIMEOUT, Outcome, Record

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def rec(at: float, outcome: Outcome, latency: float = 1.0, error: str | None = None) -> Record:
    rtt = latency / 2 if outcome == OPEN else None
    return make_record(
        started=at, local_port=40000 + int(at) % 1000, outcome=outcome, error=error,
        latency_ms=latency, rtt_ms=rtt,
    )  # fmt: skip


def window(h: TargetHistory, now: float) -> list:  # type: ignore[type-arg]
    return list(h.buckets(now))


def test_a_minute_counts_outcomes_p50_and_max() -> None:
    h = TargetHistory()
    for i, ms in enumerate([1.0, 2.0, 3.0, 10.0]):
        h.add(rec(T0 + i, OPEN, ms), True)
    h.add(rec(T0 + 5, REFUSED, 5.0, "ECONNREFUSED"), False)
    h.add(rec(T0 + 6, TIMEOUT, 1000.0, "ETIMEDOUT"), False)
    buckets = window(h, T0 + 30)
    assert len(buckets) == BUCKETS
    assert all(b is None for b in buckets[:-1])
    last = buckets[-1]
    assert last.start == T0
    assert last.attempts == 6 and last.failures == 2
    assert last.outcomes == (4, 1, 1, 0, 0)
    # answered attempts only: 1, 2, 3, 10 and the refusal's 5; the timeout's wait is not a latency
    assert last.p50_ms == 3.0
    assert last.max_ms == 10.0


def test_the_last_record_and_state_since_when() -> None:
    h = TargetHistory()
    h.add(rec(T0, OPEN, 0.5), True)
    h.add(rec(T0 + 10, OPEN, 0.7), True)
    assert h.since == T0 and h.state is True
    h.add(rec(T0 + 20, TIMEOUT, 300.0, "ETIMEDOUT"), False)
    assert h.state is False and h.since == T0 + 20
    assert (h.outcome, h.error, h.latency_ms, h.rtt_ms) == (TIMEOUT, "ETIMEDOUT", 300.0, None)
    assert h.local_address == "127.0.0.1" and h.local_port == 40000 + int(T0 + 20) % 1000
    assert [(c.before, c.after, c.reason) for c in h.changes] == [
        ("unknown", "up", None),
        ("up", "down", "ETIMEDOUT"),
    ]


def test_state_follows_the_daemon_not_each_outcome() -> None:
    """The daemon decides the state (it may wait for several failures); history records
    a change only when the state it is given changes."""
    h = TargetHistory()
    h.add(rec(T0, OPEN), True)
    h.add(rec(T0 + 1, REFUSED, error="ECONNREFUSED"), True)  # not down yet, says the daemon
    assert len(h.changes) == 1
    h.add(rec(T0 + 2, REFUSED, error="ECONNREFUSED"), False)
    assert [c.reason for c in h.changes] == [None, "ECONNREFUSED"]


def test_changes_are_capped_newest_kept() -> None:
    h = TargetHistory()
    for i in range(3 * CHANGES):
        up = i % 2 == 0
        h.add(rec(T0 + i, OPEN if up else REFUSED, error=None if up else "ECONNREFUSED"), up)
    assert len(h.changes) == CHANGES
    assert h.changes[-1].at == T0 + 3 * CHANGES - 1
    assert h.changes[0].at == T0 + 2 * CHANGES


def test_the_ring_forgets_what_left_the_window() -> None:
    h = TargetHistory()
    h.add(rec(T0, REFUSED, 9.0, "ECONNREFUSED"), False)
    # Exactly one window later the same ring entry is reused: the old minute must not leak.
    later = T0 + BUCKETS * BUCKET_SECONDS
    h.add(rec(later, OPEN, 1.0), True)
    buckets = window(h, later)
    assert sum(b is not None for b in buckets) == 1
    assert buckets[-1].outcomes == (1, 0, 0, 0, 0)
    assert buckets[-1].max_ms == 1.0
    # Read from further on, the minute is gone too.
    assert all(b is None for b in window(h, later + BUCKETS * BUCKET_SECONDS))


def test_p50_of_a_closed_minute_survives_the_next_one() -> None:
    h = TargetHistory()
    for ms in (1.0, 2.0, 3.0):
        h.add(rec(T0, OPEN, ms), True)
    for ms in (7.0, 9.0):
        h.add(rec(T0 + 60, OPEN, ms), True)
    first, second = window(h, T0 + 61)[-2:]
    assert first.p50_ms == 2.0
    assert second.p50_ms == 8.0


def test_a_busy_minute_keeps_a_bounded_sample() -> None:
    h = TargetHistory()
    for i in range(20 * SAMPLES):
        h.add(rec(T0 + i * 0.01, OPEN, 1.0 if i % 2 else 3.0), True)
    assert len(h.samples) == SAMPLES
    last = window(h, T0 + 59)[-1]
    assert last.attempts == 20 * SAMPLES
    assert last.p50_ms in (1.0, 2.0, 3.0)
    assert last.max_ms == 3.0


def test_a_late_record_for_a_closed_minute_is_counted() -> None:
    h = TargetHistory()
    h.add(rec(T0 + 61, OPEN, 1.0), True)
    h.add(rec(T0 + 59, TIMEOUT, 500.0, "ETIMEDOUT"), True)  # started earlier, ended later
    first, second = window(h, T0 + 62)[-2:]
    assert first.outcomes[2] == 1 and first.p50_ms is None
    assert second.outcomes[0] == 1


def test_an_unresolved_name_is_a_failure_without_latency() -> None:
    h = TargetHistory()
    h.add(rec(T0, ERROR, 0.0, "EAI_NONAME"), False)
    last = window(h, T0)[-1]
    assert last.failures == 1 and last.p50_ms is None and last.max_ms is None
    assert h.changes[-1].reason == "EAI_NONAME"


def test_memory_does_not_grow_with_time() -> None:
    """Three hours of records at one a second: a target's size stays what one hour made."""
    history = History()

    def feed(seconds: int, start: float) -> None:
        for i in range(seconds):
            up = i % 97 != 0
            outcome = OPEN if up else TIMEOUT
            history.observe("t", rec(start + i, outcome, 0.1 + i % 7), up)

    tracemalloc.start()
    try:
        feed(3600, T0)
        one_hour = tracemalloc.get_traced_memory()[0]
        feed(2 * 3600, T0 + 3600)
        three_hours = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert three_hours - one_hour < 2048, (one_hour, three_hours)


def test_forget_drops_a_target() -> None:
    history = History()
    history.observe("a", rec(T0, OPEN), True)
    assert history.get("a") is not None
    history.forget("a")
    assert history.get("a") is None
    history.forget("never there")


def test_state_changes_are_logged_by_name_and_bounded() -> None:
    """The page keeps its order from this log: every change (and a forget) is in it, a
    record that keeps the state is not, and it never holds more than MOVED names."""
    history = History()
    history.observe("a", rec(T0, OPEN), True)  # unknown → up
    history.observe("a", rec(T0 + 1, OPEN), True)  # stays up
    history.observe("b", rec(T0 + 1, REFUSED, error="ECONNREFUSED"), False)
    history.observe("a", rec(T0 + 2, TIMEOUT, error="ETIMEDOUT"), False)
    history.forget("b")
    history.forget("b")  # not there any more: nothing changes
    assert history.moves == 4 and list(history.moved) == ["a", "b", "a", "b"]
    for i in range(MOVED):
        history.observe("c", rec(T0 + 3 + i, OPEN), i % 2 == 0)
    assert history.moves == 4 + MOVED and len(history.moved) == MOVED
