"""GET /probe, blackbox-exporter style: the timeout, the answer and its trace.

http.py parses the request (ProbeRequest); what the daemon does then (resolve, check
probe_allow, connect) stays in app.py. This module decides the attempt's timeout, keeps
the steps taken, and turns the attempt into Prometheus text or, with `debug=true`, into
the steps in plain words.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client.utils import floatToGoString

from ..output.jsonl import record_json
from ..record import OPEN, Record
from ..stages.result import EXPECT_MISMATCH, EXPECT_TIMEOUT, StageResult
from ..syntax import Endpoint
from .metrics import CONTENT_TYPE, error_label
from .series import escape

PROBE_TIMEOUT_MAX = 30.0  # seconds a GET /probe may ask for
# Seconds kept back from Prometheus' scrape timeout for the answer to travel, as
# blackbox_exporter's --timeout-offset (default 0.5).
TIMEOUT_OFFSET = 0.5
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
TEXT = "text/plain; charset=utf-8"


@dataclass
class Query:
    """One GET /probe: what to probe, for how long, and whether to explain."""

    text: str
    endpoint: Endpoint
    timeout: float
    debug: bool
    steps: list[str] = field(default_factory=list)

    def step(self, line: str) -> None:
        self.steps.append(line)


def plan(
    text: str,
    endpoint: Endpoint,
    timeout: float | None,
    scrape_timeout: float | None,
    debug: bool,
    default_timeout: float,
) -> Query:
    """The Query for a parsed request: its timeout is `timeout=` (else the config's
    default) or, when smaller, the scrape timeout less TIMEOUT_OFFSET (half of it when
    that would leave nothing), so the answer arrives inside Prometheus' scrape."""
    seconds, why = default_timeout, f"the config's defaults.timeout {default_timeout:g} s"
    if timeout is not None:
        seconds, why = timeout, f"timeout={timeout:g}"
    if scrape_timeout is not None:
        if scrape_timeout > 2 * TIMEOUT_OFFSET:
            budget = scrape_timeout - TIMEOUT_OFFSET
        else:
            budget = scrape_timeout / 2
        if budget < seconds:
            seconds = budget
            why = f"{SCRAPE_TIMEOUT_HEADER}: {scrape_timeout:g} less the margin"
    return Query(text, endpoint, seconds, debug, [f"timeout: {seconds:g} s ({why})"])


def ip_hash(ip: str) -> float:
    """blackbox_exporter's probe_ip_addr_hash: FNV-1a (32 bit) of the address's bytes, so a
    change of the address a name resolves to shows as a change of this value."""
    h = 0x811C9DC5
    for byte in ipaddress.ip_address(ip).packed:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return float(h)


def exposition(record: Record, duration: float, dns_seconds: float) -> bytes:
    """The answer to GET /probe for one attempt, in Prometheus text: written out directly
    (prometheus-client's, byte for byte), not through a registry of gauges made for each
    request, which cost ~0.25 ms of the loop's time per request."""
    out: list[str] = []

    def gauge(name: str, doc: str, value: float, labels: str = "") -> None:
        shown = floatToGoString(value)  # type: ignore[no-untyped-call]
        out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n{name}{labels} {shown}\n")

    gauge("probe_success", "1 when the connect succeeded (outcome open).",
          1 if record.outcome == OPEN else 0)  # fmt: skip
    gauge("probe_duration_seconds", "How long the probe took, resolution included.", duration)
    gauge("probe_dns_lookup_time_seconds", "Time spent resolving the name.", dns_seconds)
    family = {"ipv4": 4, "ipv6": 6}.get(record.family or "", 0)
    gauge("probe_ip_protocol", "IP version of the address probed (0: none).", family)
    if record.address is not None:
        gauge("probe_ip_addr_hash", "FNV-1a hash of the address probed (as blackbox).",
              ip_hash(record.address))  # fmt: skip
    if record.local_port is not None:
        gauge("probe_local_port", "Local port the kernel assigned.", record.local_port)
    if record.rtt_ms is not None:
        gauge("probe_rtt_seconds", "Kernel handshake RTT (TCP_INFO).", record.rtt_ms / 1000.0)
    retransmits = record.syn_retransmits
    if isinstance(retransmits, int):
        gauge("probe_syn_retransmits", "SYNs sent again (TCP_INFO).", retransmits)
    stages = record.stages
    if stages is not None:
        _stage_gauges(stages, gauge)
    reason = error_label(record.error)
    if reason is not None:
        gauge(
            "probe_failed_due_to",
            "Why the probe failed: the record's error (errno or resolver code name).",
            1,
            f'{{reason="{escape(reason)}"}}',
        )
    return "".join(out).encode()


def _stage_gauges(stages: StageResult, gauge: Callable[..., None]) -> None:
    """blackbox_exporter's tcp prober's gauges for what the stages found."""
    if stages.tls_version is not None:
        if stages.cert_not_after is not None:
            gauge("probe_ssl_earliest_cert_expiry",
                  "Earliest notAfter of the certificates the server sent, Unix seconds.",
                  stages.cert_not_after)  # fmt: skip
        if stages.chain_expiry is not None:
            gauge("probe_ssl_last_chain_expiry_timestamp_seconds",
                  "Earliest notAfter of the verified chain, Unix seconds.",
                  stages.chain_expiry)  # fmt: skip
        gauge("probe_tls_version_info", "The TLS version used.", 1,
              f'{{version="{escape(stages.tls_version)}"}}')  # fmt: skip
    if stages.expect_ms is not None:
        regex = 1 if stages.error in (EXPECT_MISMATCH, EXPECT_TIMEOUT) else 0
        gauge("probe_failed_due_to_regex", "1 when an expect found no matching line.", regex)


def answer_body(query: Query, record: Record, duration: float, dns_seconds: float) -> bytes:
    """The 200 answer's body: Prometheus text, or with debug=true the steps, the record and
    the metrics that would have been returned, in plain text."""
    metrics = exposition(record, duration, dns_seconds)
    if not query.debug:
        return metrics
    query.step(connect_step(record))
    return debug_text(query, record, metrics)


def answer_type(query: Query) -> str:
    return TEXT if query.debug else CONTENT_TYPE


def connect_step(record: Record) -> str:
    local = (
        f"local {record.local_address}:{record.local_port}"
        if record.local_port is not None
        else "no local endpoint"
    )
    parts = [
        f"connect: {record.outcome}",
        *([record.error] if record.error else []),
        local,
        f"latency {record.latency_ms:.3f} ms",
        "rtt " + ("none" if record.rtt_ms is None else f"{record.rtt_ms:.3f} ms"),
    ]
    retransmits = record.syn_retransmits
    if retransmits is not None:
        parts.append(f"syn_retransmits {retransmits}")
    return ", ".join(parts)


def debug_text(query: Query, record: Record | None, metrics: bytes | None) -> bytes:
    lines = [f"Probe of {query.text}:", *(f"  {s}" for s in query.steps)]
    if record is not None:
        lines += ["", "Record:", record_json(record).decode()]
    if metrics is not None:
        lines += ["", "Metrics that would have been returned:", metrics.decode().rstrip()]
    return ("\n".join(lines) + "\n").encode()
