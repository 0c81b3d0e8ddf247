"""A one-shot run: endpoints → attempts → records, with repeat mode and per-target verdicts.

`run_share(plan, index, count, sinks)` runs one share of a plan in this process and returns
its typed result; one process is the case count = 1, a worker process one of count.
`run_check` is the engine-facing part: endpoints are pulled from their (lazy) iterator only
as the engine has room, and a target's state lives only while its attempts do, so memory
follows concurrency, not the target count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

import msgspec

from .. import loop as event_loop
from ..engine import Attempt, Engine, EngineOptions, native
from ..errors import LocalShortage, ProbeError, SinkClosed, SinkError, TargetError
from ..record import OPEN, Outcome, Record, unresolved_record
from ..resolve import Address, ResolveError, Resolver, literal
from ..targets import Endpoint, expand, iter_targets, shard
from .inputs import expand_async, threaded
from .plan import Plan
from .result import ShareResult, Tally
from .sinks import Sinks

FLUSH_EVERY = 0.2  # seconds: records reach a pipe promptly without a write per record
NATIVE_MAX_TARGETS = 4096  # more addresses than this (a long file) stay on the Python engine


class Excludes(Protocol):
    """Addresses never probed (`targets.Exclusions`)."""

    def contains(self, ip: str) -> bool: ...


YIELD_EVERY = 64  # endpoints fed between two turns of the event loop


@dataclass(slots=True)
class CheckResult:
    outcomes: Counter[str] = field(default_factory=Counter)
    targets: int = 0
    targets_without_open: int = 0
    excluded: int = 0  # endpoints not probed: every address they resolved to is excluded

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
        self.remaining = check.count or -1  # -c 0: until the run is stopped

    def done(self, record: Record, attempt: Attempt, final: bool) -> None:
        check = self.check
        check.emit(record)
        if record.outcome == OPEN:
            self.target.opened = True
        if not final:
            return  # the engine retries this timeout itself
        self.remaining -= 1
        if self.remaining != 0:
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
        exclude: Excludes | None = None,
    ) -> None:
        self.engine = engine
        self.exclude = exclude
        self.resolver = resolver
        self.on_record = on_record
        self.count = count
        self.interval = interval
        self.result = CheckResult()
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
            while self.active >= self.max_active and not engine.closed:
                self.room.clear()
                await self.room.wait()
            if engine.closed:
                break
            target = _Target(len(targets))
            self.active += 1
            for address in targets:
                stream = _Stream(self, target, endpoint, address)
                engine.submit(Attempt(endpoint, address, dns_ms=dns_ms), stream.done)
            dns_ms = 0.0
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
    exclude: Excludes | None = None,
) -> CheckResult:
    """Probe every endpoint `count` times (0: until stopped), skipping excluded addresses;
    records go to `on_record` as attempts finish."""
    check = _Check(engine, resolver, on_record, count, interval, exclude)
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


# -- one share of a plan -------------------------------------------------------------------

Progress = Callable[[int, int], None]  # (attempts, open) so far, every FLUSH_EVERY


def share_options(plan: Plan, index: int, count: int) -> EngineOptions:
    """A share's engine: its part of -C and of --rate, its rate slots interleaved with the
    other shares' (share i of N starts at epoch + i/R, then every N/R)."""
    options = plan.options
    rate = options.rate
    epoch = None
    if rate is not None and plan.rate_epoch is not None:
        epoch = plan.rate_epoch + index / rate
    return replace(
        options,
        concurrency=max(1, -(-options.concurrency // count)),
        rate=None if rate is None else rate / count,
        rate_epoch=epoch,
    )


def in_shard(target: str, shard_spec: tuple[int, int]) -> bool:
    """`--shard I/N`: a stable hash of the endpoint's name, the same on every machine and
    run (unlike hash()), so N prober hosts split one target list without overlap."""
    index, count = shard_spec
    digest = hashlib.blake2b(target.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count == index


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


def run_share(
    plan: Plan, index: int, count: int, sinks: Sinks, progress: Progress | None = None
) -> ShareResult:
    """Run share `index` of `count` of the plan on an event loop of its own; records go to
    `sinks` as attempts finish. Errors and signals end up in the result, never raised."""
    targets = native_targets(plan, count)
    if targets is not None:
        return _native_share(plan, index, count, sinks, targets, progress)
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
        event_loop.run(_share(plan, index, count, sinks, tally, progress))
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


async def _share(
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
        checked = await run_check(
            share_endpoints(plan, index, count, result),
            engine,
            Resolver(plan.family),
            on_record,
            count=plan.count,
            interval=plan.interval,
            exclude=plan.exclude,
        )
        result.targets = checked.targets
        result.targets_without_open = checked.targets_without_open
        result.excluded = checked.excluded
    except asyncio.CancelledError:
        result.stopped_by = result.stopped_by or signal.SIGINT
    except ProbeError as exc:  # a bad line in @FILE or stdin, a sink, a local shortage
        result.error = exc
    finally:
        ticker.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        result.lag_p99_ms = engine.lag.quantile_ms(0.99)
        result.lag_max_ms = engine.lag.max_ms
        result.lag_samples = engine.lag.samples


class _Ticker:
    """Flushes records on a timer and reports progress (attempts, open) to whoever draws it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: Engine,
        sinks: Sinks,
        result: ShareResult,
        progress: Progress | None,
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.sinks = sinks
        self.result = result
        self.progress = progress
        self.handle = loop.call_later(FLUSH_EVERY, self.tick)

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


# -- the native core -------------------------------------------------------------------------


def native_targets(plan: Plan, count: int) -> list[native.NativeTarget] | None:
    """The targets as the native core takes them, when it can serve the whole share exactly
    as the Python engine would: JSON records on stdout and nowhere else (or a sweep's human
    output, rendered here from the core's JSON records), one attempt per endpoint, IP
    literals (addresses, CIDRs, octet ranges) on the command line or in a small regular
    file, and none of the options it does not implement (exclusions, --shard, --open, -o, a
    source port range, --rate). The rest (a line per
    attempt, repeats, names, CSV) runs on the Python engine."""
    output = plan.output
    options = plan.options
    if not native.available() or plan.count != 1 or plan.blocking_input:
        return None
    human_sweep = output.format == "human" and not output.list_mode
    if not (output.format == "json" or human_sweep):
        return None
    if output.json_file is not None or (output.open_only and not human_sweep):
        return None  # (a sweep's human lines are the open ones anyway)
    if plan.exclude is not None or plan.shard is not None or options.source_ports is not None:
        return None
    if options.rate is not None:
        return None  # the engine's pacing makes up a busy machine's stalls; the core's not
    if not native.supports(options):
        return None
    try:
        return native.plan(
            iter_targets(plan.tokens, plan.default_ports), plan.family, NATIVE_MAX_TARGETS
        )
    except TargetError:
        return None  # the Python engine reports it where it meets it


def _native_share(
    plan: Plan,
    index: int,
    count: int,
    sinks: Sinks,
    targets: list[native.NativeTarget],
    progress: Progress | None,
) -> ShareResult:
    """The whole share on the native core: JSON records straight to stdout's descriptor, or,
    for a sweep's human output, through a pipe to a thread that tallies every record and
    renders the open ones (the same lines and per-host summary as the Python engine's)."""
    result = ShareResult()

    def on_signal(signum: int) -> None:
        result.stopped_by = result.stopped_by or signum

    human = plan.output.format == "human"
    reader: _HumanReader | None = None
    started = time.monotonic()
    try:
        sinks.flush()
        if human:
            reader = _HumanReader(sinks, Tally(result, repeat=False, track_ports=True))
        fd = sinks.out.fileno() if reader is None else reader.write_fd
        with native.stop_on_signals(on_signal) as stop_fd:
            done = native.sweep(
                fd, targets, share_options(plan, index, count), (index, count), stop_fd, progress
            )
    except (SinkClosed, BrokenPipeError, OSError) as exc:
        failure = reader.finish() if reader is not None else None
        result.error = failure or _write_failure(exc, sinks.out.name)
        return result
    failure = reader.finish() if reader is not None else None
    result.elapsed = time.monotonic() - started
    if reader is None:
        result.outcomes.update(done.outcomes)
    result.seen = result.targets = done.targets
    result.targets_without_open = done.targets_without_open
    if failure is not None:
        result.error = failure
    elif done.error:
        result.error = LocalShortage(done.error)
    lag = done.lag
    result.lag_p99_ms, result.lag_max_ms = lag.quantile_ms(0.99), lag.max_ms
    result.lag_samples = lag.samples
    return result


def _write_failure(exc: BaseException, name: str) -> SinkError:
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, BrokenPipeError):
        return SinkClosed(f"{name}: reader went away")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return SinkError(f"cannot write records to {name}: {reason}")


class _Sweep(msgspec.Struct):
    """What the tally needs of a record (the JSON's other keys are skipped unread)."""

    host: str
    address: str | None
    port: int
    outcome: str


_light = msgspec.json.Decoder(_Sweep).decode
_whole = msgspec.json.Decoder(dict[str, Any]).decode


def _record(line: bytes) -> Record:
    """A record back from the core's JSON line (open ones only: they get a human line)."""
    fields = _whole(line)
    stamp = fields.pop("timestamp")
    del fields["event"]
    fields["outcome"] = Outcome(fields["outcome"])
    started = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return Record(started=started, **fields)


class _HumanReader:
    """Reads the core's JSON records from a pipe on a thread of its own (the core runs
    without the GIL): every record to the tally, the open ones to the human sinks."""

    def __init__(self, sinks: Sinks, tally: Tally) -> None:
        self.sinks = sinks
        self.tally = tally
        read_fd, self.write_fd = os.pipe()
        self.stream = os.fdopen(read_fd, "rb", buffering=1 << 16)
        self.failure: SinkError | None = None
        self.thread = threading.Thread(target=self._run, name="probe-native-records")
        self.thread.start()

    def _run(self) -> None:
        add, write = self.tally.add_port, self.sinks.record
        try:
            for line in self.stream:
                rec = _light(line)
                add(rec.outcome, rec.host, rec.address, rec.port)
                if rec.outcome == OPEN:
                    write(_record(line))
                    self.sinks.flush()
        except SinkError as exc:
            self.failure = exc
        finally:
            self.stream.close()  # a writer still going gets EPIPE and stops

    def finish(self) -> SinkError | None:
        """After the sweep: end of input for the thread; wait for it."""
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        self.thread.join()
        return self.failure
