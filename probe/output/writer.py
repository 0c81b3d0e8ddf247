"""The byte sink at the end of the record path: a buffered writer of whole lines.

structlog's own BytesLogger flushes after every line, one syscall per record, which a sweep
of 65,535 attempts cannot afford. `RecordWriter` flushes on a tick and at the end instead,
and turns write failures into `SinkError` so a full disk stops the run loudly instead of
losing records.

A pipe, FIFO or socket goes through `PipeStream`: a reader that stops reading must never
hold the process (a blocked write() stops the event loop, and with it the signal that
would end the run), and must never get half a record. A daemon must keep probing, so past
BACKLOG_MAX its writes fail; a check instead waits for a slow reader (`RecordWriter.full`
tells it when to stop starting attempts) and loses nothing.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import signal
import stat
import threading
import time
from typing import Any, Protocol

from ..errors import SinkClosed, SinkError

PIPE_CHUNK = select.PIPE_BUF  # a pipe takes a write of at most this many bytes whole or not at all
BACKLOG_MAX = 16 << 20  # bytes a reader may leave unread: a daemon stops, a check waits
OUTPUT_DRAIN = 2.0  # seconds a stopping run still waits for a reader that does not read
_POLL_SLICE = 0.1  # seconds between two looks at a stop signal while waiting for a reader


Lines = bytes | bytearray | memoryview  # rendered lines, as they come (a worker's read: a view)


class Stream(Protocol):
    def write(self, data: Lines, /) -> Any: ...
    def flush(self) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class Stalled(OSError):
    """The reader has left more than BACKLOG_MAX unread, or did not read before the
    drain limit: `records` lines were never written."""

    def __init__(self, records: int) -> None:
        super().__init__(errno.EAGAIN, f"its reader stopped reading, {records} records not written")
        self.records = records


class PipeStream:
    """A pipe, FIFO or socket, written only when poll() says it takes a chunk at once, in
    whole lines of at most PIPE_BUF bytes (a pipe writes those whole or not at all): a
    reader that stops reading never blocks the process and never gets half a record (a
    line longer than PIPE_BUF goes in pieces of that size). What it has not taken waits
    here, up to BACKLOG_MAX when `stall` (past that, or when a stopping run's drain limit
    passes, `Stalled` counts the records that were never written); without `stall` the
    writer is to wait while `full()`."""

    def __init__(self, fd: int, stall: bool = True) -> None:
        self._fd = fd
        self._stall = stall
        self._buf = bytearray()
        self._poll = select.poll()
        self._poll.register(fd, select.POLLOUT)

    def write(self, data: Lines) -> int:
        self._buf += data
        if len(self._buf) > PIPE_CHUNK:
            self._push(0)
            if self._stall and len(self._buf) > BACKLOG_MAX:
                raise Stalled(self.unwritten())
        return len(data)

    def full(self) -> bool:
        """The reader has left more than BACKLOG_MAX unread."""
        return len(self._buf) > BACKLOG_MAX

    def flush(self) -> None:
        """What the reader takes now, without waiting for it."""
        self._push(0)

    def wait(self, seconds: float) -> None:
        """What the reader takes within `seconds` (a writer held while `full()`)."""
        self._push(seconds)

    def unwritten(self) -> int:
        return self._buf.count(b"\n")

    def drain(self, limit: float | None) -> None:
        """Wait for the reader to take everything: for at most `limit` seconds, or while it
        takes (None) until a SIGINT or SIGTERM leaves it OUTPUT_DRAIN more. `Stalled`
        when records are left."""
        deadline = None if limit is None else time.monotonic() + limit
        stop = _StopSignals() if limit is None else None
        try:
            while self._buf:
                if stop is not None and stop.seen and deadline is None:
                    deadline = time.monotonic() + OUTPUT_DRAIN
                left = _POLL_SLICE if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise Stalled(self.unwritten())
                self._push(min(left, _POLL_SLICE))
        finally:
            if stop is not None:
                stop.restore()

    def _push(self, wait: float) -> None:
        buf = self._buf
        while buf:
            if not self._poll.poll(wait * 1000.0):
                return
            wait = 0.0
            end = buf.rfind(b"\n", 0, PIPE_CHUNK) + 1 if len(buf) > PIPE_CHUNK else len(buf)
            if end <= 0:  # one line longer than PIPE_BUF: in pieces the pipe takes at once
                end = PIPE_CHUNK  # (written whole, it would block on a pipe with less room)
            try:
                written = os.write(self._fd, buf[:end])
            except BlockingIOError:
                return
            del buf[:written]

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


class _StopSignals:
    """SIGINT and SIGTERM noted, not acted on, while the last records wait for a reader
    (outside the event loop: its handlers are gone by then)."""

    def __init__(self) -> None:
        self.seen = False
        self._old: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                self._old[sig] = signal.signal(sig, self._note)

    def _note(self, signum: int, frame: Any) -> None:
        self.seen = True

    def restore(self) -> None:
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, old)


def is_pipe(fd: int) -> bool:
    """A pipe, FIFO or socket: what a reader can stop reading."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class RecordWriter:
    """Buffered byte lines to a file or stream; reopenable for SIGHUP log rotation."""

    def __init__(self, stream: Stream, path: str | None = None) -> None:
        """`stream` (standard output) is where records go while `path` is None."""
        self._stdout = stream
        self.path = path
        self._stream: Stream = stream if path is None else self._open(path)
        self.name = path or "standard output"
        self._broken: SinkError | None = None  # a write failed: nothing more goes out

    @staticmethod
    def _open(path: str) -> Stream:
        # Read and write: after a failed write the file's tail is read back to cut it (a
        # write-only file is still taken, without that).
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.stat(path).st_mode):
                return _open_fifo(path, flags)
        try:
            try:
                fd = os.open(path, os.O_RDWR | flags, 0o666)
            except PermissionError:
                fd = os.open(path, os.O_WRONLY | flags, 0o666)
        except OSError as exc:
            raise SinkError(f"cannot open log file {path}: {exc.strerror}") from None
        try:
            return open(fd, "ab", buffering=1 << 16)
        except OSError as exc:  # e.g. a /proc file that cannot seek to its end
            os.close(fd)
            raise SinkError(f"cannot open log file {path}: {exc.strerror}") from None

    def follow(self) -> bool:
        """Is the file still the one at `path`? If its directory entry was removed or
        replaced, open the path anew (True); SinkError when that cannot be done. Called on
        the flush tick: a writer that wrote on into a deleted file would lose everything."""
        if self.path is None or self._broken is not None:
            return False
        try:
            here = os.fstat(self._stream.fileno())
            there = os.stat(self.path)
            if (here.st_ino, here.st_dev) == (there.st_ino, there.st_dev):
                return False
        except OSError:
            pass  # gone (or unreadable): try to create it again below
        self.reopen()
        return True

    def msg(self, message: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        try:
            self._stream.write(message + b"\n")
        except OSError as exc:
            raise self.failure(exc) from None

    info = warning = error = msg

    def write_lines(self, data: Lines) -> None:
        """Complete lines, already rendered (a worker's records, merged by the parent)."""
        if self._broken is not None:
            raise self._broken
        try:
            self._stream.write(data)
        except OSError as exc:
            raise self.failure(exc) from None

    def full(self) -> bool:
        """A pipe's reader has left more than BACKLOG_MAX unread: start nothing new (what
        is in flight still finishes and is written) until it has read."""
        stream = self._stream
        return isinstance(stream, PipeStream) and stream.full()

    def wait_room(self, seconds: float) -> None:
        """While `full()`: give the reader up to `seconds` to take some of what waits."""
        if self._broken is not None:
            raise self._broken
        stream = self._stream
        if isinstance(stream, PipeStream):
            try:
                stream.wait(seconds)
            except OSError as exc:
                raise self.failure(exc) from None

    def fileno(self) -> int:
        """The descriptor records go to (the native core writes to it directly)."""
        return self._stream.fileno()

    def flush(self) -> None:
        if self._broken is not None:
            raise self._broken
        try:
            self._stream.flush()
        except OSError as exc:
            raise self.failure(exc) from None

    def reopen(self) -> None:
        """Open the path anew (after logrotate moved it); a stream sink stays as it is."""
        if self.path is not None:
            self.retarget(self.path)

    def retarget(self, path: str | None) -> None:
        """Write to another file from now on (None: standard output). The new file is
        opened before the old one is let go, so a bad path changes nothing."""
        if path is None and self.path is None:
            return
        new = self._stdout if path is None else self._open(path)
        self.flush()
        old, self._stream, self.path = self._stream, new, path
        self.name = path or "standard output"
        if old is not self._stdout:
            old.close()

    def close(self, drain: float | None = None) -> None:
        """Flush and close. A pipe's reader gets the time it takes to read what is left,
        at most `drain` seconds when given (a stopping run); SinkError names what it did
        not take."""
        if self._broken is not None:
            return  # already reported, and the file already cut back to whole lines
        try:
            self.flush()
            if isinstance(self._stream, PipeStream):
                try:
                    self._stream.drain(drain)
                except OSError as exc:
                    raise self.failure(exc) from None
        finally:
            # flush() above already reported a failure; closing would only repeat it
            with contextlib.suppress(OSError):
                self._stream.close()

    def failure(self, exc: OSError) -> SinkError:
        """The error a failed write becomes; a file (`-o FILE`, or standard output that is
        a regular file) is cut back to whole lines and takes nothing more."""
        if isinstance(exc, BrokenPipeError):
            return SinkClosed(f"{self.name}: reader went away")
        reason = exc.strerror or str(exc)
        error = SinkError(f"cannot write records to {self.name}: {reason}")
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):
            return error
        if self.path is not None or _is_regular(fd):
            cut_to_whole_lines(fd)
            self._broken = error
        return error


