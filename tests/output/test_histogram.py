"""psping-style latency histogram: a pure function of the latencies."""

from __future__ import annotations

import re

import pytest

from probe.output.histogram import BAR, histogram_lines

ROW = re.compile(r"\s+(\d+\.\d{3}) - (\d+\.\d{3})\s+(\d+)\s+(#*)")


def rows(lines: list[str]) -> list[tuple[float, float, int, int]]:
    out = []
    for line in lines[1:]:
        m = ROW.fullmatch(line)
        assert m, line
        out.append((float(m[1]), float(m[2]), int(m[3]), len(m[4])))
    return out


def test_buckets_span_min_to_max_and_count_everything() -> None:
    latencies = [1.0, 2.0, 2.0, 3.0, 9.0]  # exact in binary: no edge is off by a rounding
    lines = histogram_lines(latencies, buckets=4)
    assert lines[0] == "latency histogram (5 attempts, ms):"
    got = rows(lines)
    assert [(r[0], r[1]) for r in got] == [(1.0, 3.0), (3.0, 5.0), (5.0, 7.0), (7.0, 9.0)]
    assert [r[2] for r in got] == [3, 1, 0, 1]  # [1,3) [3,5) [5,7) [7,9]
    assert got[0][3] == BAR and got[1][3] == round(BAR / 3) and got[2][3] == 0


def test_the_maximum_falls_in_the_last_bucket() -> None:
    got = rows(histogram_lines([1.0, 2.0], buckets=4))
    assert [r[2] for r in got] == [1, 0, 0, 1]


def test_identical_latencies_make_one_bucket() -> None:
    lines = histogram_lines([0.25] * 3)
    assert lines[0] == "latency histogram (3 attempts, ms):"
    assert rows(lines) == [(0.25, 0.25, 3, BAR)]
    assert histogram_lines([0.5])[0] == "latency histogram (1 attempt, ms):"


def test_small_counts_still_show_a_bar() -> None:
    got = rows(histogram_lines([1.0] * 1000 + [9.0], buckets=2))
    assert got[1][2] == 1 and got[1][3] == 1


def test_nothing_to_draw() -> None:
    assert histogram_lines([]) == []
    with pytest.raises(ValueError):
        histogram_lines([1.0], buckets=0)
