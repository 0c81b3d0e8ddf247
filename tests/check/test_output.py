"""The forms records take: aligned human lines (with service names), `--format json|csv`
(`--json` its alias), `-o FILE` beside the terminal's form, and `--open`."""

from __future__ import annotations

import csv
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    CONTRACT_KEYS,
    FullQueueListener,
    RecordingListener,
    closed_port,
    compact_ports,
    one_line_error,
    probe,
    probe_env,
    records,
    without_lag,
)


def _columns(line: str) -> tuple[int, int, int]:
    """Where the outcome, the local endpoint and the latency's end are on a line."""
    words = line.split()
    outcome = line.index(f" {words[1]} ") + 1
    local = line.index(" local ") + 1
    ms = line.index(" ms") + 3
    return outcome, local, ms


def test_columns_align_whatever_the_outcome(
    listener: RecordingListener, full_queue: FullQueueListener
) -> None:
    closed = f"127.0.0.2:{closed_port('127.0.0.1')}"
    result = probe("check", listener.target, full_queue.target, closed, "-t", "0.2")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    outcomes = [line.split()[1] for line in lines]
    assert sorted(outcomes) == ["open", "refused", "timeout"]
    assert len({_columns(line) for line in lines}) == 1, lines
    assert any(line.endswith("ETIMEDOUT") for line in lines)


@pytest.fixture
def service_listener() -> Iterator[tuple[socket.socket, int, str]]:
    """A loopback listener on a port the services database names (one that is free here)."""
    for port in (8080, 8081, 8443, 8000, 5432, 3306, 6379, 9418, 2049, 873):
        try:
            name = socket.getservbyport(port, "tcp")
        except OSError:
            continue
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sock.listen(16)
        yield sock, port, name
        sock.close()
        return
    pytest.skip("no named port free on loopback (or no services database)")


def test_service_name_beside_open_port(service_listener: tuple[socket.socket, int, str]) -> None:
    _, port, name = service_listener
    result = probe("check", f"127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.split()[1] == "open"
    assert line.endswith(f"  {name}")


def test_json_alias_and_format_json_agree(listener: RecordingListener) -> None:
    one = records(probe("check", listener.target, "--json").stdout)
    two = records(probe("check", listener.target, "--format", "json").stdout)
    assert len(one) == len(two) == 1
    assert {k for k in one[0] if one[0][k] != two[0][k]} <= {
        "timestamp", "local_port", "latency_ms", "rtt_ms"
    }  # fmt: skip


@pytest.mark.parametrize("workers", ["1", "2"])
def test_csv_header_then_one_row_per_record(listener: RecordingListener, workers: str) -> None:
    ports = [listener.port] + [closed_port() for _ in range(39)]
    spec = "127.0.0.1:" + ",".join(map(str, ports))
    result = probe("check", spec, "--format", "csv", "--workers", workers)
    assert result.returncode == 1, result.stderr
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == CONTRACT_KEYS
    header = rows[0]
    body = [dict(zip(header, row, strict=True)) for row in rows[1:]]
    assert sorted(int(r["port"]) for r in body) == sorted(ports)
    opened = [r for r in body if r["outcome"] == "open"]
    assert [int(r["port"]) for r in opened] == [listener.port]
    assert opened[0]["error"] == ""  # null is an empty field
    assert (opened[0]["local_address"], int(opened[0]["local_port"])) in listener.wait_peers(1)
    assert all(r["error"] == "ECONNREFUSED" for r in body if r["outcome"] == "refused")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_output_file_has_json_while_stdout_is_human(
    listener: RecordingListener, tmp_path: Path, workers: str
) -> None:
    out = tmp_path / "records.jsonl"
    ports = [listener.port] + [closed_port() for _ in range(39)]
    spec = "127.0.0.1:" + ",".join(map(str, ports))
    result = probe("check", spec, "-o", str(out), "--workers", workers)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{listener.target} ") and " open " in lines[0]
    assert lines[1].startswith("40 attempts in ")
    recs = records(out.read_text())
    assert sorted(r["port"] for r in recs) == sorted(ports)
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_output_file_that_cannot_be_opened_is_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "missing-dir" / "out.jsonl"
    result = probe("check", f"127.0.0.1:{closed_port()}", "-o", str(bad))
    assert str(bad) in one_line_error(result)


def test_open_only_json(listener: RecordingListener, tmp_path: Path) -> None:
    closed = closed_port()
    out = tmp_path / "r.jsonl"
    result = probe(
        "check", f"127.0.0.1:{listener.port},{closed}", "--open", "--json", "-o", str(out)
    )
    assert result.returncode == 1  # the closed port still counts for the exit status
    [rec] = records(result.stdout)
    assert rec["outcome"] == "open"
    assert [r["outcome"] for r in records(out.read_text())] == ["open"]


def test_open_only_human_still_counts_the_rest(listener: RecordingListener) -> None:
    closed = closed_port()
    result = probe("check", f"127.0.0.1:{listener.port},{closed}", "--open")
    assert result.returncode == 1
    lines = without_lag(result.stdout.splitlines())
    assert lines[0].startswith(f"{listener.target} ")
    assert lines[1].startswith("2 attempts in ")
    assert lines[1].endswith("1 open; 1 refused, 0 timeout not shown")
    assert len(lines) == 2


def test_singular_attempt() -> None:
    result = probe("check", f"127.0.0.1:{closed_port()}", "--open")
    assert result.returncode == 1
    [line] = without_lag(result.stdout.splitlines())
    assert line.startswith("1 attempt in "), line


def test_per_host_ranges_for_a_few_hosts(listener: RecordingListener) -> None:
    closed = sorted({closed_port() for _ in range(20)})
    ports = sorted([listener.port, *closed])
    spec = ",".join(map(str, ports))
    # A sweep (over 32 endpoints) of two hosts; 127.0.0.2 has nothing listening at all.
    result = probe("check", "127.0.0.1-2", "-p", spec)
    assert result.returncode == 1
    lines = without_lag(result.stdout.splitlines())
    assert [line for line in lines if line.startswith("127.0.0.1: ")] == [
        "127.0.0.1: refused " + compact_ports(closed)
    ]
    assert [line for line in lines if line.startswith("127.0.0.2: ")] == [
        "127.0.0.2: refused " + compact_ports(ports)
    ]


def test_human_sweep_is_the_same_on_both_cores(listener: RecordingListener) -> None:
    """A sweep's human output from the native core (rendered here from its records) and from
    the Python engine: the same open lines' targets, counts and per-host ranges."""
    from probe.engine import native

    if not native.available():
        pytest.skip("the native core is not built here")
    closed = sorted({closed_port() for _ in range(40)})
    spec = "127.0.0.1:" + ",".join(map(str, [*closed[:20], listener.port, *closed[20:]]))
    shown = {}
    for core in ("native", "python"):
        result = probe_env({"PROBE_CORE": core}, "check", spec, "--workers", "2")
        assert result.returncode == 1, result.stderr
        lines = without_lag(result.stdout.splitlines())
        shown[core] = (
            [line.split()[:2] for line in lines if " open " in line],
            lines[-2].split(" in ")[0] + lines[-2].split(":", 1)[1].split(")", 1)[-1],
            lines[-1],
        )
    assert shown["native"] == shown["python"]
    assert shown["native"][0] == [[listener.target, "open"]]
    assert shown["native"][2] == "127.0.0.1: refused " + compact_ports(closed)