def _is_regular(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def cut_to_whole_lines(fd: int) -> None:
    """A short write (full disk) may have left half a record at the end of the file: cut
    back to its last newline, so the file holds whole lines and the next run appends
    cleanly. Then `fd` points at /dev/null: what is still buffered never reaches the file."""
    try:
        try:  # read through a descriptor of our own: standard output may be write-only
            reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            reader = fd
        try:
            end = pos = os.fstat(fd).st_size
            while pos > 0:
                start = max(0, pos - (1 << 16))
                newline = os.pread(reader, pos - start, start).rfind(b"\n")
                if newline >= 0:
                    pos = start + newline + 1
                    break
                pos = start
        finally:
            if reader != fd:
                os.close(reader)
        if pos < end:
            os.ftruncate(fd, pos)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError):
        pass  # nothing more can be done for this file; the failure is reported anyway


def _open_fifo(path: str, flags: int) -> Stream:
    """A FIFO: write-only (opened read-write, it would never see that no one reads, and
    would block once the pipe is full) and only with a reader there now."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | flags)
    except OSError as exc:
        reason = "a FIFO with no reader" if exc.errno == errno.ENXIO else exc.strerror
        raise SinkError(f"cannot open log file {path}: {reason}") from None
    os.set_blocking(fd, True)  # PipeStream polls before it writes
    return PipeStream(fd)


def open_stream(fd: int, stall: bool = True) -> Stream:
    """A descriptor we own, as a record stream: a pipe, FIFO or socket through PipeStream
    (`stall`: see there), anything else buffered."""
    if is_pipe(fd):
        return PipeStream(fd, stall)
    return io.open(fd, "wb", buffering=1 << 16)  # noqa: UP020


def stdout_writer(path: str | None = None, stall: bool = True) -> RecordWriter:
    """Records to `path`, or to standard output as raw bytes (not through sys.stdout's
    text layer) while there is none; `stall=False`: a pipe's slow reader is waited for
    (the caller watches `full()`), never given up on."""
    return RecordWriter(open_stream(os.dup(1), stall), path)
