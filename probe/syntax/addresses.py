"""Address sets: every address of a CIDR or an octet range, numbered but never listed."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator

from ..address import ip_text
from ..plain import Frozen

Segments = tuple[tuple[int, int], ...]


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
        return ip_text(ipaddress.IPv6Address(parts[0]))

    def __iter__(self) -> Iterator[str]:
        if self.version == 4:
            octets = [range(lo, hi + 1) for lo, hi in self.segments]
            for a, b, c, d in itertools.product(*octets):
                yield f"{a}.{b}.{c}.{d}"
        else:
            ((lo, hi),) = self.segments
            for value in range(lo, hi + 1):
                yield ip_text(ipaddress.IPv6Address(value))

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
