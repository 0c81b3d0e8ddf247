"""`run_workers` forks real worker processes and merges what they send into the run's one
`ShareResult`: their counts, their lines whole, and the workers that sent nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from probe.check.result import ShareResult
from probe.check.workers import PIPE_SIZE, run_workers
from probe.errors import TargetError
from probe.output.writer import RecordWriter


def _run(
    tmp_path: Path, body: Callable[[int, int, list[RecordWriter]], ShareResult]
) -> ShareResult:
    with open(tmp_path / "out", "wb") as stream:
        out = RecordWriter(stream)
        total = run_workers(3, lambda i, n, streams, _: body(i, n, streams), [out])
        out.close(None)
    return total


def test_results_merge_and_a_worker_without_one_is_counted(tmp_path: Path) -> None:
    def body(index: int, count: int, streams: list[RecordWriter]) -> ShareResult:
        streams[0].write_lines(f"line of {index}\n".encode())
        if index == 1:
            streams[0].flush()
            os._exit(0)  # ends without sending its result
        return ShareResult(seen=10 + index, targets=1)

    total = _run(tmp_path, body)
    assert (total.seen, total.targets, total.workers_died) == (10 + 12, 2, 1)
    assert total.stopped_by == 0 and total.error is None
    lines = (tmp_path / "out").read_text().splitlines()
    assert sorted(lines) == ["line of 0", "line of 1", "line of 2"]


def test_a_workers_error_is_the_runs_and_its_own_signal_is_not(tmp_path: Path) -> None:
    """A worker's error reaches the run; a signal only the workers saw does not stop it
    (only a signal this process got does)."""

    def body(index: int, count: int, streams: list[RecordWriter]) -> ShareResult:
        if index == 2:
            return ShareResult(error=TargetError("bad line"), stopped_by=15)
        return ShareResult(seen=1)

    total = _run(tmp_path, body)
    assert isinstance(total.error, TargetError) and str(total.error) == "bad line"
    assert total.stopped_by == 0 and total.workers_died == 0 and total.seen == 2


def test_lines_longer_than_a_read_arrive_whole_and_apart(tmp_path: Path) -> None:
    """A line longer than one read of the pipe comes in pieces: the parent keeps the
    pieces until the line ends, and another worker's lines never land inside it."""
    long = [bytes([ord("a") + i]) * (PIPE_SIZE + PIPE_SIZE // 2) for i in range(3)]

    def body(index: int, count: int, streams: list[RecordWriter]) -> ShareResult:
        streams[0].write_lines(b"%d first\n%s\n%d last\n" % (index, long[index], index))
        return ShareResult(seen=1)

    total = _run(tmp_path, body)
    assert total.seen == 3 and total.workers_died == 0
    lines = (tmp_path / "out").read_bytes().split(b"\n")
    assert lines.pop() == b""
    firsts, lasts = [b"%d first" % i for i in range(3)], [b"%d last" % i for i in range(3)]
    assert sorted(lines) == sorted([*firsts, *long, *lasts])
    for i in range(3):  # each worker's lines in the order it wrote them
        assert lines.index(firsts[i]) < lines.index(long[i]) < lines.index(lasts[i])
