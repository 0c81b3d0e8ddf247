"""The source port allocator (probe/engine/ports.py) on real sockets."""

from __future__ import annotations

import asyncio
import io
import os
import random
import socket
from collections import Counter
from collections.abc import Iterator

import pytest
import structlog
from helpers import FullQueueListener, RecordingListener, closed_port, free_port_block
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from probe.daemon.shortage import PortShortages
from probe.engine import Attempt, Engine, EngineOptions
from probe.engine.ports import PortRange, fit_to_range
from probe.errors import SinkError
from probe.output.log import Renderer
from probe.output.writer import RecordWriter
from probe.record import Record
from probe.resolve import Address
from probe.syntax import Endpoint

V4 = Address(socket.AF_INET, "127.0.0.1")


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
    lo = free_port_block(4, 20000)
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
    lo = free_port_block(3, 20000)
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


# -- in the engine -------------------------------------------------------------------------


async def run_attempts(engine: Engine, attempts: list[Attempt]) -> list[Record]:
    records: list[Record] = []

    def done(rec: Record, _: Attempt, final: bool) -> None:
        if final:
            records.append(rec)

    try:
        for attempt in attempts:
            await engine.room()
            engine.submit(attempt, done)
        await asyncio.wait_for(engine.drain(), 20.0)
    finally:
        engine.close()
    return records


def attempt(port: int, timeout: float | None = None) -> Attempt:
    return Attempt(Endpoint(f"127.0.0.1:{port}", "127.0.0.1", port), V4, timeout=timeout)


def expected(port: int, opened: int, timing_out: int) -> str:
    return "open" if port == opened else ("timeout" if port == timing_out else "refused")


async def test_records_stay_inside_the_range_at_concurrency_200(
    listener: RecordingListener, full_queue: FullQueueListener
) -> None:
    """200 attempts in flight at once (SYNs to a full accept queue stay unanswered),
    answered ones between them: every local port is in the range, every outcome real."""
    lo = free_port_block(300, 20000)
    hi = lo + 299
    closed = [closed_port() for _ in range(20)]
    ports = [full_queue.port] * 200 + [listener.port] * 100 + closed * 5
    random.Random(11).shuffle(ports)
    engine = Engine(EngineOptions(concurrency=200, source=("127.0.0.2", 0), source_ports=(lo, hi)))
    assert engine.ceiling == 200
    records = await run_attempts(engine, [attempt(p, timeout=0.5) for p in ports])
    assert len(records) == len(ports)
    for rec in records:
        assert rec.local_address == "127.0.0.2"
        assert rec.local_port is not None and lo <= rec.local_port <= hi, rec
        assert rec.outcome == expected(rec.port, listener.port, full_queue.port), rec
    assert Counter(r.outcome for r in records) == Counter(timeout=200, open=100, refused=100)
    # Round-robin: the timeouts alone held 200 distinct ports at once.
    timed_out = [r.local_port for r in records if r.outcome == "timeout"]
    assert len(set(timed_out)) == 200
    peers = listener.wait_peers(100)
    assert all(ip == "127.0.0.2" and lo <= p <= hi for ip, p in peers)


async def test_a_range_of_four_lowers_concurrency_and_keeps_every_outcome(
    listener: RecordingListener, full_queue: FullQueueListener
) -> None:
    lo = free_port_block(4, 20000)
    closed = closed_port()
    ports = [full_queue.port, listener.port, closed] * 10
    engine = Engine(
        EngineOptions(concurrency=50, source=("127.0.0.1", 0), source_ports=(lo, lo + 3))
    )
    assert engine.ceiling == 4  # one attempt per port
    records = await run_attempts(engine, [attempt(p, timeout=0.3) for p in ports])
    assert len(records) == 30
    assert Counter(r.outcome for r in records) == Counter(timeout=10, open=10, refused=10)
    for rec in records:
        assert rec.outcome == expected(rec.port, listener.port, full_queue.port), rec
        assert rec.local_port in range(lo, lo + 4)
    # At most four in flight: never more than four timeouts overlap in time.
    spans = sorted(
        (r.started, r.started + r.latency_ms / 1000) for r in records if r.outcome == "timeout"
    )
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 4


