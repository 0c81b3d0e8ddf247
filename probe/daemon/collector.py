"""The cyclic garbage collector kept off the schedule's path.

A 10,000-target daemon holds a few hundred thousand objects that live as long as it (or
their target) does: the config, the schedule, and each target's state (history rings,
dampers, metric series), built when its first record arrives. A full collection walks every
one of them in one piece, 40-110 ms in which no scheduled start fires. So they are moved
out of the collector's sight (`gc.freeze()`): once at start-up, and again once every target
has had time for its first record (the longest interval plus the longest timeout after a
start or a reload), when their state exists. Full collections then walk only what came
since: connections, requests, attempts in flight.

Frozen objects are still freed by reference counting when dropped (a removed target's
state); only a reference cycle among them would stay. The young generations are collected
just before each freeze, so the garbage frozen with the rest is at most what the oldest
generation held at that moment, once per start or reload.
"""

from __future__ import annotations

import asyncio
import gc

SETTLE_MARGIN = 1.0  # seconds after the longest interval + timeout before the second freeze


class Collector:
    """Freezes what start-up or a reload built, now and once its targets' state exists."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._later: asyncio.TimerHandle | None = None
        self.freezes = 0

    def settled(self, first_round: float) -> None:
        """Freeze now, and again `first_round` seconds (+ a margin) from now."""
        self.freeze()
        if self._later is not None:
            self._later.cancel()
        self._later = self._loop.call_later(first_round + SETTLE_MARGIN, self._again)

    def _again(self) -> None:
        self._later = None
        self.freeze()

    def freeze(self) -> None:
        gc.collect(1)  # the young generations: no garbage cycle of theirs is kept for good
        gc.freeze()
        self.freezes += 1

    def stop(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
