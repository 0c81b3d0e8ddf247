"""The target parser: what the user typed, turned into endpoints lazily.

The only address and port syntax of probe: the CLI, target files, the config and `/probe`
all parse here. Targets, address sets (CIDR, octet ranges) and port lists are expanded on
demand so that `1-65535`, a `/8` or a file of millions of lines never sits in memory;
errors name the offending token (and file and line).

An IPv4 literal is four dotted decimal octets and nothing else: inet_aton's forms
(`2130706433`, `127.1`, `0x7f.0.0.1`, `0177.0.0.1`) are refused, never handed to a resolver
that would quietly turn them into some other address.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import sys
from collections.abc import Iterable, Iterator
from typing import IO

from .errors import TargetError
from .limits import MAX_LINE
from .plain import Frozen

__all__ = [
    "ALL_PORTS",
    "AddressSet",
    "Endpoint",
    "Exclusions",
    "PortRanges",
    "Source",
    "Target",
    "TargetError",
    "bounded_lines",
    "count_ports",
    "expand",
    "iter_targets",
    "join_host_port",
    "parse_endpoint",
    "parse_exclusions",
    "parse_ports",
    "parse_shard",
    "parse_source",
    "parse_source_spec",
    "parse_target",
    "read_exclusions",
    "read_targets",
    "shard",
]

PortRanges = tuple[tuple[int, int], ...]
Segments = tuple[tuple[int, int], ...]

ALL_PORTS: PortRanges = ((1, 65535),)
# IPv6 networks larger than this are refused: a /64 is already 2**64 addresses.
MAX_IPV6_HOST_BITS = 64

# Longest token echoed back in an error message, so a hostile line cannot flood stderr.
_ECHO = 60


def _echo(token: str) -> str:
    shown = token if len(token) <= _ECHO else token[:_ECHO] + "…"
    return repr(shown)


# -- ports ----------------------------------------------------------------------------------


def parse_ports(text: str) -> PortRanges:
    """`22,80,8000-8100` → ((22, 22), (80, 80), (8000, 8100)); inclusive, 1-65535.
    nmap's shorthands: `-` is every port, `N-` is N-65535, `-N` is 1-N."""
    if not text:
        raise TargetError("empty port list")
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        lo_s, dash, hi_s = part.partition("-")
        if dash and not lo_s and not hi_s:
            lo, hi = 1, 65535
        else:
            lo = _port(lo_s, part) if lo_s or not dash else 1
            hi = (_port(hi_s, part) if hi_s else 65535) if dash else lo
        if hi < lo:
            raise TargetError(f"port range {_echo(part)} runs backwards")
        ranges.append((lo, hi))
    return tuple(ranges)


def _port(text: str, part: str, lowest: int = 1) -> int:
    # isdecimal() + ASCII rejects '+1', ' 1', non-ASCII digits and other things int() would accept.
    if not (text.isascii() and text.isdecimal()) or len(text) > 5:
        raise TargetError(f"bad port {_echo(part)}: ports are numbers {lowest}-65535")
    value = int(text)
    if not lowest <= value <= 65535:
        raise TargetError(f"port {value} out of range {lowest}-65535")
    return value


def count_ports(ranges: PortRanges) -> int:
    return sum(hi - lo + 1 for lo, hi in ranges)


# -- address sets: CIDR and octet ranges ----------------------------------------------------


