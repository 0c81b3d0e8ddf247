"""`-s ADDR[:PORT]` and the config's `source`: a local endpoint or port range to bind."""

from __future__ import annotations

import ipaddress

from ..errors import TargetError
from ..plain import Frozen
from .chars import echo
from .ports import parse_port


class Source(Frozen):
    """A local endpoint to bind: `port_lo == port_hi == 0` lets the kernel pick the port."""

    __slots__ = ("address", "port_hi", "port_lo")
    address: str
    port_lo: int
    port_hi: int

    def __init__(self, address: str, port_lo: int = 0, port_hi: int = 0) -> None:
        self._set(locals())

    @property
    def is_range(self) -> bool:
        return self.port_lo != self.port_hi


def parse_source(text: str) -> tuple[str, int]:
    """`-s ADDR[:PORT]`: `127.0.0.2`, `127.0.0.2:5000`, `::1`, `[::1]:5000` → (address, port)."""
    source = parse_source_spec(text, allow_range=False)
    return source.address, source.port_lo


def parse_source_spec(text: str, *, allow_range: bool = True) -> Source:
    """`ADDR`, `ADDR:PORT` or `ADDR:LO-HI` (a local port range), IPv6 in brackets."""
    text = text.strip()
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise TargetError(f"bad source {echo(text)}: write [ADDR]:PORT")
        if ":" not in address:
            raise TargetError(f"bad source {echo(text)}: brackets are for IPv6 addresses")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        address, port_text = text, ""
    else:
        address, _, port_text = text.partition(":")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise TargetError(f"bad source address {echo(address)}: give an IP address") from None
    if "%" in address and not address.isprintable():
        raise TargetError(f"bad character in source address {echo(address)}")
    if not port_text:
        return Source(address)
    lo_s, dash, hi_s = port_text.partition("-")
    if dash and not allow_range:
        raise TargetError(f"bad port {echo(port_text)}: one local port expected")
    lo = parse_port(lo_s, port_text)
    hi = parse_port(hi_s, port_text) if dash else lo
    if hi < lo:
        raise TargetError(f"source port range {echo(port_text)} runs backwards")
    return Source(address, lo, hi)
