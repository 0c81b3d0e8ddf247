"""A share of a plan on the Python engine (asyncio, uvloop): endpoints → attempts → records,
with repeat mode and per-target verdicts.

`run_on_python` runs the share on an event loop of its own (`_on_loop`: signals, the
engine, the flush timer); `probe_endpoints` is the engine-facing part: endpoints are pulled
from their (lazy) iterator only as the engine has room, and a target's state lives only
while its attempts do, so memory follows concurrency, not the target count.
`probe.check.run` imports this module only when a share does not run on the native core,
so that a one-shot check of literal endpoints starts without asyncio.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .. import loop as event_loop
from ..engine import Attempt, Engine
from ..errors import ProbeError, SinkError
from ..record import OPEN, Record, unresolved_record
from ..resolve import Address, ResolveError, Resolver, literal
from ..syntax import Endpoint, Exclusions, expand, iter_targets, shard
from .inputs import expand_async, threaded
from .plan import Plan
from .result import ShareResult, Tally
from .share import Progress, in_shard, share_options
from .sinks import Sinks

FLUSH_EVERY = 0.2  # seconds: records reach a pipe promptly without a write per record

if TYPE_CHECKING:
    from ..stages.spec import StageSpec


YIELD_EVERY = 64  # endpoints fed between two turns of the event loop
ROOM_POLL = 0.01  # seconds between two pushes to a slow reader while starts wait for it


class Backlog(Protocol):
    """Where records wait for a slow reader: `full()` while no attempt should start."""

    def full(self) -> bool: ...
    def flush(self) -> None: ...


class _Target:
    """One endpoint while any of its attempt streams (one per address) is unfinished."""

    __slots__ = ("opened", "pending")

    def __init__(self, pending: int) -> None:
        self.pending = pending
        self.opened = False


class _Stream:
    """The attempts to one address of one endpoint: `count` of them, `interval` apart."""

    __slots__ = ("address", "endpoint", "probing", "remaining", "target")

    def __init__(
        self, probing: _Probing, target: _Target, endpoint: Endpoint, address: Address
    ) -> None:
        self.probing = probing
        self.target = target
        self.endpoint = endpoint
        self.address = address
        self.remaining = probing.count or -1  # -c 0: until the run is stopped

    def done(self, record: Record, attempt: Attempt, final: bool) -> None:
        probing = self.probing
        probing.emit(record)
        if record.outcome == OPEN:
            self.target.opened = True
        if not final:
            return  # the engine retries this timeout itself
        self.remaining -= 1
        if self.remaining != 0:
            nxt = Attempt(self.endpoint, self.address, record.attempt + 1, stages=probing.stages)
            started = time.time() - record.started
            delay = max(0.0, probing.interval - started)
            probing.engine.loop.call_later(delay, probing.submit, nxt, self.done)
        else:
            probing.target_done(self.target)


class _Probing:
    """One `probe_endpoints` call: the targets in flight, the room for more, the end."""

    def __init__(
        self,
        engine: Engine,
        resolver: Resolver,
        on_record: Callable[[Record], None],
        result: ShareResult,
        count: int,
        interval: float,
        exclude: Exclusions | None = None,
        stages: StageSpec | None = None,
        backlog: Backlog | None = None,
    ) -> None:
        # Its collaborators, then what it repeats and skips, and does after each connect.
        self.engine, self.resolver, self.on_record = engine, resolver, on_record
        self.count, self.interval, self.exclude = count, interval, exclude
        self.stages = stages
        self.backlog = backlog
        self.held: list[tuple[Attempt, Callable[[Record, Attempt, bool], None]]] = []
        self.releasing: asyncio.Task[None] | None = None
        self.result = result  # targets and exclusions here; the tally counts the records
        self.active = 0
        # Repeat mode keeps targets alive across intervals; bound them like attempts.
        self.max_active = engine.ceiling if count != 1 else 1 << 62
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

    def submit(self, attempt: Attempt, on_done: Callable[[Record, Attempt, bool], None]) -> None:
        if self.engine.closed:
            return
        if self.backlog is not None and self.backlog.full():  # a repeat waits like a start
            self.held.append((attempt, on_done))
            if self.releasing is None:
                self.releasing = asyncio.ensure_future(self._release())
            return
        self.engine.submit(attempt, on_done)

    async def output_room(self) -> None:
        """Wait while the reader of the records has too much unread: attempts in flight
        finish and are written; the next one starts when the reader has taken enough."""
        backlog = self.backlog
        while backlog is not None and backlog.full() and not self.engine.closed:
            await asyncio.sleep(ROOM_POLL)
            backlog.flush()

    async def _release(self) -> None:
        try:
            await self.output_room()
        except ProbeError as exc:  # the output failed: the run ends with its error
            self.engine.abort(exc)
        finally:
            self.releasing = None
        held, self.held = self.held, []
        for attempt, on_done in held:
            self.submit(attempt, on_done)

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

    def unresolved(self, endpoint: Endpoint, code: str, dns_ms: float = 0.0) -> None:
        if not self.count:  # -c 0: one record per interval until the run is stopped
            self.active += 1
            self._unresolved_again(endpoint, code, 1, dns_ms)
            return
        for number in range(1, self.count + 1):
            record = unresolved_record(endpoint.target, endpoint.host, endpoint.port, code, number)
            record.dns_ms, dns_ms = dns_ms, 0.0  # the failed lookup's cost, on its first record
            self.emit(record)
        self.result.targets += 1
        self.result.targets_without_open += 1

    def _unresolved_again(
        self, endpoint: Endpoint, code: str, number: int, dns_ms: float = 0.0
    ) -> None:
        if self.engine.closed:
            return
        record = unresolved_record(endpoint.target, endpoint.host, endpoint.port, code, number)
        record.dns_ms = dns_ms  # the failed lookup's cost, on its first record
        self.emit(record)
        self.engine.loop.call_later(
            self.interval, self._unresolved_again, endpoint, code, number + 1
        )

    async def feed(self, endpoints: Iterable[Endpoint] | AsyncIterator[Endpoint]) -> None:
        engine = self.engine
        last_host: str | None = None
        addresses: tuple[Address, ...] = ()
        error: str | None = None
        dns_ms = 0.0  # the last lookup's cost, carried by the first attempts it serves
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
                began = time.perf_counter()
                try:
                    addresses = await self.resolver.resolve(endpoint.host)
                except ResolveError as exc:
                    error = exc.code
                # A literal needs no lookup; a name answered from the cache costs ~0.
                lit = literal(endpoint.host) is not None
                dns_ms = 0.0 if lit else (time.perf_counter() - began) * 1000.0
            if error is not None:
                self.unresolved(endpoint, error, dns_ms)
                dns_ms = 0.0
                continue
            targets = addresses
            if self.exclude is not None:
                # After resolution too: a name that resolves to an excluded address is skipped.
                targets = tuple(a for a in addresses if not self.exclude.contains(a.ip))
                if not targets:
                    self.result.excluded += 1
                    continue
            fed += 1
            if not fed % YIELD_EVERY:
                # Attempts answered inside connect() never fill the queue, so nothing else
                # would make this loop wait: give timers, signals and I/O their turn.
                await asyncio.sleep(0)
            await engine.room()
            await self.output_room()
            while self.active >= self.max_active and not engine.closed:
                self.room.clear()
                await self.room.wait()
            if engine.closed:
                break
            target = _Target(len(targets))
            self.active += 1
            for address in targets:
                stream = _Stream(self, target, endpoint, address)
                attempt = Attempt(endpoint, address, dns_ms=dns_ms, stages=self.stages)
                engine.submit(attempt, stream.done)
            dns_ms = 0.0
        self.fed = True
        if self.active == 0:
            self.finished.set()


async def probe_endpoints(
    endpoints: Iterable[Endpoint] | AsyncIterator[Endpoint],
    engine: Engine,
    resolver: Resolver,
    on_record: Callable[[Record], None],
    result: ShareResult,
    count: int = 1,
    interval: float = 1.0,
    exclude: Exclusions | None = None,
    stages: StageSpec | None = None,
    backlog: Backlog | None = None,
) -> None:
    """Probe every endpoint `count` times (0: until stopped), skipping excluded addresses;
    records go to `on_record` as attempts finish, targets and exclusions into `result`.
    While `backlog` is full, no attempt starts."""
    probing = _Probing(
        engine, resolver, on_record, result, count, interval, exclude, stages, backlog
    )
    try:
        await probing.feed(endpoints)
        await probing.finished.wait()
        if engine.failure is not None:
            raise engine.failure
        if probing.input_error is not None:
            raise probing.input_error
    finally:
        engine.close()


# -- one share of a plan on the engine ---------------------------------------------------------


def share_endpoints(
    plan: Plan, index: int, count: int, result: ShareResult
) -> Iterator[Endpoint] | AsyncIterator[Endpoint]:
    """This share's endpoints, counted into `result.seen` before --shard keeps its part."""
    targets = iter_targets(plan.tokens, plan.default_ports)
    if plan.blocking_input:  # one process only (the plan says so)
        return _counted_async(expand_async(threaded(targets)), plan, result)
    endpoints = expand(targets) if count == 1 else shard(targets, index, count)
    return _counted(endpoints, plan, result)


