"""In-process tests of the connect engine and `probe_endpoints`, against real loopback sockets.

Everything here connects only to 127.0.0.0/8 and ::1, and resolves no name but `localhost`
(from /etc/hosts). Outcomes are made by the kernel: a listener (open), a bound port that
does not listen (refused), a listener whose accept queue is full (timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import itertools
import json
import os
import random
import re
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import (
    CONTRACT_KEYS,
    FullQueueListener,
    RecordingListener,
    closed_port,
    socket_inodes,
)

from probe.check import engine_run
from probe.check.result import ShareResult
from probe.engine import Attempt, Engine, EngineOptions
from probe.engine.core import RATE_SLACK
from probe.loop import run as run_on_production_loop
from probe.output.jsonl import record_json
from probe.record import Record
from probe.resolve import Address, Resolver
from probe.syntax import Endpoint, expand, parse_target

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
V4 = Address(socket.AF_INET, "127.0.0.1")
SYN_SENT = "02"
LISTEN = "0A"
T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------------


def as_json(rec: Record) -> dict[str, Any]:
    """The record as written in JSON, parsed back (key order kept)."""
    out: dict[str, Any] = json.loads(record_json(rec))
    return out


async def check(
    *specs: str,
    options: EngineOptions | None = None,
    resolver: Resolver | None = None,
    count: int = 1,
    interval: float = 0.05,
) -> tuple[ShareResult, list[Record]]:
    """`probe_endpoints` over target tokens; every record it wrote, in order."""
    records: list[Record] = []
    engine = Engine(options or EngineOptions(timeout=1.0, concurrency=50))
    run = counted_check(
        expand(parse_target(s) for s in specs),
        engine,
        resolver or Resolver(),
        records.append,
        count=count,
        interval=interval,
    )
    result = await bounded(run)
    assert engine.closed, "probe_endpoints must close the engine"
    return result, records


async def counted_check(
    endpoints: Iterable[Endpoint],
    engine: Engine,
    resolver: Resolver,
    on_record: Callable[[Record], None],
    **kw: Any,
) -> ShareResult:
    """`probe_endpoints` with the outcomes counted as a share's tally counts them (the records
    it was handed); targets and exclusions are the runner's own."""
    result = ShareResult()

    def counted(rec: Record) -> None:
        on_record(rec)
        result.outcomes[rec.outcome] += 1

    await engine_run.probe_endpoints(endpoints, engine, resolver, counted, result, **kw)
    return result


