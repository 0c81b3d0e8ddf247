"""The target parser: what the user typed, turned into endpoints lazily.

Targets and port lists are expanded on demand so that `1-65535` or a file of millions of
lines never sits in memory; errors name the offending token (and file and line).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from .errors import TargetError

PortRanges = tuple[tuple[int, int], ...]

# Longest token echoed back in an error message, so a hostile line cannot flood stderr.
_ECHO = 60


def _echo(token: str) -> str:
    shown = token if len(token) <= _ECHO else token[:_ECHO] + "…"
    return repr(shown)


def parse_ports(text: str) -> PortRanges:
    """`22,80,8000-8100` → ((22, 22), (80, 80), (8000, 8100)); inclusive, 1-65535."""
    if not text:
        raise TargetError("empty port list")
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        lo_s, dash, hi_s = part.partition("-")
        lo = _port(lo_s, part)
        hi = _port(hi_s, part) if dash else lo
        if hi < lo:
            raise TargetError(f"port range {_echo(part)} runs backwards")
        ranges.append((lo, hi))
    return tuple(ranges)


def _port(text: str, part: str) -> int:
    # isdecimal() + ASCII rejects '+1', ' 1', non-ASCII digits and other things int() would accept.
    if not (text.isascii() and text.isdecimal()) or len(text) > 5:
        raise TargetError(f"bad port {_echo(part)}: ports are numbers 1-65535")
    value = int(text)
    if not 1 <= value <= 65535:
        raise TargetError(f"port {value} out of range 1-65535")
    return value


def count_ports(ranges: PortRanges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One destination port of a target, named as the user would write it."""

    target: str  # "host:port" or "[v6]:port"
    host: str  # as written, without brackets
    port: int


@dataclass(frozen=True, slots=True)
class Target:
    """A host and its ports, as one token on the command line or one line of a file."""

    host: str
    ports: PortRanges
    bracketed: bool  # written as [v6]; also forced for bare IPv6 hosts given with -p

    def label(self, port: int) -> str:
        return f"[{self.host}]:{port}" if self.bracketed else f"{self.host}:{port}"

    def endpoints(self) -> Iterator[Endpoint]:
        for lo, hi in self.ports:
            for port in range(lo, hi + 1):
                yield Endpoint(self.label(port), self.host, port)

    def count(self) -> int:
        return count_ports(self.ports)


def _check_host(host: str, token: str) -> None:
    if not host:
        raise TargetError(f"missing host in {_echo(token)}")
    if len(host) > 253:
        raise TargetError(f"host name too long in {_echo(token)}")
    if not host.isprintable() or any(c.isspace() for c in host):
        raise TargetError(f"bad character in host {_echo(host)}")
    if any(c in host for c in "[]/@#,"):
        raise TargetError(f"bad character in host {_echo(host)}")


def parse_target(
    token: str, default_ports: PortRanges | None = None, no_port_hint: str = ", or give -p"
) -> Target:
    """One `HOST:PORTS`, `[V6]:PORTS` or bare `HOST` (ports from -p)."""
    text = token.strip()
    if not text:
        raise TargetError("empty target")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(f"missing ']' in {_echo(token)}")
        host, rest = text[1:close], text[close + 1 :]
        _check_ipv6(host, token)
        if rest.startswith(":"):
            return Target(host, _ports_of(rest[1:], token), True)
        if rest:
            raise TargetError(f"expected ':' after ']' in {_echo(token)}")
        return Target(host, _need_ports(default_ports, token, no_port_hint), True)
    if text.count(":") > 1:
        # A bare IPv6 address: only valid with -p, since its last ':' is not a port separator.
        hint = f"write IPv6 addresses as [ADDR]:PORTS, e.g. [::1]:80 (got {_echo(token)})"
        try:
            _check_ipv6(text, token)
        except TargetError:
            raise TargetError(f"bad target: {hint}") from None
        if default_ports is None:
            raise TargetError(f"no port: {hint}{no_port_hint}")
        return Target(text, default_ports, True)
    host, colon, ports = text.partition(":")
    _check_host(host, token)
    if colon:
        return Target(host, _ports_of(ports, token), False)
    return Target(host, _need_ports(default_ports, token, no_port_hint), False)


