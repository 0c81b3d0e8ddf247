"""Targets and endpoints: one command-line token or file line, expanded lazily.

A target is a host (or a set of addresses) and its ports; `1-65535` or a `/8` is never
materialised, and errors name the offending token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ..errors import TargetError
from ..plain import Frozen
from .addresses import AddressSet
from .chars import echo, has_bad_char
from .ip import check_ipv6, cidr_of, ipv4_segments
from .ports import PortRanges, count_ports, parse_ports

if TYPE_CHECKING:
    from .exclusions import Exclusions


class Endpoint(Frozen):
    """One destination port of a target, named as the user would write it."""

    __slots__ = ("host", "port", "target")
    target: str  # "host:port" or "[v6]:port"
    host: str  # as written, without brackets; the address itself for a CIDR or range
    port: int

    def __init__(self, target: str, host: str, port: int) -> None:
        # One per attempt on the Python engine: set directly, not through _set's keywords.
        init = object.__setattr__
        init(self, "target", target)
        init(self, "host", host)
        init(self, "port", port)


class Target(Frozen):
    """A host (or a set of addresses) and its ports, as one token on the command line or one
    line of a file."""

    __slots__ = ("addresses", "bracketed", "host", "ports")
    host: str  # as written, without brackets: a name, an address, a CIDR or an octet range
    ports: PortRanges
    bracketed: bool  # written as [v6]; also forced for bare IPv6 hosts given with -p
    addresses: AddressSet | None  # set for a CIDR or an octet range

    def __init__(
        self, host: str, ports: PortRanges, bracketed: bool, addresses: AddressSet | None = None
    ) -> None:
        self._set(locals())

    def label(self, port: int, host: str | None = None) -> str:
        host = self.host if host is None else host
        return f"[{host}]:{port}" if self.bracketed else f"{host}:{port}"

    def hosts(self) -> Iterator[str]:
        if self.addresses is None:
            yield self.host
        else:
            yield from self.addresses

    def host_count(self) -> int:
        return 1 if self.addresses is None else self.addresses.count()

    def endpoints(self, exclude: Exclusions | None = None) -> Iterator[Endpoint]:
        """Host-major: every port of the first host, then the next host."""
        for host in self.hosts():
            if exclude is not None and exclude.contains(host):
                continue
            for lo, hi in self.ports:
                for port in range(lo, hi + 1):
                    yield Endpoint(self.label(port, host), host, port)

    def count(self) -> int:
        """Endpoints before exclusions, by arithmetic."""
        return self.host_count() * count_ports(self.ports)


def check_host(host: str, token: str) -> AddressSet | None:
    """Validate a host written without brackets; an octet range gives its address set."""
    if not host:
        raise TargetError(f"missing host in {echo(token)}")
    if len(host) > 253:
        raise TargetError(f"host name too long in {echo(token)}")
    if has_bad_char(host):
        raise TargetError(f"bad character in host {echo(host)}")
    segments = ipv4_segments(host, token, ranges=True)
    if segments is None or "-" not in host:
        return None
    return AddressSet(4, segments)


def parse_target(
    token: str, default_ports: PortRanges | None = None, no_port_hint: str = ", or give -p"
) -> Target:
    """One `HOST:PORTS`, `[V6]:PORTS`, `CIDR[:PORTS]`, `A.B.C.D-E[:PORTS]` or bare `HOST`
    (ports from -p)."""
    text = token.strip()
    if not text:
        raise TargetError("empty target")
    _refuse_lookalikes(text)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(f"missing ']' in {echo(token)}")
        host, rest = text[1:close], text[close + 1 :]
        addresses: AddressSet | None = None
        if rest.startswith("/"):  # [::1]/128:22
            prefix, colon, port_text = rest[1:].partition(":")
            host, rest = f"{host}/{prefix}", colon + port_text
        if "/" in host:  # [::1/128]:22 or the form above
            addresses = cidr_of(host, token)
        else:
            check_ipv6(host, token)
        if addresses is not None and addresses.version != 6:
            raise TargetError(f"brackets are for IPv6 addresses: {echo(token)}")
        if rest.startswith(":"):
            return Target(host, _ports_of(rest[1:], token), True, addresses)
        if rest:
            raise TargetError(f"expected ':' after ']' in {echo(token)}")
        return Target(host, _need_ports(default_ports, token, no_port_hint), True, addresses)
    if text.count(":") > 1:
        # A bare IPv6 address or network: only valid with -p, since its last ':' is not a
        # port separator.
        hint = f"write IPv6 addresses as [ADDR]:PORTS, e.g. [::1]:80 (got {echo(token)})"
        if not _may_be_ipv6(text):
            raise TargetError(_colons(text))
        addresses = None
        if "/" in text:
            addresses = cidr_of(text, token)
        else:
            try:
                check_ipv6(text, token)
            except TargetError:
                raise TargetError(f"bad target: {hint}") from None
        if default_ports is None:
            raise TargetError(f"no port: {hint}{no_port_hint}")
        return Target(text, default_ports, True, addresses)
    host, colon, ports = text.partition(":")
    addresses = cidr_of(host, token) if "/" in host else check_host(host, token)
    port_ranges = (
        _ports_of(ports, token) if colon else _need_ports(default_ports, token, no_port_hint)
    )
    return Target(host, port_ranges, False, addresses)


_HEX_GROUP = frozenset("0123456789abcdefABCDEF")


def _may_be_ipv6(text: str) -> bool:
    """Could the text be meant as an IPv6 address or network (so its hint applies)? It has
    a `::`, or it starts with a group of up to four hex digits."""
    head = text.split(":", 1)[0]
    return "::" in text or (len(head) <= 4 and set(head) <= _HEX_GROUP)


def _colons(text: str) -> str:
    """The message for `HOST:PORT:...` that is no IPv6 address: what was likely meant."""
    host, _, rest = text.partition(":")
    host = host if host and not has_bad_char(host) and len(host) <= 60 else "HOST"
    if "," in rest and ":" in rest.split(",", 1)[1]:
        return (
            f"{echo(text)} is several targets: give each as its own argument (or line), or "
            f"one host's ports as {host}:PORT,PORT"
        )
    return (
        f"too many ':' in {echo(text)}: ports are comma-separated ({host}:22,80); "
        "IPv6 addresses go in brackets, [ADDR]:PORTS"
    )


def _refuse_lookalikes(text: str) -> None:
    """What people paste that is not a target: a URL, two targets on one line."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme.isascii() and scheme.isalpha():
        netloc = rest.split("/", 1)[0].rpartition("@")[2]
        host, _, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
        if not port.isdecimal():
            host, port = netloc, _URL_PORTS.get(scheme.lower(), "PORT")
        raise TargetError(
            f"{echo(text)} is a URL, not a target: write HOST:PORT, here {host}:{port}"
        )
    if any(c in " \t" for c in text) and all(c.isprintable() or c == "\t" for c in text):
        raise TargetError(f"{echo(text)} holds white space: one target per argument or per line")


_URL_PORTS = {"http": "80", "https": "443", "ftp": "21", "ssh": "22", "ws": "80", "wss": "443"}


def _ports_of(text: str, token: str) -> PortRanges:
    if not text:
        raise TargetError(f"no ports after ':' in {echo(token)}")
    return parse_ports(text)


def _need_ports(default_ports: PortRanges | None, token: str, hint: str) -> PortRanges:
    if default_ports is None:
        raise TargetError(f"no port for {echo(token)}: write HOST:PORTS{hint}")
    return default_ports


def expand(targets: Iterable[Target], exclude: Exclusions | None = None) -> Iterator[Endpoint]:
    for target in targets:
        yield from target.endpoints(exclude)
