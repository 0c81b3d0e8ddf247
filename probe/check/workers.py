"""Worker processes for a large `probe check`: one event loop per core, one merged output.

Each worker is forked before any loop exists, probes its shard of the endpoints and writes
its records to a pipe of its own; the parent copies complete lines only from each pipe to
standard output, so records from different workers never interleave or arrive torn. A
second pipe per worker carries progress counts and, at the end, the worker's result.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..errors import EXIT_PIPE, SinkClosed, SinkError, report
from ..output.writer import RecordWriter

# A worker's body: (index, count, its record stream, progress(attempts, open)) → result.
Body = Callable[[int, int, BinaryIO, Callable[[int, int], None]], dict[str, Any]]


@dataclass
class Merged:
    results: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: int = 0  # the first signal forwarded to the workers
    pipe_closed: bool = False
    sink_error: str | None = None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def run_workers(
    count: int,
    body: Body,
    out: RecordWriter,
    progress: Callable[[int, int], None] | None = None,
) -> Merged:
    children: dict[int, int] = {}  # pid → index
    data: dict[int, bytearray] = {}  # fd → unfinished line
    results: dict[int, bytearray] = {}  # fd → result text
    counts: dict[int, tuple[int, int]] = {}
    for index in range(count):
        data_r, data_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(data_r)
            os.close(result_r)
            for fd in list(data) + list(results):
                os.close(fd)
            _worker(index, count, body, data_w, result_w)
        os.close(data_w)
        os.close(result_w)
        children[pid] = index
        data[data_r] = bytearray()
        results[result_r] = bytearray()
        counts[result_r] = (0, 0)

    merged = Merged()

    def forward(signum: int, _: Any) -> None:
        merged.stopped_by = merged.stopped_by or signum
        _signal_all(children, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    selector = selectors.DefaultSelector()
    for fd in (*data, *results):
        selector.register(fd, selectors.EVENT_READ)
    try:
        while selector.get_map():
            for key, _ in selector.select():
                fd = int(key.fd)
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    selector.unregister(fd)
                    os.close(fd)
                    continue
                if fd in data:
                    _copy_lines(data[fd], chunk, out, merged, children)
                else:
                    results[fd] += chunk
                    counts[fd] = _progress(results[fd], counts[fd])
                    if progress is not None:
                        progress(sum(c[0] for c in counts.values()),
                                 sum(c[1] for c in counts.values()))  # fmt: skip
    finally:
        for pid in children:
            os.waitpid(pid, 0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for text in results.values():
        for line in text.decode().splitlines():
            if line.startswith("R "):
                merged.results.append(json.loads(line[2:]))
    return merged


def _copy_lines(
    pending: bytearray, chunk: bytes, out: RecordWriter, merged: Merged, children: dict[int, int]
) -> None:
    """Write the complete lines of this pipe; keep its unfinished tail for the next read."""
    pending += chunk
    cut = pending.rfind(b"\n") + 1
    if not cut or merged.pipe_closed or merged.sink_error:
        return
    try:
        out.write_lines(bytes(pending[:cut]))
        out.flush()  # the workers already batch; pass their lines on as they come
    except SinkError as exc:
        if isinstance(exc, SinkClosed):
            merged.pipe_closed = True
        else:
            merged.sink_error = str(exc)
        _signal_all(children, signal.SIGTERM)  # nobody will read what they find
    del pending[:cut]


def _signal_all(children: dict[int, int], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _progress(text: bytearray, last: tuple[int, int]) -> tuple[int, int]:
    """The newest `P attempts open` line a worker sent."""
    for line in reversed(bytes(text).split(b"\n")[:-1]):
        if line.startswith(b"P "):
            attempts, opened = line[2:].split()
            return int(attempts), int(opened)
    return last


def _worker(index: int, count: int, body: Body, data_w: int, result_w: int) -> None:
    """Runs in the child; never returns."""
    code = 0
    try:
        stream = os.fdopen(data_w, "wb", buffering=1 << 16)
        result = os.fdopen(result_w, "w", buffering=1)

        def progress(attempts: int, opened: int) -> None:
            result.write(f"P {attempts} {opened}\n")

        outcome = body(index, count, stream, progress)
        result.write("R " + json.dumps(outcome) + "\n")
        result.flush()
    except BrokenPipeError:
        code = EXIT_PIPE
    except BaseException as exc:  # a worker must never run the parent's code after this
        report(f"worker {index}: {exc}", prefix="")
        code = 70
    finally:
        os._exit(code)
