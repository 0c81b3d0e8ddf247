"""`probe serve` and `probe check --reflect` on loopback: the answer, the accept record,
what a record gains (and what a plain one does not), and what a non-responder gives."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    CONTRACT_KEYS,
    KEYS,
    RecordingListener,
    Responder,
    check_record,
    has_ipv6_loopback,
    no_traceback,
    parse_records,
    probe_cmd,
    run_probe,
)

REFLECTED = KEYS | {"seen_as", "translated", "seen_by"}


@pytest.fixture
def responder(tmp_path: Path) -> Iterator[Responder]:
    r = Responder(tmp_path, "127.0.0.1:0", "--name", "node-a")
    yield r
    r.close()


def ask(endpoint: tuple[str, int]) -> tuple[bytes, tuple[str, int]]:
    """Connect, read the whole answer; (answer, our local endpoint)."""
    with socket.create_connection(endpoint, timeout=5) as s:
        local = s.getsockname()[:2]
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data, local


def test_answer_is_one_json_line_with_the_peer_and_the_name(responder: Responder) -> None:
    data, local = ask(("127.0.0.1", responder.port))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    answer = json.loads(data)
    assert answer["seen"] == f"{local[0]}:{local[1]}"
    assert answer["by"] == "node-a"
    assert answer["at"].endswith("Z")


def test_every_accept_is_one_record_with_peer_and_local(responder: Responder) -> None:
    locals_ = [ask(("127.0.0.1", responder.port))[1] for _ in range(5)]
    from helpers import wait_for

    accepts = wait_for("5 accept records", lambda: len(responder.events("accept")) == 5 and
                       responder.events("accept"))  # fmt: skip
    assert [a["peer"] for a in accepts] == [f"{h}:{p}" for h, p in locals_]
    for a in accepts:
        assert a["local"] == f"127.0.0.1:{responder.port}"
        assert list(a)[:2] == ["event", "timestamp"]


def test_reflect_in_csv_writes_translated_as_json_does(responder: Responder) -> None:
    done = run_probe("check", f"127.0.0.1:{responder.port}", "--reflect", "--format", "csv")
    assert done.returncode == 0, done.stderr
    header, row = (line.split(",") for line in done.stdout.splitlines())
    cells = dict(zip(header, row, strict=True))
    assert cells["seen_as"] == f"127.0.0.1:{cells['local_port']}"
    assert (cells["translated"], cells["seen_by"]) == ("false", "node-a")


def test_reflect_adds_seen_as_and_translated_only_when_asked(responder: Responder) -> None:
    target = f"127.0.0.1:{responder.port}"
    reflected = run_probe("check", target, "--reflect", "--json", "-c", "3", "-i", "0")
    assert reflected.returncode == 0, reflected.stderr
    records = parse_records(reflected.stdout, REFLECTED)
    assert len(records) == 3
    for rec in records:
        check_record(rec)
        assert rec["outcome"] == "open" and rec["error"] is None
        assert rec["seen_as"] == f"{rec['local_address']}:{rec['local_port']}"
        assert rec["translated"] is False
        assert rec["seen_by"] == "node-a"
    plain = run_probe("check", target, "--json")
    [rec] = parse_records(plain.stdout)
    assert list(rec) == CONTRACT_KEYS  # nothing added when reflect did not run


def test_reflect_on_the_native_core_is_never_silently_ignored(responder: Responder) -> None:
    """One literal, count 1, JSON: what the native core takes, but for --reflect."""
    result = run_probe("check", f"127.0.0.1:{responder.port}", "--reflect", "--json")
    [rec] = parse_records(result.stdout, REFLECTED)
    assert rec["seen_by"] == "node-a"


def test_reflect_human_line_says_what_the_far_side_saw(responder: Responder) -> None:
    result = run_probe("check", f"127.0.0.1:{responder.port}", "--reflect")
    assert "seen as 127.0.0.1:" in result.stdout, result.stdout


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_reflect_over_ipv6(tmp_path: Path) -> None:
    r = Responder(tmp_path, "[::1]:0", "--name", "six")
    try:
        result = run_probe("check", r.endpoints[0], "--reflect", "--json")
        [rec] = parse_records(result.stdout, REFLECTED)
        assert rec["seen_as"] == f"[::1]:{rec['local_port']}"
        assert rec["translated"] is False
    finally:
        r.close()


def test_a_silent_listener_is_not_a_responder(listener: RecordingListener) -> None:
    result = run_probe("check", listener.target, "--reflect", "--json", "-t", "0.3")
    [rec] = parse_records(result.stdout, REFLECTED)
    assert rec["outcome"] == "error"
    assert rec["error"] == "NOT_A_RESPONDER"
    assert rec["local_port"] is not None and rec["rtt_ms"] is not None  # the connect's keys
    assert rec["seen_as"] is None and rec["translated"] is None
    assert result.returncode == 1


class Talker:
    """A listener that greets every client with `greeting` and closes."""

    def __init__(self, greeting: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.greeting = greeting
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # a client may leave before the greeting
                conn.sendall(self.greeting)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "greeting",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b'{"seen":"not an endpoint","by":"x"}\n',
        b'{"seen":"127.0.0.1:1","by":"' + b"x" * 2000 + b'"}\n',
        b"\xff\xfe\x00garbage",
        b"",
    ],
    ids=["ssh-banner", "bad-seen", "too-long", "binary", "closes-at-once"],
)
def test_other_protocols_are_not_responders(greeting: bytes) -> None:
    talker = Talker(greeting)
    try:
        result = run_probe("check", talker.target, "--reflect", "--json", "-t", "2")
        no_traceback(result.stderr)
        [rec] = parse_records(result.stdout, REFLECTED)
        assert rec["outcome"] == "error"
        assert rec["error"] == "NOT_A_RESPONDER"
    finally:
        talker.close()


@pytest.mark.parametrize(
    "args, word",
    [
        (["1.2.3"], "missing port"),
        (["localhost:80"], "IP address"),
        (["127.0.0.1:99999"], "99999"),
        (["--rate", "-1", "127.0.0.1:0"], "--rate"),
        (["--name", "", "127.0.0.1:0"], "--name"),
        (["--max-connections", "0", "127.0.0.1:0"], "--max-connections"),
    ],
)
def test_bad_input_is_exit_2_and_one_line(args: list[str], word: str) -> None:
    result = subprocess.run(
        [*probe_cmd(), "serve", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and word in result.stderr, result.stderr
    no_traceback(result.stderr)


def test_a_port_in_use_is_exit_2_and_one_line(responder: Responder) -> None:
    result = subprocess.run(
        [*probe_cmd(), "serve", f"127.0.0.1:{responder.port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot listen" in result.stderr
