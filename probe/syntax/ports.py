"""Port lists: `22,80,8000-8100`, nmap's `-`, `N-` and `-N`, and service names (`ssh`,
`https`) from the system's services database (/etc/services), as nmap, nc and blackbox
take them."""

from __future__ import annotations

# _socket's own function: socket.py builds its enums at import (start-up, see address.py).
from _socket import getservbyname

from ..errors import TargetError
from .chars import echo

PortRanges = tuple[tuple[int, int], ...]

ALL_PORTS: PortRanges = ((1, 65535),)


def parse_ports(text: str) -> PortRanges:
    """`22,80,8000-8100` → ((22, 22), (80, 80), (8000, 8100)); inclusive, 1-65535.
    nmap's shorthands: `-` is every port, `N-` is N-65535, `-N` is 1-N."""
    if not text:
        raise TargetError("empty port list")
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        named = service_port(part)  # a whole part first: names hold dashes (`http-alt`)
        if named is not None:
            ranges.append((named, named))
            continue
        lo_s, dash, hi_s = part.partition("-")
        if dash and not lo_s and not hi_s:
            lo, hi = 1, 65535
        else:
            lo = parse_port(lo_s, part) if lo_s or not dash else 1
            hi = (parse_port(hi_s, part) if hi_s else 65535) if dash else lo
        if hi < lo:
            raise TargetError(f"port range {echo(part)} runs backwards")
        ranges.append((lo, hi))
    return tuple(ranges)


def parse_port(text: str, part: str, lowest: int = 1) -> int:
    """One port number; `part` is the token named in the error."""
    # isdecimal() + ASCII rejects '+1', ' 1', non-ASCII digits and other things int() would accept.
    if not (text.isascii() and text.isdecimal()) or len(text) > 5:
        named = service_port(text)
        if named is not None:
            return named
        if _is_name(text):
            raise TargetError(
                f"bad port {echo(part)}: ports are numbers {lowest}-65535 or service names, "
                f"and the services database (/etc/services) has no TCP service {echo(text)}"
            )
        raise TargetError(f"bad port {echo(part)}: ports are numbers {lowest}-65535")
    value = int(text)
    if not lowest <= value <= 65535:
        raise TargetError(f"port {value} out of range {lowest}-65535")
    return value


def count_ports(ranges: PortRanges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


def service_port(name: str) -> int | None:
    """The TCP port of a service name (`ssh` → 22), or None when it is no such name."""
    if not _is_name(name):
        return None
    try:
        port = int(getservbyname(name, "tcp"))
    except OSError:
        return None
    return port if 1 <= port <= 65535 else None


def _is_name(text: str) -> bool:
    """A service name as /etc/services writes them: a letter first, then letters, digits,
    `-`, `_`, `.` or `+` (so a number, a range or a stray character is never looked up)."""
    return (
        0 < len(text) <= 64
        and text.isascii()
        and text[0].isalpha()
        and all(c.isalnum() or c in "-_.+" for c in text)
    )
