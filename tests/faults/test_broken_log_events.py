"""The daemon's own events meet a broken log as its records do: `late` (after a stall of
its loop), `clock` (after a wall-clock step) and `resolve` (a re-resolution that fails), each
written when its reader has left 16 MiB unread, stop the daemon with one line on stderr
naming the log and exit 1: never a traceback from the timer or lookup that wrote it, and
never a daemon that goes on without its schedule or its flush tick.

Each test runs the real daemon in a process of its own (DRIVER, below) logging into a real
pipe whose reader never reads. The driver brings that backlog to the 16 MiB limit (lines of
its own, as many as its records would be) after the daemon's first records, with
`attempts = "changes"` so that no further record is written: the next line the daemon
writes is the event under test, and it is the write that finds the log broken. The events
come for real: a loop blocked for 0.6 s, a stepped `time.time` (what a stepped system clock
looks like to Python code, as in test_hostile.py), a DNS server of ours on a namespace's
loopback that dies.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import DnsNetns, closed_port

# argv: config path, trigger ("late", "clock" or "resolve").
DRIVER = r"""
import os, sys, time
real_time = time.time
shift = [0.0]
time.time = lambda: real_time() + shift[0]  # the wall clock, stepped below for "clock"

import asyncio
from probe import loop
from probe.daemon import app
from probe.daemon.config import load_config
from probe.output.writer import BACKLOG_MAX, RecordWriter, open_stream

path, trigger = sys.argv[1:]
app.RESOLVE_TTL = app.RESOLVE_DEADLINE = 1.0  # "resolve": a re-resolution every second

async def main():
    unread, w = os.pipe()  # its reader never reads
    writer = RecordWriter(open_stream(w))
    daemon = app.Daemon(path, load_config(path), writer)
    serving = asyncio.create_task(daemon.serve())
    # The second attempt has started: the first one's record and state event are written.
    while daemon.runner.attempts.get("a", 0) < 2:
        await asyncio.sleep(0.01)
    stream = writer._stream  # a PipeStream; the kernel's pipe fills first, then its backlog
    while len(stream._buf) < BACKLOG_MAX - 4001:
        writer.msg(b"x" * 4000)
    writer.msg(b"x" * (BACKLOG_MAX - len(stream._buf) - 1))  # exactly the limit: no error yet
    assert len(stream._buf) == BACKLOG_MAX and daemon.fatal is None
    if trigger == "late":
        time.sleep(0.6)  # the loop stalls: the slots due meanwhile start late
    elif trigger == "clock":
        shift[0] = 3600.0  # the next flush tick sees the step
    print("full", flush=True)  # "resolve": the test now stops the DNS server
    return await asyncio.wait_for(serving, 20.0)

sys.exit(loop.run(main()))
"""


def config(tmp_path: Path, address: str) -> Path:
    path = tmp_path / "probe.toml"
    path.write_text(
        "[defaults]\ninterval = 0.2\ntimeout = 0.3\n\n"
        '[log]\nformat = "json"\nattempts = "changes"\n\n'
        '[store]\npath = ""\n\n'
        f'[[targets]]\nname = "a"\naddress = "{address}"\n'
    )
    return path


def drive(cmd: list[str], on_full: DnsNetns | None = None) -> tuple[int, str]:
    """The driver's exit status and stderr; with `on_full`, its DNS server is stopped once
    the log's backlog is at the limit."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if line.strip() == "full" and on_full is not None:
            on_full.server.kill()
            on_full.server.wait(5)
        rc = proc.wait(timeout=40)
        return rc, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def assert_stopped_on_the_log(rc: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert rc == 1, (rc, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("probe: error: cannot write records to standard output: its reader")
    assert "stopped reading" in lines[0], lines[0]


@pytest.mark.serial
@pytest.mark.parametrize("trigger", ["late", "clock"])
def test_an_event_that_finds_the_log_broken_stops_the_daemon(trigger: str, tmp_path: Path) -> None:
    path = config(tmp_path, f"127.0.0.1:{closed_port()}")
    rc, stderr = drive([sys.executable, "-c", DRIVER, str(path), trigger])
    assert_stopped_on_the_log(rc, stderr)


@pytest.mark.serial
def test_a_resolve_event_that_finds_the_log_broken_stops_the_daemon(
    dns: DnsNetns, tmp_path: Path
) -> None:
    """The name resolves (through our DNS server) for the first records, then the server
    dies: the failed re-resolution's `resolve` event is the write that meets the backlog."""
    path = config(tmp_path, "good.test:9")
    rc, stderr = drive([*dns.ns.prefix(), sys.executable, "-c", DRIVER, str(path), "resolve"], dns)
    assert_stopped_on_the_log(rc, stderr)
