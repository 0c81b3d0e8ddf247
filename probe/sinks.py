"""Where records go: structlog, configured once, writing JSON lines or console lines.

The structlog "logger" at the end of the chain is `RecordWriter`, a buffered byte writer:
structlog's own BytesLogger flushes after every line, one syscall per record, which a sweep
of 65,535 attempts cannot afford. We flush on a tick and at the end instead, and turn write
failures into `SinkError` so a full disk stops the run loudly instead of losing records.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, MutableMapping
from typing import Any, BinaryIO

import msgspec
import structlog

from .record import Record, format_timestamp

EventDict = MutableMapping[str, Any]


class SinkError(Exception):
    """Records could not be written; `str()` names the destination and the reason."""


class SinkClosed(SinkError):
    """The reader went away (`| head -1`): stop quietly."""


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


_encode = msgspec.json.Encoder().encode


def render_json(_: Any, __: str, event_dict: EventDict) -> bytes:
    if "timestamp" not in event_dict:  # events other than probe records: same head keys
        event_dict = {"event": event_dict.pop("event", None), "timestamp": _now(), **event_dict}
    return _encode(event_dict)


def _now() -> str:
    return format_timestamp(time.time())


def _safe(value: Any) -> str:
    """Text for a console line: control characters escaped, so no value can split a line."""
    text = str(value)
    return text if text.isprintable() else repr(text)[1:-1]


def console_line(event_dict: EventDict, with_time: bool = True) -> str:
    """The lesson's printout for a probe; `key=value` pairs for every other event."""
    head = f"{event_dict.get('timestamp') or _now()}  " if with_time else ""
    if event_dict.get("event") == "probe":
        return head + probe_line(event_dict)
    rest = "  ".join(
        f"{k}={_safe(v)}" for k, v in event_dict.items() if k not in ("event", "timestamp")
    )
    return f"{head}{_safe(event_dict.get('event'))}  {rest}"


def probe_line(r: EventDict) -> str:
    parts = [_safe(r["target"]), f"{r['outcome']:<7}"]
    if r.get("name") and r["name"] != r["target"]:
        parts.insert(0, _safe(r["name"]))
    if r.get("address") and r["address"] != r["host"]:
        parts.append(f"[{r['address']}]")
    if r.get("local_port") is not None:
        parts.append(f"local {_endpoint(r['local_address'], r['local_port'])}")
    parts.append(f"{r['latency_ms']:.2f} ms")
    if r.get("rtt_ms") is not None:
        parts.append(f"rtt {r['rtt_ms']:.2f} ms")
    if r.get("error") and r["outcome"] != "refused":
        parts.append(str(r["error"]))
    return "  ".join(parts)


def _endpoint(address: str | None, port: int) -> str:
    if address and ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def render_console(_: Any, __: str, event_dict: EventDict) -> bytes:
    return console_line(event_dict).encode()


def render_human(_: Any, __: str, event_dict: EventDict) -> bytes:
    return console_line(event_dict, with_time=False).encode()


_RENDERERS: dict[str, Callable[[Any, str, EventDict], bytes]] = {
    "json": render_json,
    "console": render_console,
    "human": render_human,
}


def configure(writer: RecordWriter, fmt: str = "json") -> Callable[[Record], None]:
    """Configure structlog once for this process; returns the function that writes a record."""
    structlog.configure(
        processors=[_RENDERERS[fmt]],
        logger_factory=lambda *_: writer,
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )
    # Binding `event` first keeps it the first key: structlog overwrites it in place.
    log = structlog.get_logger().bind(event="probe")

    def write(record: Record) -> None:
        fields = record.as_dict()
        del fields["event"]
        log.info("probe", **fields)

    return write


def event_logger() -> Any:
    """The configured logger, for events other than probe records (state changes, reloads)."""
    return structlog.get_logger()


def stdout_writer(path: str | None = None) -> RecordWriter:
    """Records to `path`, or to standard output as raw bytes (not through sys.stdout's
    text layer) while there is none."""
    stream = io.open(os.dup(1), "wb", buffering=1 << 16)  # noqa: SIM115, UP020
    return RecordWriter(stream, path)
