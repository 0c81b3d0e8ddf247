"""A one-shot run: endpoints → attempts → records, with repeat mode and per-target verdicts.

Endpoints are pulled from their (lazy) iterator only as the engine has room, and a target's
state lives only while its attempts do, so memory follows concurrency, not the target count.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from ..engine import Attempt, Engine
from ..record import OPEN, Record, unresolved_record
from ..resolve import Address, ResolveError, Resolver
from ..targets import Endpoint

YIELD_EVERY = 64  # endpoints fed between two turns of the event loop


@dataclass(slots=True)
class CheckResult:
    outcomes: Counter[str] = field(default_factory=Counter)
    targets: int = 0
    targets_without_open: int = 0

    @property
    def attempts(self) -> int:
        return sum(self.outcomes.values())


class _Target:
    """One endpoint while any of its attempt streams (one per address) is unfinished."""

    __slots__ = ("opened", "pending")

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.opened = False


class _Stream:
    """The attempts to one address of one endpoint: `count` of them, `interval` apart."""

    __slots__ = ("address", "check", "endpoint", "remaining", "target")

    def __init__(
        self, check: _Check, target: _Target, endpoint: Endpoint, address: Address
    ) -> None:
        self.check = check
        self.target = target
        self.endpoint = endpoint
        self.address = address
        self.remaining = check.count

    def done(self, record: Record, attempt: Attempt, final: bool) -> None:
        check = self.check
        check.emit(record)
        if record.outcome == OPEN:
            self.target.opened = True
        if not final:
            return  # the engine retries this timeout itself
        self.remaining -= 1
        if self.remaining > 0:
            nxt = Attempt(self.endpoint, self.address, record.attempt + 1)
            started = time.time() - record.started
            delay = max(0.0, check.interval - started)
            check.engine.loop.call_later(delay, check.submit, nxt, self.done)
        else:
            check.target_done(self.target)


class _Check:
    def __init__(
        self,
        engine: Engine,
        resolver: Resolver,
        on_record: Callable[[Record], None],
        count: int,
        interval: float,
    ) -> None:
        self.engine = engine
        self.resolver = resolver
        self.on_record = on_record
        self.count = count
        self.interval = interval
        self.result = CheckResult()
        self.active = 0
        # Repeat mode keeps targets alive across intervals; bound them like attempts.
        self.max_active = engine.ceiling if count > 1 else 1 << 62
        self.room = asyncio.Event()
        self.room.set()
        self.finished = asyncio.Event()
        self.fed = False
        self.input_error: Exception | None = None
        engine.on_close.append(self.stop)

    def stop(self) -> None:
        self.room.set()
        self.finished.set()

    def emit(self, record: Record) -> None:
        self.on_record(record)
        self.result.outcomes[record.outcome] += 1

    def submit(self, attempt: Attempt, on_done: Callable[[Record, Attempt, bool], None]) -> None:
        if not self.engine.closed:
            self.engine.submit(attempt, on_done)

    def target_done(self, target: _Target) -> None:
        target.pending -= 1
        if target.pending:
            return
        self.result.targets += 1
        if not target.opened:
            self.result.targets_without_open += 1
        self.active -= 1
        if self.active < self.max_active:
            self.room.set()
        if self.fed and self.active == 0:
            self.finished.set()

    def unresolved(self, endpoint: Endpoint, code: str) -> None:
        for number in range(1, self.count + 1):
            self.emit(
                unresolved_record(endpoint.target, endpoint.host, endpoint.port, code, number)
            )
        self.result.targets += 1
        self.result.targets_without_open += 1

    async def feed(self, endpoints: Iterable[Endpoint] | AsyncIterator[Endpoint]) -> None:
        engine = self.engine
        last_host: str | None = None
        addresses: tuple[Address, ...] = ()
        error: str | None = None
        aiter_ = endpoints if isinstance(endpoints, AsyncIterator) else None
        iterator = iter(endpoints) if not isinstance(endpoints, AsyncIterator) else iter(())
        fed = 0
        while True:
            try:
                endpoint = next(iterator) if aiter_ is None else await anext(aiter_)
            except (StopIteration, StopAsyncIteration):
                break
            except Exception as exc:  # bad input mid-stream: stop feeding, finish what runs
                self.input_error = exc
                break
            if endpoint.host != last_host:
                last_host, error = endpoint.host, None
                try:
                    addresses = await self.resolver.resolve(endpoint.host)
                except ResolveError as exc:
                    error = exc.code
            if error is not None:
                self.unresolved(endpoint, error)
                continue
            fed += 1
            if not fed % YIELD_EVERY:
                # Attempts answered inside connect() never fill the queue, so nothing else
                # would make this loop wait: give timers, signals and I/O their turn.
                await asyncio.sleep(0)
            await engine.room()
            while self.active >= self.max_active and not engine.closed:
                self.room.clear()
                await self.room.wait()
            if engine.closed:
                break
            target = _Target(len(addresses))
            self.active += 1
            for address in addresses:
                stream = _Stream(self, target, endpoint, address)
                engine.submit(Attempt(endpoint, address), stream.done)
        self.fed = True
        if self.active == 0:
            self.finished.set()


async def run_check(
    endpoints: Iterable[Endpoint] | AsyncIterator[Endpoint],
    engine: Engine,
    resolver: Resolver,
    on_record: Callable[[Record], None],
    count: int = 1,
    interval: float = 1.0,
) -> CheckResult:
    """Probe every endpoint `count` times; records go to `on_record` as attempts finish."""
    check = _Check(engine, resolver, on_record, count, interval)
    try:
        await check.feed(endpoints)
        await check.finished.wait()
        if engine.failure is not None:
            raise engine.failure
        if check.input_error is not None:
            raise check.input_error
    finally:
        engine.close()
    return check.result