def _ports_of(text: str, token: str) -> PortRanges:
    if not text:
        raise TargetError(f"no ports after ':' in {_echo(token)}")
    return parse_ports(text)


def _check_ipv6(host: str, token: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise TargetError(f"bad IPv6 address {_echo(host)} in {_echo(token)}") from None
    # ipaddress takes anything after '%' as a zone id; a zone is an interface name.
    if not host.isprintable() or any(c.isspace() or c in "/[]@#," for c in host):
        raise TargetError(f"bad character in host {_echo(host)}")


def _need_ports(default_ports: PortRanges | None, token: str, hint: str) -> PortRanges:
    if default_ports is None:
        raise TargetError(f"no port for {_echo(token)}: write HOST:PORTS{hint}")
    return default_ports


def read_targets(
    lines: Iterable[str], source: str, default_ports: PortRanges | None
) -> Iterator[Target]:
    """Targets from a file or stdin, one per line; blank lines and `#` comments skipped."""
    for number, line in enumerate(lines, 1):
        if number == 1:
            line = line.removeprefix("\ufeff")  # a BOM, as editors on some systems write
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            yield parse_target(text, default_ports)
        except TargetError as exc:
            raise TargetError(f"{source}, line {number}: {exc}") from None


def _open_file(path: str) -> IO[str]:
    try:
        return open(path, encoding="utf-8", errors="strict")
    except OSError as exc:
        raise TargetError(f"cannot read target file {path!r}: {exc.strerror}") from None


def iter_targets(
    tokens: Iterable[str], default_ports: PortRanges | None, stdin: IO[str] | None = None
) -> Iterator[Target]:
    """Every target of the command line in order, files and stdin read as they are reached."""
    for token in tokens:
        if token == "-":
            yield from _read_stream(stdin or sys.stdin, "<stdin>", default_ports)
        elif token.startswith("@"):
            path = token[1:]
            if not path:
                raise TargetError("missing file name after '@'")
            with _open_file(path) as handle:
                yield from _read_stream(handle, path, default_ports)
        else:
            yield parse_target(token, default_ports)


def _read_stream(
    handle: IO[str], source: str, default_ports: PortRanges | None
) -> Iterator[Target]:
    try:
        yield from read_targets(handle, source, default_ports)
    except UnicodeDecodeError:
        raise TargetError(f"{source}: not UTF-8 text") from None


def expand(targets: Iterable[Target]) -> Iterator[Endpoint]:
    for target in targets:
        yield from target.endpoints()


def parse_source(text: str) -> tuple[str, int]:
    """`-s ADDR[:PORT]`: `127.0.0.2`, `127.0.0.2:5000`, `::1`, `[::1]:5000` → (address, port)."""
    text = text.strip()
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise TargetError(f"bad source {_echo(text)}: write [ADDR]:PORT")
        if ":" not in address:
            raise TargetError(f"bad source {_echo(text)}: brackets are for IPv6 addresses")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        address, port_text = text, ""
    else:
        address, _, port_text = text.partition(":")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise TargetError(f"bad source address {_echo(address)}: give an IP address") from None
    if "%" in address and not address.isprintable():
        raise TargetError(f"bad character in source address {_echo(address)}")
    port = 0
    if port_text:
        port = _port(port_text, port_text)
    return address, port


def shard(targets: Iterable[Target], index: int, count: int) -> Iterator[Endpoint]:
    """Every `count`-th endpoint, starting at `index`, of the expanded targets, without
    building the endpoints that belong to other shards: worker processes split a sweep by
    port, interleaved, so each gets its share of open and closed ranges alike."""
    seen = 0  # endpoints before the current range, across all targets
    for target in targets:
        for lo, hi in target.ports:
            first = lo + (index - seen) % count
            for port in range(first, hi + 1, count):
                yield Endpoint(target.label(port), target.host, port)
            seen += hi - lo + 1
