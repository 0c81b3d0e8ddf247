"""The responder's one line, `{"seen":"ADDR:PORT","by":"NAME","at":"TIMESTAMP"}\n`, and
its reading on the client side. Kept apart from both ends: the format is their contract."""

from __future__ import annotations

import ipaddress
from typing import Any

import msgspec

from ..record import format_timestamp

MAX_ANSWER = 512  # bytes a client reads at most; a longer line is not a responder's
MAX_NAME = 128  # characters of a responder's name (the answer must stay under MAX_ANSWER)


class Answer(msgspec.Struct, frozen=True):
    """What a responder said. Unknown keys are allowed: a later responder may say more."""

    seen: str
    by: str
    at: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Answer).decode


def endpoint_text(sockaddr: tuple[Any, ...]) -> str:
    """`ADDR:PORT` (`[ADDR]:PORT` for IPv6) of a socket address. An IPv4 peer seen on a
    dual-stack socket (`::ffff:10.0.0.1`) is written as the IPv4 address it is, so that
    a client comparing it with its own endpoint does not call it translated."""
    host, port = str(sockaddr[0]), int(sockaddr[1])
    if ":" in host:
        try:
            mapped = ipaddress.IPv6Address(host.partition("%")[0]).ipv4_mapped
        except ValueError:
            mapped = None
        if mapped is not None:
            return f"{mapped}:{port}"
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def encode_answer(seen: str, by: str, at: float) -> bytes:
    return _encode(Answer(seen=seen, by=by, at=format_timestamp(at))) + b"\n"


def decode_answer(data: bytes) -> Answer | None:
    """The answer in `data` (one line, its newline optional), or None when it is not one:
    not JSON, not an object, `seen` not an endpoint, or too long."""
    line = data.split(b"\n", 1)[0]
    if not line or len(line) > MAX_ANSWER:
        return None
    try:
        answer = _decode(line)
    except msgspec.DecodeError:
        return None
    if not valid_endpoint(answer.seen) or len(answer.by) > MAX_NAME:
        return None
    return answer


def valid_endpoint(text: str) -> bool:
    """`ADDR:PORT` or `[IPV6]:PORT` with an IP address and a port 0-65535."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdecimal()) or int(port) > 65535:
        return False
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return (ip.version == 6) == text.startswith("[")
