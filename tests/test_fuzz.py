"""Bad input, found by a fuzzer: the target reader, the config loader, the record
renderers, the CLI end to end, and the daemon's GET /probe, under hypothesis.

Any input either means what it says or ends in a clear error: TargetError / ConfigError in
process, exit 2 with one stderr line for the CLI, 400 for HTTP; never a traceback, a 500 or a
hang. Generated targets are either garbage that cannot parse (so nothing is resolved or
connected) or addresses on 127.0.0.0/8 and ::1 at ports these tests hold.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Daemon,
    RecordingListener,
    closed_port,
    has_ipv6_loopback,
    parse_records,
    probe_cmd,
)
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from probe.daemon.config import Config, ConfigError, load_config
from probe.output.human import console_line, probe_line
from probe.output.jsonl import event_json, record_json
from probe.record import Outcome, Record
from probe.syntax import PortRanges, Target, TargetError, iter_targets, parse_target

pytestmark = pytest.mark.module_unit  # its module-scoped fixtures start once a run

Rec = dict[str, Any]
P = ((1, 1),)  # stand-in default ports (-p): never used to connect

# Characters that may not appear in argv or a UTF-8 file: NUL and lone surrogates.
safe_chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
# Control and separator characters that could split or forge a line somewhere downstream
# (str.splitlines() splits on all of these except ESC, DEL and the C1 controls but NEL).
HOSTILE = "\x00\x07\x08\t\x0b\x0c\x1b\x1c\x1d\x1e\x1f\x7f\x85\u2028\u2029\u200b\ufeff"


def never_parses(text: str) -> bool:
    """True when `text` is rejected as a target both with and without -p ports: such a token
    can be given to probe without anything being resolved or connected to."""
    for default in (None, P):
        try:
            parse_target(text, default)
        except TargetError:
            continue
        return False
    return True


# Something that breaks a target, set in arbitrary text, so that most draws are rejected.
BREAKERS = [" ", ",", "/", "#", "@", "[", "]", "\x1b", ":", ":0", ":99999", ":x", "::x", "\u200b"]
garbage = st.one_of(
    st.text(safe_chars, max_size=30),
    st.tuples(
        st.text(safe_chars, max_size=12),
        st.sampled_from(BREAKERS),
        st.text(safe_chars, max_size=12),
    ).map("".join),
).filter(never_parses)
# On a command line, also never an option, a file or standard input; and no line break
# (argparse echoes a stray token as is: test_line_break_in_a_stray_argument).
garbage_arg = garbage.filter(
    lambda t: not t.startswith(("-", "@")) and len(f"<{t}>".splitlines()) == 1
)


# -- the @FILE / stdin reader --------------------------------------------------------------------

ports_st = st.lists(
    st.tuples(st.integers(1, 65535), st.integers(0, 100)).map(
        lambda t: (t[0], min(65535, t[0] + t[1]))
    ),
    min_size=1,
    max_size=4,
)
host_st = st.one_of(
    st.integers(0, 255).map(lambda i: f"127.0.0.{i}"),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.ip_addresses(v=6).map(str),
)
space = st.text(" \t", max_size=3)
comment_text = st.text(safe_chars.filter(lambda c: c not in "\r\n"), max_size=20)


@dataclass(frozen=True)
class Line:
    text: str
    meaning: Target | str | None  # a target, None (skipped) or "bad"


def _ports_text(ranges: list[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


@st.composite
def target_line(draw: st.DrawFn, default: PortRanges | None) -> Line:
    host = draw(host_st)
    v6 = ":" in host
    tail = draw(st.one_of(st.just(""), comment_text.map(lambda c: " #" + c)))
    lead, trail = draw(space), draw(space)
    if default is not None and draw(st.booleans()):  # a bare host: ports from -p
        return Line(f"{lead}{host}{trail}{tail}", Target(host, default, v6))
    ranges = draw(ports_st)
    label = f"[{host}]" if v6 else host
    return Line(
        f"{lead}{label}:{_ports_text(ranges)}{trail}{tail}", Target(host, tuple(ranges), v6)
    )


BAD_LINES = [
    "127.0.0.1:0",
    "127.0.0.1:65536",
    "127.0.0.1:",
    ":80",
    "[::1",
    "[::1]80",
    "[::1]:",
    "[nonsense]:80",
    "host:1--",
    "host:70000-",
    "127.1:80",
    "2130706433:80",
    "0x7f.0.0.1:80",
    "127.0.0.0/33:80",
    "host:5-3",
    "host:x",
    "host:+80",
    "host:٨٠",
    "ho st:80",
    "a,b:80",
    "a/b:80",
    "a@b:80",
    "::1:80:90:x",
]


@st.composite
def bad_line(draw: st.DrawFn) -> Line:
    base = draw(st.sampled_from(BAD_LINES))
    hostile = draw(st.sampled_from(HOSTILE))
    forms = [base, f"h{hostile}ost:80"]
    if not hostile.isspace():  # whitespace at the ends is stripped: that line would be fine
        forms.append(f"{hostile}host:80")
    return Line(draw(st.sampled_from(forms)), "bad")


def line_st(default: PortRanges | None) -> st.SearchStrategy[Line]:
    return st.one_of(
        space.map(lambda s: Line(s, None)),
        st.tuples(space, comment_text).map(lambda t: Line(f"{t[0]}#{t[1]}", None)),
        target_line(default),
        target_line(default),
        bad_line(),
    )


def expected_of(lines: list[Line]) -> tuple[list[Target], int | None]:
    """Targets before the first bad line, and that line's number (None: no bad line)."""
    targets: list[Target] = []
    for number, line in enumerate(lines, 1):
        if line.meaning == "bad":
            return targets, number
        if isinstance(line.meaning, Target):
            targets.append(line.meaning)
    return targets, None


