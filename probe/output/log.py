"""structlog, configured once per process: the renderer for the chosen format, writing
to a `RecordWriter`. Records and the daemon's own events go out the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..record import Record
from .human import EventDict, render_console, render_human
from .jsonl import render_json
from .writer import RecordWriter

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
