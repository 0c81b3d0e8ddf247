"""Unit tests of probe.syntax: port lists, target forms, target files and stdin, -s."""

from __future__ import annotations

import io
import ipaddress
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import probe_cmd
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.address import ip_text
from probe.limits import MAX_LINE
from probe.syntax import (
    ALL_PORTS,
    Endpoint,
    PortRanges,
    Source,
    Target,
    TargetError,
    count_ports,
    expand,
    iter_targets,
    join_host_port,
    parse_endpoint,
    parse_exclusions,
    parse_ports,
    parse_source,
    parse_source_spec,
    parse_target,
    read_exclusions,
    shard,
)
from probe.syntax.ports import service_port

P80: PortRanges = ((80, 80),)

# -- parse_ports ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", ((80, 80),)),
        ("1", ((1, 1),)),
        ("65535", ((65535, 65535),)),
        ("1-65535", ((1, 65535),)),
        ("22,80,8000-8100", ((22, 22), (80, 80), (8000, 8100))),
        ("80-80", ((80, 80),)),
        ("443,22", ((443, 443), (22, 22))),  # order kept as written
        ("80,80", ((80, 80), (80, 80))),
        ("00080", ((80, 80),)),
        ("-", ((1, 65535),)),  # nmap's -p-
        ("80-", ((80, 65535),)),
        ("-80", ((1, 80),)),
        ("22,1000-", ((22, 22), (1000, 65535))),
    ],
)
def test_parse_ports_valid(text: str, expected: PortRanges) -> None:
    assert parse_ports(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("0", "0"),
        ("65536", "65536"),
        ("99999", "99999"),
        ("0-10", "0"),
        ("10-65536", "65536"),
        ("90-80", "90-80"),  # backwards
        ("80,,81", "''"),  # empty part
        ("80,", "''"),
        (",80", "''"),
        ("1-2-3", "1-2-3"),
        ("--", "--"),
        ("-0", "0"),
        ("70000-", "70000"),
        ("+1", "+1"),
        (" 1", " 1"),
        ("1 ", "1 "),
        ("\u0661\u0662", "\u0661\u0662"),  # Arabic-Indic digits: int() would take them
        ("\uff18\uff10", "\uff18\uff10"),  # fullwidth digits
        ("\u00b2", "\u00b2"),  # superscript two: isdigit() but not isdecimal()
        ("99999999999999999999999999", "99999999999999999999"),
        ("1" * 5000, "1111111111"),  # longer than int()'s digit limit: still a TargetError
        ("abc", "abc"),
        ("8o", "8o"),
        ("1e3", "1e3"),
        ("0x50", "0x50"),
        ("80.0", "80.0"),
    ],
)
def test_parse_ports_invalid_names_token(text: str, named: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_ports(text)
    message = str(info.value)
    assert "\n" not in message
    assert named in message


def test_parse_ports_empty() -> None:
    with pytest.raises(TargetError, match="empty"):
        parse_ports("")


def test_parse_ports_long_token_is_shortened_in_message() -> None:
    with pytest.raises(TargetError) as info:
        parse_ports("x" * 10_000)
    assert len(str(info.value)) < 200


def test_count_ports() -> None:
    assert count_ports(parse_ports("1-65535")) == 65535
    assert count_ports(parse_ports("22,80,8000-8100")) == 103


# -- parse_target ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "default", "host", "ports", "bracketed"),
    [
        ("localhost:8080", None, "localhost", ((8080, 8080),), False),
        ("127.0.0.1:22,80,8000-8100", None, "127.0.0.1", ((22, 22), (80, 80), (8000, 8100)), False),
        ("[::1]:80", None, "::1", P80, True),
        ("[::1]:1-3", None, "::1", ((1, 3),), True),
        ("[2001:db8::1]:443", None, "2001:db8::1", ((443, 443),), True),
        ("localhost", P80, "localhost", P80, False),
        ("127.0.0.1", P80, "127.0.0.1", P80, False),
        ("::1", P80, "::1", P80, True),  # bare IPv6 with -p: labelled with brackets
        ("2001:db8::5", ((1, 2),), "2001:db8::5", ((1, 2),), True),
        ("[::1]", P80, "::1", P80, True),
        ("  127.0.0.1:80  ", None, "127.0.0.1", P80, False),
        ("127.0.0.1:80", ((1, 1),), "127.0.0.1", P80, False),  # written ports beat -p
        ("b\u00fccher.example:80", None, "b\u00fccher.example", P80, False),
    ],
)
def test_parse_target_forms(
    token: str, default: PortRanges | None, host: str, ports: PortRanges, bracketed: bool
) -> None:
    assert parse_target(token, default) == Target(host, ports, bracketed)


