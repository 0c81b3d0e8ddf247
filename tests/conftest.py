"""Fixtures shared by every test. The real-socket helpers behind them are in helpers.py
(importable from any test as `helpers`, see pytest's `pythonpath`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers import (
    Daemon,
    FullQueueListener,
    Netns,
    RecordingListener,
    can_netns,
    has_ipv6_loopback,
)
from hypothesis import settings

# CI explores the same examples every run, so a red build always reproduces; locally,
# hypothesis keeps searching new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def listener() -> Iterator[RecordingListener]:
    lst = RecordingListener()
    yield lst
    lst.close()


@pytest.fixture
def listener6() -> Iterator[RecordingListener]:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    lst = RecordingListener("::1")
    yield lst
    lst.close()


@pytest.fixture
def full_queue() -> Iterator[FullQueueListener]:
    lst = FullQueueListener()
    yield lst
    lst.close()


@pytest.fixture
def netns() -> Iterator[Netns]:
    reason = can_netns()
    if reason:
        pytest.skip(reason)
    ns = Netns()
    yield ns
    ns.delete()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running at the end are killed (by their pid)."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()
