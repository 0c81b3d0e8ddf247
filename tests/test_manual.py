"""probe(1) and the shell completions come from the installed package, generated from the
parser: `man -l` renders the page with every option `--help` has, and bash's completion
function completes commands and options."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import probe_cmd, run_probe

from probe.cli import _subparsers, build_parser


def _man(page: Path) -> str:
    if shutil.which("man") is None:
        pytest.skip("no man (man-db) on this machine")
    env = os.environ | {"MANWIDTH": "100", "MANPAGER": "cat", "PAGER": "cat", "LC_ALL": "C"}
    result = subprocess.run(
        ["man", "-l", str(page)], capture_output=True, text=True, timeout=30, env=env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_man_renders_every_command_and_option(tmp_path: Path) -> None:
    source = run_probe("man")
    assert source.returncode == 0 and source.stderr == "", source.stderr
    page = tmp_path / "probe.1"
    page.write_text(source.stdout)
    text = _man(page)
    assert text.startswith("PROBE(1)") and "\nNAME\n" in text and "\nSYNOPSIS\n" in text
    words = set(text.replace(",", " ").split())
    commands = _subparsers(build_parser()).choices
    for name, parser in commands.items():
        assert f"'probe {name}'" in text or f"probe {name}" in text, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue  # -h is every command's; the page leaves it out
            for flag in action.option_strings:
                assert flag in words, (name, flag)
    assert "exit status:" in text and "130" in text  # probe check's epilog


def _complete(line: str, words: list[str], script: str) -> list[str]:
    """What bash's completion function offers for the last word of `line`."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\n"
        f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; "
        f"_shtab_probe probe '{words[-1]}' '{words[-2]}'; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_commands_and_options() -> None:
    made = subprocess.run(
        [*probe_cmd(), "completion", "bash"], capture_output=True, text=True, timeout=30
    )
    assert made.returncode == 0, made.stderr
    script = made.stdout
    assert _complete("probe ch", ["probe", "ch"], script) == ["check"]
    assert _complete("probe check --for", ["probe", "check", "--for"], script) == ["--format"]
    assert _complete("probe check --format ", ["probe", "check", "--format", ""], script) == [
        "human",
        "json",
        "csv",
    ]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_command(shell: str) -> None:
    made = run_probe("completion", shell)
    assert made.returncode == 0, made.stderr
    for name in _subparsers(build_parser()).choices:
        assert name in made.stdout, name
    assert "--format" in made.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = run_probe("completion", "tcsh")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
