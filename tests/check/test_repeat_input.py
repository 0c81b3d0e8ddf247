"""Repeat mode is a property of the request: targets on standard input get the same lines
and per-target summaries as the same targets in a file."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import RecordingListener, closed_port, probe

_VARYING = re.compile(r"local 127\.0\.0\.1:\d+|\d+\.\d+ ms|\d+\.\d+/\d+\.\d+/\d+\.\d+/\d+\.\d+ ms")


def _shape(text: str) -> list[str]:
    """The lines without what differs from run to run (local ports, times), in order."""
    return [_VARYING.sub("*", " ".join(line.split())) for line in text.splitlines()]


def test_stdin_with_count_prints_what_a_file_prints(
    listener: RecordingListener, tmp_path: Path
) -> None:
    targets = f"{listener.target}\n127.0.0.1:{closed_port()}\n"
    listed = tmp_path / "targets.txt"
    listed.write_text(targets)
    from_file = probe("check", f"@{listed}", "-c", "2", "-i", "0.05")
    from_stdin = probe("check", "-", "-c", "2", "-i", "0.05", input=targets)
    assert from_file.returncode == from_stdin.returncode == 1
    # (attempt lines of two targets may finish in either order within a round)
    assert sorted(_shape(from_stdin.stdout)) == sorted(_shape(from_file.stdout)), from_stdin.stdout
    assert from_stdin.stdout.count("--- ") == 2  # a summary block per target
