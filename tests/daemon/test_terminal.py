"""`probe run` at a terminal: with `[log] format` unset it writes the console form (in colour
unless NO_COLOR), and JSON to pipes and files. The terminal is a real pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import RecordingListener, closed_port, probe_cmd

ESC = "\x1b["


@pytest.fixture
def config(tmp_path: Path, listener: RecordingListener) -> Iterator[Path]:
    path = tmp_path / "config.toml"
    path.write_text(
        "[defaults]\ninterval = 0.2\ntimeout = 0.3\n"
        '[metrics]\nlisten = ""\n'
        f'[[targets]]\nname = "web"\naddress = "{listener.target}"\n'
        f'[[targets]]\nname = "shut"\naddress = "127.0.0.1:{closed_port()}"\n'
    )
    yield path


def run_on_pty(config: Path, env: dict[str, str], until: int = 6) -> list[str]:
    """Run the daemon with its standard output on a new pty until `until` probe lines (or
    15 s on a slow machine) have come, stop it with SIGTERM; the lines it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*probe_cmd(), "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    # poll, not select: in a long test run descriptor numbers pass select()'s 1024 limit
    poller = select.poll()
    poller.register(master, select.POLLIN)
    data = b""
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and data.count(b"127.0.0.1:") < until:
            if poller.poll(100):
                try:
                    data += os.read(master, 65536)
                except OSError:  # EIO: the daemon has gone and closed its end
                    break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else b""
        while poller.poll(200):
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        os.close(master)
    return [line for line in data.decode().split("\r\n") if line]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    return {**env, **extra}


def test_a_terminal_gets_console_lines_in_colour(config: Path) -> None:
    lines = run_on_pty(config, clean_env(TERM="xterm-256color"))
    assert lines, "nothing written to the terminal"
    assert not any(line.startswith("{") for line in lines), lines
    probes = [line for line in lines if "127.0.0.1:" in line and "local " in line]
    assert any(f"{ESC}32mopen" in line and line.split()[1] == "web" for line in probes), lines
    assert any(f"{ESC}31mrefused" in line and "shut" in line for line in probes), lines
    assert any("state" in line and f"to={ESC}31mdown" in line for line in lines), lines
    assert any(line.split()[1] == "stopped" for line in lines), lines


def test_no_color_keeps_the_console_form_plain(config: Path) -> None:
    lines = run_on_pty(config, clean_env(TERM="xterm-256color", NO_COLOR="1"))
    assert any("web" in line and " open " in line for line in lines), lines
    assert not any(ESC in line for line in lines), lines


def test_format_set_to_json_wins_at_a_terminal(config: Path) -> None:
    config.write_text('[log]\nformat = "json"\n' + config.read_text())
    lines = run_on_pty(config, clean_env(TERM="xterm-256color"))
    events = [json.loads(line) for line in lines]
    assert {"started", "probe"} <= {e["event"] for e in events}


def test_a_pipe_gets_json(config: Path) -> None:
    proc = subprocess.Popen(
        [*probe_cmd(), "run", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(TERM="xterm-256color"),
    )
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:  # until web's first record: every line before it is JSON too
        events.append(json.loads(line))
        if events[-1]["event"] == "probe" and events[-1]["name"] == "web":
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    events += [json.loads(line) for line in rest.splitlines()]
    assert events[0]["event"] == "started" and events[-1]["event"] == "stopped"
    assert any(e["event"] == "probe" and e["name"] == "web" for e in events)
