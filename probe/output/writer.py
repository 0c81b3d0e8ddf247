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

    @staticmethod
    def _open(path: str) -> BinaryIO:
        try:
            return open(path, "ab", buffering=1 << 16)
        except OSError as exc:
            raise SinkError(f"cannot open log file {path}: {exc.strerror}") from None

    def msg(self, message: bytes) -> None:
        try:
            self._stream.write(message + b"\n")
        except OSError as exc:
            raise self._failure(exc) from None

    info = warning = error = msg

    def write_lines(self, data: bytes) -> None:
        """Complete lines, already rendered (a worker's records, merged by the parent)."""
        try:
            self._stream.write(data)
        except OSError as exc:
            raise self._failure(exc) from None

    def fileno(self) -> int:
        """The descriptor records go to (the native core writes to it directly)."""
        return self._stream.fileno()

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._failure(exc) from None

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
        try:
            self.flush()
        finally:
            # flush() above already reported a failure; closing would only repeat it
            with contextlib.suppress(OSError):
                self._stream.close()

    def _failure(self, exc: OSError) -> SinkError:
        if isinstance(exc, BrokenPipeError):
            return SinkClosed(f"{self.name}: reader went away")
        reason = exc.strerror or str(exc)
        return SinkError(f"cannot write records to {self.name}: {reason}")


def stdout_writer(path: str | None = None) -> RecordWriter:
    """Records to `path`, or to standard output as raw bytes (not through sys.stdout's
    text layer) while there is none."""
    stream = io.open(os.dup(1), "wb", buffering=1 << 16)  # noqa: SIM115, UP020
    return RecordWriter(stream, path)
