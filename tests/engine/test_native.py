"""The native sweep core against the Python engine: same records, byte for byte where they
can be (every field but timings, timestamps and local ports), the writer's formatting
against msgspec's, interrupts, and local shortages that never become records."""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import ipaddress
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import (
    CONTRACT_KEYS,
    FullQueueListener,
    Netns,
    RecordingListener,
    can_netns,
    closed_port,
    kill,
    need_tools,
    probe_cmd,
    socket_inodes,
    tcp_by_inode,
    wait_for,
)
from hypothesis import given
from hypothesis import strategies as st

from probe.address import ip_text
from probe.check.choice import choose
from probe.check.native_feed import Feed
from probe.check.plan import build_plan
from probe.check.run import run_share
from probe.check.sinks import Sinks
from probe.engine import EngineOptions, native
from probe.engine.lag import LagMonitor
from probe.engine.options import RATE_SLACK
from probe.output import writer as writer_module
from probe.output.log import configure
from probe.output.writer import OUTPUT_DRAIN, PipeStream, RecordWriter
from probe.record import OPEN, OUTCOMES, RECORD_KEYS, Record, errno_name, outcome_of
from probe.syntax import parse_target

pytestmark = pytest.mark.skipif(
    not native.available(), reason="the native core is not built here (no C compiler?)"
)

if native.available():
    from probe.engine import _native  # type: ignore[attr-defined]

# What differs between two honest runs: when, how long, and which port the kernel picked.
VOLATILE = {"timestamp", "latency_ms", "rtt_ms", "local_port", "dns_ms"}


def python_line(record: Record) -> bytes:
    """The record as the Python path writes it (structlog + msgspec)."""
    buf = io.BytesIO()
    write = configure(RecordWriter(buf), "json")
    write(record)
    return buf.getvalue()


# -- the writer ---------------------------------------------------------------------------


@given(st.text())
def test_escape_matches_msgspec(text: str) -> None:
    try:
        expected = msgspec.json.encode(text)[1:-1]
    except (UnicodeEncodeError, msgspec.EncodeError):
        return  # lone surrogates: not text the core is ever given
    assert _native._escape(text) == expected


def test_escape_every_control_character() -> None:
    text = "".join(chr(c) for c in range(0x80)) + '"\\/é\u2028\U0001f600'
    assert _native._escape(text) == msgspec.json.encode(text)[1:-1]


def _latency_samples() -> Iterator[int]:
    rng = random.Random(13)
    yield from range(0, 20_000)
    for _ in range(50_000):
        yield rng.randrange(0, 10**13)
    for _ in range(20_000):  # ties: exactly half a microsecond off a thousandth
        yield rng.randrange(0, 10**10) * 1000 + 500
    for k in range(0, 44):  # up to ~200 days, past where the fast path hands over
        yield 2**k
        yield 2**k * 1000 + 500


def test_latency_formatting_matches_python_and_msgspec() -> None:
    for ns in _latency_samples():
        expected = msgspec.json.encode(round(ns / 1e6, 3))
        assert _native._format_latency(ns) == expected, ns


def test_rtt_formatting_matches_python_and_msgspec() -> None:
    rng = random.Random(7)
    values = [*range(0, 5000), *(rng.randrange(0, 2**32) for _ in range(20_000)), 2**32 - 1]
    for us in values:
        assert _native._format_rtt(us) == msgspec.json.encode(round(us / 1000.0, 3)), us


CASES = [
    # host, bracketed, address, port, local, err, timed_out, rtt_us, attempt
    ("127.0.0.1", False, "127.0.0.1", 80, ("127.0.0.1", 40000), 0, False, 21, 1),
    ("127.0.0.1", False, "127.0.0.1", 1, ("127.0.0.1", 65535), 111, False, -1, 1),
    ("::1", True, "::1", 65535, ("::1", 1), 110, True, -1, 3),
    ("0:0::1", True, "::1", 22, ("::1", 50000), 113, False, -1, 1),
    ("127.0.0.1", False, "127.0.0.1", 9, None, 24, False, -1, 1),
    ("127.0.0.1", False, "127.0.0.1", 9, ("0.0.0.0", 0), 101, False, -1, 2),
    ("127.0.0.1", False, "127.0.0.1", 5000, ("127.0.0.1", 5000), -1, False, -1, 1),
    ("127.0.0.1", False, "127.0.0.1", 5000, ("127.0.0.1", 5000), 999, False, -1, 1),
]


@pytest.mark.parametrize("case", CASES)
def test_record_matches_python_path(case: tuple[Any, ...]) -> None:
    host, bracketed, address, port, local, err, timed_out, rtt_us, attempt = case
    rng = random.Random(port)
    for _ in range(200):
        wall_s = rng.randrange(0, 4_000_000_000)
        wall_us = rng.randrange(0, 1_000_000)
        latency_ns = rng.choice([0, rng.randrange(0, 10**10), rng.randrange(0, 10**6) * 1000 + 500])
        retrans = rng.choice([-1, 0, 0, 1, rng.randrange(2, 7)])
        family = "ipv6" if ":" in address else "ipv4"
        outcome = "timeout" if timed_out else outcome_of(err)
        record = Record(
            started=wall_s + wall_us / 1e6,
            target=f"[{host}]:{port}" if bracketed else f"{host}:{port}",
            host=host,
            port=port,
            address=address,
            family=family,
            local_address=None if local is None else local[0],
            local_port=None if local is None else local[1],
            outcome=outcome,  # type: ignore[arg-type]
            error=None if outcome == "open" else ("ETIMEDOUT" if timed_out else errno_name(err)),
            latency_ms=latency_ns / 1e6,
            rtt_ms=None if rtt_us < 0 else rtt_us / 1000.0,
            syn_retransmits=None if retrans < 0 else retrans,
            dns_ms=0.0,
            attempt=attempt,
        )
        expected = python_line(record)
        # The Python path takes its timestamp from a float; the core from a timespec.
        wall_ns = wall_us * 1000
        line = _native._record(
            wall_s, wall_ns, host, bracketed, address, port, local, err, timed_out,
            latency_ns, rtt_us, retrans, attempt,
        )  # fmt: skip
        assert line == expected
        assert list(json.loads(line)) == CONTRACT_KEYS