def _counted(endpoints: Iterator[Endpoint], plan: Plan, result: ShareResult) -> Iterator[Endpoint]:
    spec = plan.shard
    for endpoint in endpoints:
        result.seen += 1
        if spec is None or in_shard(endpoint.target, spec):
            yield endpoint


async def _counted_async(
    endpoints: AsyncIterator[Endpoint], plan: Plan, result: ShareResult
) -> AsyncIterator[Endpoint]:
    spec = plan.shard
    async for endpoint in endpoints:
        result.seen += 1
        if spec is None or in_shard(endpoint.target, spec):
            yield endpoint


def run_on_python(
    plan: Plan, index: int, count: int, sinks: Sinks, progress: Progress | None = None
) -> ShareResult:
    """Share `index` of `count` on the Python engine, on an event loop of its own; errors
    and signals end up in the result, never raised."""
    result = ShareResult()
    output = plan.output
    tally = Tally(
        result,
        repeat=plan.repeat and output.list_mode,
        track_ports=not output.list_mode,
        histogram=output.histogram,
    )
    started = time.monotonic()
    try:
        event_loop.run(_on_loop(plan, index, count, sinks, tally, progress))
    except KeyboardInterrupt:  # a SIGINT before the loop took the signal over
        result.stopped_by = result.stopped_by or signal.SIGINT
    except ProbeError as exc:
        result.error = result.error or exc
    result.elapsed = time.monotonic() - started
    try:
        sinks.flush()
    except SinkError as exc:
        result.error = result.error or exc
    return result


