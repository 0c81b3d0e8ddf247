"""nmap, naabu and tcping habits on `probe check`: target forms (CIDR, octet ranges, `-p-`,
`HOST PORT`), strict IPv4 literals, exclusions, `-iL`, `--shard`, the flags of other tools,
`--version` and `--help`. Real loopback sockets only."""

from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path

import pytest
from helpers import RecordingListener, closed_port, one_line_error, probe, records

# -- target forms ----------------------------------------------------------------------------


def test_cidr_expands_to_every_address(listener: RecordingListener) -> None:
    result = probe("check", "127.0.0.0/30", "-p", str(listener.port), "--json")
    assert result.returncode == 1, result.stderr  # only 127.0.0.1 listens
    recs = records(result.stdout)
    assert [r["target"] for r in recs] == [f"127.0.0.{i}:{listener.port}" for i in range(4)]
    assert [r["address"] for r in recs] == [f"127.0.0.{i}" for i in range(4)]
    opened = [r for r in recs if r["outcome"] == "open"]
    assert [r["address"] for r in opened] == ["127.0.0.1"]
    assert (opened[0]["local_address"], opened[0]["local_port"]) in listener.wait_peers(1)


def test_cidr_with_ports_ipv6(listener6: RecordingListener) -> None:
    result = probe("check", f"[::1]/128:{listener6.port}", "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["target"] == f"[::1]:{listener6.port}"
    assert rec["outcome"] == "open"


def test_octet_range(listener: RecordingListener) -> None:
    result = probe("check", f"127.0.0.1-3:{listener.port}", "--json")
    assert result.returncode == 1, result.stderr
    recs = records(result.stdout)
    assert [r["host"] for r in recs] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert [r["outcome"] for r in recs] == ["open", "refused", "refused"]


def test_host_then_port_is_host_colon_port(listener: RecordingListener) -> None:
    """tcping's `probe check HOST PORT`."""
    result = probe("check", "127.0.0.1", str(listener.port), "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["target"] == listener.target
    assert rec["address"] == "127.0.0.1"
    assert (rec["local_address"], rec["local_port"]) in listener.wait_peers(1)


def test_host_then_port_with_p_is_refused_with_a_hint() -> None:
    line = one_line_error(probe("check", "127.0.0.1", "8080", "-p", "22"))
    assert "127.0.0.1:8080" in line


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.0.0.1", "0177.0.0.1", "127.0.0.256"])
def test_ipv4_literals_are_strict(host: str, listener: RecordingListener) -> None:
    # Each of these would reach 127.0.0.1 through inet_aton: no attempt may be made.
    result = probe("check", host, "-p", str(listener.port))
    line = one_line_error(result)
    assert host in line
    assert result.stdout == ""
    assert listener.wait_peers(1, timeout=0.3) == []


# -- exclusions ------------------------------------------------------------------------------


def test_exclude_list_skips_addresses(listener: RecordingListener) -> None:
    result = probe(
        "check", f"127.0.0.1-4:{listener.port}", "--exclude", "127.0.0.2,127.0.0.4/32", "--json"
    )
    assert result.returncode == 1, result.stderr
    assert [r["host"] for r in records(result.stdout)] == ["127.0.0.1", "127.0.0.3"]


def test_exclude_applies_after_name_resolution(listener: RecordingListener) -> None:
    """`localhost` resolves to 127.0.0.1 (/etc/hosts, -4): excluded, never connected to."""
    closed = closed_port()
    result = probe(
        "check",
        "-4",
        f"localhost:{listener.port}",
        f"127.0.0.2:{closed}",
        "--exclude",
        "127.0.0.1",
        "--json",
    )
    assert result.returncode == 1, result.stderr
    assert [r["target"] for r in records(result.stdout)] == [f"127.0.0.2:{closed}"]
    assert listener.wait_peers(1, timeout=0.3) == []


def test_every_target_excluded_is_a_usage_error(listener: RecordingListener) -> None:
    result = probe("check", "-4", f"localhost:{listener.port}", "--exclude", "127.0.0.0/8")
    line = one_line_error(result)
    assert "excluded" in line
    assert listener.wait_peers(1, timeout=0.3) == []


def test_excluded_endpoints_are_counted_in_the_summary(listener: RecordingListener) -> None:
    closed = [closed_port() for _ in range(40)]
    ports = ",".join(map(str, [listener.port, *closed]))
    result = probe("check", f"127.0.0.1-2:{ports}", "--exclude", "127.0.0.2")
    assert result.returncode == 1, result.stderr
    assert "; 41 endpoints excluded" in result.stdout


def test_exclude_file(listener: RecordingListener, tmp_path: Path) -> None:
    listing = tmp_path / "never.txt"
    listing.write_text("# lab hosts\n127.0.0.2  127.0.0.3\n127.0.0.4-9 # more\n")
    result = probe(
        "check", f"127.0.0.1-5:{listener.port}", "--exclude-file", str(listing), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert [r["host"] for r in records(result.stdout)] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--exclude", "127.0.0.300"], "127.0.0.300"),
        (["--exclude", "localhost"], "localhost"),
        (["--exclude-file", "/nonexistent-probe-excludes"], "/nonexistent-probe-excludes"),
    ],
)
def test_bad_exclusion_is_usage_error(args: list[str], named: str) -> None:
    result = probe("check", f"127.0.0.1:{closed_port()}", *args)
    assert named in one_line_error(result)
    assert result.stdout == ""


def test_bad_exclude_file_line_is_named(tmp_path: Path) -> None:
    listing = tmp_path / "never.txt"
    listing.write_text("127.0.0.2\nnot-an-address\n")
    line = one_line_error(
        probe("check", f"127.0.0.1:{closed_port()}", "--exclude-file", str(listing))
    )
    assert str(listing) in line and "line 2" in line


# -- -iL and --shard -------------------------------------------------------------------------


@pytest.mark.parametrize("attached", [False, True])
def test_input_list_is_at_file(listener: RecordingListener, tmp_path: Path, attached: bool) -> None:
    listing = tmp_path / "hosts.txt"
    listing.write_text(f"{listener.target}\n")
    args = [f"-iL{listing}"] if attached else ["-iL", str(listing)]
    result = probe("check", *args, "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["target"] == listener.target


def test_input_list_missing_names_the_file_not_the_interval() -> None:
    line = one_line_error(probe("check", "-iL", "f"))
    assert "'f'" in line and "interval" not in line


def _expected_share(target: str, count: int) -> int:
    return int.from_bytes(hashlib.blake2b(target.encode(), digest_size=8).digest(), "big") % count


@pytest.mark.parametrize("workers", ["1", "2"])
def test_shard_splits_endpoints_by_a_stable_hash(workers: str) -> None:
    ports = sorted({closed_port() for _ in range(40)})
    spec = "127.0.0.1:" + ",".join(map(str, ports))
    everyone = {f"127.0.0.1:{p}" for p in ports}
    seen: set[str] = set()
    for index in range(3):
        result = probe("check", spec, "--shard", f"{index}/3", "--workers", workers, "--json")
        assert result.returncode in (0, 1), result.stderr
        mine = {r["target"] for r in records(result.stdout)}
        assert mine == {t for t in everyone if _expected_share(t, 3) == index}
        assert not mine & seen
        seen |= mine
    assert seen == everyone


@pytest.mark.parametrize("spec", ["3/3", "1", "a/2", "0/0", "-1/2"])
def test_bad_shard_is_usage_error(spec: str) -> None:
    line = one_line_error(probe("check", f"127.0.0.1:{closed_port()}", f"--shard={spec}"))
    assert "--shard" in line


# -- flags of other tools --------------------------------------------------------------------

FOREIGN = [
    (["-sT"], "-sT"),
    (["-sS"], "-sS"),
    (["-Pn"], "-Pn"),
    (["-T4"], "-T4"),
    (["-host", "127.0.0.1"], "-host"),
    (["-rate", "100"], "-rate"),
    (["-n"], "-n"),
    (["-w", "1"], "-w"),
    (["-oX", "out.xml"], "-oX"),
    (["-oG", "out.txt"], "-oG"),
    (["-oN", "out.txt"], "-oN"),
    (["--top-ports", "100"], "--top-ports"),
    (["-json"], "-json"),
]


@pytest.mark.parametrize(("args", "flag"), FOREIGN, ids=[f for _, f in FOREIGN])
def test_flag_of_another_tool_says_what_to_use(args: list[str], flag: str, tmp_path: Path) -> None:
    closed = f"127.0.0.1:{closed_port()}"
    result = probe("check", closed, *args, cwd=tmp_path)
    line = one_line_error(result)
    assert f"option {flag}:" in line
    assert re.search(r"use |probe |drop it", line), line
    # Not swallowed as an attached value: -sT is no source address, -host no -h.
    assert "bad source" not in line and "explicit argument" not in line
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # -oX did not become `-o X`


def test_source_with_attached_address_still_works(listener: RecordingListener) -> None:
    result = probe("check", "-s127.0.0.2", listener.target, "--json")
    assert result.returncode == 0, result.stderr
    [rec] = records(result.stdout)
    assert rec["local_address"] == "127.0.0.2"


@pytest.mark.parametrize("args", [["--version"], ["-V"], ["check", "--version"], ["check", "-V"]])
def test_version(args: list[str]) -> None:
    result = probe(*args)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"probe {re.escape(metadata.version('probe'))} \(core: (native|python)\)\n", result.stdout
    ), result.stdout
    assert result.stderr == ""


def test_help_ends_with_examples_and_exit_codes() -> None:
    result = probe("check", "--help")
    assert result.returncode == 0
    text = result.stdout
    assert text.index("examples:") < text.index("exit status:")
    tail = text[text.index("exit status:") :]
    for code in ("0 ", "1 ", "2 ", "130", "143", "141"):
        assert code in tail
    for flag in ("--open", "--exclude", "--exclude-file", "-iL", "-o FILE", "--shard",
                 "--format", "--lag-limit", "--version"):  # fmt: skip
        assert flag in text, flag


def test_lag_limit_flag(listener: RecordingListener) -> None:
    for value in ("0", "5", "0.5"):
        result = probe("check", listener.target, "--lag-limit", value, "--json")
        assert result.returncode == 0, result.stderr
        assert len(records(result.stdout)) == 1
    for bad in ("-1", "x", "nan"):
        assert "--lag-limit" in one_line_error(probe("check", listener.target, "--lag-limit", bad))


def test_json_and_format_must_agree(listener: RecordingListener) -> None:
    assert "--json" in one_line_error(probe("check", listener.target, "--json", "--format", "csv"))
    result = probe("check", listener.target, "--json", "--format", "json")
    assert result.returncode == 0 and len(records(result.stdout)) == 1
