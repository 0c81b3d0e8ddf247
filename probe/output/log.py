"""structlog, configured once per process with our renderer, writing to a `RecordWriter`.
Records and the daemon's own events go out the same way; a record travels as itself (the
`record` value of its event), never as a dict of its fields, and the renderer writes it
in the chosen format.

A process that must not raise out of its callbacks (the daemon: an event is written from a
timer, a lookup's callback or a signal's) passes `broken`: a write that finds the sink
broken (its reader gone, a full disk, a backlog past its limit) hands the error's one line
to it, whichever event or record that write was, and returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..errors import SinkError
from ..record import Record, format_timestamp
from .human import EventDict, console_line, probe_line
from .jsonl import event_json, record_json
from .writer import RecordWriter


def _human_event(event_dict: EventDict) -> bytes:
    return console_line(event_dict, with_time=False).encode()


def _console_record(r: Record) -> bytes:
    return f"{format_timestamp(r.started)}  {probe_line(r)}".encode()


def _console_event(event_dict: EventDict) -> bytes:
    return console_line(event_dict).encode()


def _colour_record(r: Record) -> bytes:
    return f"{format_timestamp(r.started)}  {probe_line(r, colour=True)}".encode()


def _colour_event(event_dict: EventDict) -> bytes:
    return console_line(event_dict, colour=True).encode()


def _human_record(r: Record) -> bytes:
    return probe_line(r).encode()


# A new output format: its record and event renderers here (a module of its own beside
# jsonl and human when it is more than a line).
FORMATS: dict[str, tuple[Callable[[Record], bytes], Callable[[EventDict], bytes]]] = {
    "json": (record_json, event_json),
    "console": (_console_record, _console_event),
    "console-colour": (_colour_record, _colour_event),  # not a config value: at a colour tty
    "human": (_human_record, _human_event),
}


class Renderer:
    """structlog's one processor: the last, so it returns the line's bytes."""

    __slots__ = ("_event", "_record")

    def __init__(self, fmt: str) -> None:
        self._record, self._event = FORMATS[fmt]

    def __call__(self, _: Any, __: str, event_dict: EventDict) -> bytes:
        record = event_dict.get("record")
        if record.__class__ is Record:
            return self._record(record)
        return self._event(event_dict)


class GuardedSink:
    """structlog's logger in a process that passes `broken`: the one place where a failed
    write of a line, record or event alike, becomes a call instead of an exception."""

    __slots__ = ("_broken", "_write")

    def __init__(self, writer: RecordWriter, broken: Callable[[str], None]) -> None:
        self._write = writer.msg
        self._broken = broken

    def msg(self, message: bytes) -> None:
        try:
            self._write(message)
        except SinkError as exc:
            self._broken(str(exc))

    info = warning = error = msg


def configure(
    writer: RecordWriter, fmt: str = "json", broken: Callable[[str], None] | None = None
) -> Callable[[Record], None]:
    """Configure structlog once for this process; returns the function that writes a record.
    Without `broken`, a failed write raises SinkError to whoever logged."""
    sink: RecordWriter | GuardedSink = writer if broken is None else GuardedSink(writer, broken)
    structlog.configure(
        processors=[Renderer(fmt)],
        logger_factory=lambda *_: sink,
        wrapper_class=structlog.make_filtering_bound_logger(0),
        cache_logger_on_first_use=True,
    )
    info = structlog.get_logger().bind().info

    def write(record: Record) -> None:
        info("probe", record=record)

    return write


def event_logger() -> Any:
    """The configured logger, for events other than probe records (state changes, reloads)."""
    return structlog.get_logger()