async def _on_loop(
    plan: Plan,
    index: int,
    count: int,
    sinks: Sinks,
    tally: Tally,
    progress: Progress | None,
) -> None:
    result = tally.result
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop(signum: int) -> None:
        """SIGINT or SIGTERM: stop, keep every finished record whole."""
        result.stopped_by = result.stopped_by or signum
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    engine = Engine(share_options(plan, index, count))
    add, write = tally.add, sinks.record

    def on_record(record: Record) -> None:
        add(record)
        write(record)

    ticker = _Ticker(loop, engine, sinks, result, progress)
    try:
        await probe_endpoints(
            share_endpoints(plan, index, count, result),
            engine,
            Resolver(plan.family),
            on_record,
            result,
            count=plan.count,
            interval=plan.interval,
            exclude=plan.exclude,
            stages=plan.stages,
            backlog=sinks,
        )
    except asyncio.CancelledError:
        result.stopped_by = result.stopped_by or signal.SIGINT
    except ProbeError as exc:  # a bad line in @FILE or stdin, a sink, a local shortage
        result.error = exc
    finally:
        ticker.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        result.note_lag(engine.lag)


@dataclass(eq=False)
class _Ticker:
    """Flushes records on a timer and reports progress (attempts, open) to whoever draws it."""

    loop: asyncio.AbstractEventLoop
    engine: Engine
    sinks: Sinks
    result: ShareResult
    progress: Progress | None
    handle: asyncio.TimerHandle = field(init=False)

    def __post_init__(self) -> None:
        self.handle = self.loop.call_later(FLUSH_EVERY, self.tick)

    def tick(self) -> None:
        try:
            self.sinks.flush()
        except SinkError as exc:
            self.engine.abort(exc)
            return
        if self.progress is not None:
            outcomes = self.result.outcomes
            self.progress(sum(outcomes.values()), outcomes[OPEN])
        self.handle = self.loop.call_later(FLUSH_EVERY, self.tick)

    def stop(self) -> None:
        self.handle.cancel()
