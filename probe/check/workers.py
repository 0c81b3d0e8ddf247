"""Worker processes for a large `probe check`: one event loop per core, one merged output.

Each worker is forked before any loop exists, runs its share of the plan and writes its
records to pipes of its own (one per output: standard output's form, and `-o FILE`'s
JSON); the parent copies complete lines only from each pipe to the matching output, so
records from different workers never interleave or arrive torn. The record pipes are widened
to PIPE_SIZE and read into one buffer that is kept: a worker's whole batch moves in one read
and one write, so a paced run (a batch every few milliseconds) wakes the parent no more
often than a sweep at full speed, and no read allocates. One more pipe per worker
carries progress counts and, at the end, its `ShareResult`, pickled in length-prefixed
frames: the parent gets typed data, never text to parse, and merges them into the run's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import selectors
import signal
import struct
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import EXIT_PIPE, SinkClosed, SinkError, report
from ..output.writer import OUTPUT_DRAIN, PipeStream, RecordWriter
from .result import ShareResult

# A worker's body: (index, count, its record writers, progress(attempts, open)) → result.
Body = Callable[[int, int, list[RecordWriter], Callable[[int, int], None]], ShareResult]

_FRAME = struct.Struct("!I")
PIPE_SIZE = 1 << 20  # a record pipe's capacity (where the system allows) and one read's most
HOLD_POLL = 0.1  # seconds between two looks at a stop signal while a slow reader is waited for
EXIT_WORKER_FAILED = 70  # EX_SOFTWARE: a worker's own bug, reported on stderr


class _Channel:
    """One worker's control pipe: pickled frames, read as they come."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.counts = (0, 0)
        self.result: ShareResult | None = None

    def feed(self, chunk: bytes | bytearray) -> None:
        self.buffer += chunk
        while len(self.buffer) >= _FRAME.size:
            (size,) = _FRAME.unpack_from(self.buffer)
            if len(self.buffer) < _FRAME.size + size:
                return
            frame = pickle.loads(bytes(self.buffer[_FRAME.size : _FRAME.size + size]))
            del self.buffer[: _FRAME.size + size]
            if isinstance(frame, ShareResult):
                self.result = frame
            else:
                self.counts = frame


