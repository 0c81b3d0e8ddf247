"""Records as a person reads them: one aligned line per attempt, `key=value` for events."""

from __future__ import annotations

import functools
import time
from _socket import getservbyport  # socket's own; `socket` costs ~4 ms of start-up
from collections.abc import MutableMapping
from typing import Any

from ..record import OPEN, REFUSED, Outcome, Record, format_timestamp

EventDict = MutableMapping[str, Any]


def _now() -> str:
    return format_timestamp(time.time())


def _safe(value: Any) -> str:
    """Text for a console line: control characters escaped, so no value can split a line."""
    text = str(value)
    return text if text.isprintable() else repr(text)[1:-1]


def console_line(event_dict: EventDict, with_time: bool = True, colour: bool = False) -> str:
    """`key=value` pairs for an event other than a record (records: `probe_line`).
    `colour`: a state event's new state in ANSI colour, for terminals."""
    head = f"{event_dict.get('timestamp') or _now()}  " if with_time else ""
    rest = "  ".join(
        f"{k}={_paint(_safe(v), v) if colour and k == 'to' else _safe(v)}"
        for k, v in event_dict.items()
        if k not in ("event", "timestamp")
    )
    return f"{head}{_safe(event_dict.get('event'))}  {rest}"


# SGR colours: green for open/up, red for refused/down, yellow for a timeout, magenta else.
_COLOURS = {"open": "32", "up": "32", "refused": "31", "down": "31", "timeout": "33"}


def _paint(text: str, key: Any) -> str:
    return f"\x1b[{_COLOURS.get(str(key), '35')}m{text}\x1b[0m"


def probe_line(r: Record, colour: bool = False) -> str:
    """The human printout of one attempt; `colour`: the outcome in ANSI colour."""
    outcome = f"{r.outcome:<7}"
    parts = [_safe(r.target), _paint(outcome, r.outcome) if colour else outcome]
    name = r.extra.get("name") if r.extra else None
    if name and name != r.target:
        parts.insert(0, _safe(name))
    if r.address and r.address != r.host:
        parts.append(f"[{r.address}]")
    if r.local_port is not None:
        parts.append(f"local {_endpoint(r.local_address, r.local_port)}")
    parts.append(f"{round(r.latency_ms, 3):.2f} ms")  # the value the JSON record carries
    if r.rtt_ms is not None:
        parts.append(f"rtt {r.rtt_ms:.2f} ms")
    if r.syn_retransmits:
        parts.append(f"SYN\u00d7{r.syn_retransmits + 1}")  # the SYN went out this many times
    if r.error and r.outcome != Outcome.REFUSED:
        parts.append(r.error)
    if r.stages is not None:
        parts.extend(_safe(part) for part in r.stages.human())
    return "  ".join(parts)


def _endpoint(address: str | None, port: int) -> str:
    if address and ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


# -- `probe check`'s lines, rendered from the Record itself ----------------------------------

OUTCOME_WIDTH = len("unreachable")
LOCAL_WIDTH = len("127.0.0.1:65535")
LATENCY_WIDTH = len("1000.00")


@functools.lru_cache(maxsize=4096)
def service_name(port: int) -> str | None:
    """The system's services database name for a TCP port (`22` → `ssh`), or None."""
    try:
        return getservbyport(port, "tcp")
    except (OSError, OverflowError):
        return None


class RecordLines:
    """One line per attempt, columns aligned whatever the outcome: target, outcome, local
    endpoint, latency; then the kernel's RTT and the service name for open ports, or the
    error name for failures other than a plain refusal."""

    def __init__(self, target_width: int = 21, services: bool = True) -> None:
        self.target_width = target_width
        self.services = services

    def line(self, r: Record) -> str:
        target = _safe(r.target)
        if r.address and r.address != r.host:
            target += f" [{r.address}]"
        local = "" if r.local_port is None else _endpoint(r.local_address, r.local_port)
        parts = [
            f"{target:<{self.target_width}}",
            f"{r.outcome:<{OUTCOME_WIDTH}}",
            f"local {local:<{LOCAL_WIDTH}}",
            f"{round(r.latency_ms, 3):>{LATENCY_WIDTH}.2f} ms",  # the value the JSON carries
        ]
        if r.rtt_ms is not None:
            parts.append(f"rtt {r.rtt_ms:.2f} ms")
        if r.syn_retransmits:
            parts.append(f"SYN\u00d7{r.syn_retransmits + 1}")  # the SYN went out this many times
        if r.outcome == OPEN:
            name = service_name(r.port) if self.services else None
            if name:
                parts.append(name)
        elif r.error and r.outcome != REFUSED:
            parts.append(_safe(r.error))
        if r.stages is not None:
            parts.extend(_safe(part) for part in r.stages.human())
        return "  ".join(parts).rstrip()
