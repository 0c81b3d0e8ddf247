"""Records as a person reads them: one aligned line per attempt, `key=value` for events."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

from ..record import format_timestamp

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
