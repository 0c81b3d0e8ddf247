"""What this machine lets one process hold open, and the concurrency that fits inside it."""

from __future__ import annotations

import os

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

DEFAULT_CONCURRENCY = 1000
# Descriptors kept back for the loop, stdio, log files, the metrics listener and the resolver.
RESERVE = 32


def raise_nofile() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    if resource is None:
        return 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def fds_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the listing's own descriptor
    except OSError:
        return 16


def fit_concurrency(requested: int | None) -> tuple[int, int]:
    """(concurrency to use, the most the open-files limit allows) for a request (None = ours)."""
    room = max(1, raise_nofile() - fds_in_use() - RESERVE)
    wanted = DEFAULT_CONCURRENCY if requested is None else requested
    return max(1, min(wanted, room)), room
