"""Deadlines of the attempts in flight, kept apart from the engine (as trio keeps its own).

No timer per attempt: a FIFO queue per timeout value (a later start with the same timeout
always ends later, so each queue is sorted for free) and one loop timer at the earliest
head. Finished attempts stay in their queue until they reach its head, or until the queue
is compacted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from .attempt import Slot


class Deadlines:
    """`expire(slot)` runs for each attempt still open at its deadline; `after()` once per
    sweep (the engine starts queued attempts there)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        expire: Callable[[Slot], None],
        after: Callable[[], None],
    ) -> None:
        self.loop = loop
        self._expire = expire
        self._after = after
        self._queues: dict[float, deque[Slot]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._closed = False

    def add(self, slot: Slot, timeout: float, compact_over: int) -> None:
        """Watch `slot` until `timeout` seconds from now. A queue longer than
        `compact_over` drops its finished slots, so memory follows what is in flight,
        not the attempt rate."""
        slot.deadline = deadline = self.loop.time() + timeout
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        queue.append(slot)
        if len(queue) > compact_over:
            self._queues[timeout] = deque(s for s in queue if not s.done)
        if self._timer is None or deadline < self._timer_when:
            self._arm(deadline)

    def close(self) -> list[Slot]:
        """Stop the timer; the slots not yet done (their sockets are the caller's)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queues, self._queues = self._queues, {}
        return [slot for queue in queues.values() for slot in queue if not slot.done]

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = self.loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Expire attempts past their deadline; drop finished ones from the queue heads."""
        self._timer = None
        now = self.loop.time()
        earliest = None
        for timeout, queue in list(self._queues.items()):
            while queue and (queue[0].done or queue[0].deadline <= now):
                slot = queue.popleft()
                if not slot.done:
                    self._expire(slot)
                    if self._closed:  # a sink failed on that record: the engine is gone
                        return
            if queue:
                if earliest is None or queue[0].deadline < earliest:
                    earliest = queue[0].deadline
            else:
                del self._queues[timeout]
        if earliest is not None:
            self._arm(earliest)
        self._after()
