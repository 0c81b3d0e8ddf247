"""The plan and the typed results, in process: the command line becomes one frozen plan;
a share of it runs (against real loopback sockets) into a `ShareResult` that pickles whole
and merges exactly. An empty share is an ordinary result, not an error."""

from __future__ import annotations

import math
import pickle
import statistics
from collections import Counter
from pathlib import Path

import pytest
from helpers import RecordingListener, closed_port

from probe.check.plan import LIST_LIMIT, Format, Output, build_plan
from probe.check.result import Latencies, Latency, ShareResult, TargetStats, port_ranges
from probe.check.run import run_share
from probe.check.share import in_shard, share_options
from probe.check.sinks import Sinks
from probe.errors import TargetError, UsageError
from probe.output.writer import RecordWriter
from probe.plain import FrozenError


def _sinks(plan_output: Output, path: Path) -> tuple[Sinks, Path]:
    """Sinks writing to a real file (the native core writes to a descriptor)."""
    return Sinks(plan_output, RecordWriter(path.open("wb"))), path


# -- the plan --------------------------------------------------------------------------------


def test_plan_is_frozen_and_validated_once() -> None:
    plan = build_plan(["127.0.0.1:1"], count=0, lag_limit_ms=0)
    assert plan.repeat and plan.count == 0
    assert plan.options.lag_limit_ms is None  # --lag-limit 0 disables the throttle
    with pytest.raises(FrozenError):
        plan.count = 3  # type: ignore[misc]


def test_few_endpoints_get_a_line_each_whatever_the_count() -> None:
    few = build_plan([f"127.0.0.1:1-{LIST_LIMIT}"], count=1_000_000, workers=8)
    assert few.output.list_mode and few.workers == 1
    many = build_plan([f"127.0.0.1:1-{LIST_LIMIT + 1}"], workers=2)
    assert not many.output.list_mode and many.workers == 2


