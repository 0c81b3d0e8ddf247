"""Which in-flight sockets have their answer: one epoll set shared by every attempt on
Linux (one registration per attempt, one reader on the loop), the loop's own writer
callbacks elsewhere."""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable
from typing import Any

from .attempt import Slot

Ready = Callable[[Slot], None]


class Poller:
    """`ready(slot)` for each watched socket that became writable (connected or failed)
    and is not done yet; `after()` once per batch."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, ready: Ready, after: Callable[[], None]
    ) -> None:
        self.loop = loop
        self._ready = ready
        self._after = after

    def watch(self, slot: Slot) -> None:
        raise NotImplementedError

    def unwatch(self, slot: Slot) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop watching; the sockets are the caller's to close."""


class EpollPoller(Poller):
    def __init__(
        self, loop: asyncio.AbstractEventLoop, ready: Ready, after: Callable[[], None]
    ) -> None:
        super().__init__(loop, ready, after)
        self._epoll: Any = select.epoll()
        self._slots: dict[int, Slot] = {}
        loop.add_reader(self._epoll.fileno(), self._on_events)

    def watch(self, slot: Slot) -> None:
        self._slots[slot.fd] = slot
        self._epoll.register(slot.fd, select.EPOLLOUT | select.EPOLLONESHOT)

    def unwatch(self, slot: Slot) -> None:
        # Closing the socket removes it from the epoll set; only our map needs cleaning.
        self._slots.pop(slot.fd, None)

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def _on_events(self) -> None:
        slots = self._slots
        ready = self._ready
        for fd, _ in self._epoll.poll(0, 1024):
            slot = slots.pop(fd, None)
            if slot is not None and not slot.done:
                ready(slot)
        self._after()


class LoopPoller(Poller):  # pragma: no cover - macOS and others
    def watch(self, slot: Slot) -> None:
        self.loop.add_writer(slot.fd, self._on_writable, slot)

    def unwatch(self, slot: Slot) -> None:
        self.loop.remove_writer(slot.fd)

    def _on_writable(self, slot: Slot) -> None:
        self.loop.remove_writer(slot.fd)
        if not slot.done:
            self._ready(slot)
        self._after()


def make_poller(loop: asyncio.AbstractEventLoop, ready: Ready, after: Callable[[], None]) -> Poller:
    if hasattr(select, "epoll"):
        return EpollPoller(loop, ready, after)
    return LoopPoller(loop, ready, after)  # pragma: no cover - non-Linux