class AddressSet(Frozen):
    """Every address of a CIDR or an octet range, never materialised: IPv4 is four octet
    ranges (a CIDR is one too: a partial octet and full ones after it), IPv6 one 128-bit
    range. Addresses are numbered 0..count()-1 in ascending order."""

    __slots__ = ("segments", "version")
    version: int  # 4 or 6
    segments: Segments  # (lo, hi) per segment, most significant first

    def __init__(self, version: int, segments: Segments) -> None:
        self._set(locals())

    @property
    def _width(self) -> int:
        return 8 if self.version == 4 else 128

    def count(self) -> int:
        total = 1
        for lo, hi in self.segments:
            total *= hi - lo + 1
        return total

    def __getitem__(self, index: int) -> str:
        parts: list[int] = []
        for lo, hi in reversed(self.segments):
            index, offset = divmod(index, hi - lo + 1)
            parts.append(lo + offset)
        parts.reverse()
        if self.version == 4:
            return ".".join(map(str, parts))
        return str(ipaddress.IPv6Address(parts[0]))

    def __iter__(self) -> Iterator[str]:
        if self.version == 4:
            octets = [range(lo, hi + 1) for lo, hi in self.segments]
            for a, b, c, d in itertools.product(*octets):
                yield f"{a}.{b}.{c}.{d}"
        else:
            ((lo, hi),) = self.segments
            for value in range(lo, hi + 1):
                yield str(ipaddress.IPv6Address(value))

    def contains_int(self, value: int) -> bool:
        for lo, hi in reversed(self.segments):
            part = value & ((1 << self._width) - 1)
            if not lo <= part <= hi:
                return False
            value >>= self._width
        return True

    def intervals(self, limit: int) -> list[tuple[int, int]] | None:
        """The set as integer intervals, or None when that takes more than `limit` of them."""
        width = self._width
        fixed = list(self.segments)
        # Trailing full segments join into one interval per value of the ones before.
        full = (1 << width) - 1
        tail = 0
        while fixed and fixed[-1] == (0, full):
            fixed.pop()
            tail += 1
        if not fixed:
            return [(0, (1 << (width * tail)) - 1)]
        *head, (last_lo, last_hi) = fixed
        n = 1
        for lo, hi in head:
            n *= hi - lo + 1
        if n > limit:
            return None
        span = width * tail
        out: list[tuple[int, int]] = []
        for values in itertools.product(*(range(lo, hi + 1) for lo, hi in head)):
            prefix = 0
            for v in values:
                prefix = (prefix << width) | v
            base = prefix << width
            out.append(((base | last_lo) << span, (((base | last_hi) + 1) << span) - 1))
        return out


def _cidr_set(address: str, prefix_text: str, token: str) -> AddressSet:
    if not (prefix_text.isascii() and prefix_text.isdecimal()) or len(prefix_text) > 3:
        raise TargetError(f"bad prefix length {_echo(prefix_text)} in {_echo(token)}")
    prefix = int(prefix_text)
    if ":" in address:
        _check_ipv6(address, token)
        if "%" in address:
            raise TargetError(f"a network cannot carry a zone id: {_echo(token)}")
        if prefix > 128:
            raise TargetError(f"prefix length /{prefix} out of range 0-128 in {_echo(token)}")
        if 128 - prefix > MAX_IPV6_HOST_BITS:
            raise TargetError(
                f"IPv6 network {_echo(token)} is too large: the largest is a /"
                f"{128 - MAX_IPV6_HOST_BITS}"
            )
        net6 = ipaddress.IPv6Network(f"{address}/{prefix}", strict=False)
        return AddressSet(6, ((int(net6.network_address), int(net6.broadcast_address)),))
    octets = _ipv4_segments(address, token, ranges=False)
    if octets is None:
        raise TargetError(f"a network needs an IP address before '/': {_echo(token)}")
    if prefix > 32:
        raise TargetError(f"prefix length /{prefix} out of range 0-32 in {_echo(token)}")
    segments: list[tuple[int, int]] = []
    for i, (value, _) in enumerate(octets):
        keep = min(8, max(0, prefix - 8 * i))  # network bits in this octet
        host_mask = (1 << (8 - keep)) - 1
        segments.append((value & ~host_mask & 0xFF, (value & ~host_mask & 0xFF) | host_mask))
    return AddressSet(4, tuple(segments))


def _is_numeric_label(label: str) -> bool:
    if not label.isascii():
        return False
    if label[:2].lower() == "0x":
        return True  # hexadecimal, as inet_aton would take it
    return any(c.isdigit() for c in label) and all(c.isdigit() or c == "-" for c in label)