def consume(
    tokens: list[str], default: PortRanges | None, stdin: io.StringIO | None = None
) -> tuple[list[Target], TargetError | None]:
    got: list[Target] = []
    try:
        for target in iter_targets(tokens, default, stdin):
            got.append(target)
    except TargetError as exc:
        return got, exc
    return got, None


@pytest.mark.slow  # ~8-15 s
@settings(max_examples=300)
@given(st.data(), st.sampled_from([None, ((80, 80),), ((1, 3), (8080, 8080))]))
def test_reader_yields_what_the_lines_say(data: st.DataObject, default: PortRanges | None) -> None:
    lines = data.draw(st.lists(line_st(default), max_size=12))
    # A BOM opening the first line is the file's BOM, not part of a host: that case has its
    # own test (test_target_file_with_a_bom).
    assume(not (lines and lines[0].text.startswith("\ufeff")))
    newline = data.draw(st.sampled_from(["\n", "\r\n", "\r"]))
    targets, bad = expected_of(lines)
    stdin_text = "\n".join(line.text for line in lines) + data.draw(st.sampled_from(["", "\n"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "targets.txt")
        path.write_bytes(newline.join(line.text for line in lines).encode())
        for tokens, stdin, source in (
            (["-"], io.StringIO(stdin_text), "<stdin>"),
            ([f"@{path}"], None, str(path)),
        ):
            got, error = consume(tokens, default, stdin)
            assert got == targets, (source, lines)
            if bad is None:
                assert error is None, (source, error)
            else:
                assert error is not None, (source, lines)
                message = str(error)
                assert message.startswith(f"{source}, line {bad}: "), message
                assert len(message.splitlines()) == 1 and message.isprintable(), message


@settings(max_examples=300)
@given(st.text(max_size=200), st.sampled_from([None, P]))
def test_reader_on_any_text_raises_only_target_errors(
    text: str, default: PortRanges | None
) -> None:
    got, error = consume(["-"], default, io.StringIO(text))
    if error is not None:
        assert len(str(error).splitlines()) == 1 and str(error).isprintable(), str(error)
    for target in got:
        assert target.host and target.host in text
        assert target.host.isprintable() and not any(c.isspace() for c in target.host)
        assert all(1 <= lo <= hi <= 65535 for lo, hi in target.ports)


@settings(max_examples=200)
@given(st.binary(max_size=200), st.sampled_from([None, P]))
def test_reader_on_any_bytes_raises_only_target_errors(
    data: bytes, default: PortRanges | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "t")
        path.write_bytes(data)
        got, error = consume([f"@{path}"], default)
    if error is not None:
        assert len(str(error).splitlines()) == 1, str(error)
    else:
        data.decode("utf-8")  # what was read whole was text
    for target in got:
        assert target.host.isprintable()


def test_target_file_with_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "targets.txt"
    path.write_bytes(b"\xef\xbb\xbf127.0.0.1:80\n")
    got, error = consume([f"@{path}"], None)
    assert error is None, str(error)
    assert got == [Target("127.0.0.1", ((80, 80),), False)]


# -- the config loader (tests/test_config.py fuzzes parse_config on text and documents) -------


@settings(max_examples=200)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8", "surrogatepass")),
        st.sampled_from([b"[log]\nfile = '", b"[[targets]]\naddress = '127.0.0.1:\xff'\n"]),
    )
)
def test_config_file_of_any_bytes(data: bytes) -> None:
    load_bytes(data)  # a Config, or one printable line naming the file


