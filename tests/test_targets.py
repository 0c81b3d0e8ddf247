"""Unit tests of probe.targets: port lists, target forms, target files and stdin, -s."""

from __future__ import annotations

import io
import ipaddress
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.targets import (
    Endpoint,
    PortRanges,
    Target,
    TargetError,
    count_ports,
    expand,
    iter_targets,
    parse_ports,
    parse_source,
    parse_target,
)

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
        ("80-", "80-"),
        ("-80", "-80"),
        ("1-2-3", "1-2-3"),
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

    def __iter__(self) -> Iterator[str]:
        for n in range(self.total):
            self.taken += 1
            yield f"127.0.0.1:{n % 65535 + 1}\n"


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
        lo_s, _, hi_s = part.partition("-")
        assert int(lo_s) == lo
        assert int(hi_s or lo_s) == hi


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
    if target.bracketed:
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


hostnames = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True)
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
