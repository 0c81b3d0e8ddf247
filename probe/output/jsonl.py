"""Records as JSON lines: one msgspec call per record, keys in the contract's order."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import Any

import msgspec

from ..record import format_timestamp

EventDict = MutableMapping[str, Any]

_encode = msgspec.json.Encoder().encode


def render_json(_: Any, __: str, event_dict: EventDict) -> bytes:
    if "timestamp" not in event_dict:  # events other than probe records: same head keys
        event_dict = {"event": event_dict.pop("event", None), "timestamp": _now(), **event_dict}
    return _encode(event_dict)


def _now() -> str:
    return format_timestamp(time.time())
