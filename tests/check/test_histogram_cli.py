"""`probe check -c N --histogram`: the latency buckets come after the target's summary."""

from __future__ import annotations

import re
import subprocess

from helpers import RecordingListener, closed_port, probe_cmd

# edges are right-aligned to the widest one: a slow connect (10 ms+) pads the narrow ones
ROW = re.compile(r"\s+\d+\.\d{3} -\s+\d+\.\d{3}\s+(\d+)\s+#*")


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*probe_cmd(), "check", *args], capture_output=True, text=True, timeout=30
    )


def test_histogram_follows_the_summary(listener: RecordingListener) -> None:
    done = check(listener.target, "-c", "6", "-i", "0.02", "--histogram")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = lines.index(f"--- {listener.target} ---")
    assert lines[at + 1].startswith("6 attempts, 6 open")
    assert lines[at + 2].startswith("latency min/avg/max/mdev")
    assert lines[at + 3] == "latency histogram (6 attempts, ms):"
    counts = [int(m[1]) for line in lines[at + 4 :] if (m := ROW.fullmatch(line))]
    assert len(counts) == len(lines[at + 4 :]) and sum(counts) == 6


def test_no_histogram_unless_asked_or_nothing_opened(listener: RecordingListener) -> None:
    plain = check(listener.target, "-c", "2", "-i", "0.02")
    assert "histogram" not in plain.stdout
    refused = check(f"127.0.0.1:{closed_port()}", "-c", "2", "-i", "0.02", "--histogram")
    assert refused.returncode == 1
    assert "histogram" not in refused.stdout  # no open attempt: no latency to draw