def _ipv4_segments(host: str, token: str, *, ranges: bool) -> Segments | None:
    """Four octets (or octet ranges) if `host` is an IPv4 attempt, None if it is a name.

    The rule: a host whose last label is numeric is meant as an IPv4 address, and an IPv4
    address is four dotted decimal octets 0-255 without leading zeros."""
    labels = host.removesuffix(".").split(".")
    if not _is_numeric_label(labels[-1]):
        return None
    hint = "an IPv4 address is four decimal octets 0-255, like 127.0.0.1"
    if len(labels) != 4 or host.endswith("."):
        raise TargetError(f"bad IPv4 address {_echo(host)}: {hint}")
    segments: list[tuple[int, int]] = []
    for label in labels:
        lo_s, dash, hi_s = label.partition("-")
        if dash and not ranges:
            raise TargetError(f"bad IPv4 address {_echo(host)}: an octet range is not one address")
        lo = _octet(lo_s, host, hint)
        hi = _octet(hi_s, host, hint) if dash else lo
        if hi < lo:
            raise TargetError(f"octet range {_echo(label)} runs backwards in {_echo(host)}")
        segments.append((lo, hi))
    return tuple(segments)


def _octet(text: str, host: str, hint: str) -> int:
    if not (text.isascii() and text.isdecimal()):
        if text[:2].lower() == "0x":
            raise TargetError(f"bad IPv4 address {_echo(host)}: hexadecimal octets are refused")
        raise TargetError(f"bad IPv4 address {_echo(host)}: {hint}")
    if len(text) > 1 and text[0] == "0":
        raise TargetError(
            f"bad IPv4 address {_echo(host)}: octet {_echo(text)} has a leading zero "
            "(octal forms are refused)"
        )
    if len(text) > 3 or int(text) > 255:
        raise TargetError(f"bad IPv4 address {_echo(host)}: octet {_echo(text)} is over 255")
    return int(text)


# -- targets --------------------------------------------------------------------------------


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


_BAD_HOST_CHARS = "[]/@#,"


def _check_host(host: str, token: str) -> AddressSet | None:
    """Validate a host written without brackets; an octet range gives its address set."""
    if not host:
        raise TargetError(f"missing host in {_echo(token)}")
    if len(host) > 253:
        raise TargetError(f"host name too long in {_echo(token)}")
    if not host.isprintable() or any(c.isspace() for c in host):
        raise TargetError(f"bad character in host {_echo(host)}")
    if any(c in host for c in _BAD_HOST_CHARS):
        raise TargetError(f"bad character in host {_echo(host)}")
    segments = _ipv4_segments(host, token, ranges=True)
    if segments is None or "-" not in host:
        return None
    return AddressSet(4, segments)


def _cidr_of(text: str, token: str) -> AddressSet:
    """`ADDR/N` → every address of that network."""
    address, _, prefix = text.partition("/")
    if not address:
        raise TargetError(f"missing address before '/' in {_echo(token)}")
    if not address.isprintable() or any(c.isspace() or c in "[]@#,/" for c in address):
        raise TargetError(f"bad character in host {_echo(address)}")
    return _cidr_set(address, prefix, token)


def parse_target(
    token: str, default_ports: PortRanges | None = None, no_port_hint: str = ", or give -p"
) -> Target:
    """One `HOST:PORTS`, `[V6]:PORTS`, `CIDR[:PORTS]`, `A.B.C.D-E[:PORTS]` or bare `HOST`
    (ports from -p)."""
    text = token.strip()
    if not text:
        raise TargetError("empty target")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(f"missing ']' in {_echo(token)}")
        host, rest = text[1:close], text[close + 1 :]
        addresses: AddressSet | None = None
        if rest.startswith("/"):  # [::1]/128:22
            prefix, colon, port_text = rest[1:].partition(":")
            host, rest = f"{host}/{prefix}", colon + port_text
        if "/" in host:  # [::1/128]:22 or the form above
            addresses = _cidr_of(host, token)
        else:
            _check_ipv6(host, token)
        if addresses is not None and addresses.version != 6:
            raise TargetError(f"brackets are for IPv6 addresses: {_echo(token)}")
        if rest.startswith(":"):
            return Target(host, _ports_of(rest[1:], token), True, addresses)
        if rest:
            raise TargetError(f"expected ':' after ']' in {_echo(token)}")
        return Target(host, _need_ports(default_ports, token, no_port_hint), True, addresses)
    if text.count(":") > 1:
        # A bare IPv6 address or network: only valid with -p, since its last ':' is not a
        # port separator.
        hint = f"write IPv6 addresses as [ADDR]:PORTS, e.g. [::1]:80 (got {_echo(token)})"
        addresses = None
        if "/" in text:
            addresses = _cidr_of(text, token)
        else:
            try:
                _check_ipv6(text, token)
            except TargetError:
                raise TargetError(f"bad target: {hint}") from None
        if default_ports is None:
            raise TargetError(f"no port: {hint}{no_port_hint}")
        return Target(text, default_ports, True, addresses)
    host, colon, ports = text.partition(":")
    addresses = _cidr_of(host, token) if "/" in host else _check_host(host, token)
    port_ranges = (
        _ports_of(ports, token) if colon else _need_ports(default_ports, token, no_port_hint)
    )
    return Target(host, port_ranges, False, addresses)


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