async def test_a_port_whose_4_tuple_is_taken_is_skipped_not_blamed(
    listener: RecordingListener, socks: list[socket.socket]
) -> None:
    """Port lo already has a connection to the listener (as TIME_WAIT would): connect()
    from it says EADDRNOTAVAIL. The engine moves on to the next port; no record says so."""
    lo = free_port_block(3, 20000)
    holder = socket.socket()
    socks.append(holder)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", lo))
    holder.connect(("127.0.0.1", listener.port))
    engine = Engine(
        EngineOptions(concurrency=3, source=("127.0.0.1", 0), source_ports=(lo, lo + 2))
    )
    ports_in_engine = engine._ports
    assert ports_in_engine is not None
    records = await run_attempts(engine, [attempt(listener.port) for _ in range(6)])
    assert [r.outcome for r in records] == ["open"] * 6
    assert {r.local_port for r in records} == {lo + 1, lo + 2}
    assert ports_in_engine.skipped >= 2  # round-robin came back to lo at least twice


async def test_a_shortage_whose_log_has_failed_stops_the_engine_as_a_record_would(
    listener: RecordingListener, socks: list[socket.socket]
) -> None:
    """The range's one port already has a connection to the listener, so the attempt finds
    no port towards it and is held; the daemon's `port_shortage` event then goes to a log
    on /dev/full that has already failed. The engine stops with the log's error (the daemon
    then exits 1 naming the log), as when a record cannot be written, instead of the error
    escaping from submit() into whoever submitted (the schedule's timer)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    lo = free_port_block(1, 20000)
    holder = socket.socket()
    socks.append(holder)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", lo))
    holder.connect(("127.0.0.1", listener.port))
    writer = RecordWriter(io.BytesIO(), "/dev/full")  # the daemon's `[log] file`
    writer.msg(b"{}")
    with pytest.raises(SinkError) as broken:
        writer.flush()
    log = structlog.wrap_logger(
        writer, [Renderer("json")], structlog.make_filtering_bound_logger(0)
    )
    counter = PromCounter("shortages", "", ["destination"], registry=CollectorRegistry())
    engine = Engine(EngineOptions(concurrency=1, source=("127.0.0.1", 0), source_ports=(lo, lo)))
    engine.on_port_shortage = PortShortages(counter, log)
    closed: list[bool] = []
    engine.on_close.append(lambda: closed.append(True))
    unhandled: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unhandled.append(context))
    records: list[Record] = []
    engine.submit(attempt(listener.port), lambda rec, _, __: records.append(rec))
    with pytest.raises(SinkError):
        await asyncio.wait_for(engine.drain(), 5.0)
    assert engine.failure is broken.value and engine.closed and closed == [True]
    assert counter.labels(f"127.0.0.1:{listener.port}")._value.get() == 1
    assert records == [] and unhandled == []


def test_the_native_core_leaves_a_port_range_to_the_python_engine() -> None:
    from probe.engine import native

    assert "source_ports" not in native.IMPLEMENTS
    assert "source" in native.IMPLEMENTS


async def test_engines_with_one_range_share_its_ports(full_queue: FullQueueListener) -> None:
    """The daemon's schedule and its GET /probe each have an engine: on one source range
    they hand out its ports from one allocator, so a port is never in two attempts."""
    lo = free_port_block(4, 20000)
    opts = EngineOptions(concurrency=4, source=("127.0.0.1", 0), source_ports=(lo, lo + 3))
    a, b = Engine(opts), Engine(opts)
    assert a._ports is not None and a._ports is b._ports
    recs = await asyncio.gather(
        run_attempts(a, [attempt(full_queue.port, timeout=0.3) for _ in range(2)]),
        run_attempts(b, [attempt(full_queue.port, timeout=0.3) for _ in range(2)]),
    )
    ports = [r.local_port for rs in recs for r in rs]
    assert sorted(ports) == list(range(lo, lo + 4))  # four at once, four distinct ports
