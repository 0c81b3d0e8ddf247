"""Addresses never probed (`--exclude`, `--exclude-file`); the same set, built from
networks, is the daemon's allow-list (`probe_allow`, for /probe and the mesh page)."""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Iterator

from ..errors import TargetError
from .addresses import AddressSet
from .chars import echo
from .files import bounded_lines, open_file
from .ip import check_ipv6, cidr_of, ipv4_segments

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
        self._merge(spans)

    def _merge(self, spans: dict[int, list[tuple[int, int]]]) -> None:
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, intervals in spans.items():
            merged = merge_spans(intervals)
            self._starts[version] = [lo for lo, _ in merged]
            self._ends[version] = [hi for _, hi in merged]

    @classmethod
    def union(cls, parts: Iterable[Exclusions]) -> Exclusions:
        """Every part's addresses as one set (`--exclude` more than once, `--exclude-file`)."""
        whole = cls()
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for part in parts:
            part_spans, scattered = part.spans()
            for version in (4, 6):
                spans[version].extend(part_spans[version])
            whole._patterns.extend(scattered)
        whole._merge(spans)
        return whole

    def __bool__(self) -> bool:
        return bool(self._patterns or self._starts[4] or self._starts[6])

    def spans(self) -> tuple[dict[int, list[tuple[int, int]]], list[AddressSet]]:
        """The merged intervals per IP version (IPv4-mapped entries in IPv4's too) and the
        scattered octet ranges: what `contains` searches, for the native core to search."""
        spans = {v: list(zip(self._starts[v], self._ends[v], strict=True)) for v in (4, 6)}
        return spans, list(self._patterns)

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


def allow_list(
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> Exclusions:
    """Networks as an address set: the `--exclude` lookup (IPv4-mapped IPv6 addresses
    judged as the IPv4 address they carry, where the packets really go; zone ids dropped)."""
    sets: list[AddressSet] = []
    for net in networks:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if net.version == 6:
            sets.append(AddressSet(6, ((lo, hi),)))
        else:
            octets = tuple(((lo >> s) & 0xFF, (hi >> s) & 0xFF) for s in (24, 16, 8, 0))
            sets.append(AddressSet(4, octets))
    return Exclusions(sets)


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Inclusive integer intervals sorted, with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _exclusion_set(item: str) -> AddressSet:
    text = item[1:-1] if item.startswith("[") and item.endswith("]") else item
    if "/" in text:
        return cidr_of(text, item)
    if ":" in text:
        check_ipv6(text, item)
        if "%" in text:
            raise TargetError(f"bad exclusion {echo(item)}: no zone ids")
        value = int(ipaddress.IPv6Address(text))
        return AddressSet(6, ((value, value),))
    segments = ipv4_segments(text, item, ranges=True)
    if segments is None:
        raise TargetError(f"bad exclusion {echo(item)}: give IP addresses, CIDRs or octet ranges")
    return AddressSet(4, segments)


def _exclusion_items(text: str) -> Iterator[str]:
    yield from text.replace(",", " ").split()


def parse_exclusions(text: str) -> Exclusions:
    """`--exclude 127.0.0.5,127.0.1.0/24,127.0.2.1-9,::1`."""
    return Exclusions(_exclusion_set(item) for item in _exclusion_items(text))


def read_exclusions(path: str) -> Exclusions:
    """`--exclude-file FILE`: one or more per line, `#` comments; errors name file and line."""
    sets: list[AddressSet] = []
    with open_file(path, "exclude") as handle:
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
