"""Sharding a config's targets over N daemons: `probe run --shard I/N`.

A target belongs to shard `blake2b(name) mod N`, the rule of probe.syntax.sharding that
`check --shard` uses too. Its owner depends on its own name only, so every target has
exactly one owner among shards 0..N-1, and adding or removing a target moves no other
(changing N moves most of them: restart every shard with the new N).
No coordination and no ring: N independent daemons, placed by Kubernetes or systemd,
gathered by Prometheus.

Where the share comes from, first found wins: `--shard I/N`, then the environment
(`PROBE_SHARD=I/N`, or `PROBE_SHARD_INDEX` with `PROBE_SHARD_COUNT`, for a StatefulSet's
pod index or an Indexed Job's JOB_COMPLETION_INDEX), then the config's `[cluster] shard`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import UsageError
from ..syntax.sharding import parse_shard as parse_share
from ..syntax.sharding import shard_of

ENV_SHARD = "PROBE_SHARD"
ENV_INDEX = "PROBE_SHARD_INDEX"
ENV_COUNT = "PROBE_SHARD_COUNT"


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    count: int

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def owner(shard: Shard | None) -> Callable[[str], bool] | None:
    """Which names a shard keeps (load_config builds only those listed targets); None for
    no shard given, when the config's own [cluster] shard decides."""
    return None if shard is None else shard.owns


def parse_shard(text: str) -> Shard:
    """`I/N` with 0 <= I < N, by the one shard syntax (probe.syntax.sharding); ValueError
    says what is wrong."""
    return Shard(*parse_share(text.strip()))


def _checked(index: int, count: int) -> Shard:
    return parse_shard(f"{index}/{count}")


def shard_arg(text: str) -> Shard:
    """argparse type for --shard."""
    import argparse

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def shard_from_env(environ: Mapping[str, str] | None = None) -> Shard | None:
    """The share the environment sets, or None; UsageError names a bad variable."""
    env = os.environ if environ is None else environ
    text = env.get(ENV_SHARD, "").strip()
    if text:
        try:
            return parse_shard(text)
        except ValueError as exc:
            raise UsageError(f"{ENV_SHARD}: {exc}") from None
    index, count = env.get(ENV_INDEX, "").strip(), env.get(ENV_COUNT, "").strip()
    if not index and not count:
        return None
    if not index or not count:
        missing = ENV_INDEX if not index else ENV_COUNT
        raise UsageError(f"{missing} is not set: set both {ENV_INDEX} and {ENV_COUNT}")
    for name, value in ((ENV_INDEX, index), (ENV_COUNT, count)):
        if not (value.isascii() and value.isdecimal() and len(value) <= 7):
            raise UsageError(f"{name}: expected a whole number, got {value[:40]!r}")
    try:
        return _checked(int(index), int(count))
    except ValueError as exc:
        raise UsageError(f"{ENV_INDEX}/{ENV_COUNT}: {exc}") from None


def config_shard(config: object) -> Shard | None:
    """The config's `[cluster] shard`: None when absent or empty. Taken as the parsed
    (index, count) pair or as its "I/N" text; ValueError when the text is malformed."""
    cluster = getattr(config, "cluster", None)
    shard = getattr(cluster, "shard", None) if cluster is not None else None
    if not shard:
        return None
    if isinstance(shard, str):
        return parse_shard(shard)
    if isinstance(shard, Shard):
        return shard
    index, count = shard
    return _checked(int(index), int(count))
