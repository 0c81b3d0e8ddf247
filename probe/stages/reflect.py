"""The reflect stage: right after the connect, read a `probe serve` answer and compare the
endpoint the far side saw with the one this socket has.

The read is bounded in size (`MAX_ANSWER`); the runner's deadline bounds its time. No valid
answer (silence, another protocol's greeting, a line too long, a reset) is
`NOT_A_RESPONDER`."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from ..serve.answer import MAX_ANSWER, decode_answer, endpoint_text
from .result import NOT_A_RESPONDER, StageResult


async def read_answer(
    reader: asyncio.StreamReader, local: tuple[Any, ...], result: StageResult
) -> bool:
    """Read the answer into `result` (False, with its error set, when there is none)."""
    result.reflected = True
    data = b""
    while b"\n" not in data and len(data) <= MAX_ANSWER:
        chunk = await reader.read(MAX_ANSWER + 1 - len(data))
        if not chunk:
            break
        data += chunk
    answer = decode_answer(data)
    if answer is None:
        result.error = NOT_A_RESPONDER
        return False
    result.seen_as = answer.seen
    result.translated = translated(answer.seen, local)
    result.seen_by = answer.by
    return True


def translated(seen: str, local: tuple[Any, ...]) -> bool:
    """Whether `seen` (`ADDR:PORT`) differs from this socket's endpoint: another address
    or another port. Zone ids are ignored (each side names its own interface)."""
    return _key(seen) != _key(endpoint_text(local))


def _key(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | str, str]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]").partition("%")[0]
    try:
        return ipaddress.ip_address(host), port
    except ValueError:
        return host, port