async def bounded(aw: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
    """Await with a limit: a regression that hangs fails its test instead of the suite."""
    return await asyncio.wait_for(aw, timeout)


def ports_spec(host: str, ports: Iterable[int]) -> str:
    return f"{host}:{','.join(str(p) for p in ports)}"


def endpoint(host: str, port: int) -> Endpoint:
    return next(parse_target(f"{host}:{port}").endpoints())


def ephemeral_range() -> tuple[int, int]:
    lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(lo), int(hi)


def tcp_table() -> list[tuple[str, int, int, str]]:
    """(local ip hex, local port, remote port, state) for every TCP socket in /proc/net."""
    rows: list[tuple[str, int, int, str]] = []
    found = False
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        found = True
        for line in text.splitlines()[1:]:
            fields = line.split()
            local_ip, local_port = fields[1].rsplit(":", 1)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            rows.append((local_ip, int(local_port, 16), remote_port, fields[3]))
    if not found:
        pytest.skip("no /proc/net/tcp on this machine")
    return rows


def syn_sent_to(port: int) -> list[int]:
    """Local ports of the sockets waiting (SYN_SENT) for an answer from `port`."""
    return [lport for _, lport, rport, state in tcp_table() if rport == port and state == SYN_SENT]


def syn_sent_gone(port: int, within: float = 0.5) -> bool:
    """No socket waits on `port` any more. A closed one may linger in /proc/net/tcp for a
    moment; a leaked one stays for seconds (SYN retransmits)."""
    deadline = time.monotonic() + within
    while syn_sent_to(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def resends_by(ms: float) -> int:
    """The fewest SYNs Linux has resent `ms` after the first, unanswered: 1 s initial RTO,
    doubling (1, 3, 7, 15 s). (Kernels with tcp_syn_linear_timeouts resend sooner.)"""
    return sum(ms >= at for at in (1000, 3000, 7000, 15000))


def new_sockets(before: set[str]) -> int:
    """Sockets this process holds now that it did not hold at `before` (socket_inodes of
    this process): another test's socket closed meanwhile (collected garbage) is no change."""
    return len(socket_inodes(os.getpid()) - before)


def open_fds() -> dict[int, str]:
    """This process's descriptors and what each one is: a failure names what was left."""
    fds: dict[int, str] = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            fds[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
    return fds


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def most_in_window(starts: Iterable[float], width: float) -> int:
    """The largest number of starts inside any half-open window [t, t + width)."""
    times = sorted(starts)
    best = first = 0
    for i, t in enumerate(times):
        while t - times[first] >= width:
            first += 1
        best = max(best, i - first + 1)
    return best


def waves(starts: Iterable[float], gap: float) -> list[int]:
    """Sizes of the bursts of starts, a burst ending where the next start is > gap later."""
    times = sorted(starts)
    sizes = [1]
    for a, b in itertools.pairwise(times):
        if b - a > gap:
            sizes.append(1)
        else:
            sizes[-1] += 1
    return sizes


class Sampler:
    """Calls `probe()` every few milliseconds from the loop while attempts run."""

    def __init__(self, probe: Any, every: float = 0.005) -> None:
        self.probe = probe
        self.every = every
        self.samples: list[Any] = []
        self.loop = asyncio.get_running_loop()
        self.handle: asyncio.TimerHandle | asyncio.Handle = self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.samples.append(self.probe())
        self.handle = self.loop.call_later(self.every, self._tick)

    def stop(self) -> list[Any]:
        self.handle.cancel()
        return self.samples


# -- single outcomes -----------------------------------------------------------------------


async def test_open_record(listener: RecordingListener) -> None:
    before = time.time()
    result, records = await check(listener.target)
    after = time.time()

    assert result.outcomes == Counter(open=1)
    assert (result.targets, result.targets_without_open) == (1, 0)
    [rec] = records
    assert rec.outcome == "open"
    assert rec.error is None
    assert rec.target == f"127.0.0.1:{listener.port}"
    assert rec.host == "127.0.0.1"
    assert rec.port == listener.port
    assert rec.address == "127.0.0.1"
    assert rec.family == "ipv4"
    assert rec.attempt == 1
    # The local endpoint is the one the server saw, not a guess.
    peers = listener.wait_peers(1)
    assert peers == [(rec.local_address, rec.local_port)]
    assert before <= rec.started <= after
    assert rec.latency_ms > 0
    assert rec.latency_ms < (after - before) * 1000 + 1
    if sys.platform == "linux":
        # The kernel's handshake RTT is inside the measured latency (a wrong TCP_INFO
        # offset reads rto or mss, far larger).
        assert isinstance(rec.rtt_ms, float)
        assert 0 < rec.rtt_ms <= rec.latency_ms
        assert rec.syn_retransmits == 0  # one SYN, answered: the RTT is a real sample
    assert rec.dns_ms == 0.0  # an address literal

    out = as_json(rec)
    assert list(out) == CONTRACT_KEYS
    assert out["event"] == "probe"
    assert TIMESTAMP.match(out["timestamp"])
    stamp = datetime.strptime(out["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(stamp.timestamp() - rec.started) < 1e-5
    assert out["local_port"] == rec.local_port and out["local_address"] == "127.0.0.1"
    assert out["outcome"] == "open" and out["error"] is None
    assert json.loads(json.dumps(out)) == out


async def test_refused_record() -> None:
    port = closed_port()
    lo, hi = ephemeral_range()
    result, records = await check(f"127.0.0.1:{port}")

    assert result.outcomes == Counter(refused=1)
    assert (result.targets, result.targets_without_open) == (1, 1)
    [rec] = records
    assert rec.outcome == "refused"
    assert rec.error == "ECONNREFUSED"
    assert rec.local_address == "127.0.0.1"
    assert isinstance(rec.local_port, int)
    assert lo <= rec.local_port <= hi
    assert rec.local_port != port
    assert rec.rtt_ms is None
    assert rec.address == "127.0.0.1" and rec.family == "ipv4" and rec.attempt == 1
    assert rec.syn_retransmits == 0  # the reset answered the first SYN
    assert 0 < rec.latency_ms < 1000
    out = as_json(rec)
    assert list(out) == CONTRACT_KEYS
    assert out["error"] == "ECONNREFUSED" and out["rtt_ms"] is None


async def test_timeout_record(full_queue: FullQueueListener) -> None:
    timeout = 0.2
    lo, hi = ephemeral_range()
    seen = Sampler(lambda: syn_sent_to(full_queue.port))
    t0 = time.monotonic()
    result, records = await check(full_queue.target, options=EngineOptions(timeout=timeout))
    took_ms = (time.monotonic() - t0) * 1000
    waiting = {port for sample in seen.stop() for port in sample}

    assert result.outcomes == Counter(timeout=1)
    assert (result.targets, result.targets_without_open) == (1, 1)
    [rec] = records
    assert rec.outcome == "timeout"
    assert rec.error == "ETIMEDOUT"
    assert rec.rtt_ms is None
    assert rec.local_address == "127.0.0.1"
    assert isinstance(rec.local_port, int)
    assert lo <= rec.local_port <= hi
    # The port reported is the one the kernel's SYN_SENT socket really had.
    assert rec.local_port in waiting
    # The deadline's turn of the loop ends the attempt: not before it; after it by the
    # loop's lateness only, which a loaded machine can stretch past a second.
    assert timeout * 1000 * 0.95 <= rec.latency_ms <= took_ms
    if sys.platform == "linux":
        # The kernel's own count when the engine looked: none inside the first SYN's 1 s
        # RTO (0.2 s, on time); a loop late past it (a loaded machine) finds resent SYNs,
        # one a second at most (linear timeouts) and at least at 1, 3, 7 s (doubling).
        ms = rec.latency_ms
        assert resends_by(ms - 20) <= rec.syn_retransmits <= (ms + 20) // 1000, ms
    # ...and that socket is gone once the record is written.
    assert syn_sent_gone(full_queue.port)


async def test_ipv6_open_and_refused(listener6: RecordingListener) -> None:
    closed = closed_port("::1")
    result, records = await check(f"[::1]:{listener6.port},{closed}")

    assert result.outcomes == Counter(open=1, refused=1)
    assert (result.targets, result.targets_without_open) == (2, 1)
    by_port = {r.port: r for r in records}
    opened, refused = by_port[listener6.port], by_port[closed]
    for rec in (opened, refused):
        assert rec.family == "ipv6"
        assert rec.address == "::1"
        assert rec.host == "::1"
        assert rec.target == f"[::1]:{rec.port}"
        assert rec.local_address == "::1"
        assert isinstance(rec.local_port, int)
        assert list(as_json(rec)) == CONTRACT_KEYS
    assert opened.outcome == "open" and opened.error is None
    assert listener6.wait_peers(1) == [("::1", opened.local_port)]
    assert refused.outcome == "refused" and refused.error == "ECONNREFUSED"
    assert refused.rtt_ms is None


# -- names and families --------------------------------------------------------------------


def localhost_addresses(port: int, family: int = 0) -> set[tuple[str, str]]:
    infos = socket.getaddrinfo("localhost", port, family=family, type=socket.SOCK_STREAM)
    names = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
    return {(names[f], str(sa[0])) for f, _, _, _, sa in infos if f in names}


async def test_localhost_probes_every_address_it_resolves_to(
    listener: RecordingListener,
) -> None:
    expected = localhost_addresses(listener.port)
    if ("ipv4", "127.0.0.1") not in expected:
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    result, records = await check(f"localhost:{listener.port}")

    assert {(r.family, r.address) for r in records} == expected
    assert len(records) == len(expected)
    for rec in records:
        assert rec.target == f"localhost:{listener.port}"
        assert rec.host == "localhost"
        assert rec.port == listener.port
        assert rec.attempt == 1
    [v4] = [r for r in records if r.address == "127.0.0.1"]
    assert v4.outcome == "open"
    assert listener.wait_peers(1) == [("127.0.0.1", v4.local_port)]
    # One target, whatever number of addresses; it had an open attempt.
    assert (result.targets, result.targets_without_open) == (1, 0)


async def test_ipv4_only_resolver(listener: RecordingListener) -> None:
    expected = localhost_addresses(listener.port, socket.AF_INET)
    result, records = await check(
        f"localhost:{listener.port}", resolver=Resolver(socket.AF_INET), count=2
    )
    assert {(r.family, r.address) for r in records} == expected
    assert all(r.family == "ipv4" for r in records)
    assert len(records) == 2 * len(expected)
    assert (result.targets, result.targets_without_open) == (1, 0)


@pytest.mark.parametrize(
    ("family", "spec"),
    [(socket.AF_INET, "[::1]:{port}"), (socket.AF_INET6, "127.0.0.1:{port}")],
    ids=["v4-only-v6-literal", "v6-only-v4-literal"],
)
async def test_family_mismatch_is_an_error_record(family: int, spec: str) -> None:
    port = closed_port()
    before = socket_inodes(os.getpid())
    result, records = await check(spec.format(port=port), resolver=Resolver(family), count=2)

    assert result.outcomes == Counter(error=2)
    assert (result.targets, result.targets_without_open) == (1, 1)
    assert [r.attempt for r in records] == [1, 2]
    for rec in records:
        assert rec.outcome == "error"
        assert rec.error == "EAI_ADDRFAMILY"
        assert rec.address is None and rec.family is None
        assert rec.local_address is None and rec.local_port is None
        assert rec.rtt_ms is None
        assert rec.port == port
        assert list(as_json(rec)) == CONTRACT_KEYS
    assert new_sockets(before) == 0  # no socket was ever made


# -- concurrency, retries, repeat, rate ------------------------------------------------------


async def test_concurrency_bound_with_timeouts(full_queue: FullQueueListener) -> None:
    timeout, limit, attempts = 0.1, 5, 40
    base = socket_inodes(os.getpid())
    engine = Engine(EngineOptions(timeout=timeout, concurrency=limit))
    records: list[Record] = []
    # The engine's own count, and the sockets this process holds. (Not /proc/net/tcp: a
    # closed SYN_SENT socket can linger there a moment after its descriptor is gone.)
    sampler = Sampler(lambda: (engine.inflight, new_sockets(base)))
    result = await bounded(
        counted_check(
            expand([parse_target(ports_spec("127.0.0.1", [full_queue.port] * attempts))]),
            engine,
            Resolver(),
            records.append,
        )
    )
    samples = sampler.stop()

    assert result.outcomes == Counter(timeout=attempts)
    inflight = [s[0] for s in samples]
    sockets = [s[1] for s in samples]
    assert max(inflight) == limit
    assert max(sockets) == limit
    starts = sorted(r.started for r in records)
    # Each attempt lasts a timeout, so with at most `limit` in flight the (i+limit)-th start
    # waits for the i-th to end.
    for a, b in zip(starts, starts[limit:], strict=False):
        assert b - a >= timeout * 0.9
    assert waves(starts, timeout / 2) == [limit] * (attempts // limit)


async def test_refused_on_loopback_is_answered_inside_connect() -> None:
    """On loopback the reset arrives while connect() runs: the engine takes the answer at
    once, so a refused attempt never waits in flight for the poller (the concurrency bound
    itself is tested with timeouts above)."""
    ports = [closed_port() for _ in range(4)]
    base = socket_inodes(os.getpid())
    engine = Engine(EngineOptions(concurrency=100))
    peaks = [0, 0]

    def sink(rec: Record) -> None:
        assert rec.outcome == "refused"
        peaks[0] = max(peaks[0], engine.inflight)
        peaks[1] = max(peaks[1], new_sockets(base))

    endpoints = expand([parse_target(ports_spec("127.0.0.1", ports * 50))])
    result = await bounded(counted_check(endpoints, engine, Resolver(), sink))
    assert result.outcomes == Counter(refused=200)
    assert new_sockets(base) == 0
    assert peaks == [0, 0]  # each one finished (and was closed) before its record


async def test_retries_after_timeouts(full_queue: FullQueueListener) -> None:
    timeout = 0.1
    result, records = await check(
        full_queue.target, options=EngineOptions(timeout=timeout, retries=2)
    )
    assert result.outcomes == Counter(timeout=3)
    assert (result.targets, result.targets_without_open) == (1, 1)
    assert [r.attempt for r in records] == [1, 2, 3]
    assert {r.outcome for r in records} == {"timeout"}
    assert {r.error for r in records} == {"ETIMEDOUT"}
    assert len({r.local_port for r in records}) == 3  # a fresh socket per try
    starts = [r.started for r in records]
    for a, b in itertools.pairwise(starts):
        assert b - a >= timeout * 0.9


async def test_retries_are_marked_not_final(full_queue: FullQueueListener) -> None:
    engine = Engine(EngineOptions(timeout=0.05, retries=2))
    seen: list[tuple[int, str, bool]] = []
    dicts: list[dict[str, Any]] = []

    def done(rec: Record, attempt: Attempt, final: bool) -> None:
        seen.append((rec.attempt, rec.outcome, final))
        # The daemon's `name` is added in its own callback, outside the engine, on every
        # try; it is written after the contract keys.
        rec.extra = {"name": "fq"}
        dicts.append(as_json(rec))

    engine.submit(Attempt(endpoint("127.0.0.1", full_queue.port), V4), done)
    await bounded(engine.drain())
    engine.close()
    assert seen == [(1, "timeout", False), (2, "timeout", False), (3, "timeout", True)]
    assert [list(d) for d in dicts] == [[*CONTRACT_KEYS, "name"]] * 3
    assert {d["name"] for d in dicts} == {"fq"}


async def test_attempt_is_awaited_for_its_final_record(full_queue: FullQueueListener) -> None:
    """`await engine.attempt(...)` answers with the last try's record; an attempt still in
    flight when the engine closes is cancelled, not answered with a made-up record."""
    engine = Engine(EngineOptions(timeout=0.05, retries=1))
    record = await bounded(engine.attempt(Attempt(endpoint("127.0.0.1", full_queue.port), V4)))
    assert (record.attempt, record.outcome) == (2, "timeout")
    engine.reconfigure(EngineOptions(timeout=30.0))
    waiting = asyncio.ensure_future(
        engine.attempt(Attempt(endpoint("127.0.0.1", full_queue.port), V4))
    )
    deadline = time.monotonic() + 10.0
    while engine.inflight == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)  # polling a condition: the attempt's task has started
    assert engine.inflight == 1
    engine.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 10.0)


async def test_dns_ms_rides_from_the_attempt_to_every_try(full_queue: FullQueueListener) -> None:
    """The engine does not resolve: it carries what the caller measured onto the record,
    on the retries too (the same lookup served them)."""
    engine = Engine(EngineOptions(timeout=0.05, retries=1))
    records: list[Record] = []
    attempt = Attempt(endpoint("127.0.0.1", full_queue.port), V4, dns_ms=12.25)
    engine.submit(attempt, lambda rec, _, __: records.append(rec))
    await bounded(engine.drain())
    engine.close()
    assert [(r.attempt, r.dns_ms) for r in records] == [(1, 12.25), (2, 12.25)]
    assert [as_json(r)["dns_ms"] for r in records] == [12.25, 12.25]


async def test_reconfigure_applies_to_attempts_started_after_it(
    full_queue: FullQueueListener,
) -> None:
    """A reload's new options go through `reconfigure`: the new timeout holds for the next
    attempt, and a lower concurrency bound becomes the ceiling."""
    engine = Engine(EngineOptions(timeout=0.1, concurrency=50))
    records: list[Record] = []
    target = endpoint("127.0.0.1", full_queue.port)
    engine.submit(Attempt(target, V4), lambda rec, _, __: records.append(rec))
    await bounded(engine.drain())
    engine.reconfigure(EngineOptions(timeout=0.4, concurrency=5))
    assert engine.ceiling == 5 and engine.limit <= 5
    engine.submit(Attempt(target, V4, number=2), lambda rec, _, __: records.append(rec))
    await bounded(engine.drain())
    engine.close()
    first, second = records
    assert first.outcome == second.outcome == "timeout"
    assert 95 <= first.latency_ms < 300, first
    assert 380 <= second.latency_ms < 1000, second


async def test_retries_do_not_repeat_answers(listener: RecordingListener) -> None:
    closed = closed_port()
    result, records = await check(
        f"127.0.0.1:{listener.port},{closed}", options=EngineOptions(timeout=0.5, retries=2)
    )
    assert result.outcomes == Counter(open=1, refused=1)
    assert [r.attempt for r in records] == [1, 1]
    assert len(listener.wait_peers(2, timeout=0.3)) == 1


async def test_repeat_mode(listener: RecordingListener) -> None:
    interval = 0.1
    result, records = await check(listener.target, count=3, interval=interval)

    assert result.outcomes == Counter(open=3)
    assert (result.targets, result.targets_without_open) == (1, 0)
    assert [r.attempt for r in records] == [1, 2, 3]
    starts = [r.started for r in records]
    for a, b in itertools.pairwise(starts):
        assert interval * 0.95 <= b - a < interval + 0.3
    locals_ = [(r.local_address, r.local_port) for r in records]
    assert len(set(locals_)) == 3
    assert sorted(listener.wait_peers(3)) == sorted(locals_)


async def test_repeat_mode_refused() -> None:
    closed = closed_port()
    result, records = await check(f"127.0.0.1:{closed}", count=3, interval=0.02)
    assert result.outcomes == Counter(refused=3)
    assert (result.targets, result.targets_without_open) == (1, 1)
    assert [r.attempt for r in records] == [1, 2, 3]


async def paced_starts(rate: float, attempts: int) -> tuple[float, list[float]]:
    """`attempts` refused connects at `rate` on a fresh engine: the loop's time before the
    run (no later than the first slot of the engine's grid, which it takes at its first
    start) and the records' starts on the loop's clock, in order."""
    port = closed_port()
    loop = asyncio.get_running_loop()
    epoch = loop.time()  # the loop's clock: milliseconds behind time.monotonic(), never ahead
    wall = time.time() - time.monotonic()
    result, records = await check(
        ports_spec("127.0.0.1", [port] * attempts), options=EngineOptions(rate=rate)
    )
    assert result.outcomes == Counter(refused=attempts)
    return epoch, sorted(r.started - wall for r in records)


def ahead_of_the_grid(epoch: float, rate: float, starts: list[float]) -> list[tuple[int, float]]:
    """Starts earlier than their slot (the k-th: k / rate after `epoch`), with how far ahead.
    A start is never early, however loaded the machine: a stall only delays it (the grid
    starts at the engine's first start, which is no earlier than `epoch`, and the record's
    time is read after the slot was judged due). 1 ms covers reading two clocks."""
    return [
        (k, round(epoch + k / rate - s, 4))
        for k, s in enumerate(starts)
        if s < epoch + k / rate - 0.001
    ]


@pytest.mark.serial
async def test_rate_paces_attempts() -> None:
    rate = 50.0
    epoch, starts = await paced_starts(rate, 20)
    # Paced from the first start on, never ahead of its slot (20 ms apart): all twenty at
    # once would be. A loop stalled on a loaded machine makes up the slots it missed (up to
    # RATE_SLACK of them) in a burst that only catches up with the grid.
    assert not ahead_of_the_grid(epoch, rate, starts)


@pytest.mark.serial
async def test_rate_is_at_most_n_in_any_second() -> None:
    """--rate N: the k-th start never before k / N after the first slot, so a second of the
    grid holds at most N. A second of the wall clock holds at most N + 1 of the starts that
    kept up (the millisecond timer may put one start late into the window of the slot a
    second later); more only by starts made up after a stall (each later than a step
    behind its slot: the engine catches up RATE_SLACK of lateness, on the grid). Judged
    against the grid, not fixed windows of the wall clock: a scheduler that pauses the
    test's process must not fail it, and a pacer that starts early must."""
    rate, step = 20.0, 1 / 20.0
    epoch, starts = await paced_starts(rate, 22)
    # A fresh engine once started two attempts at once: the second start then is 50 ms
    # ahead of its slot.
    assert not ahead_of_the_grid(epoch, rate, starts), starts
    made_up = {k for k, s in enumerate(starts) if s - (epoch + k * step) > step - 0.002}
    kept_up = [s for k, s in enumerate(starts) if k not in made_up]
    assert most_in_window(kept_up, 1.0) <= rate + 1, (made_up, starts)


@pytest.mark.serial
async def test_rate_is_delivered_above_the_timer_resolution() -> None:
    # Timers tick in whole milliseconds; 1,000/s once came out near 500/s.
    port = closed_port()
    rate = 1000.0
    _, records = await check(
        ports_spec("127.0.0.1", [port] * 1000), options=EngineOptions(rate=rate)
    )
    starts = sorted(r.started for r in records)
    achieved = (len(starts) - 1) / (starts[-1] - starts[0])
    assert 0.85 * rate <= achieved <= 1.02 * rate
    # Paced, not bunched: a stall on a busy machine is made up, RATE_SLACK of it at most.
    assert most_in_window(starts, 0.1) <= (0.1 + RATE_SLACK) * rate + 3


@pytest.mark.serial
async def test_per_attempt_timeouts_expire_in_deadline_order(
    full_queue: FullQueueListener,
) -> None:
    engine = Engine(EngineOptions(timeout=5.0))
    done: dict[str, Record] = {}

    def keep(name: str) -> Callable[[Record, Attempt, bool], None]:
        return lambda rec, attempt, final: done.__setitem__(name, rec)

    for name, timeout in (("slow", 0.4), ("fast", 0.1), ("default", None)):
        engine.submit(
            Attempt(endpoint("127.0.0.1", full_queue.port), V4, timeout=timeout), keep(name)
        )

    async def fast_and_slow_done() -> None:
        while not {"fast", "slow"} <= done.keys():
            await asyncio.sleep(0.01)

    await bounded(fast_and_slow_done(), 5.0)
    engine.close()  # drops the 5 s one without a record
    assert set(done) == {"fast", "slow"}
    assert 95 <= done["fast"].latency_ms < 300
    assert 380 <= done["slow"].latency_ms < 600
    assert syn_sent_gone(full_queue.port)


async def test_a_stalled_loop_does_not_turn_answers_into_timeouts(
    listener: RecordingListener,
) -> None:
    closed = closed_port()
    engine = Engine(EngineOptions(timeout=0.05))
    done: list[Record] = []
    for port in (listener.port, closed):
        engine.submit(Attempt(endpoint("127.0.0.1", port), V4), lambda r, a, f: done.append(r))
    time.sleep(0.2)  # the loop is blocked well past both deadlines; the kernel answered
    await bounded(engine.drain())
    engine.close()
    assert sorted(r.outcome for r in done) == ["open", "refused"]


# -- verdicts and failures -------------------------------------------------------------------


async def test_targets_without_open(listener: RecordingListener) -> None:
    c1, c2, c3 = closed_port(), closed_port(), closed_port()
    result, records = await check(
        f"127.0.0.1:{listener.port},{c1}",
        f"127.0.0.1:{c2},{c3}",
        "[::1]:1",  # a family mismatch under -4: no open either
        resolver=Resolver(socket.AF_INET),
        count=2,
    )
    assert result.targets == 5
    assert result.targets_without_open == 4
    assert result.outcomes == Counter(open=2, refused=6, error=2)
    assert result.attempts == len(records) == 10


async def test_failing_sink_stops_the_run_and_closes_everything(
    full_queue: FullQueueListener,
) -> None:
    closed = [closed_port() for _ in range(6)]
    gc.collect()  # what earlier tests left for the collector (an event loop) goes first
    before = open_fds()
    boom = OSError(errno.EIO, "sink failed")
    seen: list[Record] = []

    def sink(rec: Record) -> None:
        seen.append(rec)
        if len(seen) == 3:
            raise boom

    timeout = 20.0
    engine = Engine(EngineOptions(timeout=timeout, concurrency=50))
    # Attempts to the full queue go first and sit in flight when the sink fails.
    spec = ports_spec("127.0.0.1", [full_queue.port] * 5 + closed)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(OSError) as caught:
            run = counted_check(expand([parse_target(spec)]), engine, Resolver(), sink)
            await bounded(run, timeout=2 * timeout)
        gc.collect()
    assert caught.value is boom
    # did not wait for the in-flight timeouts (half of one: room for a loaded machine)
    assert time.monotonic() - t0 < timeout / 2
    assert engine.closed
    assert len(seen) == 3  # nothing after the failure
    left = {fd: what for fd, what in open_fds().items() if before.get(fd) != what}
    assert left == {}  # sockets and the epoll set closed
    assert syn_sent_gone(full_queue.port)
    # ...closed by the engine, not left to the garbage collector.
    assert [str(w.message) for w in warned if issubclass(w.category, ResourceWarning)] == []
    with pytest.raises(RuntimeError):
        engine.submit(Attempt(endpoint("127.0.0.1", closed[0]), V4), lambda r, a, f: None)


async def test_failing_sink_on_a_timeout_leaves_no_loop_error(
    full_queue: FullQueueListener,
) -> None:
    """The sink fails inside the deadline sweep: the sweep must not trip over the closed
    engine (it once raised KeyError in `Engine._sweep`, reported by the loop)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    boom = OSError(errno.EIO, "sink failed")

    def sink(rec: Record) -> None:
        raise boom

    engine = Engine(EngineOptions(timeout=0.05))
    try:
        with pytest.raises(OSError) as caught:
            await bounded(
                counted_check(expand([parse_target(full_queue.target)]), engine, Resolver(), sink)
            )
        assert caught.value is boom
        await asyncio.sleep(0.05)  # an observation window: a stray task's error would show
    finally:
        loop.set_exception_handler(None)
    assert [c.get("message") for c in errors] == []


# -- source binding --------------------------------------------------------------------------


async def test_source_address(listener: RecordingListener) -> None:
    closed = closed_port()
    result, records = await check(
        f"127.0.0.1:{listener.port},{closed}",
        options=EngineOptions(source=("127.0.0.2", 0)),
    )
    assert result.outcomes == Counter(open=1, refused=1)
    by_port = {r.port: r for r in records}
    opened, refused = by_port[listener.port], by_port[closed]
    assert opened.local_address == "127.0.0.2"
    assert refused.local_address == "127.0.0.2"
    assert isinstance(refused.local_port, int) and refused.local_port > 0
    assert listener.wait_peers(1) == [("127.0.0.2", opened.local_port)]


async def test_source_address_and_port(listener: RecordingListener) -> None:
    closed = closed_port()
    source_port = free_port("127.0.0.2")
    result, records = await check(
        f"127.0.0.1:{listener.port},{closed}",
        options=EngineOptions(source=("127.0.0.2", source_port)),
        count=2,
        interval=0.05,
    )
    assert result.outcomes == Counter(open=2, refused=2)
    assert {(r.local_address, r.local_port) for r in records} == {("127.0.0.2", source_port)}
    assert listener.wait_peers(2) == [("127.0.0.2", source_port)] * 2


async def test_fixed_source_port_equal_to_destination_port_finishes() -> None:
    """Source port == destination port on one address: every connect is a self-connect.
    Not open (nothing listens), and not retried forever (it once spun without end)."""
    port = free_port("127.0.0.1")
    records: list[Record] = []
    engine = Engine(EngineOptions(timeout=0.2, source=("127.0.0.1", port)))
    try:
        result = await asyncio.wait_for(
            counted_check(
                expand([parse_target(f"127.0.0.1:{port}")]), engine, Resolver(), records.append
            ),
            timeout=1.0,
        )
    finally:
        engine.close()
    assert engine.stats.self_connects >= 1  # the kernel did connect it to itself
    [rec] = records
    assert rec.outcome == "error"
    assert isinstance(rec.error, str) and rec.error
    assert (rec.local_address, rec.local_port) == ("127.0.0.1", port)
    assert rec.rtt_ms is None
    assert (result.targets, result.targets_without_open) == (1, 1)


# -- self-connects and close mode ------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """`n` ports in the ephemeral range that nothing on 127.0.0.1 holds right now."""
    lo, hi = ephemeral_range()
    start = random.randrange(lo, hi + 1)
    found: list[int] = []
    for i in range(hi - lo + 1):
        port = lo + (start - lo + i) % (hi - lo + 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            break
    return found


def listening_on(port: int) -> bool:
    return any(lport == port and state == LISTEN for _, lport, _, state in tcp_table())


async def test_sweep_has_no_self_connect_opens(listener: RecordingListener) -> None:
    tcp_table()  # skips here, not in the sink, when there is no /proc/net/tcp
    ports = free_ports(2000)
    assert len(ports) == 2000
    spec = ports_spec("127.0.0.1", sorted([*ports, listener.port]))
    engine = Engine(EngineOptions(timeout=1.0, concurrency=200))
    records: list[Record] = []
    # Other processes on this machine may open a listener inside the range meanwhile; an
    # open is right when something listened on the port as it was written.
    listened: set[int] = set()

    def sink(rec: Record) -> None:
        records.append(rec)
        if rec.outcome == "open" and listening_on(rec.port):
            listened.add(rec.port)

    result = await bounded(counted_check(expand([parse_target(spec)]), engine, Resolver(), sink))

    assert len(records) == len(ports) + 1
    assert sorted(r.port for r in records) == sorted([*ports, listener.port])
    opened = {r.port for r in records if r.outcome == "open"}
    assert listener.port in opened
    assert opened <= listened, "open without a listener: a self-connect or cross-connect"
    foreign = opened - {listener.port}
    assert len(foreign) <= 2, foreign  # others' listeners are rare; more means a bug here
    others = [r for r in records if r.port not in opened]
    assert {r.outcome for r in others} == {"refused"}
    assert {r.error for r in others} == {"ECONNREFUSED"}
    assert not [r for r in records if r.outcome == "open" and r.local_port == r.port]
    assert result.targets_without_open == len(ports) - len(foreign)


def client_side(local_port: int, port: int) -> list[str]:
    """TCP states of our side of a loopback connection from `local_port` to `port`."""
    return [
        state
        for ip, lport, rport, state in tcp_table()
        if lport == local_port and rport == port and ip.endswith("0100007F")
    ]


async def accept_after_probe(graceful: bool) -> tuple[Record, int, bytes | OSError]:
    """Probe a listener nobody has accepted from yet, then read from the server side."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port: int = server.getsockname()[1]
        _, [rec] = await check(
            f"127.0.0.1:{port}", options=EngineOptions(timeout=1.0, graceful_close=graceful)
        )
        server.settimeout(1.0)
        conn, peer = server.accept()
        assert peer == (rec.local_address, rec.local_port)
        with conn:
            conn.settimeout(1.0)
            got: bytes | OSError
            try:
                got = conn.recv(16)
            except OSError as exc:
                got = exc
        return rec, port, got


async def test_open_connections_are_reset_by_default() -> None:
    rec, port, got = await accept_after_probe(graceful=False)
    assert rec.outcome == "open"
    assert isinstance(got, ConnectionResetError), got
    assert rec.local_port is not None
    # No TIME_WAIT or FIN_WAIT left behind (those last a minute; allow a moment to vanish).
    deadline = time.monotonic() + 0.5
    while client_side(rec.local_port, port) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert client_side(rec.local_port, port) == []


async def test_graceful_close_sends_fin() -> None:
    rec, port, got = await accept_after_probe(graceful=True)
    assert rec.outcome == "open"
    assert got == b""
    assert rec.local_port is not None
    # The FIN handshake keeps our side around (FIN_WAIT/TIME_WAIT): what RST avoids.
    assert client_side(rec.local_port, port) != []


# -- the production loop ---------------------------------------------------------------------


def test_engine_on_the_production_loop(
    listener: RecordingListener, full_queue: FullQueueListener
) -> None:
    """The CLI runs on uvloop where installed: the same outcomes there."""
    closed = closed_port()

    async def scenario() -> tuple[ShareResult, list[Record], list[str], str]:
        loop_module = type(asyncio.get_running_loop()).__module__
        result, records = await check(
            f"127.0.0.1:{listener.port},{closed},{full_queue.port}",
            options=EngineOptions(timeout=0.2, retries=1),
            count=2,
            interval=0.05,
        )
        engine = Engine(EngineOptions(timeout=0.05))
        late: list[Record] = []
        for port in (listener.port, closed):
            engine.submit(Attempt(endpoint("127.0.0.1", port), V4), lambda r, a, f: late.append(r))
        time.sleep(0.2)  # the fault: the loop blocked well past both deadlines
        await bounded(engine.drain())
        engine.close()
        return result, records, sorted(r.outcome for r in late), loop_module

    result, records, late, loop_module = run_on_production_loop(scenario())
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    else:
        assert loop_module.startswith("uvloop")
    assert result.outcomes == Counter(open=2, refused=2, timeout=4)
    assert (result.targets, result.targets_without_open) == (3, 2)
    timeouts = [r for r in records if r.outcome == "timeout"]
    assert sorted(r.attempt for r in timeouts) == [1, 2, 3, 4]
    assert all(r.local_port for r in records)
    opened = {(r.local_address, r.local_port) for r in records if r.outcome == "open"}
    peers = listener.wait_peers(3)  # two from the check, one from the stalled-loop attempt
    assert len(peers) == 3
    assert opened <= set(peers)
    assert late == ["open", "refused"]


@pytest.mark.serial
@pytest.mark.parametrize("report_lag", [True, False])
async def test_loop_lag_holds_concurrency_down(
    full_queue: FullQueueListener, report_lag: bool
) -> None:
    """A loop kept busy (a callback that blocks 8 ms, again and again) makes the engine lower
    its concurrency while attempts wait in flight; without the lag limit it does not. No
    attempt ends before the limit is read (each completion adds one back): a loaded machine
    may wake the reader well after the hog stops. The same when the lag is sampled only
    while connects are in flight (the daemon's engines)."""

    async def run(lag_limit_ms: float | None) -> tuple[int, int]:
        options = EngineOptions(timeout=10.0, concurrency=60, lag_limit_ms=lag_limit_ms)
        engine = Engine(options, report_lag=report_lag)
        loop = asyncio.get_running_loop()
        stop = loop.time() + 0.5

        def hog() -> None:
            time.sleep(0.008)  # the fault: a callback that blocks the loop
            if loop.time() < stop:
                loop.call_soon(hog)

        for _ in range(60):
            engine.submit(Attempt(endpoint("127.0.0.1", full_queue.port), V4), lambda *_: None)
        loop.call_soon(hog)
        await asyncio.sleep(0.55)  # an observation window: the 0.5 s the hog runs
        lowest = engine.limit
        throttles = engine.stats.lag_throttles
        engine.close()
        return lowest, throttles

    lowest, throttles = await run(2.0)
    assert throttles > 0
    assert lowest < 60
    lowest, throttles = await run(None)
    assert (lowest, throttles) == (60, 0)


async def test_lag_unreported_is_sampled_only_while_connects_are_in_flight(
    full_queue: FullQueueListener,
) -> None:
    """An engine whose lag nobody reads (the daemon's) stops its lag timer at the first tick
    that finds nothing in flight, and starts it again with the next connect left waiting."""
    engine = Engine(EngineOptions(timeout=10.0, concurrency=4), report_lag=False)
    await asyncio.sleep(0.1)  # a timer due after the first tick's: that tick has run
    assert (engine.lag.samples, engine.lag.idle) == (1, True)
    await asyncio.sleep(0.1)
    assert engine.lag.samples == 1  # no tick while idle
    engine.submit(Attempt(endpoint("127.0.0.1", full_queue.port), V4), lambda *_: None)
    assert not engine.lag.idle

    async def samples(of: Engine, n: int) -> None:
        while of.lag.samples < n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(samples(engine, 4), 15.0)  # the connect waits: the queue is full
    reported = Engine(EngineOptions(timeout=10.0, concurrency=4))
    await asyncio.wait_for(samples(reported, 4), 15.0)  # a run's: every tick, idle or not
    assert not reported.lag.idle
    engine.close()
    reported.close()
    assert not engine.lag.idle  # stopped for good: a closed engine's timer never restarts
