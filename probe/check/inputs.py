"""Where a check's targets come from when reading them may block: standard input, a FIFO.

Such input is read on a thread of its own, so a slow producer never delays timeouts or
signals on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

from ..syntax import Endpoint, Target

T = TypeVar("T")

_END = object()


async def threaded(items: Iterator[T]) -> AsyncIterator[T]:
    """Pull from a blocking iterator (standard input, a FIFO) on a thread of its own, so the
    loop keeps its timers, deadlines and signals while the next line is slow to come. A
    daemon thread: a read that never returns must not keep the process alive."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue(maxsize=64)

    def put(item: object, exc: BaseException | None = None) -> None:
        asyncio.run_coroutine_threadsafe(queue.put((item, exc)), loop).result()

    def pull() -> None:
        try:
            for item in items:
                put(item)
        except Exception as exc:
            put(_END, exc)
        else:
            put(_END)

    threading.Thread(target=pull, name="probe-input", daemon=True).start()
    while True:
        item, exc = await queue.get()
        if exc is not None:
            raise exc
        if item is _END:
            return
        yield item  # type: ignore[misc]


async def expand_async(targets: AsyncIterator[Target]) -> AsyncIterator[Endpoint]:
    async for target in targets:
        for endpoint in target.endpoints():
            yield endpoint