def test_standard_input_is_read_by_one_process() -> None:
    plan = build_plan(["-"], ports="1-1000", workers=4)
    assert plan.blocking_input and plan.workers == 1


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"shard": "2/2"}, "--shard"),
        ({"ports": "0"}, "-p"),
        ({"exclude": ["300.1.1.1"]}, "300.1.1.1"),
    ],
)
def test_bad_options_fail_in_the_plan(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(UsageError, match=named.replace(".", r"\.")):
        build_plan(["127.0.0.1:1"], **kwargs)  # type: ignore[arg-type]


@pytest.mark.serial
def test_rate_is_shared_and_interleaved() -> None:
    plan = build_plan(["127.0.0.1:1"], rate=300.0, concurrency=10).replace(rate_epoch=100.0)
    shares = [share_options(plan, i, 3) for i in range(3)]
    assert [s.rate for s in shares] == [100.0, 100.0, 100.0]
    assert [s.rate_epoch for s in shares] == pytest.approx(
        [100.0, 100.0 + 1 / 300, 100.0 + 2 / 300]
    )
    assert all(s.concurrency == 4 for s in shares)


def test_shard_hash_is_stable_and_splits() -> None:
    names = [f"127.0.0.1:{p}" for p in range(1, 3001)]
    counts = Counter(next(i for i in range(3) if in_shard(n, (i, 3))) for n in names)
    assert set(counts) == {0, 1, 2}
    assert all(800 < c < 1200 for c in counts.values())
    # blake2b, not hash(): the same answer in every process and on every machine.
    assert [in_shard("127.0.0.1:22", (i, 4)) for i in range(4)].count(True) == 1


# -- results ---------------------------------------------------------------------------------


def test_latency_merges_exactly() -> None:
    xs = [0.1, 0.5, 0.2, 3.0, 0.25, 0.3, 1.5]
    left, right, whole = Latency(), Latency(), Latency()
    for x in xs[:3]:
        left.add(x)
    for x in xs[3:]:
        right.add(x)
    for x in xs:
        whole.add(x)
    left.merge(right)
    assert left.n == len(xs)
    assert left.mean == pytest.approx(statistics.fmean(xs))
    assert left.mdev == pytest.approx(statistics.pstdev(xs))
    assert (left.low, left.high) == (min(xs), max(xs))
    assert left.mdev == pytest.approx(whole.mdev)


def test_histogram_keeps_a_bounded_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past KEEP latencies, --histogram keeps a uniform sample of KEEP (memory of `-c 0`)."""
    monkeypatch.setattr(Latencies, "KEEP", 50)
    kept = Latencies()
    xs = [float(i) for i in range(5000)]
    for x in xs:
        kept.add(x)
    assert kept.seen == 5000 and len(kept.values) == 50
    assert set(kept.values) <= set(xs) and max(kept.values) >= 50  # later ones got in


def test_port_ranges_of_a_bitmap() -> None:
    bits = bytearray(8192)
    for port in [*range(1, 22), *range(23, 65536)]:
        bits[port >> 3] |= 1 << (port & 7)
    assert port_ranges(bits) == [(1, 21), (23, 65535)]
    bits = bytearray(8192)
    for port in (7, 8, 9, 100):
        bits[port >> 3] |= 1 << (port & 7)
    assert port_ranges(bits) == [(7, 9), (100, 100)]


def test_result_pickles_whole_with_its_error_type() -> None:
    result = ShareResult(outcomes=Counter(open=2, refused=1), seen=3, targets=3)
    result.per_target[("127.0.0.1:22", "127.0.0.1")] = TargetStats(Counter(open=2))
    result.error = TargetError("targets.txt, line 3: bad port 'nope'")
    back = pickle.loads(pickle.dumps(result))
    assert type(back.error) is TargetError and str(back.error) == str(result.error)
    assert back.outcomes == result.outcomes
    assert back.per_target[("127.0.0.1:22", "127.0.0.1")].outcomes == Counter(open=2)


def test_merge_sums_counts_and_ors_ports() -> None:
    a, b = ShareResult(), ShareResult()
    a.outcomes.update(refused=2)
    b.outcomes.update(refused=1, open=1)
    a.ports = {("h", "h"): {"refused": bytearray(8192)}}
    b.ports = {("h", "h"): {"refused": bytearray(8192)}}
    a.ports[("h", "h")]["refused"][0] = 0b0110  # ports 1, 2
    b.ports[("h", "h")]["refused"][0] = 0b1000  # port 3
    b.stopped_by = 2
    a.merge(b)
    assert a.outcomes == Counter(refused=3, open=1)
    assert port_ranges(a.ports[("h", "h")]["refused"]) == [(1, 3)]
    assert a.stopped_by == 2


# -- running shares --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_empty_share_is_a_plain_result(
    listener: RecordingListener, tmp_path: Path, fmt: Format
) -> None:
    plan = build_plan([listener.target], fmt=fmt)
    sinks, out = _sinks(plan.output, tmp_path / "empty")
    empty = run_share(plan, 1, 2, sinks)  # the one endpoint belongs to share 0 of 2
    sinks.out.close()
    assert (empty.seen, empty.targets, empty.attempts, empty.error) == (0, 0, 0, None)
    assert out.read_bytes() == b""
    sinks, out = _sinks(plan.output, tmp_path / "full")
    full = run_share(plan, 0, 2, sinks)
    sinks.out.close()
    assert (full.seen, full.targets, full.targets_without_open, full.error) == (1, 1, 0, None)
    assert out.read_bytes().count(b"\n") == 1
    empty.merge(full)
    assert (empty.seen, empty.targets, empty.outcomes) == (1, 1, Counter(open=1))


def test_one_share_repeat_mode_collects_target_stats(
    listener: RecordingListener, tmp_path: Path
) -> None:
    plan = build_plan([listener.target], count=5, interval=0.0)
    sinks, out = _sinks(plan.output, tmp_path / "out")
    result = run_share(plan, 0, 1, sinks)
    sinks.out.close()
    assert result.error is None
    [stats] = result.per_target.values()
    assert stats.outcomes == Counter(open=5)
    assert stats.latency.n == 5 and math.isfinite(stats.latency.mean)
    assert out.read_bytes().count(b"\n") == 5


def test_sweep_share_keeps_non_open_ports_per_host(
    listener: RecordingListener, tmp_path: Path
) -> None:
    closed = sorted({closed_port() for _ in range(40)})
    spec = "127.0.0.1:" + ",".join(map(str, [listener.port, *closed]))
    plan = build_plan([spec], workers=1)
    sinks, _ = _sinks(plan.output, tmp_path / "out")
    result = run_share(plan, 0, 1, sinks)
    assert result.ports is not None
    ranges = port_ranges(result.ports[("127.0.0.1", "127.0.0.1")]["refused"])
    assert {p for lo, hi in ranges for p in range(lo, hi + 1)} == set(closed)
