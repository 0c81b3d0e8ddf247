"""Which core runs a plan: an allow-list. The native core runs a plan only when it implements
every option used; anything else (an option added later included) goes to the Python
engine, and `-v` says which core ran and why not the native one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import closed_port, probe_cmd

from probe.check.choice import _ANY, _refused, choose
from probe.check.plan import build_plan
from probe.engine import EngineOptions, native
from probe.plain import Frozen

pytestmark = pytest.mark.skipif(not native.available(), reason="the native core is not built")


def test_a_sweep_runs_on_the_native_core_whatever_its_options() -> None:
    for targets, kwargs in [
        (["127.0.0.1"], {"ports": "1-100"}),
        (["127.0.0.1-3:22", "[::1]:80"], {"fmt": "json", "retries": 2, "lag_limit_ms": 5.0}),
        (["127.0.0.0/24"], {"ports": "22", "source": "127.0.0.1", "graceful_close": True}),
        (["127.0.0.1:1-100"], {"concurrency": 7, "timeout": 0.5, "workers": 2}),
        (["127.0.0.1:1-100"], {"open_only": True}),
        (["127.0.0.1:1-100"], {"open_only": True, "fmt": "json", "json_file": "/dev/null"}),
        (["127.0.0.0/8"], {"ports": "22", "rate": 5000.0, "exclude": ["127.0.5.0/24"]}),
        (["127.0.0.0/16"], {"ports": "22", "shard": "0/2"}),
        (["-"], {"ports": "22"}),
        (["localhost:80", "[fe80::1%lo]:80", "::1"], {"ports": "22"}),
        (["127.0.0.1:1-100"], {"fmt": "csv", "json_file": "/dev/null", "open_only": True}),
    ]:
        choice = choose(build_plan(targets, **kwargs))
        assert (choice.core, choice.reasons) == ("native", ()), (targets, kwargs)
        assert choice.line() == "core: native"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"count": 3}, "-c 3"),
        ({"count": 0}, "-c 0"),
        ({"source": "127.0.0.1:40000-40010"}, "-s ADDR:LO-HI"),
    ],
)
def test_an_option_the_core_does_not_implement_goes_to_python(
    kwargs: dict[str, Any], reason: str
) -> None:
    choice = choose(build_plan(["127.0.0.1:1-100"], **kwargs))
    assert choice.core == "python"
    assert reason in choice.reasons
    assert choice.line().startswith("core: python (not native: ")


class Newer(Frozen):
    """Engine options with a field added after the native core was written."""

    __slots__ = (*EngineOptions.__slots__, "tls")

    def __init__(
        self,
        timeout: float = 1.0,
        concurrency: int = 1000,
        rate: float | None = None,
        retries: int = 0,
        source: tuple[str, int] | None = None,
        source_ports: tuple[int, int] | None = None,
        graceful_close: bool = False,
        shortage_giveup: float | None = 30.0,
        lag_limit_ms: float | None = 2.0,
        rate_epoch: float | None = None,
        tls: bool = False,
    ) -> None:
        self._set(locals())


def test_a_field_the_core_does_not_declare_is_refused_once_used() -> None:
    allowed = {name: _ANY for name in native.IMPLEMENTS}
    assert set(EngineOptions.__slots__) < set(Newer.__slots__)
    assert list(_refused(Newer(), Newer, allowed)) == []
    assert list(_refused(Newer(tls=True), Newer, allowed)) == ["--tls"]
    assert list(_refused(Newer(retries=2, tls=True), Newer, allowed)) == ["--tls"]
    assert list(_refused(Newer(source_ports=(1, 2)), Newer, allowed)) == ["-s ADDR:LO-HI"]


def _check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*probe_cmd(), "check", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_verbose_says_which_core_ran_and_why(tmp_path: Path) -> None:
    port = closed_port()
    out = _check(f"127.0.0.1:{port}", "-v", "--json")
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == "probe: core: native"
    assert '"outcome":"refused"' in out.stdout
    out = _check(f"127.0.0.1:{port}", "--verbose", "-c", "2", "-i", "0.01", "--json")
    assert out.stderr.splitlines()[0] == "probe: core: python (not native: -c 2)"
    assert out.stdout.count('"outcome":"refused"') == 2
    out = _check(f"127.0.0.1:{port}", "-v", env={"PROBE_CORE": "python"})
    assert out.stderr.splitlines()[0] == "probe: core: python (not native: PROBE_CORE=python)"
    out = _check(f"127.0.0.1:{port}")
    assert "core:" not in out.stderr


@pytest.mark.parametrize(
    "stage", [("--reflect",), ("--tls",), ("--send", "x"), ("--starttls", "smtp")]
)
def test_stages_never_reach_the_native_core(stage: tuple[str, ...]) -> None:
    out = _check(f"127.0.0.1:{closed_port()}", *stage, "-v", "--json")
    assert out.stderr.splitlines()[0].startswith(
        "probe: core: python (not native: a stage after the connect"
    )
