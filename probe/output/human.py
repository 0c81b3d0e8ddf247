"""Records as a person reads them: one aligned line per attempt, `key=value` for events."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import MutableMapping
from typing import Any

from ..record import OPEN, REFUSED, Record, format_timestamp

EventDict = MutableMapping[str, Any]


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


# -- `probe check`'s lines, rendered from the Record itself ----------------------------------

OUTCOME_WIDTH = len("unreachable")
LOCAL_WIDTH = len("127.0.0.1:65535")
LATENCY_WIDTH = len("1000.00")


@functools.lru_cache(maxsize=4096)
def service_name(port: int) -> str | None:
    """The system's services database name for a TCP port (`22` → `ssh`), or None."""
    try:
        return socket.getservbyport(port, "tcp")
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
            f"{r.latency_ms:>{LATENCY_WIDTH}.2f} ms",
        ]
        if r.rtt_ms is not None:
            parts.append(f"rtt {r.rtt_ms:.2f} ms")
        if r.outcome == OPEN:
            name = service_name(r.port) if self.services else None
            if name:
                parts.append(name)
        elif r.error and r.outcome != REFUSED:
            parts.append(_safe(r.error))
        return "  ".join(parts).rstrip()
