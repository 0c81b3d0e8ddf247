"""An address as probe connects to it, and IP literals read without a resolver. Apart from
`resolve` (asyncio, threads) so that the native core's path starts without them.

An address has one text everywhere (records, human lines, metric labels): ipaddress's,
except that an IPv4-mapped IPv6 address keeps its IPv4 part dotted (`::ffff:127.0.0.1`), as
the kernel writes the local end of the same socket. A link-local address may carry a zone
(`fe80::1%eth0`, `fe80::1%3`): the interface whose index goes into the sockaddr.
"""

from __future__ import annotations

import ipaddress

# The C module's constants and functions (plain ints, equal to socket's enums): `socket`
# itself builds its enums from every constant at import, ~4 ms of a literal check's start-up.
from _socket import AF_INET, AF_INET6, if_indextoname, if_nametoindex

from .plain import Frozen

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Address(Frozen):
    """An IP address and its family (and, for a zone, the interface index), hashable."""

    __slots__ = ("family", "ip", "scope_id")
    family: int  # AF_INET | AF_INET6
    ip: str  # the one text of the address, with its zone as written
    scope_id: int  # the zone's interface index; 0 without a zone

    def __init__(self, family: int, ip: str, scope_id: int = 0) -> None:
        self._set(locals())

    @property
    def family_name(self) -> str:
        return "ipv6" if self.family == AF_INET6 else "ipv4"

    def sockaddr(self, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
        if self.family == AF_INET6:
            return (self.ip.partition("%")[0], port, 0, self.scope_id)
        return (self.ip, port)


class ResolveError(Exception):
    """The name did not resolve; `code` is the resolver's name for why (EAI_NONAME, …)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class UnknownZone(ValueError):
    """A zone id that names no interface of this machine; `str()` says which."""

    def __init__(self, zone: str) -> None:
        super().__init__(f"unknown interface {zone!r} in the zone id")
        self.zone = zone


def zone_index(zone: str) -> int:
    """The interface index of a zone id: an interface name (`eth0`) or its index (`3`)."""
    try:
        if zone.isascii() and zone.isdecimal():
            index = int(zone)
            if_indextoname(index)  # raises for an index no interface has
            return index
        return int(if_nametoindex(zone))
    except (OSError, OverflowError, ValueError):
        raise UnknownZone(zone) from None


def ip_text(ip: IPAddress) -> str:
    """The one text of an address (see the module's docstring)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        text = f"::ffff:{ip.ipv4_mapped}"
        return f"{text}%{ip.scope_id}" if ip.scope_id else text
    return str(ip)


def host_port(host: str, port: int) -> str:
    """`HOST:PORT`, an IPv6 address in brackets (`[::1]:80`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def literal(host: str, family: int = 0) -> Address | None:
    """An IP literal without asking the resolver; raises ResolveError on a family mismatch
    (EAI_ADDRFAMILY) or a zone that names no interface (ENODEV)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    fam = AF_INET6 if ip.version == 6 else AF_INET
    if family and family != fam:
        raise ResolveError("EAI_ADDRFAMILY")
    scope = 0
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        try:
            scope = zone_index(ip.scope_id)
        except UnknownZone:
            raise ResolveError("ENODEV") from None
    return Address(fam, ip_text(ip), scope)