def load_bytes(data: bytes) -> Config | None:
    """`load_config` on a file holding `data`: the config, or None after checking that its
    error is one printable line that starts with the file's path."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "c.toml")
        path.write_bytes(data)
        try:
            return load_config(path)
        except ConfigError as exc:
            message = str(exc)
    assert message.startswith(f"{path}: "), message
    assert message.isprintable() and len(message.splitlines()) == 1, message
    return None


hostile_text = st.text(st.sampled_from(HOSTILE.replace("\x00", "") + "ab\"'\\#[]={}"), max_size=12)


@settings(max_examples=200)
@given(
    st.sampled_from(["name", "address", "labels.team", "log.file", "engine.source"]),
    hostile_text,
)
def test_config_strings_with_control_characters(key: str, value: str) -> None:
    """A hostile string in any string key: either accepted as is or one printable line."""
    encoded = json.dumps(value)  # a valid TOML basic string, escapes and all
    target = '[[targets]]\naddress = "127.0.0.1:80"\n'
    if key == "name":
        text = target + f"name = {encoded}\n"
    elif key == "address":
        text = f"[[targets]]\naddress = {encoded}\n"
    elif key == "labels.team":
        text = target + f"labels = {{ team = {encoded} }}\n"
    else:
        section, name = key.split(".")
        text = f"[{section}]\n{name} = {encoded}\n"
    config = load_bytes(text.encode())
    if config is None:
        return
    if key == "name":
        assert config.targets[0].name == value
    elif key == "labels.team":
        assert config.targets[0].labels == {"team": value}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=80),
        st.text(HOSTILE + "[]=\"'ab.\n", max_size=40).map(str.encode),
    )
)
def test_validate_command_on_any_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "c.toml")
        path.write_bytes(data)
        result = subprocess.run(
            [*probe_cmd(), "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 2), result.stderr
    if result.returncode == 2:
        (line,) = result.stderr.splitlines()
        assert str(path) in line
    elif "valid, 0 targets" in result.stdout:  # said as a warning, once
        assert (
            result.stderr == f"probe: warning: {path} has no targets: probe run would "
            "probe nothing on its own\n"
        )
    else:
        assert result.stderr == ""


# -- the renderers: no value can split or forge a line -------------------------------------------

any_text = st.text(max_size=30)


@settings(max_examples=300)
@given(any_text, any_text, any_text, st.sampled_from(["127.0.0.1", "::1", None]))
def test_a_record_renders_as_one_line(
    target: str, host: str, name: str, address: str | None
) -> None:
    """What a user or a config can write (target, host, name) cannot break a line; the
    address, local endpoint and error come from the kernel."""
    record = Record(
        started=1795514400.123456,  # 2026-11-24T10:00:00.123456Z
        target=target,
        host=host,
        port=80,
        address=address,
        family="ipv4",
        local_address="127.0.0.1",
        local_port=40000,
        outcome=Outcome.TIMEOUT,
        error="ETIMEDOUT",
        latency_ms=1.5,
        rtt_ms=None,
        syn_retransmits=1,
        dns_ms=0.0,
        attempt=1,
        extra={"name": name},
    )
    line = record_json(record)
    assert b"\n" not in line and b"\r" not in line
    out = json.loads(line)
    assert (out["target"], out["host"], out["name"]) == (target, host, name)
    assert out["timestamp"] == "2026-11-24T10:00:00.123456Z"
    text = probe_line(record)
    assert len(text.splitlines()) == 1 and text.isprintable(), repr(text)


@settings(max_examples=200)
@given(
    st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), any_text, max_size=4),
    any_text.filter(lambda e: e != "probe"),
)
def test_an_event_renders_as_one_line(fields: dict[str, str], event: str) -> None:
    fields.pop("event", None)
    fields.pop("timestamp", None)
    line = event_json({"event": event, **fields})
    assert b"\n" not in line and b"\r" not in line
    assert json.loads(line)["event"] == event
    text = console_line({"event": event, **fields})
    assert len(text.splitlines()) == 1 and text.isprintable(), repr(text)


# -- the CLI end to end ---------------------------------------------------------------------------


@dataclass
class Owned:
    """Ports these tests hold on loopback, and target files naming only them."""

    listener: RecordingListener
    closed: int
    closed6: int | None
    good_file: Path
    bad_file: Path

    @property
    def ports(self) -> set[int]:
        return {self.listener.port, self.closed} | ({self.closed6} if self.closed6 else set())


@pytest.fixture(scope="module")
def owned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Owned]:
    tmp = tmp_path_factory.mktemp("owned")
    lst = RecordingListener()
    closed = closed_port()
    closed6 = closed_port("::1") if has_ipv6_loopback() else None
    good = tmp / "good.txt"
    good.write_text(f"# owned\n\n127.0.0.1:{lst.port}\n  127.0.0.1:{closed} # closed\n")
    bad = tmp / "bad.txt"
    bad.write_text(f"127.0.0.1:{closed}\n# two\nlocal\x1bhost:{closed}\n127.0.0.1:{lst.port}\n")
    yield Owned(lst, closed, closed6, good, bad)
    lst.close()


@st.composite
def argv_st(draw: st.DrawFn, o: Owned) -> list[str]:
    """Three runs in four are clean (well-formed targets and values, so probe really runs);
    the others may hold garbage anywhere, for the exit-2 paths."""
    open_, shut = o.listener.port, o.closed
    clean = draw(st.sampled_from([True, True, True, False]))
    good_targets = [
        f"127.0.0.1:{open_}",
        f"127.0.0.1:{shut}",
        f"127.0.0.1:{open_},{shut}",
        f"localhost:{open_}",
        f"[::ffff:127.0.0.1]:{shut}",
        "127.0.0.1",  # needs -p
        f"@{o.good_file}",
    ] + ([f"[::1]:{o.closed6}"] if o.closed6 else [])
    bad_targets = [f"@{o.bad_file}", f"@{o.good_file.parent}/missing.txt", "@"]
    options: dict[str, tuple[list[str], list[str]]] = {
        "-p": ([f"{open_}", f"{open_},{shut}"], ["0", "x", "70000", "5-3", ""]),
        "-c": (["1", "2", "3"], ["0", "-1", "x", "2.5"]),
        "-i": (["0", "0.01"], ["-1", "nan", "x"]),
        "-C": (["1", "3", "100"], ["0", "x"]),
        "--rate": (["1000", "100000"], ["0", "-5", "inf"]),
        "--retries": (["0", "1"], ["101", "-1"]),
        "-s": (["127.0.0.1", "::1", "[::1]:0"], ["127.0.0.1:99999", "x", ""]),
        "--workers": (["1", "2"], ["0"]),
    }
    flags = ["-4", "-6", "--json", "--graceful-close"]

    def pick(good: list[str], bad: list[str]) -> str:
        return draw(st.sampled_from(good if clean else good + bad))

    if clean:
        target: st.SearchStrategy[str] = st.sampled_from(good_targets)
    else:
        target = st.one_of(st.sampled_from(good_targets + bad_targets), garbage_arg)
    targets = draw(st.lists(target, min_size=1, max_size=3))
    units: list[list[str]] = []
    for flag in draw(st.lists(st.sampled_from(sorted(options)), max_size=3, unique=True)):
        units.append([flag, pick(*options[flag])])
    chosen = draw(st.lists(st.sampled_from(flags), max_size=2, unique=True))
    if clean and {"-4", "-6"} <= set(chosen):
        chosen.remove("-6")
    units += [[f] for f in chosen]
    if not clean and draw(st.booleans()):
        units.append(["--bogus"])
    units.append(["-t", "0.2"])
    shuffled = draw(st.permutations(units))  # options in any order, after the targets
    return ["check", *targets, *[token for unit in shuffled for token in unit]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_cli_on_generated_arguments(owned: Owned, data: st.DataObject) -> None:
    argv = data.draw(argv_st(owned))
    result = subprocess.run(
        [*probe_cmd(), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    event(f"exit {result.returncode}")
    assert "Traceback" not in result.stderr, (argv, result.stderr)
    assert result.returncode in (0, 1, 2), (argv, result.returncode, result.stderr)
    if result.returncode == 2:
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (argv, result.stderr)
        assert lines[0].startswith("probe: "), lines
    else:
        assert result.stderr == "", (argv, result.stderr)
    if "--json" in argv:
        recs = parse_records(result.stdout)
        for rec in recs:
            assert rec["port"] in owned.ports, rec
        if result.returncode == 0:  # every target had an open attempt, and it was written
            assert any(r["outcome"] == "open" for r in recs), (argv, recs)
        elif result.returncode == 1:  # some target had none: its attempts were written
            assert recs, argv


@pytest.mark.parametrize("token", ["x\ny", "x\x1ey", "x\u2028y"])
def test_line_break_in_a_stray_argument(owned: Owned, token: str) -> None:
    # A target after an option is "unrecognized" to argparse: the token is never probed.
    argv = ["check", f"127.0.0.1:{owned.closed}", "-t", "0.2", token]
    result = subprocess.run([*probe_cmd(), *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_targets_on_both_sides_of_an_option(owned: Owned) -> None:
    first, second = f"127.0.0.1:{owned.closed}", f"127.0.0.1:{owned.listener.port}"
    argv = ["check", first, "-t", "0.2", second, "--json"]
    result = subprocess.run([*probe_cmd(), *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert {r["target"] for r in parse_records(result.stdout)} == {first, second}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(HOSTILE.replace("\t", "")),
    st.sampled_from(["local{}host", "{}localhost", "127.0.0.1{}", "[::1{}]", "a.b{}.c"]),
    st.booleans(),
)
def test_control_characters_in_a_target_file_cannot_forge_records(
    owned: Owned, char: str, form: str, ported: bool
) -> None:
    """A line whose host holds a control character is rejected (exit 2, one stderr line);
    the records written before it are whole JSON lines about the real targets, and a control
    character in a comment changes nothing."""
    host = form.format(char)
    hostile = f"{host}:{owned.closed}" if ported else host
    assume(never_parses(hostile))
    lines = [
        f"127.0.0.1:{owned.listener.port} # {char}[2J{char}",
        f"127.0.0.1:{owned.closed}",
        hostile,
        f"127.0.0.1:{owned.listener.port}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "targets.txt")
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = subprocess.run(
            [*probe_cmd(), "check", f"@{path}", "--json", "-t", "0.2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()  # str.splitlines: every line break Python knows
    assert "line 3" in line and line.isprintable(), line
    expected = {f"127.0.0.1:{owned.listener.port}", f"127.0.0.1:{owned.closed}"}
    recs = parse_records(result.stdout)
    for rec in recs:
        assert rec["target"] in expected, rec
        assert rec["host"] == "127.0.0.1"
    # at most the two lines before the bad one, each once: nothing forged, nothing doubled
    assert len(recs) == len({r["target"] for r in recs}) <= 2, recs


# -- GET /probe -----------------------------------------------------------------------------------


@dataclass
class ProbeDaemon:
    d: Daemon
    inside: RecordingListener  # 127.0.0.1: allowed
    closed: int  # 127.0.0.1: allowed, refused
    outside: RecordingListener  # 127.0.0.2: outside probe_allow, must never be connected to
    outside6: int | None  # a port held on ::1, outside probe_allow

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.d.proc

    @property
    def stderr(self) -> Path:
        return self.d.dir / "stderr"

    def get(self, query: str) -> tuple[int, str]:
        status, _, body = self.d.get(f"/probe?{query}")
        return status, body


@pytest.fixture(scope="module")
def probe_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProbeDaemon]:
    tmp = tmp_path_factory.mktemp("probe-daemon")
    log = tmp / "probe.log"
    text = (
        "[defaults]\ntimeout = 0.5\n\n"
        f'[log]\nformat = "json"\nfile = "{log}"\n\n'
        '[metrics]\nlisten = "127.0.0.1:0"\nprobe_allow = ["127.0.0.1/32"]\n'
    )
    inside = RecordingListener()
    outside = RecordingListener("127.0.0.2")
    d = Daemon.start(tmp, text, log)
    try:
        d.port  # noqa: B018 - waits for the listening event
        closed6 = closed_port("::1") if has_ipv6_loopback() else None
        yield ProbeDaemon(d, inside, closed_port(), outside, closed6)
    finally:
        try:
            d.stop(timeout=10)
        except subprocess.TimeoutExpired:
            d.kill()
        inside.close()
        outside.close()


TIMEOUTS = [None, "0.5", "0.2", "30", "0", "-1", "nan", "inf", "31", "1e309", "abc", ""]


def good_timeout(value: str | None) -> bool:
    if value is None:
        return True
    try:
        return 0 < float(value) <= 30
    except ValueError:
        return False


@dataclass(frozen=True)
class Query:
    text: str
    status: int  # the answer expected
    success: float | None = None  # probe_success expected in a 200


@st.composite
def probe_query(draw: st.DrawFn, d: ProbeDaemon) -> Query:
    timeout = draw(st.sampled_from([None] * 6 + TIMEOUTS))
    kinds = ["inside", "inside", "outside", "outside", "multi", "garbage", "raw"]
    kind = draw(st.sampled_from(kinds))
    success = None
    if kind == "inside":
        port = draw(st.sampled_from([d.inside.port, d.closed]))
        form = draw(st.sampled_from(["127.0.0.1:{}", "localhost:{}", "[::ffff:127.0.0.1]:{}"]))
        target, status = form.format(port), 200
        success = 1.0 if port == d.inside.port else 0.0
    elif kind == "outside":
        forms = [f"127.0.0.2:{d.outside.port}", f"[::ffff:127.0.0.2]:{d.outside.port}"]
        if d.outside6:
            forms.append(f"[::1]:{d.outside6}")
        target, status = draw(st.sampled_from(forms)), 403
    elif kind == "multi":
        p = d.inside.port
        target = draw(st.sampled_from([f"127.0.0.1:{p},{p}", f"127.0.0.2:{p}-{p + 1}"]))
        status = 400
    elif kind == "garbage":
        target, status = draw(garbage), 400
    else:
        # Raw percent-escapes, valid or not, and no ':' however decoded: never a port.
        raw = draw(st.text("%0123456789abcdefABCDEFxz.[]-_~+", max_size=16))
        assume("3a" not in raw.lower())
        text = f"target={raw}"
        if timeout is not None:
            text += f"&timeout={urllib.parse.quote(timeout, safe='')}"
        return Query(text, 400)
    if status != 400 and not good_timeout(timeout):
        status = 400
    text = f"target={urllib.parse.quote(target, safe='')}"
    if timeout is not None:
        text += f"&timeout={urllib.parse.quote(timeout, safe='')}"
    if draw(st.booleans()):
        text = f"x={urllib.parse.quote(draw(st.text(max_size=5)), safe='')}&{text}"
    return Query(text, status, success if status == 200 else None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_probe_query_answers_200_400_or_403(probe_daemon: ProbeDaemon, data: st.DataObject) -> None:
    d = probe_daemon
    query = data.draw(probe_query(d))
    status, body = d.get(query.text)  # urllib's timeout: a hang fails here
    event(f"status {status}")
    assert status == query.status, (query, status, body)
    if status == 200:
        m = re.search(r"^probe_success (\S+)$", body, re.M)
        assert m, body
        assert float(m[1]) == query.success, (query, body)
    assert d.outside.peers == []
    assert d.proc.poll() is None, d.stderr.read_text()


def test_probe_daemon_connected_only_inside_the_allow_list(probe_daemon: ProbeDaemon) -> None:
    d = probe_daemon
    status, _ = d.get(f"target=127.0.0.2:{d.outside.port}")
    assert status == 403
    d.outside.assert_not_reached()
    assert "Traceback" not in d.stderr.read_text()


# -- a target file of ten million lines, through a FIFO -----------------------------------------

TEN_MILLION = 10_000_000
RSS_LIMIT_KIB = 150 * 1024


def peak_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def feed_fifo(path: Path, ports: list[int], lines: int, fd: int) -> None:
    """`lines` lines: comments and blank lines, with a target per 1/len(ports) of the way."""
    block = b"# a comment line\n\n   \n#\n" * 25_000  # 100,000 lines
    blocks = lines // 100_000
    every = max(1, blocks // len(ports))
    pending = list(ports)
    with open(fd, "wb", buffering=0) as out:
        for i in range(blocks):
            out.write(block)
            if pending and i % every == every - 1:
                out.write(f"127.0.0.1:{pending.pop()}  # one of ours\n".encode())
        for port in pending:
            out.write(f"127.0.0.1:{port}\n".encode())


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.isdir("/proc/self"), reason="Linux")
def test_ten_million_line_target_file_streams(tmp_path: Path) -> None:
    """Ten million lines (mostly comments) through a FIFO, with a few real targets: probe
    finishes, writes one record per target, and its peak RSS stays small. One worker:
    a FIFO can be read by one process only (see the xfail below). The writer opens the FIFO
    read-write so that probe's preflight open and close does not break the pipe (another
    xfail below)."""
    fifo = tmp_path / "targets.fifo"
    os.mkfifo(fifo)
    ports = [closed_port() for _ in range(10)]
    fd = os.open(fifo, os.O_RDWR)
    writer = threading.Thread(target=feed_fifo, args=(fifo, ports, TEN_MILLION, fd), daemon=True)
    writer.start()
    proc = check_fifo(fifo, 1)
    peak = 0
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            peak = max(peak, peak_rss_kib(proc.pid) or 0)
            assert time.monotonic() < deadline, "ten million lines took over 60 s"
            time.sleep(0.02)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    writer.join(10)
    assert "Traceback" not in err
    assert proc.returncode == 1, err  # closed ports: no target had an open attempt
    recs = parse_records(out)
    assert sorted(r["port"] for r in recs) == sorted(ports)
    assert {r["outcome"] for r in recs} == {"refused"}
    assert 0 < peak < RSS_LIMIT_KIB, f"peak RSS {peak} KiB"


FIFO_WRITER = """
import sys
with open(sys.argv[1], "w") as out:
    for port in sys.argv[2:]:
        out.write(f"127.0.0.1:{port}\\n")
