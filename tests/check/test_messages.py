"""Messages that point the way: each mistake gets a line about what was meant, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    Daemon,
    Netns,
    config_toml,
    http_get,
    in_netns,
    one_line_error,
    probe,
    run_probe,
    start_in,
)


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("127.0.0.1:22,127.0.0.1:80", "is several targets: give each as its own argument"),
        ("127.0.0.1:22:80", "ports are comma-separated (127.0.0.1:22,80)"),
        ("localhost:22:80", "ports are comma-separated (localhost:22,80)"),
    ],
)
def test_the_ipv6_hint_only_where_it_applies(token: str, says: str) -> None:
    line = one_line_error(probe("check", token))
    assert (says in line and "[ADDR]" in line) or says in line, line
    assert "write IPv6 addresses" not in line, line


def test_a_mistyped_ipv6_address_still_gets_the_hint() -> None:
    line = one_line_error(probe("check", "fe80::zz"))
    assert "write IPv6 addresses as [ADDR]:PORTS" in line, line


def test_two_targets_on_one_file_line(tmp_path: Path) -> None:
    listed = tmp_path / "t.txt"
    listed.write_text("127.0.0.1:1 127.0.0.1:2\n")
    line = one_line_error(probe("check", f"@{listed}"))
    assert "line 1" in line and "one target per argument or per line" in line, line
    assert "IPv6" not in line, line


@pytest.mark.parametrize(
    ("url", "meant"),
    [("http://127.0.0.1:8000/", "127.0.0.1:8000"), ("https://localhost/x", "localhost:443")],
)
def test_a_pasted_url_says_what_to_write(url: str, meant: str) -> None:
    line = one_line_error(probe("check", url))
    assert f"is a URL, not a target: write HOST:PORT, here {meant}" in line, line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-z", "127.0.0.1", "22"], "nc's -z"),
        (["-zv", "127.0.0.1", "22"], "nc's -z"),
        (["-w", "1", "127.0.0.1", "22"], "use -t SECONDS"),
        (["-q", "1", "127.0.0.1", "22"], "nc's -q"),
        (["127.0.0.1", "22", "-t"], "tcping's -t (keep going until stopped) is -c 0 here"),
        (["-t", "127.0.0.1", "22"], "tcping's -t (keep going until stopped) is -c 0 here"),
    ],
)
def test_other_tools_flags_get_a_line(args: list[str], says: str) -> None:
    assert says in one_line_error(probe("check", *args))


def test_a_long_timeout_without_seconds_names_itself_not_tcping() -> None:
    line = one_line_error(probe("check", "127.0.0.1:22", "--timeout", "abc"))
    assert "--timeout needs SECONDS, got 'abc'" in line and "tcping" not in line, line


def test_ports_after_p_suggest_the_list() -> None:
    line = one_line_error(probe("check", "127.0.0.1", "-p", "22", "80"))
    assert "did you mean -p 22,80" in line, line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-6", "127.0.0.1:22"], "-6: 127.0.0.1:22 is an IPv4 address"),
        (["-4", "[::1]:22"], "-4: [::1]:22 is an IPv6 address"),
        (["-6", "127.0.0.0/30:22"], "is an IPv4 address"),
        (["-s", "::1", "127.0.0.1:22"], "-s ::1: 127.0.0.1:22 is an IPv4 address"),
    ],
)
def test_a_family_that_cannot_reach_a_literal_is_a_usage_error(args: list[str], says: str) -> None:
    assert says in one_line_error(probe("check", *args))


@pytest.mark.parametrize("listen", ["9468", ":9468"])
def test_validate_takes_an_exporters_listen_port(listen: str, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_toml(None, "", listen=listen))
    result = run_probe("validate", str(config))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("listen", ["0", ":0"])
def test_the_daemon_listens_on_every_address_for_a_bare_port(
    listen: str, tmp_path: Path, daemons: list[Daemon], netns: Netns
) -> None:
    log = tmp_path / "probe.log"
    d = start_in(tmp_path, config_toml(log, "", listen=listen), log, daemons, netns)
    address = d.wait("listening", lambda: d.events("listening"))[0]["address"]
    host, _, port = address.rpartition(":")
    assert host == "0.0.0.0", address
    status, _, _ = in_netns(netns, http_get, int(port), "/healthz", 5.0)
    assert status == 200