# -- sweeps on loopback, no root ------------------------------------------------------------


def run_native(targets: list[str], **kw: Any) -> tuple[list[dict[str, Any]], native.SweepResult]:
    feed = native.once(native.addresses([parse_target(t) for t in targets]))
    r, w = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(r, 1 << 16), b"")))
    reader.start()
    try:
        options = EngineOptions(**{"timeout": 0.5, "concurrency": 100, **kw})
        result = native.sweep(w, feed, options)
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    lines = b"".join(chunks).splitlines()
    return [json.loads(line) for line in lines], result


def run_python(targets: list[str], *extra: str) -> list[dict[str, Any]]:
    env = {**os.environ, "PROBE_CORE": "python"}
    out = subprocess.run(
        [*probe_cmd(), "check", *targets, "--json", "-t", "0.5", *extra],
        capture_output=True,
        env=env,
        timeout=60,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def stable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records but for what differs between honest runs; JSON types kept (0 is not 0.0),
    and the volatile keys' types too."""
    return sorted(
        (
            {
                k: (type(v).__name__ if k in VOLATILE else (v, type(v).__name__))
                for k, v in r.items()
            }
            for r in records
        ),
        key=lambda r: (r["target"], r["attempt"]),
    )


def test_loopback_sweep_matches_python_engine(
    listener: RecordingListener, full_queue: FullQueueListener
) -> None:
    closed = closed_port()
    targets = [listener.target, f"127.0.0.1:{closed}", full_queue.target]
    records, result = run_native(targets)
    by_port = {r["port"]: r for r in records}
    assert by_port[listener.port]["outcome"] == "open"
    assert by_port[listener.port]["rtt_ms"] is not None
    assert by_port[closed]["outcome"] == "refused"
    assert by_port[full_queue.port]["outcome"] == "timeout"
    assert by_port[full_queue.port]["error"] == "ETIMEDOUT"
    assert by_port[full_queue.port]["latency_ms"] >= 500
    for r in records:
        assert r["local_address"] == "127.0.0.1"
        assert isinstance(r["local_port"], int) and r["local_port"] > 0
    assert result.outcomes == {"open": 1, "refused": 1, "timeout": 1}
    assert (result.targets, result.targets_without_open) == (3, 2)
    # The peer the listener saw is the local endpoint the record reports.
    peers = listener.wait_peers(1)
    assert ("127.0.0.1", by_port[listener.port]["local_port"]) in peers
    assert stable(records) == stable(run_python(targets))


def test_retries_after_timeout_match_python_engine(full_queue: FullQueueListener) -> None:
    records, result = run_native([full_queue.target], retries=2, timeout=0.2)
    assert [r["attempt"] for r in records] == [1, 2, 3]
    assert {r["outcome"] for r in records} == {"timeout"}
    assert (result.targets, result.targets_without_open) == (1, 1)
    assert stable(records) == stable(run_python([full_queue.target], "--retries", "2"))


def test_shards_cover_every_endpoint_once() -> None:
    """Three shards of one sweep: every endpoint in exactly one, as targets.shard() splits."""
    held = sorted(closed_port() for _ in range(7))
    tokens = [f"127.0.0.1:{held[0]},{held[1]}-{held[1]},{','.join(map(str, held[2:]))}"]
    seen: list[int] = []
    for index in range(3):
        records, result = run_sharded(tokens, (index, 3))
        assert result.targets == len(records)
        seen.extend(r["port"] for r in records)
    assert sorted(seen) == held


def run_sharded(targets: list[str], shard: tuple[int, int]) -> tuple[list[dict[str, Any]], Any]:
    feed = native.once(native.addresses([parse_target(t) for t in targets]))
    with tempfile.TemporaryFile() as out:
        result = native.sweep(out.fileno(), feed, EngineOptions(timeout=0.5), shard)
        out.seek(0)
        lines = out.read().splitlines()
    return [json.loads(line) for line in lines], result


def test_the_feed_hands_ranges_addresses_and_names(tmp_path: Path) -> None:
    """Ranges go in whole, addresses and names with their addresses (a zone with its
    interface index), a name that does not resolve with its error."""
    listed = tmp_path / "targets"
    listed.write_text("127.0.0.9:5\n[0:0::1]:80\n")
    tokens = ["127.0.0.1-3:80", "[::1]/127:22", f"@{listed}", "localhost:7", "[fe80::1%lo]:9"]
    plan = build_plan([*tokens, "nonexistent.invalid:1"])
    feed = Feed(plan)
    items: list[Any] = []
    while (batch := feed()) is not None:
        if not batch:  # a name on its way: the wake pipe says when
            waiting = select.poll()
            waiting.register(feed.wake_fd, select.POLLIN)
            waiting.poll(10_000)
            os.read(feed.wake_fd, 64)
        items.extend(batch)
    feed.close()
    assert items[0] == ("R", False, ((80, 80),), ((127, 127), (0, 0), (0, 0), (1, 3)), False)
    assert items[1] == ("R6", True, ((22, 22),), bytes(16), (1).to_bytes(16, "big"), False)
    assert items[2] == ("A", "127.0.0.9", False, (("127.0.0.9", 0),), ((5, 5),), 0, None, False)
    assert items[3] == ("A", "0:0::1", True, (("::1", 0),), ((80, 80),), 0, None, False)
    kind, host, _, addresses, _, dns_k, error, _ = items[4]
    assert (kind, host, error) == ("A", "localhost", None) and addresses and dns_k >= 0
    zone = (("fe80::1%lo", socket.if_nametoindex("lo")),)
    assert items[5] == ("A", "fe80::1%lo", True, zone, ((9, 9),), 0, None, False)
    assert items[6][3] == () and items[6][6] in ("EAI_NONAME", "EAI_AGAIN")


@given(st.integers(0, (1 << 128) - 1))
def test_range_addresses_are_written_as_python_writes_them(value: int) -> None:
    text = _native._ipv6_text(value.to_bytes(16, "big"))
    assert text == ip_text(ipaddress.IPv6Address(value))


def test_range_addresses_edge_cases() -> None:
    for text in ["::", "::1", "1::", "::ffff:1.2.3.4", "::1.2.3.4", "1:0:0:1:0:0:0:1",
                 "1:0:1:0:1:0:1:0", "0:0:1::", "fe80::1:0:0:0"]:  # fmt: skip
        value = ipaddress.IPv6Address(text)
        assert _native._ipv6_text(value.packed) == ip_text(value), text


def test_lag_limit_holds_concurrency_down(full_queue: FullQueueListener) -> None:
    """--lag-limit reaches the core: a loop made late by its own work (here a feed that
    spends 10 ms of CPU on each target it hands in, one a turn of the loop, while timeouts
    hold slots) lowers the concurrency; without a limit nothing does; and a loop that only
    waits is not late by its own work, whatever the machine's load: never held down."""

    def sweep(lag_limit_ms: float | None) -> native.SweepResult:
        items = native.addresses([parse_target(full_queue.target)]) * 60
        wake_r, wake_w = os.pipe()
        turn = [False]

        def slow_feed() -> Any:
            turn[0] = not turn[0]
            if not turn[0]:  # nothing this turn: the loop goes round, and is woken at once
                os.write(wake_w, b"\0")
                return []
            if not items:
                return None
            spin = time.thread_time() + 0.010
            while time.thread_time() < spin:
                pass
            return [items.pop()]

        options = EngineOptions(timeout=0.5, concurrency=100, lag_limit_ms=lag_limit_ms)
        out = os.open(os.devnull, os.O_WRONLY)
        try:
            return native.sweep(out, slow_feed, options, wake_fd=wake_r)
        finally:
            for fd in (out, wake_r, wake_w):
                os.close(fd)

    held = sweep(1.0)
    assert held.lag_throttles > 0
    assert held.outcomes == {"timeout": 60}
    assert sweep(None).lag_throttles == 0
    _, waiting = run_native([full_queue.target] * 300, timeout=0.3, concurrency=100,
                            lag_limit_ms=1e-6)  # fmt: skip
    assert waiting.lag_throttles == 0 and waiting.outcomes == {"timeout": 300}


def test_rate_is_never_exceeded() -> None:
    """--rate R: starts on a fixed cadence, so N attempts span at least (N - 1) / R seconds."""
    held = [closed_port() for _ in range(41)]
    records, result = run_native([f"127.0.0.1:{p}" for p in held], rate=20.0)
    assert result.outcomes == {"refused": 41}
    starts = sorted(stamp(r["timestamp"]) for r in records)
    # A grid from the first start: the last one cannot come early (a late tick may take a
    # step with the next, and the core naps up to 2 ms ahead of the grid)
    assert starts[-1] - starts[0] >= 40 / 20 - 0.05
    for i, first in enumerate(starts):  # R + 1 in a second, plus a stall's catch-up at most
        assert sum(1 for t in starts[i:] if t < first + 1.0) <= 21 + RATE_SLACK * 20


def test_a_paced_loop_wakes_for_its_pacer_not_for_each_lag_tick() -> None:
    """--rate with answers that come at once: the loop sleeps from one pacer tick (20 ms) to
    the next, the slots due by then starting together; nothing in flight, the 5 ms lag
    timer does not wake it. Every wake-up is one lag sample: about 25 over half a second
    (a loaded machine that holds a batch back past 5 ms adds one), not 100 (every lag tick)
    or 1,000 (every attempt)."""
    port = closed_port()
    records, result = run_native([f"127.0.0.1:{port}"] * 1000, rate=2000.0)
    assert result.outcomes == {"refused": 1000}
    starts = sorted(stamp(r["timestamp"]) for r in records)
    span = starts[-1] - starts[0]
    assert span >= 0.45
    assert sum(result.lag_counts) <= span / 0.020 * 2 + 5, (sum(result.lag_counts), span)


def stamp(text: str) -> float:
    from datetime import datetime

    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_progress_reports_records_and_opens(
    listener: RecordingListener, full_queue: FullQueueListener
) -> None:
    calls: list[tuple[int, int]] = []
    feed = native.once(
        native.addresses([parse_target(listener.target), parse_target(full_queue.target)])
    )
    with tempfile.TemporaryFile() as out:
        native.sweep(
            out.fileno(),
            feed,
            EngineOptions(timeout=0.7),
            progress=lambda a, o: calls.append((a, o)),
        )
    assert calls  # at least one tick in 0.7 s
    assert calls[0] == (1, 1)  # the open attempt, while the other waits for its deadline


@pytest.mark.parametrize("workers", ["1", "2"])
def test_closed_reader_exits_141_quietly(workers: str) -> None:
    held = [closed_port() for _ in range(400)]  # ~130 KB of records: more than a pipe holds
    proc = subprocess.run(
        f"{' '.join(probe_cmd())} check {' '.join(f'127.0.0.1:{p}' for p in held)} --json "
        f"--workers {workers} "
        "| head -c 10 >/dev/null; echo ${PIPESTATUS[0]}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.strip() == "141"
    assert proc.stderr == ""


# -- interrupts -------------------------------------------------------------------------------


@pytest.mark.serial
def test_stop_fd_ends_a_sweep_of_timeouts_promptly(full_queue: FullQueueListener) -> None:
    feed = native.once(native.addresses([parse_target(full_queue.target)]))
    stop_r, stop_w = os.pipe()
    out = os.open(os.devnull, os.O_WRONLY)
    box: dict[str, Any] = {}

    def sweep() -> None:
        box["result"] = native.sweep(out, feed, EngineOptions(timeout=60.0), stop_fd=stop_r)
        box["at"] = time.monotonic()

    def towards_it() -> int:  # this process's sockets connected or connecting to the listener
        tcp = tcp_by_inode()
        return sum(tcp.get(inode) == full_queue.port for inode in socket_inodes(os.getpid()))

    fillers = towards_it()
    thread = threading.Thread(target=sweep)
    thread.start()
    # the attempt is in flight (its SYN dropped: its deadline is a minute away)
    wait_for("the sweep's attempt in flight", lambda: towards_it() > fillers)
    stopped_at = time.monotonic()
    os.write(stop_w, b"x")
    thread.join(10)
    os.close(stop_r)
    os.close(stop_w)
    os.close(out)
    assert not thread.is_alive()
    assert box["result"].stopped
    assert box["at"] - stopped_at < 1.0
    assert box["result"].targets == 0  # nothing finished, nothing written


@pytest.mark.serial
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_probe_check_promptly(full_queue: FullQueueListener, signum: int) -> None:
    closed = closed_port()
    proc = subprocess.Popen(
        [*probe_cmd(), "check", f"127.0.0.1:{closed}", full_queue.target, "--json", "-t", "60"],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the refused record: flushed within 0.2 s
    sent = time.monotonic()
    proc.send_signal(signum)
    rest = proc.stdout.read()
    code = proc.wait(10)
    assert time.monotonic() - sent < 2.0
    assert code == 128 + signum
    record = json.loads(first)
    assert record["port"] == closed and record["outcome"] == "refused"
    assert rest == b""  # the unfinished attempt leaves no record, torn or whole


@pytest.mark.serial
def test_a_stop_ends_a_write_to_a_reader_that_does_not_read(tmp_path: Path) -> None:
    """The pipe full, its reader asleep: SIGTERM still ends the run, within the drain
    limit, and the last line counts the records never written (the words of the Python
    path's writer)."""
    err = tmp_path / "err"
    with err.open("wb") as errors:
        proc = subprocess.Popen(
            [*probe_cmd(), "check", "127.0.0.1", "-p", "1-65535", "--json", "--workers", "1"],
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        proc.stdout.read(1)  # it has started writing; from here on nobody reads
        wait_for("a full pipe nobody reads", _unread_pipe(proc.stdout.fileno()), 20)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        proc.stdout.close()
    assert time.monotonic() - sent < OUTPUT_DRAIN + 2.0  # docs/reliability.md's bound
    assert code == 128 + signal.SIGTERM  # as the Python engine's, after its drain
    last = err.read_text().splitlines()[-1]
    assert re.search(r"its reader stopped reading, \d+ records not written$", last), last


# Not serial: no clock (a stall seen early only stops the sweep earlier).
@pytest.mark.parametrize(
    ("fmt", "core", "sink"),
    [
        ("json", "native", "pipe"),
        ("csv", "native", "pipe"),
        ("json", "native", "socket"),
        ("json", "python", "pipe"),
    ],
)
def test_a_stop_leaves_a_reader_that_does_not_read_whole_lines(
    tmp_path: Path, fmt: str, core: str, sink: str
) -> None:
    """SIGTERM while the core waits on a full pipe (or socket) nobody reads: what reached
    the reader is whole lines (every one parses), and the rest is counted, never half
    written. The Python engine's writer keeps the same rule."""
    err = tmp_path / "err"
    env = {**os.environ, "PROBE_CORE": core}
    if sink == "socket":
        ends = socket.socketpair()
        r, w = (end.detach() for end in ends)
    else:
        r, w = os.pipe()
    with err.open("wb") as errors:
        sweep = ["check", "127.0.0.1", "-p", "1-65535", "--format", fmt, "--workers", "1"]
        proc = subprocess.Popen([*probe_cmd(), *sweep], stdout=w, stderr=errors, env=env)
        os.close(w)
        try:
            wait_for("a full pipe nobody reads", _unread_pipe(r), 20)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(10)
            with open(r, "rb", closefd=False) as reader:
                data = reader.read()
        finally:
            kill(proc)
            os.close(r)
    assert code == 128 + signal.SIGTERM
    last = err.read_text().splitlines()[-1]
    unwritten = re.search(r"its reader stopped reading, (\d+) records not written$", last)
    assert unwritten and int(unwritten.group(1)) > 0, last
    assert len(data) >= 32768 and data.endswith(b"\n"), data[-300:]
    lines = data.splitlines()
    if fmt == "json":
        ports = [json.loads(line)["port"] for line in lines]
    else:
        (head, *rows) = list(csv.reader(io.StringIO(data.decode())))
        width = len(head)
        assert all(len(row) == width for row in rows), [r for r in rows if len(r) != width][:3]
        ports = [int(row[head.index("port")]) for row in rows]
    assert len(set(ports)) == len(ports) > 100


# `probe check` of 3,000 open ports on 127.0.0.1 (listeners of its own), human output, the
# writer's cap lowered to 16 KiB: its reader soon holds the sweep.
HELD_HUMAN = """
import socket, sys
from probe.output import writer
writer.BACKLOG_MAX = 16 << 10
listeners = [socket.socket() for _ in range(3000)]
for sock in listeners:
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
sys.argv = ["probe", "check", *(f"127.0.0.1:{s.getsockname()[1]}" for s in listeners),
            *sys.argv[1:]]
from probe.cli import console
console()
"""


@pytest.mark.serial
def test_a_stop_ends_human_output_held_by_its_reader(tmp_path: Path) -> None:
    """Human lines held for a reader that does not read: SIGTERM ends the check within the
    drain limit (the core's reader thread stops holding it at once), whole lines written,
    the last stderr line counting the rest."""
    script = tmp_path / "held.py"
    script.write_text(HELD_HUMAN)
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, str(script), "--workers", "1"],
        stdout=w, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(w)
    try:
        wait_for("a full pipe nobody reads", _unread_pipe(r), 30)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
        took = time.monotonic() - sent
        assert proc.stderr is not None
        stderr = proc.stderr.read().decode()
        with open(r, "rb", closefd=False) as reader:
            data = reader.read()
    finally:
        kill(proc)
        os.close(r)
    assert code == 128 + signal.SIGTERM, stderr
    assert took < OUTPUT_DRAIN + 1.5
    last = stderr.splitlines()[-1]
    assert re.search(r"its reader stopped reading, [1-9]\d* records not written$", last), last
    assert data.endswith(b"\n")
    assert all(line.split()[1] == "open" for line in data.decode().splitlines())


@pytest.mark.serial
def test_a_stop_still_writes_to_a_reader_that_reads(tmp_path: Path) -> None:
    """SIGINT ends a write to a full pipe part way; its reader, slow but reading, still gets
    the rest: whole records, no 'stopped reading', exit 130."""
    err = tmp_path / "err"
    with err.open("wb") as errors:
        proc = subprocess.Popen(
            [*probe_cmd(), "check", "127.0.0.1", "-p", "1-65535", "--json", "--workers", "1"],
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        first = proc.stdout.read(1)
        wait_for("a full pipe nobody reads", _unread_pipe(proc.stdout.fileno()), 20)
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        code = proc.wait(10)
    stderr = err.read_text()
    assert code == 130, stderr
    assert "stopped reading" not in stderr
    records = [json.loads(line) for line in (first + rest).splitlines()]
    assert len({r["port"] for r in records}) == len(records) > 1


def _unread_pipe(fd: int, quiet: float = 0.5) -> Callable[[], bool]:
    """A condition: the pipe (its read end `fd`) holds 32 KiB or more, unchanged for
    `quiet` seconds: its writer has more than the reader took, and waits."""
    seen = {"held": -1, "since": 0.0}

    def stalled() -> bool:
        waiting = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        held, now = int.from_bytes(waiting, sys.byteorder), time.monotonic()
        if held != seen["held"]:
            seen.update(held=held, since=now)
            return False
        return held >= 32768 and now - seen["since"] >= quiet

    return stalled


# -- the whole command ------------------------------------------------------------------------


def test_version_names_the_core() -> None:
    out = subprocess.run([*probe_cmd(), "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip().endswith("(core: native)")
    env = {**os.environ, "PROBE_CORE": "python"}
    out = subprocess.run([*probe_cmd(), "-V"], capture_output=True, text=True, env=env)
    assert out.stdout.strip().endswith("(core: python)")


# -- inside a namespace (root) ------------------------------------------------------------------

needs_netns = pytest.mark.skipif(can_netns() is not None, reason=str(can_netns()))

LISTEN = textwrap.dedent(
    """
    import socket, sys, time
    socks = []
    for host, port in [("127.0.0.1", p) for p in (22, 80, 443, 1500, 1999)] + [("::1", 80)]:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((host, port))
        s.listen(512)
        socks.append(s)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def listening_ns(netns: Netns) -> Iterator[Netns]:
    proc = netns.popen(sys.executable, "-c", LISTEN, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    yield netns
    proc.stdin.close()
    proc.wait(5)


def sweep_in(
    ns: Netns, *args: str, core: str = "native", stdin: bytes | None = None
) -> tuple[int, list[dict[str, Any]]]:
    env = {**os.environ, "PROBE_CORE": core}
    out = subprocess.run(
        [*ns.prefix(), *probe_cmd(), "check", *args, "--json", "-v"],
        capture_output=True,
        env=env,
        timeout=120,
        input=stdin,
    )
    said = out.stderr.decode().splitlines()[0]
    assert said.startswith(f"probe: core: {core}"), said
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines()]


@needs_netns
@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1", "-p", "1-2000"),
        ("[::1]:1-200", "127.0.0.1:70-90,440-450"),
        ("127.0.0.1:1-3000", "-C", "7", "--workers", "1"),
        ("127.0.0.1:1-600", "-s", "127.0.0.1"),
        ("127.0.0.1:1-300", "-s", "127.0.0.1:40000"),
        ("[::1]:1-300", "-s", "::1"),
        ("127.0.0.1:1-300", "--rate", "2000"),
        ("127.0.0.1-3:20-30,75-85", "127.0.0.0/31:440-445"),
        ("127.0.0.0/23", "-p", "22,80", "--exclude", "127.0.0.128/25,127.0.1.7"),
        ("127.0.0.0/24", "-p", "22,23", "--shard", "1/3", "--workers", "2"),
        ("127.0.0.1:1-2000", "--open"),
        ("localhost:20-25,75-85", "127.0.0.1:22"),  # a name: 127.0.0.1 and ::1 (one target)
        ("localhost:79-81", "[::1]:80", "-6"),
        ("nonexistent.invalid:1-3", "127.0.0.1:22"),  # no answer: error records
        ("127.0.0.1:1-300", "--retries", "1", "--lag-limit", "0", "--graceful-close"),
    ],
)
def test_differential_sweep_in_namespace(listening_ns: Netns, args: tuple[str, ...]) -> None:
    code_n, native_records = sweep_in(listening_ns, *args, core="native")
    code_p, python_records = sweep_in(listening_ns, *args, core="python")
    assert code_n == code_p == 1  # closed ports: some targets had no open attempt
    assert len(native_records) == len(python_records) > 0
    assert stable(native_records) == stable(python_records)
    for r in native_records:
        assert list(r) == list(python_records[0])
        if r["address"] is None:  # a name without an answer, an address of the other family
            assert r["outcome"] == "error" and r["error"].startswith("EAI_")
            continue
        assert r["local_port"] > 0
        assert r["outcome"] in ("open", "refused")
        assert (r["rtt_ms"] is not None) == (r["outcome"] == "open")
    opened = {(r["address"], r["port"]) for r in native_records if r["outcome"] == "open"}
    assert opened <= {("127.0.0.1", p) for p in (22, 80, 443, 1500, 1999)} | {("::1", 80)}


@needs_netns
def test_files_stdin_and_outputs_match_python_engine(listening_ns: Netns, tmp_path: Path) -> None:
    """Targets from a file and from standard input; -o FILE gets the bytes stdout gets
    (--open: the open ones only, on both); `-o -` is standard output."""
    listing = tmp_path / "targets"
    listing.write_text("127.0.0.1:20-30\n# a comment\n127.0.0.0/30:80\n[::1]:79-81\n")
    lines = b"127.0.0.1:440-450\n127.0.0.2:22\n"
    for args in [(f"@{listing}",), ("-", "-p", "1-3"), (f"@{listing}", "-", "--open")]:
        results = {}
        for core in ("native", "python"):
            saved = tmp_path / f"{core}.jsonl"
            code, records = sweep_in(listening_ns, *args, "-o", str(saved), core=core, stdin=lines)
            assert code == 1
            assert [json.loads(line) for line in saved.read_bytes().splitlines()] == records
            results[core] = records
        assert stable(results["native"]) == stable(results["python"]), args
        assert len(results["native"]) > 0
    out = subprocess.run(
        [*probe_cmd(), "check", f"127.0.0.1:{closed_port()}", "-o", "-"],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 1
    assert json.loads(out.stdout)["outcome"] == "refused"
    assert not (tmp_path / "-").exists()


@needs_netns
def test_csv_matches_python_engine(listening_ns: Netns) -> None:
    """CSV on the native core: the Python engine's rows, column for column."""
    rows = {}
    for core in ("native", "python"):
        out = subprocess.run(
            [*listening_ns.prefix(), *probe_cmd(), "check", "127.0.0.1:1-600", "[::1]:79-81",
             "localhost:22", "nonexistent.invalid:5", "--format", "csv", "-v"],
            capture_output=True, text=True, env={**os.environ, "PROBE_CORE": core}, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1
        assert out.stderr.startswith(f"probe: core: {core}")
        table = list(csv.DictReader(io.StringIO(out.stdout)))
        rows[core] = sorted(
            ({k: (len(v) > 0 if k in VOLATILE else v) for k, v in row.items()} for row in table),
            key=lambda row: (row["target"], row["address"]),
        )
        assert len(table) >= 600 + 3 + 1 + 1  # localhost: one address or two
    assert rows["native"] == rows["python"]


@needs_netns
@pytest.mark.parametrize("bad_line", [None, 150])
def test_workers_take_a_files_lines_in_turn(
    listening_ns: Netns, tmp_path: Path, bad_line: int | None
) -> None:
    """Two workers share a long file line by line (each parses only its own address-alone
    lines): every endpoint once, as the Python engine's workers probe them; a bad line
    stops both cores' workers at the same place."""
    lines = [f"127.0.{n // 250}.{n % 250 + 1}\n" for n in range(300)]
    lines[7] = "127.0.0.1:440-450 # a comment\n"
    lines[8] = "[::1]/127\n"
    if bad_line is not None:
        lines[bad_line - 1] = "127.0.0.1:nope\n"
    listing = tmp_path / "targets"
    listing.write_text("".join(lines))
    args = (f"@{listing}", "-p", "22,80", "--workers", "2")
    code_n, native_records = sweep_in(listening_ns, *args, core="native")
    code_p, python_records = sweep_in(listening_ns, *args, core="python")
    assert code_n == code_p == (1 if bad_line is None else 2)
    assert stable(native_records) == stable(python_records)
    targets = [r["target"] for r in native_records]
    assert len(targets) == len(set(targets)) > 0


@needs_netns
def test_refusal_after_a_retransmit_keeps_its_socket_out_of_the_poller(netns: Netns) -> None:
    """A refusal that comes through epoll (the first SYN dropped, the retransmit refused)
    hands its socket to the reuse pool: it must leave the epoll set first. Kept in it, the
    reset socket reported EPOLLHUP for a slot that had moved on (false opens, EBADF
    records, a crash)."""
    need_tools(netns, "iptables")
    every_other_syn = ["-p", "tcp", "--syn", "--dport", "1:300"]
    nth = ["-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0"]
    try:
        netns.run("iptables", "-A", "INPUT", *every_other_syn, *nth, "-j", "DROP")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no iptables statistic match here: {exc.stderr.strip()}")
    args = ("127.0.0.1:1-300", "-t", "1.5", "-C", "100", "--workers", "1")
    code, records = sweep_in(netns, *args)
    assert code == 1
    assert sorted(r["port"] for r in records) == list(range(1, 301))
    assert {r["outcome"] for r in records} <= {"refused", "timeout"}
    late = [r for r in records if r["outcome"] == "refused" and r["syn_retransmits"]]
    assert late, "no refusal came after a retransmit: the path under test was not taken"
    assert len({(r["local_port"], r["port"]) for r in records}) == 300


SHORT_OF_FDS = textwrap.dedent(
    """
    import json, sys
    from probe.engine import EngineOptions, native
    from probe.syntax import parse_target
    dropped, closed = sys.argv[1], sys.argv[2]
    # 200 attempts whose SYNs are dropped stay in flight: far more than 64 descriptors.
    targets = [parse_target(dropped)] * 200 + [parse_target(closed)] * 50
    feed = native.once(native.addresses(targets))
    result = native.sweep(1, feed, EngineOptions(timeout=0.3, concurrency=500))
    sys.stderr.write(json.dumps({"shortages": result.shortages, "error": result.error}))
    """
)


def test_descriptor_shortage_is_never_a_record(full_queue: FullQueueListener) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    closed = f"127.0.0.1:{closed_port()}"
    out = subprocess.run(
        ["prlimit", "--nofile=64", sys.executable, "-c", SHORT_OF_FDS, full_queue.target, closed],
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    stats = json.loads(out.stderr)
    assert stats["shortages"] > 0  # the limit was met...
    assert stats["error"] is None
    assert len(records) == 250  # ...and never became a record
    assert sum(r["outcome"] == "timeout" for r in records) == 200
    assert sum(r["outcome"] == "refused" for r in records) == 50


GIVE_UP = textwrap.dedent(
    """
    import json, os, sys, resource
    from probe.engine import EngineOptions, native
    from probe.syntax import parse_target
    feed = native.once(native.addresses([parse_target(f"127.0.0.1:{sys.argv[1]}")]))
    out = os.open(os.devnull, os.O_WRONLY)
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        os.close(held.pop())  # one for the core's epoll set; none for a socket
    result = native.sweep(out, feed, EngineOptions(timeout=1.0, shortage_giveup=0.5))
    for fd in held:
        os.close(fd)
    print(json.dumps({"error": result.error, "targets": result.targets}))
    """
)


def test_shortage_with_nothing_in_flight_gives_up() -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit is not installed")
    out = subprocess.run(
        ["prlimit", "--nofile=64", sys.executable, "-c", GIVE_UP, str(closed_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {
        "error": "no free file descriptor or local port on this machine",
        "targets": 0,
    }


CAPTURE = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from probe.engine import EngineOptions, native
    from probe.syntax import parse_target
    reuse, pcap, out = sys.argv[1] == "1", sys.argv[2], sys.argv[3]
    feed = native.once(native.addresses([parse_target("127.0.0.1:1-2000")]))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    result = native.sweep(fd, feed, EngineOptions(timeout=1.0, concurrency=100), reuse=reuse)
    os.close(fd)
    print(json.dumps({"reused": result.reused}))
    """
)


@needs_netns
@pytest.mark.parametrize("reuse", [True, False])
def test_every_attempt_sends_its_own_syn_from_its_recorded_port(
    listening_ns: Netns, reuse: bool, tmp_path: Path
) -> None:
    """Reusing a refused attempt's socket must not share a SYN or a port between records."""
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    pcap, out = tmp_path / "syn.pcap", tmp_path / "records.jsonl"
    syn_only = "tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0"
    # -c: exit once every SYN of the sweep is written (one per attempt: ports 1-2000 lie
    # below the ephemeral range, so no attempt can connect to itself and send another).
    capture = listening_ns.popen(
        "tcpdump", "-i", "lo", "-n", "-U", "-c", "2000", "-w", str(pcap), syn_only,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:  # a failed sweep must not leave the capture running after the test
        assert capture.stderr is not None
        assert "listening on lo" in capture.stderr.readline()
        ran = listening_ns.run(
            sys.executable, "-c", CAPTURE, "1" if reuse else "0", str(pcap), str(out)
        )
        capture.wait(30)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    reused = json.loads(ran.stdout)["reused"]
    assert (reused > 1000) if reuse else (reused == 0)
    text = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout
    syns = []
    for line in text.splitlines():  # "... IP 127.0.0.1.40000 > 127.0.0.1.80: Flags [S], ..."
        src, dst = line.split()[2], line.split()[4].rstrip(":")
        syns.append((int(src.rsplit(".", 1)[1]), int(dst.rsplit(".", 1)[1])))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(syns) == sorted((r["local_port"], r["port"]) for r in records)
    assert len(set(syns)) == 2000
    opened = sorted(r["port"] for r in records if r["outcome"] == "open")
    assert opened == [22, 80, 443, 1500, 1999]  # no false open
    time_wait = listening_ns.run("ss", "-tan", "state", "time-wait").stdout.splitlines()
    assert len(time_wait) <= 1  # the header only: RST closes, refusals leave nothing


class WatchedPipe(PipeStream):
    """A pipe stream that notes the most it ever held for its reader."""

    high = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        written = super().write(data)
        self.high = max(self.high, len(self._buf))
        return written


@pytest.mark.parametrize("core", ["native", "python"])
def test_human_lines_wait_for_a_slow_reader_in_bounded_room(
    monkeypatch: pytest.MonkeyPatch, core: str
) -> None:
    """Human output to a pipe nobody reads yet, 3,000 open ports to sweep: the sweep is held
    (no new connects) while what waits for the reader stays within the writer's cap (here
    16 KiB, plus what the attempts in flight add); once it reads, it gets every line."""
    cap, total, concurrency = 16 << 10, 3000, 64
    monkeypatch.setattr(writer_module, "BACKLOG_MAX", cap)
    if core == "python":
        monkeypatch.setattr(native, "UNAVAILABLE", "the Python engine, for this test")
    listeners = []
    try:
        for _ in range(total):
            sock = socket.socket()
            listeners.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
        ports = {sock.getsockname()[1] for sock in listeners}
        plan = build_plan([f"127.0.0.1:{port}" for port in ports], concurrency=concurrency)
        assert choose(plan).core == core
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        out = WatchedPipe(w, stall=False)
        stdout = RecordWriter(out)
        connected = select.poll()
        for sock in listeners:
            connected.register(sock, select.POLLIN)
        seen = {"count": -1, "since": 0.0}
        box: dict[str, Any] = {}

        def held() -> bool:
            """No new connect for a second, the output full (or every port done)."""
            count, now = len(connected.poll(0)), time.monotonic()
            if count != seen["count"]:
                seen.update(count=count, since=now)
            return count == total or (stdout.full() and now - seen["since"] >= 1.0)

        def read_later() -> None:
            try:
                wait_for("the sweep held by its reader", held, 60)
                box["held"] = seen["count"]
            finally:
                box["data"] = b"".join(iter(lambda: os.read(r, 1 << 16), b""))

        reader = threading.Thread(target=read_later)
        reader.start()
        try:
            result = run_share(plan, 0, 1, Sinks(plan.output, stdout))
            stdout.close()
        finally:
            reader.join(60)
            os.close(r)
    finally:
        for sock in listeners:
            sock.close()
    assert result.error is None and result.outcomes[OPEN] == total
    assert out.high <= cap + concurrency * 200, out.high
    assert box["held"] < total / 2  # the rest waited for the reader
    lines = box["data"].decode().splitlines()
    assert len(lines) == total
    assert {int(line.split()[0].rsplit(":", 1)[1]) for line in lines} == ports
    assert all(line.split()[1] == "open" for line in lines)


@needs_netns
@pytest.mark.parametrize("workers", ["1", "2"])
def test_human_sweep_matches_python_engine(listening_ns: Netns, workers: str) -> None:
    """`probe check 127.0.0.1 -p 1-2000`: open lines and the summary, as the Python engine
    prints them, but for latencies, ports and the timing figures of the summary."""
    outputs = {}
    for core in ("native", "python"):
        env = {**os.environ, "PROBE_CORE": core}
        out = subprocess.run(
            [*listening_ns.prefix(), *probe_cmd(), "check", "127.0.0.1", "-p", "1-2000",
             "[::1]:80", "--workers", workers],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert out.returncode == 1 and out.stderr == ""
        outputs[core] = out.stdout.splitlines()

    def shape(lines: list[str]) -> list[str]:
        volatile = [
            (r"local (\S+):\d+", r"local \1:P"),
            (r"\d+\.\d\d ms", "T ms"),
            (r"in \d+\.\d\d s \(\d+/s\)", "in S s (R/s)"),
            (r"lag p99 \d+\.\d ms, max \d+\.\d ms", "lag p99 L ms, max L ms"),
            # columns are padded to the widest latency: 9.99 ms and 10.01 ms shift them
            (r" +", " "),
        ]
        out = []
        for line in lines:
            for pattern, repl in volatile:
                line = re.sub(pattern, repl, line)
            out.append(line)
        return sorted(out[:-2]) + out[-2:]  # workers interleave open lines; summary last

    assert shape(outputs["native"]) == shape(outputs["python"])
    assert len(outputs["native"]) == 6 + 2  # five listeners on 127.0.0.1, one on ::1


@needs_netns
def test_self_connect_with_fixed_source_port_matches_python_engine(netns: Netns) -> None:
    """-s ADDR:PORT equal to the destination: the socket connects to itself; every retry
    would be the same, so both cores report error / SELF_CONNECT, never open."""
    args = ("127.0.0.1:7", "127.0.0.1:8", "-s", "127.0.0.1:7")
    code_n, native_records = sweep_in(netns, *args, core="native")
    code_p, python_records = sweep_in(netns, *args, core="python")
    assert code_n == code_p == 1
    assert stable(native_records) == stable(python_records)
    by_port = {r["port"]: r for r in native_records}
    assert (by_port[7]["outcome"], by_port[7]["error"]) == ("error", "SELF_CONNECT")
    assert by_port[7]["local_port"] == 7
    assert by_port[8]["outcome"] == "refused" and by_port[8]["local_port"] == 7


def test_one_spec_for_both_cores() -> None:
    """The C writer takes the record's keys, the outcomes (each errno's too), errno names and
    lag buckets from the Python side at import, and refuses what it cannot write: a key or
    an outcome added on one side only makes the native core unavailable, never wrong."""
    record = Record(
        started=0.0, target="127.0.0.1:1", host="127.0.0.1", port=1, address="127.0.0.1",
        family="ipv4", local_address=None, local_port=None, outcome=outcome_of(111),
        error="ECONNREFUSED", latency_ms=0.0, rtt_ms=None, syn_retransmits=None, dns_ms=0.0,
        attempt=1,
    )  # fmt: skip
    assert tuple(json.loads(python_line(record))) == RECORD_KEYS
    spec: dict[str, Any] = {
        "errnames": errno.errorcode,
        "outcomes": [str(o) for o in OUTCOMES],
        "by_errno": [OUTCOMES.index(outcome_of(e)) for e in range(256)],
        "keys": RECORD_KEYS,
        "lag_bounds": LagMonitor.BOUNDS_MS,
    }
    for wrong in (
        {"keys": (*RECORD_KEYS, "tls_ms")},
        {"keys": (*RECORD_KEYS[:-1], "attempts")},
        {"outcomes": [*spec["outcomes"], "filtered"]},
        {"by_errno": [0] * 256},
    ):
        with pytest.raises(ValueError):
            _native.configure(**{**spec, **wrong})
    _native.configure(**spec)  # as at import
    reordered = (RECORD_KEYS[1], RECORD_KEYS[0], *RECORD_KEYS[2:])
    try:
        _native.configure(**{**spec, "keys": reordered})
        line = _native._record(0, 0, "127.0.0.1", False, "127.0.0.1", 1, None, 111, False,
                               0, -1, -1, 1)  # fmt: skip
        assert tuple(json.loads(line)) == reordered
    finally:
        _native.configure(**spec)
