"""An interrupted sweep says so, with how many of how many endpoints were probed, and each
host's non-open ports stay ranges although every worker stopped at another port."""

from __future__ import annotations

import re
import signal
import subprocess

from helpers import Netns, NsServer, probe_cmd, until_signal


def test_an_interrupted_sweep_says_so_and_keeps_ranges(netns: Netns) -> None:
    server = NsServer(netns, 5)  # an open line early: the signal comes once the sweep runs
    try:
        args = ["127.0.0.1", "-p", "1-65535", "--rate", "4000", "--workers", "2"]
        code, lines, stderr = until_signal(args, signal.SIGINT, 1, netns.prefix(), wait=30)
    finally:
        server.close()
    assert code == 130, (code, stderr)
    (done,) = [line for line in lines if line.startswith("interrupted:")]
    match = re.fullmatch(r"interrupted: (\d+) of 65535 endpoints probed", done)
    assert match, lines
    assert 0 < int(match[1]) < 65535
    (refused,) = [line for line in lines if line.startswith("127.0.0.1: refused ")]
    ranges = refused.removeprefix("127.0.0.1: refused ").split(" ")[0].split(",")
    assert ranges[:2] == ["1-4", "6"] or ranges[0] == "1-4", refused
    # the ports no worker reached are counted, not passed off as refused
    assert "not probed: interrupted" in refused or len(ranges) == 2, refused
    assert len(ranges) <= 3 and "more ranges" not in refused, refused


def test_a_finished_sweep_does_not_say_interrupted(netns: Netns) -> None:
    cmd = [*netns.prefix(), *probe_cmd(), "check", "127.0.0.1", "-p", "1-3000", "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "interrupted" not in proc.stdout
    assert "127.0.0.1: refused 1-3000\n" in proc.stdout, proc.stdout


def test_an_interrupted_json_sweep_says_so_on_stderr(netns: Netns) -> None:
    server = NsServer(netns, 5)
    try:
        args = ["127.0.0.1", "-p", "1-65535", "--rate", "4000", "--workers", "2", "--json"]
        code, lines, stderr = until_signal(args, signal.SIGINT, 1, netns.prefix(), wait=30)
    finally:
        server.close()
    assert code == 130, (code, stderr)
    assert re.fullmatch(r"probe: interrupted: \d+ of 65535 endpoints probed\n", stderr), stderr
    assert all(line.startswith("{") for line in lines)  # stdout: records only
