"""The connect engine: many non-blocking connects in flight, one record per attempt.

Why not `asyncio.open_connection`: on failure it throws the socket away, and with it the
local endpoint the kernel assigned. Here each attempt owns its socket: `connect()` is issued
by hand, `getsockname()` is read at once (the kernel has bound the port by then, refused or
not), completion is watched by the `poller` and timeouts by `deadlines` (no task and no
timer per attempt). This module keeps the queue, pacing, the concurrency limit and shortage
handling, and turns each attempt's `Result` into a `Record`.

A shortage on this machine (no descriptor, no ephemeral port, no buffer) is never the
target's fault: the attempt goes back to the head of the queue, concurrency is lowered to
what is in flight, and the engine tries again after a short back-off. No free local port
towards one destination (EADDRNOTAVAIL at connect) is that destination's shortage only: its
attempts wait apart (`held`) while the rest of the queue goes on.
"""

from __future__ import annotations

import asyncio
import errno
import math
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from ..errors import LocalShortage
from ..record import ERROR, OPEN, SELF_CONNECT, TIMEOUT, Record, errno_name, outcome_of
from .attempt import Attempt, Done, Result, Slot
from .deadlines import Deadlines
from .held import Entry, Held, destination
from .lag import LAG_FLOOR, LagMonitor
from .options import RATE_SLACK, EngineOptions
from .poller import make_poller
from .ports import BUSY_AT_CONNECT, PortRange, fit_to_range, shared_range
from .sockets import LINGER_RESET, bind_source, connected, handshake, syn_retransmits

if TYPE_CHECKING:
    from ..stages.result import StageResult

# Our machine ran short, not the target: wait and try the same attempt again.
SHORTAGE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EAGAIN}
_SHORTAGE_AT_CONNECT = SHORTAGE | {errno.EADDRNOTAVAIL, errno.EADDRINUSE}
# connect(): every local port is in a connection to this destination already (its 4-tuples
# are taken); other destinations still get ports.
_NO_PORT_TOWARDS = frozenset({errno.EADDRNOTAVAIL, errno.EADDRINUSE})


# What one try at starting an attempt came to (`Engine._connect`).
_DONE = "done"  # in flight, or finished with a record
_SHORT = "short"  # a local shortage: retry the attempt after a back-off
_HELD = "held"  # no local port towards this destination: the attempt waits apart
_NEXT_PORT = "next port"  # this port of a -s range is busy towards the target: try another
_ABORTED = "aborted"  # the run stopped (the source address left this machine)

_SELF_CONNECT_TRIES = 8
_PORT_SKIPS = 64  # busy ports of a -s range skipped in a row before a short back-off
PUMP_BATCH = 128  # most attempts started in one turn of the event loop


@dataclass(slots=True)
class EngineStats:
    started: int = 0
    finished: int = 0
    late: int = 0  # deadline passed but the socket had its answer: loop was behind
    self_connects: int = 0  # the kernel connected a socket to itself; retried
    lag_throttles: int = 0  # times loop lag made the engine lower its concurrency
    held: int = 0  # connects that found no local port towards their destination


