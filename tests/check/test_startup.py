"""Start-up stays lean (≤ 60 ms): a one-shot check of literal endpoints, served by the native
core, must not import the Python engine's event loop (asyncio, uvloop), structlog,
msgspec, `dataclasses` (with inspect, ast and dis: its data classes are `probe.plain`'s) or
`socket` (its enums cost ~4 ms: the core makes the socket calls; the C module's constants
and services look-up serve the rest).
Read from the interpreter's own import log (`PYTHONPROFILEIMPORTTIME`, the same as
`-X importtime`) of the installed console script, so an eager import added anywhere on the
path fails here instead of quietly costing every `probe check` tens of milliseconds."""

from __future__ import annotations

import re
from typing import NoReturn

import pytest
from helpers import RecordingListener, free_port, probe_env

from probe import cli

# (and the man page and completion generators: `probe man` and `probe completion` only)
HEAVY = (
    "asyncio", "uvloop", "structlog", "msgspec", "dataclasses", "socket", "shtab",
    "argparse_manpage",
)  # fmt: skip
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)$")


def _native_available() -> bool:
    from probe.engine import native

    return native.available()


pytestmark = pytest.mark.skipif(
    not _native_available(), reason="the native core is not built in this install"
)


def imported_modules(*args: str) -> tuple[set[str], str]:
    """The modules (dotted names) a `probe` run imported, and its standard output."""
    result = probe_env({"PYTHONPROFILEIMPORTTIME": "1"}, *args)
    names = set()
    for line in result.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            names.add(match.group(2))
    assert "probe" in names, result.stderr[-2000:]  # the log was read at all
    return names, result.stdout


def imported(*args: str) -> tuple[set[str], str]:
    """The top-level packages a `probe` run imported, and its standard output."""
    modules, out = imported_modules(*args)
    return {name.split(".")[0] for name in modules}, out


def test_literal_check_of_an_open_port_imports_no_event_loop(
    listener: RecordingListener,
) -> None:
    names, out = imported("check", f"127.0.0.1:{listener.port}")
    assert re.match(rf"127\.0\.0\.1:{listener.port}\s+open\b", out), out
    assert sorted(names.intersection(HEAVY)) == []


def test_literal_checks_of_closed_ports_import_no_event_loop() -> None:
    port = free_port()
    names, out = imported("check", f"127.0.0.1:{port}", f"127.0.0.2:{port}")
    assert re.search(rf"^127\.0\.0\.1:{port}\s+refused\b", out, re.M), out
    assert re.search(rf"^127\.0\.0\.2:{port}\s+refused\b", out, re.M), out
    assert sorted(names.intersection(HEAVY)) == []


def test_json_of_literal_endpoints_imports_no_event_loop() -> None:
    port = free_port()
    names, out = imported("check", f"127.0.0.1:{port}", "--json")
    assert '"outcome":"refused"' in out, out
    lean = ("asyncio", "uvloop", "structlog", "dataclasses", "socket")
    assert sorted(names.intersection(lean)) == []


def test_check_imports_nothing_of_the_other_commands() -> None:
    """`probe check` loads no module of `probe serve`, the daemon or the mesh: the defaults
    their options show are read when their parsers are built, which check never does."""
    port = free_port()
    modules, out = imported_modules("check", f"127.0.0.1:{port}")
    assert "refused" in out, out
    others = ("probe.serve", "probe.daemon", "probe.mesh")
    assert sorted(m for m in modules if m.startswith(others)) == []


def test_the_python_engine_still_imports_its_loop_when_it_runs() -> None:
    """The other side: a run the core cannot serve (repeats) loads the engine and its loop,
    so the checks above would see an eager import if one came back."""
    port = free_port()
    names, out = imported("check", f"127.0.0.1:{port}", "-c", "2", "-i", "0.01")
    assert out.count("  refused  ") == 2, out
    assert {"asyncio", "socket"} <= names


def test_check_builds_only_its_own_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """`probe check` never builds the parsers of `run`, `validate` and `deploy`."""

    def everything() -> NoReturn:
        raise AssertionError("probe check built the whole command line")

    monkeypatch.setattr(cli, "build_parser", everything)
    with pytest.raises(SystemExit) as done:
        cli.main(["check", "--version"])
    assert done.value.code == 0


def test_check_parser_is_the_sub_parser() -> None:
    """Standing alone or under `probe`, `probe check` has the same options and help."""
    alone = cli.check_parser()
    under = cli._subparser(cli.build_parser(), "check")
    assert alone.format_help() == under.format_help()
    assert alone.parse_intermixed_args(["h:1", "-t", "2", "h:2", "-4"]) == (
        under.parse_intermixed_args(["h:1", "-t", "2", "h:2", "-4"])
    )
