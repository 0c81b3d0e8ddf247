"""Attempts waiting for a local port towards one destination.

connect() fails with EADDRNOTAVAIL when every local port is already in a connection to that
same destination (address and port): its 4-tuples are all taken, by our attempts, by
TIME_WAIT left by another client of the same upstream, or by connections held open. It is
a shortage towards one destination, not on the whole machine: the same ports still reach
every other destination. So such an attempt is set aside here (the destination's later
attempts join it) and the engine goes on with the rest of its queue. After a back-off of the
destination's own (doubling from 5 ms to 1 s) the attempts go back to the head of the queue;
the first connect towards the destination that gets a port ends its back-off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .attempt import Attempt, Done

Key = tuple[str, int]  # (address, port) of the destination
Entry = tuple[Attempt, Done]

BACKOFF_MIN = 0.005
BACKOFF_MAX = 1.0


def destination(attempt: Attempt) -> Key:
    return attempt.address.ip, attempt.endpoint.port


class Held:
    """Per-destination waiting lists, each with its back-off timer; `wake(entries)` hands
    a destination's attempts back, in the order they came, when its timer fires."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, wake: Callable[[list[Entry]], None]
    ) -> None:
        self._loop = loop
        self._wake = wake
        self._waiting: dict[Key, list[Entry]] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._backoff: dict[Key, float] = {}
        self.count = 0  # attempts waiting, all destinations

    def __contains__(self, key: Key) -> bool:
        return key in self._waiting

    def hold(self, key: Key, entry: Entry) -> None:
        """Set `entry` aside until the destination's back-off ends (started now if the
        destination was not waiting yet)."""
        entries = self._waiting.get(key)
        if entries is None:
            entries = self._waiting[key] = []
            delay = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff.get(key, 0.0) * 2))
            self._backoff[key] = delay
            self._timers[key] = self._loop.call_later(delay, self._release, key)
        entries.append(entry)
        self.count += 1

    @property
    def backing_off(self) -> bool:
        """Has any destination a back-off that a connect getting a port would end?"""
        return bool(self._backoff)

    def got_port(self, key: Key) -> None:
        """A connect towards `key` got a port: its next shortage starts a short back-off."""
        self._backoff.pop(key, None)

    def _release(self, key: Key) -> None:
        self._timers.pop(key, None)
        entries = self._waiting.pop(key, [])
        self.count -= len(entries)
        self._wake(entries)

    def clear(self) -> None:
        """Forget every waiting attempt (the engine closes or drops what has not started)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._waiting.clear()
        self._backoff.clear()
        self.count = 0