@pytest.mark.parametrize(
    ("token", "named"),
    [
        ("127.0.0.1:99999", "99999"),
        ("127.0.0.1:0", "0"),
        ("127.0.0.1:a-b", "a-b"),
        ("127.0.0.1:80-70", "80-70"),
        ("127.0.0.1", "127.0.0.1"),  # no port and no -p
        ("localhost", "localhost"),
        ("[::1", "[::1"),  # missing ']'
        ("[::1:80", "[::1:80"),
        ("[::g]:80", "::g"),  # bad IPv6 in brackets
        ("[127.0.0.1]:80", "127.0.0.1"),
        ("[]:80", "[]:80"),
        ("[::1]80", "[::1]80"),  # no ':' after ']'
        ("[::1]x:80", "[::1]x:80"),
        ("1:2:3", "1:2:3"),  # many colons, not an IPv6 address
        ("host:80:90", "host:80:90"),
        (":80", ":80"),  # missing host
        ("a/b:80", "a/b"),
        ("a,b:80", "a,b"),
        ("a@b:80", "a@b"),
        ("a#b:80", "a#b"),
        ("a[b:80", "a[b"),
        ("x" * 300 + ":80", "x" * 20),  # too long
    ],
)
def test_parse_target_invalid_names_token(token: str, named: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(token)
    message = str(info.value)
    assert "\n" not in message
    assert named in message


@pytest.mark.parametrize("token", ["", " ", "\t\n"])
def test_parse_target_empty(token: str) -> None:
    with pytest.raises(TargetError, match="empty"):
        parse_target(token, P80)


@pytest.mark.parametrize(
    "token",
    [
        "ho\nst:80",
        "ho\rst:80",
        "ho\x00st:80",
        "ho\x1bst:80",
        "ho\tst:80",
        "ho st:80",
        "ho\u2028st:80",  # line separator
        "ho\u200bst:80",  # zero-width space: not printable
        "\x1b]0;title\x07:80",
    ],
)
def test_parse_target_rejects_control_characters_in_host(token: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(token)
    assert "\n" not in str(info.value)
    with pytest.raises(TargetError):
        parse_target(token.rsplit(":", 1)[0], P80)  # bare host, ports from -p


@pytest.mark.parametrize(
    ("token", "default"),
    [("[fe80::1%a\nb]:80", None), ("[fe80::1%\x1b[31m]:80", None), ("fe80::1%a\nb", P80)],
)
def test_parse_target_rejects_control_characters_in_ipv6_zone(
    token: str, default: PortRanges | None
) -> None:
    with pytest.raises(TargetError):
        parse_target(token, default)


def test_parse_target_bare_ipv6_with_port_is_rejected() -> None:
    with pytest.raises(TargetError) as info:
        parse_target("::1:80")
    assert "::1:80" in str(info.value)


def test_parse_target_bare_ipv6_with_port_suggests_brackets() -> None:
    with pytest.raises(TargetError) as info:
        parse_target("::1:80")
    assert "[" in str(info.value)


def test_parse_target_unparseable_ipv6_suggests_brackets() -> None:
    with pytest.raises(TargetError) as info:
        parse_target("fe80::1::2:80")
    assert "[" in str(info.value)


def test_parse_target_empty_ports_names_token() -> None:
    with pytest.raises(TargetError) as info:
        parse_target("127.0.0.1:")
    assert "127.0.0.1" in str(info.value)


# -- Target --------------------------------------------------------------------------------


def test_endpoints_labels() -> None:
    assert list(parse_target("[::1]:80,81").endpoints()) == [
        Endpoint("[::1]:80", "::1", 80),
        Endpoint("[::1]:81", "::1", 81),
    ]
    assert list(parse_target("::1", P80).endpoints()) == [Endpoint("[::1]:80", "::1", 80)]
    assert list(parse_target("localhost:22,8000-8001").endpoints()) == [
        Endpoint("localhost:22", "localhost", 22),
        Endpoint("localhost:8000", "localhost", 8000),
        Endpoint("localhost:8001", "localhost", 8001),
    ]
    assert parse_target("127.0.0.1", P80).label(8080) == "127.0.0.1:8080"


def test_endpoints_are_lazy_and_count_is_arithmetic() -> None:
    target = parse_target("127.0.0.1:1-65535,1-65535")
    assert target.count() == 2 * 65535
    endpoints = target.endpoints()
    assert next(endpoints) == Endpoint("127.0.0.1:1", "127.0.0.1", 1)
    assert next(endpoints).port == 2


def test_expand_in_order() -> None:
    targets = [parse_target("a:1-2"), parse_target("[::1]:3")]
    assert [e.target for e in expand(targets)] == ["a:1", "a:2", "[::1]:3"]


# -- iter_targets --------------------------------------------------------------------------


def test_iter_targets_file_and_stdin(tmp_path: Path) -> None:
    listing = tmp_path / "targets.txt"
    listing.write_text(
        "# a comment\n"
        "\n"
        "127.0.0.1:1\n"
        "   \n"
        "  localhost:2,3   # trailing comment\n"
        "\t# indented comment\n"
        "[::1]:4\n"
        "bare\n"
        "127.0.0.1:5",  # no final newline
        encoding="utf-8",
    )
    stdin = io.StringIO("#x\n127.0.0.2:6\n\n")
    got = list(iter_targets(["127.0.0.10:7", f"@{listing}", "-"], P80, stdin=stdin))
    assert got == [
        Target("127.0.0.10", ((7, 7),), False),
        Target("127.0.0.1", ((1, 1),), False),
        Target("localhost", ((2, 2), (3, 3)), False),
        Target("::1", ((4, 4),), True),
        Target("bare", P80, False),
        Target("127.0.0.1", ((5, 5),), False),
        Target("127.0.0.2", ((6, 6),), False),
    ]


def test_iter_targets_crlf_file(tmp_path: Path) -> None:
    listing = tmp_path / "crlf.txt"
    listing.write_bytes(b"127.0.0.1:1\r\n127.0.0.1:2\r\n")
    assert [t.ports for t in iter_targets([f"@{listing}"], None)] == [((1, 1),), ((2, 2),)]


def test_iter_targets_bad_line_names_file_and_line(tmp_path: Path) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_text("127.0.0.1:1\n# comment\n\n127.0.0.1:99999\n127.0.0.1:2\n")
    it = iter_targets([f"@{listing}"], None)
    assert next(it).ports == ((1, 1),)  # lines before the bad one come through
    with pytest.raises(TargetError) as info:
        next(it)
    message = str(info.value)
    assert str(listing) in message
    assert "line 4" in message
    assert "99999" in message


def test_iter_targets_bad_stdin_line() -> None:
    with pytest.raises(TargetError) as info:
        list(iter_targets(["-"], None, stdin=io.StringIO("127.0.0.1:1\nnope\n")))
    assert "<stdin>" in str(info.value)
    assert "line 2" in str(info.value)
    assert "nope" in str(info.value)


def test_iter_targets_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    it = iter_targets(["127.0.0.1:1", "@nope.txt"], None)
    assert next(it).host == "127.0.0.1"  # the missing file is only met when reached
    with pytest.raises(TargetError) as info:
        next(it)
    assert "nope.txt" in str(info.value)


def test_iter_targets_missing_file_long_path_names_file(tmp_path: Path) -> None:
    missing = tmp_path / ("d" * 70) / "targets-nope.txt"
    with pytest.raises(TargetError) as info:
        list(iter_targets([f"@{missing}"], None))
    assert "targets-nope.txt" in str(info.value)


def test_iter_targets_missing_file_name() -> None:
    with pytest.raises(TargetError, match="@"):
        list(iter_targets(["@"], None))


def test_iter_targets_not_utf8(tmp_path: Path) -> None:
    listing = tmp_path / "latin1.txt"
    listing.write_bytes(b"127.0.0.1:1\nh\xf6st:80\n")
    with pytest.raises(TargetError) as info:
        list(iter_targets([f"@{listing}"], None))
    message = str(info.value)
    assert "latin1.txt" in message
    assert "UTF-8" in message


def test_iter_targets_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# only comments\n\n")
    assert list(iter_targets([f"@{empty}", "-"], None, stdin=io.StringIO(""))) == []


class _CountingLines:
    """A text stream of `total` target lines, generated as read; counts what was taken."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0

    def readline(self, limit: int = -1) -> str:
        if self.taken == self.total:
            return ""
        self.taken += 1
        return f"127.0.0.1:{(self.taken - 1) % 65535 + 1}\n"


def test_iter_targets_stdin_is_lazy() -> None:
    stream = _CountingLines(1_000_000)
    it = iter_targets(["-"], None, stdin=stream)  # type: ignore[arg-type]
    first = [next(it) for _ in range(3)]
    assert [t.ports for t in first] == [((1, 1),), ((2, 2),), ((3, 3),)]
    assert stream.taken <= 4


def _file_offset(path: Path) -> int | None:
    """Where this process's open descriptor for `path` stands, from /proc/self/fdinfo."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != str(path):
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("pos:"):
                        return int(line.split()[1])
        except OSError:
            continue
    return None


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fdinfo")
def test_iter_targets_file_is_lazy(tmp_path: Path) -> None:
    listing = tmp_path / "million.txt"
    line = b"127.0.0.1:80\n"
    listing.write_bytes(line * 1_000_000)
    size = listing.stat().st_size
    it = iter_targets([f"@{listing}"], None)
    assert next(it) == Target("127.0.0.1", P80, False)
    offset = _file_offset(listing)
    assert offset is not None, "the target file is not open while its targets are read"
    assert offset < size // 100  # a buffer or two, not the file
    it.close()  # type: ignore[attr-defined]
    assert _file_offset(listing) is None  # and closing the iterator closes the file


# -- parse_source --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.2", ("127.0.0.2", 0)),
        ("127.0.0.2:5000", ("127.0.0.2", 5000)),
        ("::1", ("::1", 0)),
        ("[::1]:5000", ("::1", 5000)),
        ("[::1]", ("::1", 0)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_parse_source_valid(text: str, expected: tuple[str, int]) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("notanip", "notanip"),
        ("", "''"),
        ("localhost", "localhost"),
        ("127.0.0.1:99999", "99999"),
        ("127.0.0.1:0", "0"),
        ("127.0.0.1:x", "x"),
        ("127.0.0.1:+1", "+1"),
        ("127.0.0.1:\u0661", "\u0661"),
        ("[::1]x", "[::1]x"),
        ("[::1]:x", "x"),
        ("[nope]:80", "nope"),
        ("256.0.0.1", "256.0.0.1"),
        ("1:2:3", "1:2:3"),
    ],
)
def test_parse_source_invalid(text: str, named: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_source(text)
    assert named in str(info.value)


def test_parse_source_huge_port() -> None:
    with pytest.raises(TargetError):
        parse_source("127.0.0.1:" + "1" * 5000)


# -- properties ----------------------------------------------------------------------------


def _ranges_ok(ranges: PortRanges) -> bool:
    return bool(ranges) and all(1 <= lo <= hi <= 65535 for lo, hi in ranges)


port_text = st.text(alphabet=st.sampled_from("0123456789-,+ \u0661x"), max_size=20)


@settings(max_examples=500)
@given(st.one_of(st.text(), port_text))
def test_parse_ports_any_text(text: str) -> None:
    try:
        ranges = parse_ports(text)
    except TargetError as exc:
        assert "\n" not in str(exc)
        return
    assert _ranges_ok(ranges)
    parts = text.split(",")
    assert len(parts) == len(ranges)
    for part, (lo, hi) in zip(parts, ranges, strict=True):
        assert part.isascii()
        named = service_port(part)  # a service name from the system's database
        if named is not None:
            assert lo == hi == named
            continue
        lo_s, dash, hi_s = part.partition("-")
        assert lo == (_number(lo_s) if lo_s else 1)
        assert hi == (_number(hi_s) if hi_s else 65535 if dash else lo)


def _number(text: str) -> int:
    return int(text) if text.isdecimal() else socket.getservbyname(text, "tcp")


target_text = st.text(
    alphabet=st.sampled_from("0123456789abcdef:[]-,. %\n\x00\u00fc@#/"), max_size=30
)


@settings(max_examples=500)
@given(st.one_of(st.text(), target_text), st.sampled_from([None, P80, ((1, 3),)]))
def test_parse_target_any_text(text: str, default: PortRanges | None) -> None:
    try:
        target = parse_target(text, default)
    except TargetError as exc:
        assert "\n" not in str(exc)
        return
    assert _ranges_ok(target.ports)
    assert target.host
    assert target.host in text
    if target.addresses is not None:
        assert target.count() == target.addresses.count() * count_ports(target.ports)
        first = ipaddress.ip_address(target.addresses[0])
        if "/" in target.host:
            assert first in ipaddress.ip_network(target.host, strict=False)
        else:  # an octet range starts at the low end of every octet
            assert str(first) == ".".join(o.split("-")[0] for o in target.host.split("."))
    elif target.bracketed:
        ipaddress.IPv6Address(target.host)
    else:
        assert ":" not in target.host
        assert target.host.isprintable()
        assert not any(c.isspace() for c in target.host)
    if ":" not in text.replace(target.host, "", 1):
        assert target.ports == default  # no port written: they came from -p


@settings(max_examples=300)
@given(st.text())
def test_parse_source_any_text(text: str) -> None:
    try:
        address, port = parse_source(text)
    except TargetError:
        return
    ipaddress.ip_address(address)
    assert 0 <= port <= 65535


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True).filter(
    # a numeric (or 0x, hexadecimal) last label makes an IPv4 attempt, not a name
    lambda h: (
        not all(c.isdigit() or c == "-" for c in h.rsplit(".", 1)[-1])
        and not h.rsplit(".", 1)[-1].startswith("0x")
    )
)
ipv4s = st.ip_addresses(v=4).map(str)
ipv6s = st.ip_addresses(v=6).map(str)
port_ranges = st.lists(
    st.tuples(st.integers(1, 65535), st.integers(0, 300)).map(
        lambda t: (t[0], min(65535, t[0] + t[1]))
    ),
    min_size=1,
    max_size=6,
)


def _format_ports(ranges: list[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


@given(st.one_of(hostnames, ipv4s, ipv6s), port_ranges)
def test_round_trip(host: str, ranges: list[tuple[int, int]]) -> None:
    v6 = ":" in host
    token = f"[{host}]:{_format_ports(ranges)}" if v6 else f"{host}:{_format_ports(ranges)}"
    target = parse_target(token)
    assert target == Target(host, tuple(ranges), v6)
    assert parse_ports(_format_ports(ranges)) == tuple(ranges)
    # and the same with the ports from -p
    assert parse_target(host, tuple(ranges)) == Target(host, tuple(ranges), v6)


@given(st.one_of(hostnames, ipv6s), port_ranges)
def test_count_matches_endpoints(host: str, ranges: list[tuple[int, int]]) -> None:
    target = parse_target(host, tuple(ranges))
    endpoints = list(target.endpoints())
    assert target.count() == len(endpoints) == count_ports(tuple(ranges))
    expected_ports = [p for lo, hi in ranges for p in range(lo, hi + 1)]
    assert [e.port for e in endpoints] == expected_ports
    label = f"[{host}]" if ":" in host else host
    assert all(e.target == f"{label}:{e.port}" and e.host == host for e in endpoints)


# == strict IPv4 literals, octet ranges, CIDR, -p-, exclusions, HOST PORT ====================


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("2130706433", "four decimal octets"),
        ("127.1", "four decimal octets"),
        ("127.0.1", "four decimal octets"),
        ("0x7f.0.0.1", "hexadecimal"),
        ("127.0.0.0x1", "hexadecimal"),
        ("foo.0x1f", "four decimal octets"),
        ("0177.0.0.1", "leading zero"),
        ("127.0.0.01", "leading zero"),
        ("1.2.3.4.5", "four decimal octets"),
        ("256.0.0.1", "over 255"),
        ("127.0.0.1000", "over 255"),
        ("127.0.0.1.", "four decimal octets"),
        ("a.b.c.1", "four decimal octets"),
        ("127.0.0.1-", "four decimal octets"),
        ("127.0.0.3-1", "runs backwards"),
        ("127.0.0.1-256", "over 255"),
    ],
)
def test_strict_ipv4_literals(host: str, problem: str) -> None:
    for token, default in ((f"{host}:80", None), (host, P80)):
        with pytest.raises(TargetError) as info:
            parse_target(token, default)
        assert problem in str(info.value)
        assert repr(host) in str(info.value)


@pytest.mark.parametrize(
    "host", ["cafe.be", "host-1.example", "1e100.net", "123.com", "localhost", "a-1.b-2.c", "x."]
)
def test_names_stay_names(host: str) -> None:
    assert parse_target(f"{host}:80") == Target(host, P80, False)


def test_single_literal_is_a_plain_target() -> None:
    assert parse_target("127.0.0.1:80") == Target("127.0.0.1", P80, False)
    assert parse_target("0.0.0.0", P80) == Target("0.0.0.0", P80, False)


def _hosts(target: Target) -> list[str]:
    return list(dict.fromkeys(e.host for e in target.endpoints()))


@pytest.mark.parametrize(
    ("token", "hosts"),
    [
        ("127.0.0.1-3:22", ["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        ("127.0.1-2.1:22", ["127.0.1.1", "127.0.2.1"]),
        ("127.0.1-2.7-8:22", ["127.0.1.7", "127.0.1.8", "127.0.2.7", "127.0.2.8"]),
        ("127.0.0.5-5:22", ["127.0.0.5"]),
        ("127.0.0.0/30:22", ["127.0.0.0", "127.0.0.1", "127.0.0.2", "127.0.0.3"]),
        ("127.0.0.2/31:22", ["127.0.0.2", "127.0.0.3"]),
        ("127.0.0.1/30:22", ["127.0.0.0", "127.0.0.1", "127.0.0.2", "127.0.0.3"]),  # as nmap
        ("127.0.0.9/32:22", ["127.0.0.9"]),
        ("[::1]/128:22", ["::1"]),
        ("[::1/128]:22", ["::1"]),
        ("[::]/126:22", ["::", "::1", "::2", "::3"]),
        # IPv4-mapped: dotted, as the kernel writes it
        ("[::ffff:127.0.0.0]/127:22", ["::ffff:127.0.0.0", "::ffff:127.0.0.1"]),
    ],
)
def test_address_sets(token: str, hosts: list[str]) -> None:
    target = parse_target(token)
    assert target.addresses is not None
    assert _hosts(target) == hosts
    assert target.count() == len(hosts)
    v6 = ":" in hosts[0]
    assert [e.target for e in target.endpoints()] == [
        f"[{h}]:22" if v6 else f"{h}:22" for h in hosts
    ]


def test_address_sets_with_ports_from_p() -> None:
    assert _hosts(parse_target("127.0.0.0/31", P80)) == ["127.0.0.0", "127.0.0.1"]
    assert _hosts(parse_target("::/127", P80)) == ["::", "::1"]
    assert _hosts(parse_target("[::/127]", P80)) == ["::", "::1"]
    assert _hosts(parse_target("127.0.0.1-2", P80)) == ["127.0.0.1", "127.0.0.2"]


def test_multi_host_endpoints_are_host_major() -> None:
    target = parse_target("127.0.0.1-2:22,80-81")
    assert [(e.host, e.port) for e in target.endpoints()] == [
        ("127.0.0.1", 22),
        ("127.0.0.1", 80),
        ("127.0.0.1", 81),
        ("127.0.0.2", 22),
        ("127.0.0.2", 80),
        ("127.0.0.2", 81),
    ]
    assert target.count() == 6


def test_huge_sets_are_counted_not_built() -> None:
    # Parsed and counted only; nothing here is connected to.
    slash8 = parse_target("127.0.0.0/8", ALL_PORTS)
    assert slash8.count() == 2**24 * 65535
    first = list(itertools.islice(slash8.endpoints(), 3))
    assert [e.target for e in first] == ["127.0.0.0:1", "127.0.0.0:2", "127.0.0.0:3"]
    slash64 = parse_target("[2001:db8::]/64:80")
    assert slash64.count() == 2**64
    assert slash64.addresses is not None
    assert slash64.addresses[2**64 - 1] == "2001:db8::ffff:ffff:ffff:ffff"
    assert next(iter(slash64.endpoints())).target == "[2001:db8::]:80"
    everything = parse_target("0-255.0-255.0-255.0-255:-")
    assert everything.count() == 2**32 * 65535
    # a shard of a huge set starts at once, far into it
    it = shard([slash8], 5, 7)
    assert [e.target for e in itertools.islice(it, 2)] == ["127.0.0.0:6", "127.0.0.0:13"]


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("127.0.0.0/33:1", "out of range 0-32"),
        ("[::]/129:1", "out of range 0-128"),
        ("[::]/63:1", "too large"),
        ("127.0.0.0/:1", "bad prefix length"),
        ("127.0.0.0/x:1", "bad prefix length"),
        ("127.0.0.0/-1:1", "bad prefix length"),
        ("127.0.0.0/1234:1", "bad prefix length"),
        ("/8:1", "missing address"),
        ("localhost/8:1", "needs an IP address"),
        ("127.1/8:1", "four decimal octets"),
        ("127.0.0.1-3/24:1", "not one address"),
        ("[127.0.0.0/8]:1", "brackets are for IPv6"),
        ("[fe80::1%eth0]/64:1", "zone"),
        ("[::1]/128x", "bad prefix length"),
        ("[::1]x", "after ']'"),
        ("127.0.0.0/8/8:1", "bad"),
    ],
)
def test_bad_networks(token: str, problem: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_target(token)
    assert problem in str(info.value)


def test_shard_covers_multi_host_targets_exactly_once() -> None:
    targets = [
        parse_target("127.0.0.1:5,6"),
        parse_target("127.0.0.0/30:1-3"),
        parse_target("[::]/127:9"),
        parse_target("localhost:7"),
    ]
    whole = list(expand(targets))
    for count in (1, 2, 3, 5, 40):
        parts = [list(shard(targets, i, count)) for i in range(count)]
        assert sorted(e.target for p in parts for e in p) == sorted(e.target for e in whole)
        for i, part in enumerate(parts):
            assert part == whole[i::count]


# -- exclusions --------------------------------------------------------------------------


def test_exclusions_forms() -> None:
    ex = parse_exclusions("127.0.0.5, 127.0.1.0/24,127.0.2.1-9 ::1 [::2] [fe80::/64]")
    inside = ["127.0.0.5", "127.0.1.0", "127.0.1.255", "127.0.2.1", "127.0.2.9", "::1", "::2"]
    inside += ["fe80::1234", "::ffff:127.0.0.5", "fe80::1%lo"]
    outside = ["127.0.0.4", "127.0.0.6", "127.0.2.0", "127.0.2.10", "::3", "fe81::", "localhost"]
    outside += ["", "not an address", "127.0.0.05"]
    assert [a for a in inside if not ex.contains(a)] == []
    assert [a for a in outside if ex.contains(a)] == []
    assert ex and not parse_exclusions(" , ")


def test_ipv4_mapped_exclusions_are_judged_as_ipv4() -> None:
    ex = parse_exclusions("::ffff:127.0.0.1,[::ffff:127.0.1.0/120]")
    assert ex.contains("127.0.0.1") and ex.contains("::ffff:127.0.0.1")
    assert ex.contains("127.0.1.200") and not ex.contains("127.0.2.0")
    assert not ex.contains("127.0.0.2")


def test_exclusions_scattered_octet_range() -> None:
    ex = parse_exclusions("1-200.0-255.0-255.7")  # 51,200 intervals: matched octet by octet
    assert ex.contains("1.2.3.7") and ex.contains("200.255.255.7")
    assert not ex.contains("1.2.3.8") and not ex.contains("201.0.0.7")


def test_endpoints_and_shard_skip_exclusions() -> None:
    ex = parse_exclusions("127.0.0.1,127.0.0.3")
    targets = [parse_target("127.0.0.0/30:1-2")]
    kept = [e.target for e in expand(targets, ex)]
    assert kept == ["127.0.0.0:1", "127.0.0.0:2", "127.0.0.2:1", "127.0.0.2:2"]
    sharded = [e.target for i in range(3) for e in shard(targets, i, 3, ex)]
    assert sorted(sharded) == sorted(kept)
    assert list(parse_target("127.0.0.1:1").endpoints(ex)) == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("localhost", "give IP addresses, CIDRs or octet ranges"),
        ("127.1", "four decimal octets"),
        ("127.0.0.0/40", "out of range"),
        ("fe80::1%eth0", "zone"),
        ("::zz", "bad IPv6 address"),
    ],
)
def test_bad_exclusions(text: str, problem: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_exclusions(f"127.0.0.1,{text}")
    assert problem in str(info.value)


def test_read_exclusions(tmp_path: Path) -> None:
    path = tmp_path / "ex.txt"
    path.write_text("# never these\n127.0.0.1 127.0.0.2  # two\n\n::1,127.0.1.0/24\n")
    ex = read_exclusions(str(path))
    assert all(ex.contains(a) for a in ("127.0.0.1", "127.0.0.2", "::1", "127.0.1.9"))
    assert not ex.contains("127.0.0.3")
    path.write_text("127.0.0.1\n# ok\n127.0.0.2 nope\n")
    with pytest.raises(TargetError, match=rf"^{path}, line 3: bad exclusion 'nope'"):
        read_exclusions(str(path))
    with pytest.raises(TargetError, match="cannot read exclude file"):
        read_exclusions(str(tmp_path / "missing"))


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_read_exclusions_from_dev_zero() -> None:
    with pytest.raises(TargetError, match=r"^/dev/zero, line 1: line too long"):
        read_exclusions("/dev/zero")


# -- -p-, HOST PORT ----------------------------------------------------------------------


def test_dash_p_dash() -> None:
    assert parse_ports("-") == ALL_PORTS
    assert parse_target("127.0.0.1", parse_ports("-")).count() == 65535


@pytest.mark.parametrize(
    ("tokens", "default", "expected"),
    [
        (["localhost", "8080"], False, ["localhost:8080"]),
        (["127.0.0.1", "22", "::1", "80"], False, ["127.0.0.1:22", "[::1]:80"]),
        (["[::1]", "80"], False, ["[::1]:80"]),
        (["127.0.0.0/30", "22"], False, ["127.0.0.0/30:22"]),
        (["::/127", "22"], False, ["[::/127]:22"]),
        (["a:1", "b"], False, ["a:1", "b"]),
        (["a", "b"], True, ["a", "b"]),
        (["@f", "-"], False, ["@f", "-"]),
        (["h", "00080"], False, ["h:80"]),
    ],
)
def test_join_host_port(tokens: list[str], default: bool, expected: list[str]) -> None:
    assert join_host_port(tokens, default) == expected


@pytest.mark.parametrize(
    ("tokens", "default", "problem"),
    [
        (["h", "80"], True, "did you mean h:80?"),
        (["::1", "80"], True, "did you mean [::1]:80?"),
        (["80"], False, "did you mean HOST:80?"),
        (["2130706433"], True, "four decimal octets"),
        (["h:1", "80"], False, "did you mean h:1,80?"),
        (["h", "80", "443"], False, "did you mean h:80,443?"),
        (["h", "0"], False, "not a port (1-65535)"),
        (["h", "65536"], False, "not a port (1-65535)"),
        (["@file", "80"], False, "did you mean HOST:80?"),
        (["-", "80"], False, "did you mean HOST:80?"),
    ],
)
def test_join_host_port_refuses_with_a_hint(tokens: list[str], default: bool, problem: str) -> None:
    with pytest.raises(TargetError) as info:
        join_host_port(tokens, default)
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


# -- the one HOST:PORT parser ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("127.0.0.1:80", {}, ("127.0.0.1", 80)),
        ("localhost:65535", {}, ("localhost", 65535)),
        ("[::1]:1", {}, ("::1", 1)),
        ("[fe80::1%lo]:1", {}, ("fe80::1%lo", 1)),
        ("127.0.0.1:0", {"allow_port_zero": True}, ("127.0.0.1", 0)),
        ("[::1]:00080", {"allow_names": False}, ("::1", 80)),
    ],
)
def test_parse_endpoint(text: str, kwargs: dict[str, bool], expected: tuple[str, int]) -> None:
    assert parse_endpoint(text, **kwargs) == expected


