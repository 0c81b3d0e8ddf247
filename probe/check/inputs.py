"""Where a check's targets come from when reading them may block: standard input, a FIFO.

Such input is read on a thread of its own, so a slow producer never delays timeouts or
signals on the loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from ..syntax import Endpoint, Target

T = TypeVar("T")

_END = object()
_HANDOFF_WAIT = 0.1  # seconds the input thread waits for room before it looks at `stop`


async def threaded(items: Iterator[T]) -> AsyncIterator[T]:
    """Pull from a blocking iterator (standard input, a FIFO) on a thread of its own, so the
    loop keeps its timers, deadlines and signals while the next line is slow to come. A
    daemon thread: a read that never returns must not keep the process alive. The thread
    hands items over through a thread-side queue and only wakes the loop, so a run that
    stops (its loop closed) leaves it nothing to schedule there: it just stops."""
    loop = asyncio.get_running_loop()
    handoff: queue.Queue[tuple[object, BaseException | None]] = queue.Queue(maxsize=64)
    ready = asyncio.Event()
    stop = threading.Event()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(ready.set)
        except RuntimeError:  # the loop is closed: the run is over
            stop.set()

    def put(item: object, exc: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                handoff.put((item, exc), timeout=_HANDOFF_WAIT)
            except queue.Full:
                continue
            wake()
            return True
        return False

    def pull() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except Exception as exc:
            put(_END, exc)
        else:
            put(_END)

    threading.Thread(target=pull, name="probe-input", daemon=True).start()
    try:
        while True:
            try:
                item, exc = handoff.get_nowait()
            except queue.Empty:
                ready.clear()  # a put from now on sets it again (on the loop, after this)
                if handoff.empty():
                    await ready.wait()
                continue
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item  # type: ignore[misc]
    finally:
        stop.set()


async def expand_async(targets: AsyncIterator[Target]) -> AsyncIterator[Endpoint]:
    async for target in targets:
        for endpoint in target.endpoints():
            yield endpoint