"""


def fifo_openers(fifo: Path, root: int) -> int:
    """Processes of the tree at `root` (it and its children) that have `fifo` open."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("Tgid", "").strip() != pid:
            continue  # a thread (some kernels list them here too)
        if int(pid) != root and fields.get("PPid", "").strip() != str(root):
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(fifo):
                    count += 1
                    break
            except OSError:
                continue
    return count


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int | None, str, str]:
    """(exit code or None if still running after `timeout`, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.kill()  # it may be deaf to SIGINT and SIGTERM, blocked opening the FIFO
        out, err = proc.communicate()
        return None, out, err


def check_fifo(fifo: Path, workers: int) -> subprocess.Popen[str]:
    """`probe check @FIFO --json` with short timeouts, its output piped."""
    return subprocess.Popen(
        [*probe_cmd(), "check", f"@{fifo}", "--json", "-t", "0.2", "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def each_port_once(code: int | None, out: str, err: str, ports: list[int]) -> None:
    """One record for every (closed) port of the FIFO, and exit 1: none was open."""
    got = sorted(r["port"] for r in parse_records(out))
    assert len(got) == len(ports), f"{len(got)} of {len(ports)} targets; exit {code}, {err!r}"
    assert got == sorted(ports)
    assert code == 1, f"exit {code}, stderr {err!r}"


def test_fifo_fed_by_a_shell_writer(tmp_path: Path) -> None:
    """`mkfifo f; gen > f & probe check @f`: the writer opens once and writes."""
    fifo = tmp_path / "targets.fifo"
    os.mkfifo(fifo)
    ports = [closed_port() for _ in range(3)]
    writer = subprocess.Popen(
        [sys.executable, "-c", FIFO_WRITER, str(fifo), *map(str, ports)],
        stderr=subprocess.DEVNULL,
    )
    proc = check_fifo(fifo, 1)
    try:
        code, out, err = finish(proc, 10)
    finally:
        for p in (proc, writer):
            if p.poll() is None:
                p.kill()
                p.wait()
    each_port_once(code, out, err, ports)


def test_fifo_read_by_worker_processes(tmp_path: Path) -> None:
    fifo = tmp_path / "targets.fifo"
    os.mkfifo(fifo)
    ports = [closed_port() for _ in range(300)]
    keep = os.open(fifo, os.O_RDWR)  # holds the pipe (and its contents) until probe has it
    try:
        data = "".join(f"127.0.0.1:{port}\n" for port in ports).encode()
        assert len(data) < 16384  # fits in the pipe's buffer
        os.write(keep, data)
        proc = check_fifo(fifo, 2)
        deadline = time.monotonic() + 10
        # A FIFO is read by one process (no workers): wait until it has the pipe open.
        while fifo_openers(fifo, proc.pid) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "probe never opened it"
            time.sleep(0.01)
    finally:
        os.close(keep)  # the last writer: readers see the end of the file
    try:
        code, out, err = finish(proc, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    each_port_once(code, out, err, ports)
