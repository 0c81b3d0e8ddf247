"""Records: the contract's keys, parsed and checked; records made by hand for unit tests;
the local endpoint every record carries."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from probe.record import Outcome, Record

from .base import Rec

# The record's keys, in the order of ../shared/CONTRACT.md (`name` is the daemon's only).
# Written out here, not taken from probe/, so the tests check the code against the contract.
CONTRACT_KEYS = [
    "event",
    "timestamp",
    "target",
    "host",
    "port",
    "address",
    "family",
    "local_address",
    "local_port",
    "outcome",
    "error",
    "latency_ms",
    "rtt_ms",
    "syn_retransmits",
    "dns_ms",
    "attempt",
]


KEYS = set(CONTRACT_KEYS)
OUTCOMES = ("open", "refused", "timeout", "unreachable", "error")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def parse_records(
    data: str | bytes, keys: set[str] | None = None, check: bool = False
) -> list[Rec]:
    """Every line a whole JSON probe record with exactly `keys` (the contract's by default),
    the last one ended by a newline, or the test fails. `check`: each record's types and
    invariants too (`check_record`)."""
    text = data.decode() if isinstance(data, bytes) else data
    assert text == "" or text.endswith("\n"), f"last line is cut: {text[-200:]!r}"
    want = KEYS if keys is None else keys
    out = []
    for line in text.split("\n")[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line[:200]!r}") from None
        assert isinstance(rec, dict), line
        assert set(rec) == want, line
        assert rec["event"] == "probe", line
        if check:
            check_record(rec)
        out.append(rec)
    return out


def check_record(rec: Rec) -> None:
    """The contract's types and the invariants between a record's keys."""
    assert TIMESTAMP.fullmatch(rec["timestamp"]), rec["timestamp"]
    assert isinstance(rec["port"], int) and 1 <= rec["port"] <= 65535
    assert rec["outcome"] in OUTCOMES
    assert rec["family"] in ("ipv4", "ipv6", None)
    assert isinstance(rec["latency_ms"], int | float) and rec["latency_ms"] >= 0
    assert isinstance(rec["attempt"], int) and rec["attempt"] >= 1
    assert isinstance(rec["dns_ms"], int | float) and rec["dns_ms"] >= 0
    if rec["outcome"] == "open":
        assert rec["error"] is None
    else:
        assert isinstance(rec["error"], str) and rec["error"]
        assert rec["rtt_ms"] is None
    retransmits = rec["syn_retransmits"]
    assert retransmits is None or (isinstance(retransmits, int) and retransmits >= 0)
    if retransmits:  # Karn's rule: no RTT sample from a resent SYN
        assert rec["rtt_ms"] is None
    if rec["local_port"] is None:  # never reached connect(): nothing to count
        assert retransmits is None
    if rec["outcome"] in ("open", "refused", "timeout", "unreachable"):
        assert isinstance(rec["local_port"], int) and 1 <= rec["local_port"] <= 65535
        assert isinstance(rec["local_address"], str)
        assert isinstance(rec["address"], str)


def make_record(**changes: Any) -> Record:
    """A record as the engine builds one (an open loopback attempt with its RTT sample), for
    the in-process tests of what consumes records; `changes` sets any field."""
    fields: dict[str, Any] = {
        "started": time.time(),
        "target": "127.0.0.1:9",
        "host": "127.0.0.1",
        "port": 9,
        "address": "127.0.0.1",
        "family": "ipv4",
        "local_address": "127.0.0.1",
        "local_port": 40000,
        "outcome": Outcome.OPEN,
        "error": None,
        "latency_ms": 1.0,
        "rtt_ms": 0.5,
        "syn_retransmits": 0,
        "dns_ms": 0.0,
        "attempt": 1,
    }
    return Record(**(fields | changes))


def read_lines(path: Path) -> list[Rec]:
    """Every complete line of a JSON-lines file, parsed; a line that is not JSON fails."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[Rec] = []
    for raw in data.split(b"\n")[:-1]:  # the last piece is empty or a line being written
        try:
            line = json.loads(raw)
        except ValueError:
            raise AssertionError(f"{path}: not a JSON line: {raw[:200]!r}") from None
        assert isinstance(line, dict), raw
        out.append(line)
    return out


def ts(line: Rec) -> float:
    """A record's or event's timestamp as epoch seconds."""
    when = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return when.replace(tzinfo=UTC).timestamp()


def assert_local_endpoint(rec: Rec, range_: tuple[int, int] | None = None) -> None:
    assert isinstance(rec["local_address"], str) and rec["local_address"], rec
    assert isinstance(rec["local_port"], int), rec
    lo, hi = range_ or (1, 65535)
    assert lo <= rec["local_port"] <= hi, rec


def record(
    outcome: str,
    error: str | None,
    latency_ms: float,
    rtt_ms: float | None,
    syn_retransmits: int | None = 0,
) -> Record:
    return make_record(
        target="127.0.0.1:1", port=1, outcome=outcome, error=error, latency_ms=latency_ms,
        rtt_ms=rtt_ms, syn_retransmits=syn_retransmits,
    )  # fmt: skip