@pytest.mark.parametrize(
    ("text", "kwargs", "problem"),
    [
        ("127.0.0.1:0", {}, "port 0 out of range 1-65535"),
        ("127.0.0.1:65536", {"allow_port_zero": True}, "out of range 0-65535"),
        ("127.0.0.1", {}, "missing port"),
        ("[::1]", {}, "missing port"),
        ("h:", {}, "no port after ':'"),
        ("h:80,81", {}, "bad port '80,81'"),
        ("h:80-81", {}, "bad port '80-81'"),
        ("::1:80", {}, 'write "[::1]:80"'),
        ("::1", {}, 'write "[::1]:PORT"'),
        ("a:b:c", {}, "too many ':'"),
        ("127.1:80", {}, "four decimal octets"),
        ("2130706433:80", {}, "four decimal octets"),
        ("127.0.0.0/8:80", {}, "not a network"),
        ("127.0.0.1-3:80", {}, "not a range"),
        ("localhost:80", {"allow_names": False}, "an IP address is needed"),
        (" h:80", {}, "leading or trailing space"),
        ("", {}, "empty address"),
        ("[::1]x", {}, "after ']'"),
        ("[::1:80", {}, "missing ']'"),
        ("h:" + "9" * 5000, {}, "bad port"),
    ],
)
def test_parse_endpoint_errors(text: str, kwargs: dict[str, bool], problem: str) -> None:
    with pytest.raises(TargetError) as info:
        parse_endpoint(text, **kwargs)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.2", Source("127.0.0.2")),
        ("127.0.0.2:5000", Source("127.0.0.2", 5000, 5000)),
        ("127.0.0.2:5000-5010", Source("127.0.0.2", 5000, 5010)),
        ("[::1]:7-9", Source("::1", 7, 9)),
    ],
)
def test_parse_source_spec(text: str, expected: Source) -> None:
    assert parse_source_spec(text) == expected


