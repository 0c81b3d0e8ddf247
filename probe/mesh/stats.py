"""One node's row of the mesh: per peer, a window of its latest attempts and the figures
drawn from them (median and p99 connect latency, loss, translated share), as JSON."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..address import host_port
from ..record import OPEN, Record, format_timestamp

WINDOW = 30  # attempts per peer the figures are drawn from
RECENT = 10  # attempts per peer shown in a pair's detail view


@dataclass(slots=True, frozen=True)
class Seen:
    """What one attempt to a peer found, as kept in the window."""

    at: float
    outcome: str
    error: str | None
    latency_ms: float
    syn_retransmits: int | None
    local: str | None
    seen_as: str | None
    translated: bool | None

    def json(self) -> dict[str, Any]:
        return {
            "at": format_timestamp(self.at),
            "outcome": self.outcome,
            "error": self.error,
            "latency_ms": round(self.latency_ms, 3),
            "syn_retransmits": self.syn_retransmits,
            "local": self.local,
            "seen_as": self.seen_as,
            "translated": self.translated,
        }


def seen_of(record: Record) -> Seen:
    stages = record.stages
    port = record.local_port
    local = None if port is None else host_port(record.local_address or "", port)
    return Seen(
        at=record.started,
        outcome=str(record.outcome),
        error=record.error,
        latency_ms=record.latency_ms,
        syn_retransmits=record.syn_retransmits,
        local=local,
        seen_as=None if stages is None else stages.seen_as,
        translated=None if stages is None else stages.translated,
    )


def quantile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank quantile (p99 of 30 values is the largest)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class Pair:
    """This node's attempts to one peer."""

    __slots__ = ("address", "port", "window")

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self.window: deque[Seen] = deque(maxlen=WINDOW)

    def add(self, seen: Seen) -> None:
        self.window.append(seen)

    def json(self) -> dict[str, Any]:
        window = list(self.window)
        opened = [s for s in window if s.outcome == OPEN]
        latencies = sorted(s.latency_ms for s in opened)
        answered = [s for s in window if s.translated is not None]
        last = window[-1] if window else None
        median, p99 = quantile(latencies, 0.5), quantile(latencies, 0.99)
        return {
            "address": self.address,
            "port": self.port,
            "attempts": len(window),
            "open": len(opened),
            "loss": round(1 - len(opened) / len(window), 4) if window else None,
            "median_ms": None if median is None else round(median, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "translated": (
                round(sum(bool(s.translated) for s in answered) / len(answered), 4)
                if answered
                else None
            ),
            "port_kept": _port_kept(answered),
            "syn_retransmits": sum(s.syn_retransmits or 0 for s in window),
            "state": None if last is None else ("up" if last.outcome == OPEN else "down"),
            "error": None if last is None else last.error,
            "recent": [s.json() for s in window[-RECENT:]],
        }


def _port_kept(answered: list[Seen]) -> float | None:
    """The share of answered attempts whose port the far side saw unchanged."""
    if not answered:
        return None
    kept = sum(
        1
        for s in answered
        if s.seen_as is not None
        and s.local is not None
        and s.seen_as.rsplit(":", 1)[1] == s.local.rsplit(":", 1)[1]
    )
    return round(kept / len(answered), 4)
