"""Records on their way out: the JSON form byte for byte, the same bytes through structlog,
the human line from the Record itself, and events beside them."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime
from typing import Any

import structlog
from helpers import CONTRACT_KEYS
from hypothesis import given
from hypothesis import strategies as st

from probe.output.human import probe_line
from probe.output.jsonl import record_json
from probe.output.log import configure, event_logger
from probe.output.writer import RecordWriter
from probe.record import Outcome, Record, unresolved_record

# 2026-11-24T10:00:00.123456Z
STARTED = 1795514400.123456


def open_record(**changes: Any) -> Record:
    fields: dict[str, Any] = {
        "started": STARTED,
        "target": "localhost:8080",
        "host": "localhost",
        "port": 8080,
        "address": "127.0.0.1",
        "family": "ipv4",
        "local_address": "127.0.0.1",
        "local_port": 43282,
        "outcome": Outcome.OPEN,
        "error": None,
        "latency_ms": 1005.1234567,
        "rtt_ms": None,
        "syn_retransmits": 1,
        "dns_ms": 0.25049,
        "attempt": 3,
    }
    fields.update(changes)
    return Record(**fields)


# The reference encoding, written out by hand from ../shared/CONTRACT.md: key order,
# 3-decimal rounding of the times, timestamps with six fractional digits, extras last.
REFERENCE = (
    b'{"event":"probe","timestamp":"2026-11-24T10:00:00.123456Z","target":"localhost:8080",'
    b'"host":"localhost","port":8080,"address":"127.0.0.1","family":"ipv4",'
    b'"local_address":"127.0.0.1","local_port":43282,"outcome":"open","error":null,'
    b'"latency_ms":1005.123,"rtt_ms":null,"syn_retransmits":1,"dns_ms":0.25,"attempt":3}'
)


def test_json_record_is_the_reference_encoding() -> None:
    assert record_json(open_record()) == REFERENCE


def test_json_record_rounds_rtt_and_whole_seconds_keep_six_digits() -> None:
    rec = open_record(started=1795514400.0, rtt_ms=0.0205, syn_retransmits=0, dns_ms=0.0)
    out = json.loads(record_json(rec))
    assert out["timestamp"] == "2026-11-24T10:00:00.000000Z"
    assert out["rtt_ms"] == round(0.0205, 3) and out["syn_retransmits"] == 0
    assert out["dns_ms"] == 0


def test_json_unresolved_record_with_the_daemons_keys() -> None:
    rec = unresolved_record("nowhere:80", "nowhere", 80, "EAI_NONAME", 1, dns_ms=12.0)
    rec.started = STARTED
    rec.extra = {"name": "web", "labels": {"team": "net"}}
    assert record_json(rec) == (
        b'{"event":"probe","timestamp":"2026-11-24T10:00:00.123456Z","target":"nowhere:80",'
        b'"host":"nowhere","port":80,"address":null,"family":null,"local_address":null,'
        b'"local_port":null,"outcome":"error","error":"EAI_NONAME","latency_ms":0.0,'
        b'"rtt_ms":null,"syn_retransmits":null,"dns_ms":12.0,"attempt":1,'
        b'"name":"web","labels":{"team":"net"}}'
    )


finite = st.floats(0, 1e7, allow_nan=False, allow_infinity=False)


@given(
    st.text(max_size=20),
    finite,
    st.none() | finite,
    st.none() | st.integers(0, 20),
    finite,
    st.floats(0, 4e9),
)
def test_json_record_matches_its_fields(
    target: str,
    latency: float,
    rtt: float | None,
    retransmits: int | None,
    dns: float,
    started: float,
) -> None:
    rec = open_record(
        target=target,
        latency_ms=latency,
        rtt_ms=rtt,
        syn_retransmits=retransmits,
        dns_ms=dns,
        started=started,
    )
    line = record_json(rec)
    assert b"\n" not in line
    out = json.loads(line)
    assert list(out) == CONTRACT_KEYS
    assert out["target"] == target
    assert out["latency_ms"] == round(latency, 3)
    assert out["rtt_ms"] == (None if rtt is None else round(rtt, 3))
    assert out["syn_retransmits"] == retransmits
    assert out["dns_ms"] == round(dns, 3)
    assert math.isclose(
        _epoch(out["timestamp"]), round(started * 1e6) / 1e6, rel_tol=0, abs_tol=1e-6
    )


def _epoch(stamp: str) -> float:
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return when.timestamp()


def _configured(fmt: str) -> tuple[io.BytesIO, RecordWriter, Any]:
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    write = configure(writer, fmt)
    return buffer, writer, write


def teardown_function() -> None:
    structlog.reset_defaults()


def test_json_through_structlog_is_the_same_bytes() -> None:
    buffer, writer, write = _configured("json")
    write(open_record())
    event_logger().info("state", name="web", to="down")
    writer.flush()
    record_line, event_line, rest = buffer.getvalue().split(b"\n")
    assert record_line == REFERENCE
    assert rest == b""
    event = json.loads(event_line)
    assert list(event)[:2] == ["event", "timestamp"]
    assert event["event"] == "state" and event["name"] == "web" and event["to"] == "down"


def test_human_line_renders_the_record_itself() -> None:
    buffer, writer, write = _configured("human")
    rec = open_record()
    rec.extra = {"name": "web"}
    write(rec)
    write(open_record(outcome=Outcome.REFUSED, error="ECONNREFUSED", syn_retransmits=0))
    writer.flush()
    first, second, _ = buffer.getvalue().decode().split("\n")
    assert first == probe_line(rec)
    assert first.startswith("web  localhost:8080  open     [127.0.0.1]")
    assert "local 127.0.0.1:43282  1005.12 ms  SYN\u00d72" in first
    assert "rtt" not in first  # no sample: nothing shown rather than a made-up one
    assert "SYN" not in second and "ECONNREFUSED" not in second


def test_console_line_has_the_records_timestamp() -> None:
    buffer, writer, write = _configured("console")
    write(open_record())
    writer.flush()
    line = buffer.getvalue().decode()
    assert line.startswith("2026-11-24T10:00:00.123456Z  localhost:8080  open")
