"""The byte sink at the end of the record path: a buffered writer of whole lines.

structlog's own BytesLogger flushes after every line, one syscall per record, which a sweep
of 65,535 attempts cannot afford. `RecordWriter` flushes on a tick and at the end instead,
and turns write failures into `SinkError` so a full disk stops the run loudly instead of
losing records.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from typing import BinaryIO

from ..errors import SinkClosed, SinkError


class RecordWriter:
    """Buffered byte lines to a file or stream; reopenable for SIGHUP log rotation."""

    def __init__(self, stream: BinaryIO, path: str | None = None) -> None:
        """`stream` (standard output) is where records go while `path` is None."""
        self._stdout = stream
        self.path = path
        self._stream: BinaryIO = stream if path is None else self._open(path)
        self.name = path or "standard output"
        self._broken: SinkError | None = None  # a write failed: nothing more goes out

    @staticmethod
    def _open(path: str) -> BinaryIO:
        # Read and write: after a failed write the file's tail is read back to cut it (a
        # write-only file is still taken, without that).
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
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

    def write_lines(self, data: bytes) -> None:
        """Complete lines, already rendered (a worker's records, merged by the parent)."""
        if self._broken is not None:
            raise self._broken
        try:
            self._stream.write(data)
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

    def close(self) -> None:
        if self._broken is not None:
            return  # already reported, and the file already cut back to whole lines
        try:
            self.flush()
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


def stdout_writer(path: str | None = None) -> RecordWriter:
    """Records to `path`, or to standard output as raw bytes (not through sys.stdout's
    text layer) while there is none."""
    stream = io.open(os.dup(1), "wb", buffering=1 << 16)  # noqa: SIM115, UP020
    return RecordWriter(stream, path)