class Engine:
    """Connect attempts with a concurrency bound, pacing, retries and shortage handling."""

    def __init__(self, options: EngineOptions, report_lag: bool = True) -> None:
        """`report_lag=False`: nobody reads `lag` but the lag limit, so it is sampled only
        while connects are in flight (the daemon's engines; a run reports the whole run's)."""
        self.options = options
        self.loop = asyncio.get_running_loop()
        self._ports = _port_range(options)
        self.ceiling = fit_to_range(max(1, options.concurrency), self._ports)
        self.limit = self.ceiling  # lowered by shortages, creeps back up on success
        self.inflight = 0
        self.stats = EngineStats()
        self._queue: deque[tuple[Attempt, Done]] = deque()
        self._pump_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._rate_next = options.rate_epoch if options.rate_epoch is not None else -1.0
        self._lagging = 0  # consecutive lag samples above the limit
        self._pumping = False
        self._waiters: set[asyncio.Future[Record]] = set()  # attempt() callers
        self._backoff = 0.0
        self._stuck_since: float | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.failure: BaseException | None = None
        self.on_close: list[Callable[[], None]] = []  # woken when the engine stops
        # Told of every connect that found no local port towards the attempt's destination
        # (the attempt waits, see `held`): the caller's metric and log, never a record.
        self.on_port_shortage: Callable[[Attempt], None] | None = None
        self._held = Held(self.loop, self._unhold)
        self._closed = False
        self._staging: set[asyncio.Task[StageResult]] = set()  # attempts in their stages
        self._deadlines = Deadlines(self.loop, self._expire, self._after_completions)
        self._poller = make_poller(self.loop, self._ready, self._after_completions)
        # A loop that runs late notices completions late and would inflate their latency:
        # measure the lag, and past the limit hold concurrency down rather than report it.
        self.lag = LagMonitor(
            self.loop,
            self._on_lag if options.lag_limit_ms else None,
            None if report_lag else self._connecting,
        )

    # -- the public side -------------------------------------------------------------------

    def submit(self, attempt: Attempt, on_done: Done) -> None:
        """Queue an attempt; `on_done(record, attempt, final)` runs when it has an outcome."""
        if self._closed:
            raise RuntimeError("engine is closed")
        self._queue.append((attempt, on_done))
        self._idle.clear()
        if len(self._queue) >= self.limit:
            self._room.clear()
        self._pump()

    async def attempt(self, attempt: Attempt) -> Record:
        """One attempt, awaited: its final record (after any retries). Cancelled when the
        engine closes before the attempt has its record (a shutdown abandoned it)."""
        waiter: asyncio.Future[Record] = self.loop.create_future()

        def done(record: Record, _: Attempt, final: bool) -> None:
            if final and not waiter.done():  # the caller may have stopped waiting
                waiter.set_result(record)

        self.submit(attempt, done)
        self._waiters.add(waiter)
        try:
            return await waiter
        finally:
            self._waiters.discard(waiter)

    async def room(self) -> None:
        """Wait until the queue is short enough to take more: producers' back-pressure."""
        while not self._room.is_set():
            await self._room.wait()
        self._raise_failure()

    async def drain(self) -> None:
        """Wait until nothing is queued or in flight."""
        while not self._idle.is_set():
            await self._idle.wait()
        self._raise_failure()

    def abort(self, exc: BaseException) -> None:
        """Stop everything: a sink failed or the run was interrupted."""
        if self.failure is None:
            self.failure = exc
        self.close()

    def close(self) -> None:
        """Drop queued attempts and close in-flight sockets without records."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._held.clear()
        for slot in self._deadlines.close():
            slot.done = True
            self._poller.unwatch(slot)
            slot.sock.close()
            if self._ports is not None and slot.local is not None:
                self._ports.release(slot.local[1])  # the range may be shared: give it back
        for task in self._staging:
            task.cancel()  # closes its socket; no record, as for the connects above
        self._staging.clear()
        self.inflight = 0
        if self._pump_handle is not None:
            self._pump_handle.cancel()
        self.lag.stop()
        self._poller.close()
        self._room.set()
        self._idle.set()
        for waiter in self._waiters:
            waiter.cancel()
        for wake in self.on_close:
            wake()

    @property
    def held(self) -> int:
        """Attempts waiting for a local port towards their destination."""
        return self._held.count

    def set_ceiling(self, concurrency: int) -> None:
        """A new concurrency bound (config reload); a lower one takes effect as attempts end."""
        self.ceiling = fit_to_range(max(1, concurrency), self._ports)
        self.limit = min(self.limit, self.ceiling)  # grows back to a higher one as attempts end
        self._pump()

    def reconfigure(self, options: EngineOptions) -> None:
        """New options (a config reload), instead of outside code writing them: the
        concurrency bound as `set_ceiling` takes it; timeout, source, rate, retries and
        closing apply to attempts started from now on. The lag monitor keeps what it was
        started with (on or off)."""
        old = self.options
        self.options = options
        if (options.source, options.source_ports) != (old.source, old.source_ports):
            self._ports = _port_range(options)  # ports in flight are released into the old one
        self.set_ceiling(options.concurrency)

    def drop_queued(self) -> None:
        """Forget attempts not yet started (shutdown): only those in flight are finished."""
        self._queue.clear()
        self._held.clear()
        self._room.set()
        if not self.inflight:
            self._idle.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    # -- starting attempts -----------------------------------------------------------------

    def _pump(self) -> None:
        """Start queued attempts while slots, pacing and back-off allow."""
        self._pump_handle = None
        if self._pumping:  # a completion inside _start submitted more: the loop below runs on
            return
        self._pumping = True
        try:
            self._pump_queue()
        finally:
            self._pumping = False

    def _pump_queue(self) -> None:
        queue = self._queue
        rate = self.options.rate
        budget = PUMP_BATCH
        held = self._held
        # Attempts in their stages (a TLS handshake, an expect) count against the ceiling
        # (each holds a socket) but not against the lag-lowered limit: a stalled handshake
        # waits for its deadline without using the loop, and must not hold connects back.
        staging = self._staging
        while (
            queue
            and self.inflight - len(staging) < self.limit
            and self.inflight < self.ceiling
            and not self._closed
        ):
            budget -= 1
            if budget < 0:
                # Yield a turn: other completions and timers must not wait for a long batch,
                # or their latencies would carry our lag.
                self._schedule_pump(self.loop.time())
                break
            if held.count and (key := destination(queue[0][0])) in held:
                held.hold(key, queue.popleft())  # joins its destination's wait, no connect
                continue
            if rate:
                now = self.loop.time()
                if self._rate_next > now:
                    self._schedule_pump(self._rate_next)
                    break
                # Even pacing on a fixed cadence: starts the timer made late by less than a
                # slot (or RATE_SLACK) keep the cadence, since timers here tick in whole
                # milliseconds and a loaded machine wakes us late; after an idle spell or a
                # longer stall the missed slots are skipped (no burst is made up), on the
                # same grid, so workers sharing an epoch stay interleaved.
                step = 1.0 / rate
                if self._rate_next < 0:
                    self._rate_next = now
                behind = now - max(step, RATE_SLACK) - self._rate_next
                if behind > 0:
                    self._rate_next += math.ceil(behind / step) * step
                self._rate_next += step
            entry = queue.popleft()
            started = self._start(*entry)
            if started is _SHORT:
                queue.appendleft(entry)
                break
            if started is _HELD:
                self._hold(entry)
        if len(queue) < self.limit:
            self._room.set()
        if not queue and not self.inflight and not held.count:
            self._idle.set()

    def _schedule_pump(self, when: float) -> None:
        if self._pump_handle is None and not self._closed:
            self._pump_handle = self.loop.call_at(when, self._pump)

    def _start(self, attempt: Attempt, on_done: Done) -> str:
        """Issue one connect: `_DONE`, `_SHORT` (a local shortage: the attempt is to be
        retried) or `_HELD` (no local port towards its destination). A port of a -s range
        whose 4-tuple is taken (TIME_WAIT after a graceful close) is our port's state, not
        the target's: the next port is tried, a bounded number of times, before the
        destination counts as out of ports."""
        ports = self._ports
        skips = 0 if ports is None else min(_PORT_SKIPS, ports.size - 1)
        while True:
            step = self._connect(attempt, on_done)
            if step is not _NEXT_PORT:
                break
            if skips == 0 or ports is None:
                step = _HELD
                break
            skips -= 1
            ports.skipped += 1
        if step is _SHORT:
            self._shortage()
        return step

    def _connect(self, attempt: Attempt, on_done: Done) -> str:
        """One try: socket, bind, connect(). `_DONE` (in flight, finished or the run
        aborted), `_SHORT`, `_HELD` or `_NEXT_PORT`. A socket and port not handed to a slot in
        flight are closed and released in one place, the `finally`, whatever the branch;
        a record made inside connect() is delivered only after that."""
        address = attempt.address
        try:
            sock = socket.socket(address.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            if exc.errno in SHORTAGE:
                return _SHORT
            self._finish_now(attempt, on_done, Result(exc.errno or 0, None, 0, time.time()))
            return _DONE
        bound: int | None = None  # our port from -s ADDR:LO-HI, held until the attempt ends
        handed = False  # the slot owns the socket and the port from here on
        finished: Result | None = None  # an answer that came inside connect()
        try:
            step, bound = self._bind(sock)
            if step is not _DONE:
                return step
            slot = Slot(attempt, on_done, sock)
            slot.wall = time.time()
            slot.t0 = time.perf_counter_ns()
            err = sock.connect_ex(address.sockaddr(attempt.endpoint.port))
            if err != errno.EINPROGRESS and err != 0:
                t1 = time.perf_counter_ns()
                local = sock.getsockname()
                if err in _SHORTAGE_AT_CONNECT:  # no free port, even if none of ours holds one
                    if bound is not None and err in BUSY_AT_CONNECT:
                        return _NEXT_PORT
                    return _HELD if err in _NO_PORT_TOWARDS else _SHORT
                # The answer came inside connect(): no SYN was ever sent again.
                finished = Result(err, local, t1 - slot.t0, slot.wall, None, 0)
                return _DONE
            slot.local = sock.getsockname()
            # Often the answer is already in: on loopback the whole handshake (or the reset)
            # happens inside connect(). Taking it now costs two cheap syscalls and spares
            # the poller, and the latency is not inflated by a turn of the event loop.
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            answered = bool(err) or connected(sock)
            handed = True
        except OSError as exc:
            if exc.errno in _SHORTAGE_AT_CONNECT:
                return _SHORT
            finished = Result(exc.errno or 0, None, 0, time.time())
            return _DONE
        finally:
            if not handed:
                sock.close()
                if bound is not None and self._ports is not None:
                    self._ports.release(bound)
            if finished is not None:
                self._finish_now(attempt, on_done, finished)
        self._backoff = 0.0
        self._stuck_since = None
        if self._held.backing_off:
            self._held.got_port(destination(attempt))
        self.inflight += 1
        self.stats.started += 1
        self._idle.clear()
        if answered:
            self._complete(slot, err, at_connect=True)
        else:
            self._deadlines.add(
                slot, attempt.timeout or self.options.timeout, 2 * self.ceiling + 64
            )
            self._poller.watch(slot)
            if self.lag.idle:
                self._lagging = 0  # the samples before the pause are no run of lateness
                self.lag.wake()
        return _DONE

    def _bind(self, sock: socket.socket) -> tuple[str, int | None]:
        """Bind before connect() when a source is set: (`_DONE`, the port of a -s range
        taken, or None), or `_SHORT` when every port is busy for now. A source address
        that left this machine aborts the run (`_ABORTED`)."""
        ports = self._ports
        if ports is not None:
            try:
                bound = ports.bind(sock)
            except OSError as exc:
                self.abort(LocalShortage(f"source address {ports.address}: {exc.strerror}"))
                return _ABORTED, None
            if bound is None:  # every port of the range is held or busy right now
                return _SHORT, None
            return _DONE, bound
        source = self.options.source
        if source is not None:
            try:
                bind_source(sock, source)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # the address left this machine
                    self.abort(LocalShortage(f"source address {source[0]}: {exc.strerror}"))
                    return _ABORTED, None
                return _SHORT, None  # the fixed port is busy for now (TIME_WAIT, another socket)
        return _DONE, None

    def _connecting(self) -> bool:
        return self.inflight > len(self._staging)  # stages wait without the loop

    def _on_lag(self, lag_ms: float) -> None:
        """Multiplicative decrease on sustained lag; completions add one back at a time.
        One late sample is the machine (another process had the core), not our loop; and
        the limit never drops below what --rate needs in flight to keep its cadence."""
        limit = self.options.lag_limit_ms
        if limit is None or lag_ms <= limit:
            self._lagging = 0
            return
        self._lagging += 1
        floor = LAG_FLOOR
        rate = self.options.rate
        if rate:
            floor = max(floor, min(self.ceiling, math.ceil(rate * self.options.timeout)))
        connecting = self.inflight - len(self._staging)  # stages wait without the loop
        if self._lagging < 2 or connecting <= floor:
            return
        lowered = max(floor, int(connecting * 0.75))
        if lowered < self.limit:
            self.limit = lowered
            self.stats.lag_throttles += 1

    def _shortage(self) -> None:
        """No descriptor or port here: shrink to what is in flight and retry after a pause."""
        self.limit = max(1, self.inflight)
        now = self.loop.time()
        if self._given_up(now):
            return
        self._backoff = min(1.0, max(0.005, self._backoff * 2))
        self._schedule_pump(now + self._backoff)

    def _hold(self, entry: Entry) -> None:
        """No local port towards this attempt's destination: it waits apart, with the
        destination's later attempts, and the queue goes on (`held`). The concurrency
        limit stays: other destinations still get ports."""
        attempt = entry[0]
        self.stats.held += 1
        if self._given_up(self.loop.time()):
            return
        self._held.hold(destination(attempt), entry)
        if self.on_port_shortage is not None:
            try:
                self.on_port_shortage(attempt)
            except BaseException as exc:  # its sink (the log) failed: stop, as a record's does
                self.abort(exc)

    def _given_up(self, now: float) -> bool:
        """Stuck with nothing in flight for longer than `shortage_giveup`: abort the run
        (a daemon waits however long: it has no give-up)."""
        if self.inflight:
            return False
        if self._stuck_since is None:
            self._stuck_since = now
        giveup = self.options.shortage_giveup
        if giveup is not None and now - self._stuck_since > giveup:
            self.abort(LocalShortage("no free file descriptor or local port on this machine"))
            return True
        return False

    def _unhold(self, entries: list[Entry]) -> None:
        """A destination's back-off ended: its attempts go back to the head of the queue."""
        if self._closed:
            return
        self._queue.extendleft(reversed(entries))
        self._pump()

    # -- completion --------------------------------------------------------------------------

    def _ready(self, slot: Slot) -> None:
        """The poller saw the socket's answer."""
        self._complete(slot, slot.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _expire(self, slot: Slot) -> None:
        """A deadline passed. Ask the socket before calling it a timeout: if the loop was
        behind, the answer may already be there, and a refused port is not a timeout."""
        self._poller.unwatch(slot)
        sock = slot.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            try:
                sock.getpeername()
            except OSError:
                self._complete(slot, errno.ETIMEDOUT, timed_out=True)
                return
        self.stats.late += 1
        self._complete(slot, err)

    def _complete(
        self, slot: Slot, err: int, timed_out: bool = False, at_connect: bool = False
    ) -> None:
        """The attempt has its answer (`at_connect`: already inside connect()): read what
        the kernel knows of the handshake, close, deliver."""
        t1 = time.perf_counter_ns()
        slot.done = True
        self.inflight -= 1
        self.stats.finished += 1
        sock = slot.sock
        attempt = slot.attempt
        local = slot.local
        result = Result(err, local, t1 - slot.t0, slot.wall, None, 0 if at_connect else None)
        if self._ports is not None and local is not None:
            self._ports.release(local[1])
        if err == 0 and not timed_out:
            port, ip = attempt.endpoint.port, attempt.address.ip
            if local is not None and local[1] == port and local[0] == ip:
                self._self_connected(slot, result)
                return
            result.rtt_ms, result.syn_retransmits = handshake(sock)
            if attempt.stages is not None:
                self._run_stages(slot, result)
                return
            self._post_connect(slot, result)
        else:
            if not at_connect:  # a reset after a resent SYN, or SYNs that went unanswered
                result.syn_retransmits = syn_retransmits(sock)
            result.timed_out = timed_out
            sock.close()
        if self.limit < self.ceiling:
            self.limit += 1  # additive recovery after a shortage
        self._deliver(attempt, slot.on_done, result)

    def _post_connect(self, slot: Slot, result: Result) -> None:
        """Where a post-connect stage would go (a banner read, a TLS handshake): here the
        socket is connected and its handshake figures are in `result`. Such a stage would
        take `slot.sock` over instead of closing it, keep the slot in flight (its deadline
        in `self._deadlines` still running) and call `_deliver` when it has its answer.
        Today there is none: close at once, with a reset unless `graceful_close`."""
        sock = slot.sock
        if not self.options.graceful_close:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()

    def _run_stages(self, slot: Slot, result: Result) -> None:
        """The attempt's stages (TLS, send/expect) take the connected socket over, as a task
        on this loop; the attempt stays in flight (it counts against the concurrency bound)
        until they end, at the attempt's deadline at the latest."""
        from ..stages.runner import run_stages

        attempt = slot.attempt
        assert attempt.stages is not None
        self.inflight += 1
        timeout = attempt.timeout or self.options.timeout
        deadline = self.loop.time() + max(0.0, timeout - result.elapsed_ns / 1e9)
        reset = not self.options.graceful_close
        work = run_stages(slot.sock, attempt.stages, attempt.endpoint.host, deadline, reset)
        task = self.loop.create_task(work)
        self._staging.add(task)
        task.add_done_callback(partial(self._staged, slot, result))

    def _staged(self, slot: Slot, result: Result, task: asyncio.Task[StageResult]) -> None:
        if self._closed or task.cancelled():
            return
        self._staging.discard(task)
        self.inflight -= 1
        failure = task.exception()
        if failure is not None:  # a fault of ours, not the peer's: stop as a sink fault does
            self.abort(failure)
            return
        result.stages = task.result()
        self._deliver(slot.attempt, slot.on_done, result)
        self._after_completions()

    def _self_connected(self, slot: Slot, result: Result) -> None:
        """TCP simultaneous open with itself: the kernel picked the destination port as the
        ephemeral port and the socket connected to itself. Nothing listens there; that is
        our artifact, not the target's answer, so try again with another port (unless -s
        fixed the port: then every try would be the same, so say so)."""
        sock = slot.sock
        attempt = slot.attempt
        result.syn_retransmits = syn_retransmits(sock)  # the record, if one is written
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        sock.close()
        self.stats.self_connects += 1
        source = self.options.source
        if not (source and source[1]) and attempt.self_connects < _SELF_CONNECT_TRIES:
            attempt.self_connects += 1
            self._queue.appendleft((attempt, slot.on_done))
            return
        result.err = SELF_CONNECT
        self._deliver(attempt, slot.on_done, result)

    def _after_completions(self) -> None:
        if self._pump_handle is None:
            self._pump()

    def _finish_now(self, attempt: Attempt, on_done: Done, result: Result) -> None:
        """An attempt that ended inside connect() itself (no route, bad address)."""
        self.stats.started += 1
        self.stats.finished += 1
        self._deliver(attempt, on_done, result)

    def _deliver(self, attempt: Attempt, on_done: Done, result: Result) -> None:
        timed_out = result.timed_out
        err = result.err
        outcome = TIMEOUT if timed_out else outcome_of(err)
        stages = result.stages
        failed = None if stages is None else stages.error  # a stage's error name
        if failed is not None:
            outcome = ERROR
        retry = outcome == TIMEOUT and attempt.retry < self.options.retries and not self._closed
        endpoint = attempt.endpoint
        address = attempt.address
        local = result.local
        record = Record(
            started=result.wall,
            target=endpoint.target,
            host=endpoint.host,
            port=endpoint.port,
            address=address.ip,
            family=address.family_name,
            local_address=None if local is None else local[0],
            local_port=None if local is None else local[1],
            outcome=outcome,
            error=failed
            or (None if outcome == OPEN else ("ETIMEDOUT" if timed_out else errno_name(err))),
            latency_ms=result.elapsed_ns / 1e6,
            rtt_ms=result.rtt_ms,
            syn_retransmits=result.syn_retransmits,
            dns_ms=attempt.dns_ms,
            attempt=attempt.number,
            stages=stages,
        )
        try:
            on_done(record, attempt, not retry)
        except BaseException as exc:  # a sink failed: stop the run, keep what was written
            self.abort(exc)
            return
        if retry:
            again = Attempt(
                endpoint,
                address,
                attempt.number + 1,
                attempt.timeout,
                attempt.retry + 1,
                attempt.dns_ms,
                stages=attempt.stages,
            )
            self._queue.appendleft((again, on_done))
            self._idle.clear()


def _port_range(options: EngineOptions) -> PortRange | None:
    if options.source is None or options.source_ports is None:
        return None
    return shared_range(options.source[0], *options.source_ports)