# -- one HOST:PORT ------------------------------------------------------------------------


def parse_endpoint(
    text: str, *, allow_port_zero: bool = False, allow_names: bool = True
) -> tuple[str, int]:
    """One `HOST:PORT` or `[IPV6]:PORT` → (host without brackets, port): a config target's
    `address`, `metrics.listen` (port 0: the kernel picks) and `GET /probe?target=`."""
    lowest = 0 if allow_port_zero else 1
    example = "HOST:PORT or [IPV6]:PORT"
    if text != text.strip():
        raise TargetError(f"leading or trailing space in {_echo(text)}")
    if not text:
        raise TargetError(f"empty address: write {example}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(f"missing ']' in {_echo(text)}")
        host, rest = text[1:close], text[close + 1 :]
        _check_ipv6(host, text)
        if not rest:
            raise TargetError(f"missing port in {_echo(text)}: write [{host}]:PORT")
        if not rest.startswith(":"):
            raise TargetError(f"expected ':' after ']' in {_echo(text)}")
        port_text = rest[1:]
    elif text.count(":") > 1:
        head, _, tail = text.rpartition(":")
        if _is_ipv6(head) and "/" not in head:
            raise TargetError(f'IPv6 addresses need brackets: write "[{head}]:{tail}"')
        if _is_ipv6(text):
            raise TargetError(f'IPv6 addresses need brackets and a port: write "[{text}]:PORT"')
        raise TargetError(f"too many ':' in {_echo(text)}: write IPv6 addresses as [ADDR]:PORT")
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            raise TargetError(f"missing port in {_echo(text)}: write {example}")
        if "/" in host:
            raise TargetError(f"one address expected, not a network: {_echo(text)}")
        if _check_host(host, text) is not None:
            raise TargetError(f"one address expected, not a range: {_echo(text)}")
        if not allow_names and _ipv4_segments(host, text, ranges=False) is None:
            raise TargetError(f"an IP address is needed, not the name {_echo(host)}")
    if not port_text:
        raise TargetError(f"no port after ':' in {_echo(text)}")
    return host, _port(port_text, port_text, lowest)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# -- the tcping habit: `probe check HOST PORT` ------------------------------------------------


def _is_bare_host(token: str) -> bool:
    """A host token with no port written (so a number after it can be its port)."""
    if token in ("", "-") or token.startswith("@") or token.startswith("-"):
        return False
    if token.isascii() and token.isdecimal():
        return False
    if token.startswith("["):
        return "]:" not in token and not token.rstrip("]").endswith(":")
    return token.count(":") != 1


def join_host_port(tokens: list[str], have_default_ports: bool) -> list[str]:
    """`HOST PORT` (tcping's habit) → `HOST:PORT`. A bare number is never an address: one
    that cannot be a port of the host before it is refused with a hint."""
    out: list[str] = []
    joinable = False  # the last token of `out` is a host without a port
    for token in tokens:
        if not (token.isascii() and token.isdecimal()):
            out.append(token)
            joinable = _is_bare_host(token)
            continue
        if not joinable:
            previous = out[-1] if out else ""
            if previous.count(":") == 1 or previous.startswith("["):
                hint = f"did you mean {previous},{token}?"  # another port of that target
            elif len(token) <= 5 and 1 <= int(token) <= 65535:
                hint = f"did you mean HOST:{token}?"
            else:
                hint = "an IPv4 address is four decimal octets, like 127.0.0.1"
            raise TargetError(
                f"{_echo(token)} is not a target (a number is not an address): {hint}"
            )
        host = out[-1]
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        if have_default_ports:
            raise TargetError(
                f"{_echo(token)} after {_echo(host)} is not a target while -p gives the ports: "
                f"did you mean {shown}:{token}?"
            )
        if len(token) > 5 or not 1 <= int(token) <= 65535:
            raise TargetError(
                f"{_echo(token)} is not a port (1-65535) nor a target: did you mean {shown}:PORT?"
            )
        out[-1] = f"{shown}:{int(token)}"
        joinable = False
    return out


# -- files and streams ----------------------------------------------------------------------


def bounded_lines(handle: IO[str], source: str, limit: int = MAX_LINE) -> Iterator[str]:
    """Lines of a text stream, each read with a bound: a line longer than `limit` (or a
    stream with no newline at all, like /dev/zero) is an error, never a MemoryError."""
    number = 0
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not (len(line) == limit + 1 and line.endswith("\n")):
            raise TargetError(f"{source}, line {number}: line too long (over {limit} bytes)")
        yield line


def read_targets(
    lines: Iterable[str], source: str, default_ports: PortRanges | None
) -> Iterator[Target]:
    """Targets from a file or stdin, one per line; blank lines and `#` comments skipped."""
    for number, line in enumerate(lines, 1):
        if number == 1:
            line = line.removeprefix("\ufeff")  # a BOM, as editors on some systems write
        if len(line) > MAX_LINE + 1:
            raise TargetError(f"{source}, line {number}: line too long (over {MAX_LINE} bytes)")
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            yield parse_target(text, default_ports)
        except TargetError as exc:
            raise TargetError(f"{source}, line {number}: {exc}") from None


def _open_file(path: str, what: str = "target") -> IO[str]:
    try:
        return open(path, encoding="utf-8", errors="strict")
    except OSError as exc:
        raise TargetError(f"cannot read {what} file {path!r}: {exc.strerror}") from None


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
        yield from read_targets(bounded_lines(handle, source), source, default_ports)
    except UnicodeDecodeError:
        raise TargetError(f"{source}: not UTF-8 text") from None


def expand(targets: Iterable[Target], exclude: Exclusions | None = None) -> Iterator[Endpoint]:
    for target in targets:
        yield from target.endpoints(exclude)


def shard(
    targets: Iterable[Target], index: int, count: int, exclude: Exclusions | None = None
) -> Iterator[Endpoint]:
    """Every `count`-th endpoint, starting at `index`, of the expanded targets (before
    exclusions, so shards stay stable), without building the endpoints that belong to other
    shards: worker processes split a sweep interleaved, so each gets its share of open and
    closed ranges alike."""
    seen = 0  # endpoints before the current target, across all targets
    for target in targets:
        if target.addresses is None:
            host = target.host
            skip = exclude is not None and exclude.contains(host)
            for lo, hi in target.ports:
                first = lo + (index - seen) % count
                if not skip:
                    for port in range(first, hi + 1, count):
                        yield Endpoint(target.label(port), host, port)
                seen += hi - lo + 1
            continue
        per_host = count_ports(target.ports)
        starts = list(itertools.accumulate((hi - lo + 1 for lo, hi in target.ports), initial=0))
        total = target.count()
        addresses = target.addresses
        for j in range((index - seen) % count, total, count):
            h, k = divmod(j, per_host)
            host = addresses[h]
            if exclude is not None and exclude.contains(host):
                continue
            r = bisect.bisect_right(starts, k) - 1
            port = target.ports[r][0] + k - starts[r]
            yield Endpoint(target.label(port, host), host, port)
        seen += total


# -- -s ADDR[:PORT] ------------------------------------------------------------------------


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
    if not port_text:
        return Source(address)
    lo_s, dash, hi_s = port_text.partition("-")
    if dash and not allow_range:
        raise TargetError(f"bad port {_echo(port_text)}: one local port expected")
    lo = _port(lo_s, port_text)
    hi = _port(hi_s, port_text) if dash else lo
    if hi < lo:
        raise TargetError(f"source port range {_echo(port_text)} runs backwards")
    return Source(address, lo, hi)


# -- --shard I/N, [cluster] shard ----------------------------------------------------------

MAX_SHARDS = 1_000_000


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` → (I, N): share I (0-based) of N."""
    index_s, slash, count_s = text.partition("/")
    if not (slash and _is_small_number(index_s) and _is_small_number(count_s)):
        raise TargetError(f"bad shard {_echo(text)}: write I/N, e.g. 0/3 (0-based)")
    index, count = int(index_s), int(count_s)
    if not 1 <= count <= MAX_SHARDS:
        raise TargetError(f"bad shard {_echo(text)}: N must be 1-{MAX_SHARDS}")
    if index >= count:
        raise TargetError(f"bad shard {_echo(text)}: I must be below N (shards are 0-based)")
    return index, count


def _is_small_number(text: str) -> bool:
    return text.isascii() and text.isdecimal() and len(text) <= 7


# -- exclusions -----------------------------------------------------------------------------

# An octet range that would take more intervals than this is matched octet by octet.
_INTERVAL_LIMIT = 4096
_MAPPED = 0xFFFF << 32  # ::ffff:0.0.0.0, where IPv4-mapped IPv6 addresses begin


class Exclusions:
    """Addresses never probed (`--exclude`, `--exclude-file`): sorted, merged integer
    intervals searched by bisection, plus the rare octet range too scattered for intervals."""

    def __init__(self, sets: Iterable[AddressSet] = ()) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        self._patterns: list[AddressSet] = []
        for addresses in sets:
            got = addresses.intervals(_INTERVAL_LIMIT)
            if got is None:
                self._patterns.append(addresses)
                continue
            spans[addresses.version].extend(got)
            if addresses.version == 6:  # ::ffff:a.b.c.d entries exclude a.b.c.d too
                for lo, hi in got:
                    lo, hi = max(lo, _MAPPED), min(hi, _MAPPED + 0xFFFFFFFF)
                    if lo <= hi:
                        spans[4].append((lo - _MAPPED, hi - _MAPPED))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, intervals in spans.items():
            merged: list[tuple[int, int]] = []
            for lo, hi in sorted(intervals):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                else:
                    merged.append((lo, hi))
            self._starts[version] = [lo for lo, _ in merged]
            self._ends[version] = [hi for _, hi in merged]

    def __bool__(self) -> bool:
        return bool(self._patterns or self._starts[4] or self._starts[6])

    def contains(self, ip: str) -> bool:
        """Whether an address is excluded; a name (or anything not an address) is not.
        An IPv4-mapped IPv6 address is judged as the IPv4 address it carries."""
        try:
            address = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        version, value = address.version, int(address)
        starts = self._starts[version]
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0 and value <= self._ends[version][i]:
            return True
        return any(p.version == version and p.contains_int(value) for p in self._patterns)


def _exclusion_set(item: str) -> AddressSet:
    text = item[1:-1] if item.startswith("[") and item.endswith("]") else item
    if "/" in text:
        return _cidr_of(text, item)
    if ":" in text:
        _check_ipv6(text, item)
        if "%" in text:
            raise TargetError(f"bad exclusion {_echo(item)}: no zone ids")
        value = int(ipaddress.IPv6Address(text))
        return AddressSet(6, ((value, value),))
    segments = _ipv4_segments(text, item, ranges=True)
    if segments is None:
        raise TargetError(f"bad exclusion {_echo(item)}: give IP addresses, CIDRs or octet ranges")
    return AddressSet(4, segments)


def _exclusion_items(text: str) -> Iterator[str]:
    yield from text.replace(",", " ").split()


def parse_exclusions(text: str) -> Exclusions:
    """`--exclude 127.0.0.5,127.0.1.0/24,127.0.2.1-9,::1`."""
    return Exclusions(_exclusion_set(item) for item in _exclusion_items(text))


def read_exclusions(path: str) -> Exclusions:
    """`--exclude-file FILE`: one or more per line, `#` comments; errors name file and line."""
    sets: list[AddressSet] = []
    with _open_file(path, "exclude") as handle:
        try:
            for number, line in enumerate(bounded_lines(handle, path), 1):
                for item in _exclusion_items(line.split("#", 1)[0]):
                    try:
                        sets.append(_exclusion_set(item))
                    except TargetError as exc:
                        raise TargetError(f"{path}, line {number}: {exc}") from None
        except UnicodeDecodeError:
            raise TargetError(f"{path}: not UTF-8 text") from None
    return Exclusions(sets)