def run_workers(
    count: int,
    body: Body,
    outs: Sequence[RecordWriter],
    progress: Callable[[int, int], None] | None = None,
    before_stdout: Callable[[], None] | None = None,
) -> ShareResult:
    """Fork `count` workers running `body`; copy their lines to `outs` (the first is
    standard output); return their results merged into the run's.

    Only a signal this process got stops the run: workers the parent stopped itself (their
    output failed) report SIGTERM, which is not the run's status. An output that failed
    here is the run's error; workers that ended without a result count in `workers_died`
    unless a signal stopped the run."""
    children: dict[int, int] = {}  # pid → index
    lines: dict[int, tuple[int, bytearray]] = {}  # fd → (which output, unfinished line)
    controls: dict[int, _Channel] = {}
    for index in range(count):
        pipes = [os.pipe() for _ in outs]
        for r, _ in pipes:
            with contextlib.suppress(OSError):  # over the user's pipe quota: the default size
                fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        control_r, control_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            for r, _ in pipes:
                os.close(r)
            os.close(control_r)
            for fd in (*lines, *controls):
                os.close(fd)
            _worker(index, count, body, [w for _, w in pipes], control_w)
        for which, (r, w) in enumerate(pipes):
            os.close(w)
            lines[r] = (which, bytearray())
        os.close(control_w)
        children[pid] = index
        controls[control_r] = _Channel()

    parent = ShareResult()  # what this process met: the signal it got, an output's failure

    def forward(signum: int, _: Any) -> None:
        parent.stopped_by = parent.stopped_by or signum
        _signal_all(children, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    selector = selectors.DefaultSelector()
    for fd in (*lines, *controls):
        selector.register(fd, selectors.EVENT_READ)
    buffer = bytearray(PIPE_SIZE)
    held = _Hold(selector, outs, lines, parent, children)
    try:
        while selector.get_map():
            for key, _ in selector.select(held.timeout()):
                fd = int(key.fd)
                if held.woke(fd):
                    continue
                size = os.readv(fd, [buffer])
                if not size:
                    selector.unregister(fd)
                    os.close(fd)
                    continue
                if fd in lines:
                    which, pending = lines[fd]
                    if which == 0 and before_stdout is not None:
                        before_stdout()
                    _copy_lines(pending, buffer, size, outs[which], parent, children)
                    held.check()
                else:
                    controls[fd].feed(buffer[:size])
                    if progress is not None:
                        progress(sum(c.counts[0] for c in controls.values()),
                                 sum(c.counts[1] for c in controls.values()))  # fmt: skip
    finally:
        for pid in children:
            os.waitpid(pid, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    total = ShareResult()
    died = 0
    for channel in controls.values():
        if channel.result is None:
            died += 1
        else:
            total.merge(channel.result)
    total.stopped_by = parent.stopped_by
    if isinstance(parent.error, SinkClosed):
        total.error = parent.error
    total.error = total.error or parent.error
    total.workers_died = 0 if total.stopped_by else died
    return total


class _Hold:
    """Backpressure: while an output's reader has more than BACKLOG_MAX unread, the workers'
    record pipes are not read, so each worker waits in its own write, as one process waits
    for its reader (its attempts in flight are not cut short; new ones do not start).
    Meanwhile the selector watches the output for room, and a signal (SIGINT, SIGTERM)
    ends the hold: the workers stop, their last lines are taken, and the drain limit
    counts what the reader never took."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        outs: Sequence[RecordWriter],
        lines: dict[int, tuple[int, bytearray]],
        parent: ShareResult,
        children: dict[int, int],
    ) -> None:
        self.selector, self.outs, self.lines, self.parent = selector, outs, lines, parent
        self.children = children
        self.held: list[int] = []  # record pipes not read for now
        self.watched = -1  # the output whose room is awaited

    def check(self) -> None:
        """After a write: hold the record pipes when an output is full."""
        if self.held or self.parent.stopped_by or self.parent.error is not None:
            return
        full = next((out for out in self.outs if out.full()), None)
        if full is None:
            return
        self.held = [fd for fd in self.lines if fd in self.selector.get_map()]
        for fd in self.held:
            self.selector.unregister(fd)
        self.watched = full.fileno()
        self.selector.register(self.watched, selectors.EVENT_WRITE)

    def timeout(self) -> float | None:
        """While held, a look at the stop signal every HOLD_POLL."""
        if self.held and (self.parent.stopped_by or self.parent.error is not None):
            self._release()
        return HOLD_POLL if self.held else None

    def woke(self, fd: int) -> bool:
        """The watched output has room: pass on what it takes; read again once it is not
        full. True: nothing to read from `fd` now (the output, or a held pipe)."""
        if fd in self.held:
            return True
        if fd != self.watched or not self.held:
            return False
        try:
            for out in self.outs:
                out.flush()
        except SinkError as exc:
            self.parent.error = exc
            _signal_all(self.children, signal.SIGTERM)  # nobody will read what they find
        if self.parent.error is not None or not any(out.full() for out in self.outs):
            self._release()
        return True

    def _release(self) -> None:
        self.selector.unregister(self.watched)
        self.watched = -1
        for fd in self.held:
            self.selector.register(fd, selectors.EVENT_READ)
        self.held = []


def _copy_lines(
    pending: bytearray,
    data: bytearray,
    size: int,
    out: RecordWriter,
    parent: ShareResult,
    children: dict[int, int],
) -> None:
    """Write the complete lines of what was read (data[:size]); keep its unfinished tail
    for the next read. A worker writes whole lines, so the tail is mostly empty and the
    lines go out as they came, uncopied. A write that fails is the parent's error; the
    workers are stopped."""
    if parent.error is not None:
        return
    cut = data.rfind(b"\n", 0, size) + 1
    view = memoryview(data)
    if not cut:
        pending += view[:size]
        return
    try:
        if pending:
            pending += view[:cut]
            out.write_lines(pending)
        else:
            out.write_lines(view[:cut])
        out.flush()  # the workers already batch; pass their lines on as they come
    except SinkError as exc:
        parent.error = exc
        _signal_all(children, signal.SIGTERM)  # nobody will read what they find
    pending[:] = view[cut:size]


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _send(fd: int, frame: object) -> None:
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_FRAME.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _worker(index: int, count: int, body: Body, data_w: list[int], control_w: int) -> None:
    """Runs in the child; never returns."""
    code = 0
    try:
        # Written only as the parent takes them: while it holds this worker's pipes (its own
        # reader is slow), the engine holds its starts instead of its event loop.
        writers = [RecordWriter(PipeStream(fd, stall=False)) for fd in data_w]

        def progress(attempts: int, opened: int) -> None:
            _send(control_w, (attempts, opened))

        result = body(index, count, writers, progress)
        drain = OUTPUT_DRAIN if result.stopped_by else None
        for writer in writers:
            try:
                writer.close(drain)
            except SinkError as exc:
                result.error = result.error or exc
        _send(control_w, result)
    except BrokenPipeError:
        code = EXIT_PIPE
    except BaseException as exc:  # a worker must never run the parent's code after this
        report(f"worker {index}: {exc}", prefix="")
        code = EXIT_WORKER_FAILED
    finally:
        os._exit(code)
