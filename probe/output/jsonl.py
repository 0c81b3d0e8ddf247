"""Records and events as JSON lines: one msgspec call per line, keys in the contract's order."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

import msgspec

from ..record import Record, format_timestamp

EventDict = MutableMapping[str, Any]

_encode = msgspec.json.Encoder().encode


def record_json(r: Record) -> bytes:
    """The record's JSON object (the attempt record, as the README documents it): built
    straight from the Record, with times rounded to the microsecond (3 decimals of ms)."""
    out: dict[str, Any] = {
        "event": "probe",
        "timestamp": format_timestamp(r.started),
        "target": r.target,
        "host": r.host,
        "port": r.port,
        "address": r.address,
        "family": r.family,
        "local_address": r.local_address,
        "local_port": r.local_port,
        "outcome": r.outcome,
        "error": r.error,
        "latency_ms": round(r.latency_ms, 3),
        "rtt_ms": None if r.rtt_ms is None else round(r.rtt_ms, 3),
        "syn_retransmits": r.syn_retransmits,
        "dns_ms": round(r.dns_ms, 3),
        "attempt": r.attempt,
    }
    if r.stages is not None:
        out.update(r.stages.fields())
    if r.extra:
        out.update(r.extra)
    return _encode(out)


def event_json(event_dict: EventDict) -> bytes:
    """Any other event (state, reload, listening): `event` and `timestamp` first."""
    if "timestamp" not in event_dict:
        event_dict = {"event": event_dict.pop("event", None), "timestamp": _now(), **event_dict}
    return _encode(event_dict)


def _now() -> str:
    return format_timestamp(time.time())
