"""Splitting work, two ways.

- Between machines (`--shard I/N`, `probe run --shard`): an endpoint or target belongs to
  share `blake2b(name) mod N`, the same on every machine, Python and core, and dependent on
  its own name only, so N probers split one list without overlap or coordination.
- Between the worker processes of one sweep: every N-th endpoint, interleaved, so each
  worker gets its part of open and closed ranges alike.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ..errors import TargetError
from .chars import echo
from .ports import count_ports
from .targets import Endpoint, Target

if TYPE_CHECKING:
    from .exclusions import Exclusions

MAX_SHARDS = 1_000_000


def shard_of(name: str, count: int) -> int:
    """The share (0..count-1) a name belongs to: blake2b of its UTF-8 bytes (a lone surrogate
    kept as its bytes, so no name raises), 8 bytes big-endian, mod count. Not hash(), which
    is salted per process."""
    import hashlib  # sharding only: not on a sweep's start-up path

    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` → (I, N): share I (0-based) of N."""
    index_s, slash, count_s = text.partition("/")
    if not (slash and _is_small_number(index_s) and _is_small_number(count_s)):
        raise TargetError(f"bad shard {echo(text)}: write I/N, e.g. 0/3 (0-based)")
    index, count = int(index_s), int(count_s)
    if not 1 <= count <= MAX_SHARDS:
        raise TargetError(f"bad shard {echo(text)}: N must be 1-{MAX_SHARDS}")
    if index >= count:
        raise TargetError(f"bad shard {echo(text)}: I must be below N (shards are 0-based)")
    return index, count


def _is_small_number(text: str) -> bool:
    return text.isascii() and text.isdecimal() and len(text) <= 7


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
