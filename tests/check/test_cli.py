"""`probe check` end to end: the console script in a subprocess against real loopback sockets
(and, with root, inside a throwaway network namespace)."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    MS,
    RTT,
    Netns,
    NsServer,
    RecordingListener,
    closed_port,
    compact_ports,
    free_port,
    has_ipv6_loopback,
    one_line_error,
    probe,
    probe_cmd,
    records,
    without_lag,
)

# -- --json records --------------------------------------------------------------------------


def test_json_open_record_is_the_listeners_peer(listener: RecordingListener) -> None:
    result = probe("check", listener.target, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [rec] = records(result.stdout)
    assert rec["target"] == listener.target
    assert rec["host"] == "127.0.0.1"
    assert rec["port"] == listener.port
    assert rec["address"] == "127.0.0.1"
    assert rec["family"] == "ipv4"
    assert rec["outcome"] == "open"
    assert rec["error"] is None
    assert rec["attempt"] == 1
    if sys.platform == "linux":
        assert isinstance(rec["rtt_ms"], int | float)
    peers = listener.wait_peers(1)
    assert (rec["local_address"], rec["local_port"]) in peers


def test_json_repeat_every_attempt_is_a_peer(listener: RecordingListener) -> None:
    result = probe("check", listener.target, "-c", "3", "-i", "0.01", "--json")
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert [r["attempt"] for r in recs] == [1, 2, 3]
    peers = listener.wait_peers(3)
    for rec in recs:
        assert rec["outcome"] == "open"
        assert (rec["local_address"], rec["local_port"]) in peers


def test_family_mismatch_of_literal_is_a_usage_error(listener: RecordingListener) -> None:
    """Nothing could ever connect to it: exit 2 and a line, not a record."""
    result = probe("check", "-6", listener.target, "--json")
    assert "is an IPv4 address, not IPv6" in one_line_error(result)
    assert result.stdout == ""
    assert listener.wait_peers(1, timeout=0.2) == []


# -- exit codes ------------------------------------------------------------------------------


def test_exit_0_when_every_target_open(listener: RecordingListener) -> None:
    other = RecordingListener()
    try:
        result = probe("check", listener.target, other.target, "--json")
    finally:
        other.close()
    assert result.returncode == 0, result.stderr
    assert [r["outcome"] for r in records(result.stdout)] == ["open", "open"]


def test_exit_1_when_one_target_has_no_open(listener: RecordingListener) -> None:
    closed = f"127.0.0.1:{closed_port()}"
    result = probe("check", listener.target, closed, "--json")
    assert result.returncode == 1
    assert sorted(r["outcome"] for r in records(result.stdout)) == ["open", "refused"]
    human = probe("check", listener.target, closed)
    assert human.returncode == 1


T = "{closed}"  # replaced by a verified closed port: should a usage error be missed, no harm

USAGE_ERRORS: list[tuple[list[str], list[str]]] = [
    (["check", "127.0.0.1:99999"], ["99999"]),
    (["check", "127.0.0.1:0"], ["port 0"]),
    (["check", "127.0.0.1:a-b"], ["a-b"]),
    (["check", "127.0.0.1:80-70"], ["80-70"]),
    (["check", "127.0.0.1"], ["127.0.0.1"]),  # no port and no -p
    (["check", "-p", "x", "127.0.0.1"], ["-p", "'x'"]),
    (["check", "-p", "70000", "127.0.0.1"], ["70000"]),
    (["check", "-p", "", "127.0.0.1"], ["-p"]),
    (["check", "-t", "0", T], ["-t", "'0'"]),
    (["check", "-t", "-1", T], ["-t"]),
    (["check", "--timeout=-1", T], ["--timeout", "-1"]),
    (["check", "-t", "abc", T], ["-t", "abc"]),
    (["check", "-t", "nan", T], ["-t", "nan"]),
    (["check", "-t", "inf", T], ["-t", "inf"]),
    (["check", "-c", "-2", T], ["-c", "-2"]),
    (["check", "-c", "1.5", T], ["-c", "1.5"]),
    (["check", "-C", "0", T], ["-C", "'0'"]),
    (["check", "--rate", "0", T], ["--rate", "'0'"]),
    (["check", "--retries", "-1", T], ["--retries"]),
    (["check", "--retries=-1", T], ["--retries", "-1"]),
    (["check", "-i", "x", T], ["-i", "'x'"]),
    (["check", "-4", "-6", T], ["-4", "-6"]),
    (["check", "-s", "notanip", T], ["-s", "notanip"]),
    (["check", "-s", "127.0.0.1:99999", T], ["-s", "99999"]),
    (["check", "-s", "127.0.0.1:5010-5000", T], ["-s", "5010-5000"]),
    (["check", "-4", "-s", "::1", T], ["-s", "::1"]),
    (["check", "-6", "-s", "127.0.0.2", T], ["-s", "127.0.0.2"]),
    (["check", "--bogus", T], ["--bogus"]),
    (["check"], ["no targets"]),
    (["check", "--json"], ["no targets"]),
    (["check", "@missing-file.txt"], ["missing-file.txt"]),
    (["check", "@"], ["@"]),
    (["check", "[::1"], ["[::1"]),
    (["check", "[::1]80"], ["[::1]80"]),
    (["check", "::1:80"], ["::1:80"]),
    (["check", "ho\nst:80"], ["bad character"]),
    (["check", T, "127.0.0.1:x"], ["'x'"]),  # the second token is bad
    (["frobnicate"], ["frobnicate"]),
    (["validate", "/nonexistent.toml"], ["/nonexistent.toml"]),
]


@pytest.mark.parametrize(
    ("args", "named"), USAGE_ERRORS, ids=[" ".join(a) or "(none)" for a, _ in USAGE_ERRORS]
)
def test_usage_error_is_one_line_naming_the_token(
    args: list[str], named: list[str], tmp_path: Path
) -> None:
    closed = f"127.0.0.1:{closed_port()}"
    result = probe(*[closed if a == T else a for a in args], cwd=tmp_path)
    line = one_line_error(result)
    assert result.stdout == ""
    for token in named:
        assert token in line, line


@pytest.mark.parametrize("flag", ["-t", "--retries", "-c"])
def test_negative_value_is_named(flag: str) -> None:
    line = one_line_error(probe("check", flag, "-1", f"127.0.0.1:{closed_port()}"))
    assert "-1" in line


def test_huge_source_port_is_usage_error() -> None:
    one_line_error(probe("check", "-s", "127.0.0.1:" + "9" * 5000, f"127.0.0.1:{closed_port()}"))


def test_empty_stdin_is_no_targets() -> None:
    result = probe("check", "-", "--json", input="")
    assert "no targets" in one_line_error(result)
    assert result.stdout == ""
    result = probe("check", "-", "--json", input="# only a comment\n\n")
    assert "no targets" in one_line_error(result)


def test_validate_missing_file_names_it() -> None:
    line = one_line_error(probe("validate", "/nonexistent.toml"))
    assert "/nonexistent.toml" in line


# -- human output ----------------------------------------------------------------------------


def test_human_single_line(listener: RecordingListener) -> None:
    result = probe("check", listener.target)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [line] = result.stdout.splitlines()
    match = re.fullmatch(
        rf"127\.0\.0\.1:{listener.port} +open +local 127\.0\.0\.1:(\d+) +{MS}{RTT}", line
    )
    assert match, line
    assert ("127.0.0.1", int(match.group(1))) in listener.wait_peers(1)


def test_human_refused_line() -> None:
    port = closed_port()
    result = probe("check", f"127.0.0.1:{port}")
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert re.fullmatch(rf"127\.0\.0\.1:{port} +refused +local 127\.0\.0\.1:\d+ +{MS}", line), line


@pytest.mark.serial
def test_human_repeat_summary(listener: RecordingListener) -> None:
    result = probe("check", listener.target, "-c", "3", "-i", "0.05")
    assert result.returncode == 0, result.stderr
    lines = without_lag(result.stdout.splitlines())
    assert len(lines) == 6, lines
    line_re = rf"127\.0\.0\.1:{listener.port} +open +local 127\.0\.0\.1:(\d+) +{MS}{RTT}.*"
    peers = listener.wait_peers(3)
    for line in lines[:3]:
        match = re.fullmatch(line_re, line)
        assert match, line
        assert ("127.0.0.1", int(match.group(1))) in peers
    assert listener.target in lines[3]
    assert lines[4].startswith("3 attempts, 3 open")
    stats = re.fullmatch(
        r"latency min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", lines[5]
    )
    assert stats, lines[5]
    low, avg, high, mdev = map(float, stats.groups())
    # the summary agrees with the three lines (shown to 2 decimals: 0.005 off at most)
    shown = [float(re.findall(r"(\d+\.\d\d) ms", line)[0]) for line in lines[:3]]
    mean = sum(shown) / 3
    spread = (sum((x - mean) ** 2 for x in shown) / 3) ** 0.5  # ping's mdev: population
    assert abs(low - min(shown)) <= 0.006 and abs(high - max(shown)) <= 0.006, (stats, shown)
    assert abs(avg - mean) <= 0.006 and abs(mdev - spread) <= 0.006, (stats, shown)


def test_human_sweep_shows_only_open(listener: RecordingListener) -> None:
    closed = [closed_port() for _ in range(40)]
    ports = ",".join(str(p) for p in [*closed[:20], listener.port, *closed[20:]])
    result = probe("check", f"127.0.0.1:{ports}")
    assert result.returncode == 1  # the closed ports have no open attempt
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"127\.0\.0\.1:{listener.port} +open +local .*", lines[0]), lines[0]
    assert re.fullmatch(
        r"41 attempts in \d+\.\d\d s \(\d+/s\): 1 open; 40 refused, 0 timeout not shown", lines[1]
    ), lines[1]
    # The refused ports, per host, as compact ranges: a failed target is visible.
    assert lines[2] == f"127.0.0.1: refused {compact_ports(closed)}"
    assert without_lag(lines[3:]) == []


# -- pipes and signals -----------------------------------------------------------------------


# -- source, families, target lists ---------------------------------------------------------


def test_source_address(listener: RecordingListener) -> None:
    result = probe("check", "-s", "127.0.0.2", listener.target, "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["local_address"] == "127.0.0.2"
    assert ("127.0.0.2", rec["local_port"]) in listener.wait_peers(1)


def test_source_address_and_port(listener: RecordingListener) -> None:
    port = free_port("127.0.0.2")
    result = probe("check", "-s", f"127.0.0.2:{port}", listener.target, "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert (rec["local_address"], rec["local_port"]) == ("127.0.0.2", port)
    assert ("127.0.0.2", port) in listener.wait_peers(1)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_source_port_range(host: str, listener: RecordingListener) -> None:
    """`-s ADDR:LO-HI`: the kernel picks each local port inside the range."""
    if ":" in host:
        if not has_ipv6_loopback():
            pytest.skip("no IPv6 loopback")
        server = RecordingListener("::1")
    else:
        server = listener
    lo = free_port()
    lo, hi = min(lo, 65000), min(lo, 65000) + 7
    spec = f"[{host}]:{lo}-{hi}" if ":" in host else f"{host}:{lo}-{hi}"
    try:
        result = probe("check", server.target, "-s", spec, "-c", "6", "-i", "0", "--json")
        peers = server.wait_peers(6)
    finally:
        if server is not listener:
            server.close()
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert len(recs) == 6
    for rec in recs:
        assert rec["local_address"] == host
        assert lo <= rec["local_port"] <= hi
        assert (host, rec["local_port"]) in peers


def test_ipv4_only_name(listener: RecordingListener) -> None:
    # localhost is in /etc/hosts as 127.0.0.1: -4 keeps the lookup off the DNS server.
    result = probe("check", "-4", f"localhost:{listener.port}", "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["target"] == f"localhost:{listener.port}"
    assert rec["host"] == "localhost"
    assert rec["address"] == "127.0.0.1"
    assert rec["family"] == "ipv4"
    assert (rec["local_address"], rec["local_port"]) in listener.wait_peers(1)


def test_ipv6(listener6: RecordingListener) -> None:
    result = probe("check", f"[::1]:{listener6.port}", "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["target"] == f"[::1]:{listener6.port}"
    assert rec["host"] == "::1"
    assert rec["address"] == "::1"
    assert rec["family"] == "ipv6"
    assert rec["local_address"] == "::1"
    assert ("::1", rec["local_port"]) in listener6.wait_peers(1)


def test_ipv6_bare_with_ports_flag_and_human(listener6: RecordingListener) -> None:
    result = probe("check", "-6", "-p", str(listener6.port), "::1")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert re.fullmatch(rf"\[::1\]:{listener6.port} +open +local \[::1\]:\d+ +{MS}{RTT}.*", line), (
        line
    )


def test_ipv6_source(listener6: RecordingListener) -> None:
    result = probe("check", "-s", "::1", listener6.target, "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["local_address"] == "::1"


def test_stdin_target_list(listener: RecordingListener) -> None:
    closed = closed_port()
    text = f"# from stdin\n{listener.target}\n\n127.0.0.1:{closed}  # a closed one\n"
    result = probe("check", "-", "--json", input=text)
    assert result.returncode == 1, result.stderr
    recs = records(result.stdout)
    assert {(r["port"], r["outcome"]) for r in recs} == {
        (listener.port, "open"),
        (closed, "refused"),
    }


def test_target_file_with_comments(listener: RecordingListener, tmp_path: Path) -> None:
    listing = tmp_path / "targets.txt"
    listing.write_text(f"# comment\n\n   # indented\n{listener.target}   # trailing\n127.0.0.1\n")
    result = probe("check", "-p", str(listener.port), f"@{listing}", "--json")
    assert result.returncode == 0, result.stderr
    recs = records(result.stdout)
    assert [r["outcome"] for r in recs] == ["open", "open"]
    assert {r["target"] for r in recs} == {listener.target}


def test_mixed_sources_in_order(listener: RecordingListener, tmp_path: Path) -> None:
    a, b, c = closed_port(), closed_port(), closed_port()
    listing = tmp_path / "t.txt"
    listing.write_text(f"127.0.0.1:{b}\n")
    result = probe(
        "check",
        f"127.0.0.1:{a}",
        f"@{listing}",
        "-",
        listener.target,
        "--json",
        "-C",
        "1",
        input=f"127.0.0.1:{c}\n",
    )
    assert result.returncode == 1, result.stderr
    assert [r["port"] for r in records(result.stdout)] == [a, b, c, listener.port]


# -- inside a network namespace --------------------------------------------------------------


def test_full_sweep_in_namespace(netns: Netns, tmp_path: Path) -> None:
    """Every port of a namespace's loopback, into a file: 21 MB of records come in about a
    second, and a pipe read by a test starved of CPU fell 16 MiB behind, which stops the
    run by design (docs/reliability.md: 16 MiB unread); that is not what is tested here."""
    server = NsServer(netns, 0, 0, 0)
    out = tmp_path / "records.jsonl"
    try:
        open_ports = set(server.ports)
        assert len(open_ports) == 3
        with out.open("wb") as stdout:
            result = subprocess.run(
                [*netns.prefix(), *probe_cmd(), "check", "127.0.0.1", "-p", "1-65535", "--json"],
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
    finally:
        server.close()
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 1), result.stderr  # 1: most ports have no open attempt
    recs = records(out.read_text())
    assert len(recs) == 65535
    assert sorted(r["port"] for r in recs) == list(range(1, 65536))
    assert {r["port"] for r in recs if r["outcome"] == "open"} == open_ports
    others = {(r["outcome"], r["error"]) for r in recs if r["port"] not in open_ports}
    assert others == {("refused", "ECONNREFUSED")}
    for rec in recs:
        assert isinstance(rec["local_port"], int)
        assert rec["local_address"] == "127.0.0.1"
        assert rec["target"] == f"127.0.0.1:{rec['port']}"


def test_all_ports_open_only_in_namespace(netns: Netns) -> None:
    """nmap's `-p- --open`: the open ports shown, the rest one line of ranges per host."""
    server = NsServer(netns, 0, 0, 0)
    try:
        open_ports = sorted(server.ports)
        result = subprocess.run(
            [*netns.prefix(), *probe_cmd(), "check", "127.0.0.1", "-p-", "--open"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        as_json = subprocess.run(
            [*netns.prefix(), *probe_cmd(), "check", "127.0.0.1", "-p-", "--open", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.close()
    assert result.returncode == 1, result.stderr
    lines = without_lag(result.stdout.splitlines())
    assert sorted(int(line.split()[0].rsplit(":", 1)[1]) for line in lines[:3]) == open_ports
    assert all(line.split()[1] == "open" for line in lines[:3])
    assert re.fullmatch(
        r"65535 attempts in \d+\.\d\d s \(\d+/s\): 3 open; 65532 refused, 0 timeout not shown",
        lines[3],
    ), lines[3]
    edges = [0, *open_ports, 65536]
    gaps = [(a + 1, b - 1) for a, b in itertools.pairwise(edges) if b - a > 1]
    ranges = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in gaps)
    assert lines[4:] == [f"127.0.0.1: refused {ranges}"]
    assert sorted(r["port"] for r in records(as_json.stdout)) == open_ports
