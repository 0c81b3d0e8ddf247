"""Standard output that cannot be written: exit 2 with one line, whatever stopped the
workers, and a regular file cut back to whole lines (as `-o FILE` is)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import probe_cmd

CORES = [{}, {"PROBE_CORE": "python"}]


def _shell(
    command: list[str], redirect: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    script = " ".join(map(shlex.quote, command)) + f" >{shlex.quote(redirect)}"
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=os.environ | env,
    )


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("env", CORES, ids=["default", "python"])
def test_a_sweep_into_dev_full_exits_2_not_as_killed(workers: str, env: dict[str, str]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    cmd = [*probe_cmd(), "check", "127.0.0.1", "-p", "1-5000", "--json", "--workers", workers]
    result = _shell(cmd, "/dev/full", env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    (line,) = result.stderr.splitlines()
    assert "standard output" in line and "No space left" in line, line


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("env", CORES, ids=["default", "python"])
def test_stdout_on_a_full_disk_keeps_whole_lines(
    small_disk: Path, workers: str, env: dict[str, str]
) -> None:
    out = small_disk / "records.jsonl"
    cmd = [*probe_cmd(), "check", "127.0.0.1", "-p", "1-5000", "--json", "--workers", workers]
    result = _shell(cmd, str(out), env)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "No space left" in result.stderr
    data = out.read_bytes()
    assert len(data) > 30_000 and data.endswith(b"\n"), data[-200:]
    for line in data.splitlines():
        assert json.loads(line)["event"] == "probe"
