"""The conventions a command line is expected to keep: `-` for standard output, `--`,
usage from `probe` alone, the nearest command for a typo, English counts, no option
silently ignored, a sensible cap on --workers, a warning for an empty config."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    Daemon,
    closed_port,
    config_toml,
    one_line_error,
    probe,
    probe_cmd,
    records,
    run_probe,
    target_toml,
)


def test_o_dash_is_standard_output(tmp_path: Path) -> None:
    target = f"127.0.0.1:{closed_port()}"
    result = probe("check", target, "-o", "-", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (rec,) = records(result.stdout)
    assert rec["target"] == target
    assert not (tmp_path / "-").exists()
    line = one_line_error(probe("check", target, "-o", "-", "--format", "csv"))
    assert "-o - and --format csv disagree" in line


def test_double_dash_ends_the_options() -> None:
    target = f"127.0.0.1:{closed_port()}"
    result = probe("check", "-t", "0.5", "--json", "--", target)
    assert result.returncode == 1 and len(records(result.stdout)) == 1, result.stderr
    line = one_line_error(probe("check", "--", "-z"))
    assert "'-z'" in line and "nc's" not in line, line  # a target now, not nc's flag


def test_probe_alone_prints_usage_with_its_commands() -> None:
    result = run_probe()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: probe")
    for command in ("check", "run", "validate"):
        assert f"    {command} " in result.stderr, result.stderr


@pytest.mark.parametrize(("typed", "meant"), [("chekc", "check"), ("valdiate", "validate")])
def test_a_mistyped_command_gets_the_nearest(typed: str, meant: str) -> None:
    line = one_line_error(run_probe(typed))
    assert f"unknown command '{typed}': did you mean '{meant}'?" in line, line


def test_validate_help_says_what_it_does_and_its_default() -> None:
    result = run_probe("validate", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "without probing anything" in text and "(default config.toml)" in text, text


def test_counts_read_as_english(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_toml(None, target_toml("a", "127.0.0.1:1")))
    result = run_probe("validate", str(config))
    assert result.stdout == f"{config}: valid, 1 target\n", result


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--histogram"], "--histogram needs -c N or -c 0"),
        (["-i", "0.5"], "-i 0.5 needs -c N or -c 0"),
    ],
)
def test_options_that_would_be_ignored_are_refused(args: list[str], says: str) -> None:
    assert says in one_line_error(probe("check", f"127.0.0.1:{closed_port()}", *args))


def test_workers_are_capped(tmp_path: Path) -> None:
    """1,000 workers for 100 endpoints took 18-21 s of forking; capped at 2 per CPU."""
    began = time.monotonic()
    result = probe("check", "127.0.0.1", "-p", "1-100", "--workers", "1000", "--json")
    took = time.monotonic() - began
    assert result.returncode in (0, 1), result.stderr
    assert len(records(result.stdout)) == 100
    assert took < 8.0, took


def test_an_empty_config_is_warned_about(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "probe.log"
    config = tmp_path / "config.toml"
    config.write_text(config_toml(log, ""))
    result = run_probe("validate", str(config))
    assert result.returncode == 0 and result.stdout.endswith("valid, 0 targets\n")
    assert "warning:" in result.stderr and "no targets" in result.stderr, result.stderr
    d = Daemon.start(tmp_path, None, log)
    daemons.append(d)
    d.wait_event("started")
    assert "no targets" in d.stderr, d.stderr
    assert d.stop() == 0


def test_an_ordinary_run_stays_quiet(tmp_path: Path) -> None:
    """The control for the above: a config with targets gets no warning."""
    config = tmp_path / "c.toml"
    config.write_text(config_toml(None, target_toml("a", "127.0.0.1:1")))
    result = subprocess.run(
        [*probe_cmd(), "validate", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.stderr == ""