def test_parse_source_spec_errors() -> None:
    with pytest.raises(TargetError, match="runs backwards"):
        parse_source_spec("127.0.0.1:9-7")
    with pytest.raises(TargetError, match="one local port"):
        parse_source("127.0.0.1:7-9")


# -- line cap --------------------------------------------------------------------------------


def test_long_line_in_a_file_is_an_error_not_a_memory_error(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("127.0.0.1:80\n" + "a" * (MAX_LINE + 1) + "\n127.0.0.1:81\n")
    it = iter_targets([f"@{path}"], None)
    assert next(it).ports == P80
    with pytest.raises(TargetError, match=rf"^{path}, line 2: line too long \(over 65536 bytes\)$"):
        next(it)


def test_line_of_exactly_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    host = "a" * 250
    line = f"{host}:80 #".ljust(MAX_LINE, "x")
    path.write_text(line + "\n" + line)
    assert [t.host for t in iter_targets([f"@{path}"], None)] == [host, host]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
@pytest.mark.parametrize("how", ["file", "stdin"])
def test_dev_zero_through_the_cli(how: str) -> None:
    args = [*probe_cmd(), "check", "@/dev/zero" if how == "file" else "-"]
    with open("/dev/zero", "rb") as zero:
        result = subprocess.run(
            args, stdin=zero if how == "stdin" else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    source = "/dev/zero" if how == "file" else "<stdin>"
    assert result.stderr == f"probe: error: {source}, line 1: line too long (over 65536 bytes)\n"
    assert result.stdout == ""


@pytest.mark.parametrize("token", ["2130706433", "127.1", "0x7f.0.0.1", "0177.0.0.1"])
def test_inet_aton_forms_through_the_cli(token: str) -> None:
    result = subprocess.run(
        [*probe_cmd(), "check", token, "-p", "1", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert "bad IPv4 address" in result.stderr and len(result.stderr.splitlines()) == 1


# -- properties ------------------------------------------------------------------------------

octet_text = st.one_of(
    st.integers(0, 300).map(str), st.sampled_from(["00", "01", "0x1", "0x", "", "1-2", "x"])
)


@settings(max_examples=500)
@given(st.lists(octet_text, min_size=1, max_size=6))
def test_strict_literal_rule_matches_ipaddress(labels: list[str]) -> None:
    host = ".".join(labels)
    last = labels[-1]
    numeric = (
        last.isdecimal() or last.startswith("0x") or (last and set(last) <= set("0123456789-"))
    )
    try:
        target = parse_target(host, P80)
    except TargetError:
        accepted = False
    else:
        accepted = True
        assert target.host == host
    if not numeric:  # a name (perhaps a bad one): never judged as an address here
        if accepted:
            assert target.addresses is None
        return
    if "-" not in host:
        try:
            ipaddress.IPv4Address(host)
            valid = True
        except ValueError:
            valid = False
        assert accepted == valid, host


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4), st.integers(25, 32), port_ranges)
def test_ipv4_cidr_counted_equals_iterated(
    address: ipaddress.IPv4Address, prefix: int, ranges: list[tuple[int, int]]
) -> None:
    ranges = [(lo, min(hi, lo + 3)) for lo, hi in ranges[:2]]
    target = parse_target(f"{address}/{prefix}:{_format_ports(ranges)}")
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    hosts = _hosts(target)
    assert hosts == [str(a) for a in network]
    assert (
        target.count() == len(list(target.endpoints())) == len(hosts) * count_ports(tuple(ranges))
    )
    assert target.addresses is not None
    assert [target.addresses[i] for i in range(target.addresses.count())] == hosts


@settings(max_examples=100)
@given(st.ip_addresses(v=6), st.integers(120, 128))
def test_ipv6_cidr_counted_equals_iterated(address: ipaddress.IPv6Address, prefix: int) -> None:
    target = parse_target(f"[{address}]/{prefix}:1")
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    assert _hosts(target) == [ip_text(a) for a in network]
    assert target.count() == network.num_addresses


octet_range = st.tuples(st.integers(0, 255), st.integers(0, 3)).map(
    lambda t: (t[0], min(255, t[0] + t[1]))
)


@settings(max_examples=200)
@given(st.lists(octet_range, min_size=4, max_size=4))
def test_octet_ranges_counted_equals_iterated(octets: list[tuple[int, int]]) -> None:
    host = ".".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in octets)
    target = parse_target(f"{host}:1,2")
    expected = [
        ".".join(map(str, parts))
        for parts in itertools.product(*(range(lo, hi + 1) for lo, hi in octets))
    ]
    assert _hosts(target) == expected
    assert target.count() == 2 * len(expected) == len(list(target.endpoints()))


small_v4 = st.integers(0, 511).map(lambda n: f"127.0.{n >> 8}.{n & 255}")
v4_network = st.tuples(small_v4, st.integers(23, 32)).map(lambda t: f"{t[0]}/{t[1]}")
v4_range = st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 250), st.integers(0, 9))
v6_network = st.tuples(st.integers(0, 600), st.integers(118, 128)).map(
    lambda t: f"{ipaddress.IPv6Address(t[0])}/{t[1]}"
)


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            small_v4,
            v4_network,
            v4_range.map(lambda t: f"127.0.{t[0]}-{t[0] + t[1]}.{t[2]}-{min(255, t[2] + t[3])}"),
            v6_network,
        ),
        max_size=6,
    ),
    st.lists(
        st.one_of(small_v4, st.integers(0, 700).map(lambda n: str(ipaddress.IPv6Address(n)))),
        min_size=1,
        max_size=20,
    ),
)
def test_exclusions_match_ipaddress_membership(items: list[str], probes: list[str]) -> None:
    ex = parse_exclusions(",".join(items))
    members: list[set[str]] = []
    for item in items:
        if "-" in item:
            members.append({e.host for e in parse_target(item, P80).endpoints()})
        else:
            members.append({str(a) for a in ipaddress.ip_network(item, strict=False)})
    for probe in probes:
        expected = any(probe in m for m in members)
        assert ex.contains(probe) == expected, (items, probe)
        address = ipaddress.ip_address(probe)
        if address.version == 4:
            assert ex.contains(f"::ffff:{probe}") == expected


# -- one sharding rule ----------------------------------------------------------------------


def test_check_and_daemon_share_by_one_rule() -> None:
    from probe.check.share import in_shard
    from probe.daemon import fleet
    from probe.syntax import shard_of

    names = [f"127.0.0.{i}:{p}" for i in range(1, 20) for p in (22, 80)] + ["a\udc80b:1"]
    for name in names:
        owner = shard_of(name, 5)
        assert fleet.Shard(owner, 5).owns(name)
        assert in_shard(name, (owner, 5))
        assert not in_shard(name, ((owner + 1) % 5, 5))
    # blake2b-64 of the UTF-8 bytes, big-endian, mod N: pinned so no machine drifts.
    assert [shard_of(f"n{i}", 7) for i in range(8)] == [3, 3, 2, 1, 6, 5, 3, 0]
