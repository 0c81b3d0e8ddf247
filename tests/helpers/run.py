"""The console script in a subprocess: `probe` beside this interpreter, its environment,
reading stdin, writing into `head`."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path


def probe_cmd() -> list[str]:
    """The installed console script beside this interpreter (what the README installs)."""
    exe = Path(sys.executable).with_name("probe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "probe"]


def run_probe(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """`probe ARGS` to its end, output captured, `input` (or nothing) on its stdin; `env` is
    added to a shard-free environment."""
    return subprocess.run(
        [*probe_cmd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env=_environ(env),
    )


def _environ(env: Mapping[str, str] | None) -> dict[str, str]:
    """This environment without any PROBE_SHARD* (a test's daemon owns every target unless
    the test says otherwise), plus `env`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_SHARD")}
    return kept | dict(env or {})


def pipe_into_head(
    cmd: list[str], tmp_path: Path, prefix: list[str] | None = None
) -> tuple[str, int, str]:
    """`cmd 2>err | head -1` in a real shell: (head's output, cmd's exit status, cmd's stderr)."""
    err = tmp_path / "stderr"
    line = " ".join(map(shlex.quote, cmd))
    script = f'{line} 2>{shlex.quote(str(err))} | head -1; echo "rc=${{PIPESTATUS[0]}}" >&2'
    result = subprocess.run(
        [*(prefix or []), "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    m = re.search(r"rc=(\d+)", result.stderr)
    assert m, result.stderr
    return result.stdout, int(m[1]), err.read_text()


def check_reading_stdin(first: str, *flags: str) -> subprocess.Popen[str]:
    """`probe check - --json FLAGS` with a pipe for stdin that has had one line, `first`, so
    far: the rest is the test's to write (or to leave unwritten)."""
    proc = subprocess.Popen(
        [*probe_cmd(), "check", "-", "--json", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(f"{first}\n")
    proc.stdin.flush()
    return proc
