"""What one share of a plan is: its part of the engine's limits and pacing, and which
endpoints it takes. Both runners (the native core's and the asyncio engine's) use it."""

from __future__ import annotations

from collections.abc import Callable

from ..engine import EngineOptions
from ..syntax.sharding import shard_of
from .plan import Plan

Progress = Callable[[int, int], None]  # (attempts, open) so far, every FLUSH_EVERY


def share_options(plan: Plan, index: int, count: int) -> EngineOptions:
    """A share's engine: its part of -C and of --rate, its rate slots interleaved with the
    other shares' (share i of N starts at epoch + i/R, then every N/R)."""
    options = plan.options
    rate = options.rate
    epoch = None
    if rate is not None and plan.rate_epoch is not None:
        epoch = plan.rate_epoch + index / rate
    return options.replace(
        concurrency=max(1, -(-options.concurrency // count)),
        rate=None if rate is None else rate / count,
        rate_epoch=epoch,
    )


def in_shard(target: str, shard_spec: tuple[int, int]) -> bool:
    """`--shard I/N`: the endpoint's name belongs to share I by the one sharding rule."""
    index, count = shard_spec
    return shard_of(target, count) == index
