"""The source port allocator (probe/engine/ports.py) on real sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from probe.engine.ports import PortRange, fit_to_range


def free_block(n: int) -> int:
    """The first of n consecutive local ports that bind now (outside the ephemeral range
    where possible, so the kernel is unlikely to hand them to anyone meanwhile)."""
    for lo in range(20000, 30000, n):
        socks = []
        try:
            for p in range(lo, lo + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return lo
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port block")


@pytest.fixture
def socks() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def test_round_robin_and_one_attempt_per_port() -> None:
    r = PortRange("127.0.0.1", 100, 102)
    assert [r.take(), r.take(), r.take()] == [100, 101, 102]
    assert r.take() is None  # all held
    r.release(101)
    assert r.take() == 101
    r.release(100)
    r.release(102)
    assert r.take() == 102  # round-robin goes on from where it was, not back to the start
    assert r.take() == 100


def test_bind_takes_ports_in_turn(socks: list[socket.socket]) -> None:
    lo = free_block(4)
    r = PortRange("127.0.0.1", lo, lo + 3)
    for want in range(lo, lo + 4):
        s = socket.socket()
        socks.append(s)
        assert r.bind(s) == want
        assert s.getsockname() == ("127.0.0.1", want)
    spare = socket.socket()
    socks.append(spare)
    assert r.bind(spare) is None  # every port held by one of ours: a shortage, not an error


def test_a_port_another_socket_holds_is_skipped(socks: list[socket.socket]) -> None:
    lo = free_block(3)
    other = socket.socket()  # a listener on lo+1: bind() there fails even with SO_REUSEADDR
    socks.append(other)
    other.bind(("127.0.0.1", lo + 1))
    other.listen()
    r = PortRange("127.0.0.1", lo, lo + 2)
    got = []
    for _ in range(2):
        s = socket.socket()
        socks.append(s)
        got.append(r.bind(s))
    assert got == [lo, lo + 2]
    assert r.skipped == 1
    s = socket.socket()
    socks.append(s)
    assert r.bind(s) is None


def test_fit_to_range() -> None:
    assert fit_to_range(50, PortRange("127.0.0.1", 1000, 1003)) == 4
    assert fit_to_range(3, PortRange("127.0.0.1", 1000, 1003)) == 3
    assert fit_to_range(50, None) == 50


def test_bad_ranges_are_refused() -> None:
    for lo, hi in ((0, 5), (5, 4), (1, 65536)):
        with pytest.raises(ValueError):
            PortRange("127.0.0.1", lo, hi)
