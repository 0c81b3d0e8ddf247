"""Fixtures the fault tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DnsNetns, Netns


@pytest.fixture
def dns(netns: Netns, tmp_path: Path) -> Iterator[DnsNetns]:
    """A namespace whose resolver asks a DNS server of ours on its loopback (a name starting
    with `hang` is never answered; names outside .test are NXDOMAIN)."""
    d = DnsNetns(netns, tmp_path)
    yield d
    d.close()
