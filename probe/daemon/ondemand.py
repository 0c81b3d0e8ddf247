"""GET /probe, blackbox-exporter style, end to end.

http.py parses the request (`ProbeRequest`); `OnDemand` does the rest: the attempt's
timeout, the lookup (a pool of its own), the probe_allow check on the very address it will
connect to, one `await engine.attempt(...)` on an engine of its own (so scheduled probes
keep their slots), the record written like a scheduled one, and the answer in Prometheus
text or, with `debug=true`, the steps taken in plain words.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..engine import Attempt, Engine
from ..errors import TargetError
from ..output.jsonl import record_json
from ..record import OPEN, Record, unresolved_record
from ..resolve import LookupPool, ResolveError, Resolver
from ..stages.result import EXPECT_MISMATCH, EXPECT_TIMEOUT, StageResult
from ..stages.spec import StageSpec
from ..syntax import Endpoint, Exclusions, allow_list, parse_target
from .config import Config
from .http import Answer, ProbeRequest, text_answer
from .metrics import CONTENT_TYPE, error_label
from .series import escape, number

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
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


def make_query(
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
        out.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n{name}{labels} {number(value)}\n")

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


def describe_stages(spec: StageSpec | None) -> str:
    """A module's stages in a few words, for debug=true."""
    if spec is None:
        return "a plain connect"
    parts = []
    if spec.tls:
        parts.append("tls")
    if spec.starttls is not None:
        parts.append(f"starttls {spec.starttls}")
    if spec.steps:
        parts.append(f"{len(spec.steps)} send/expect step(s)")
    if spec.reflect:
        parts.append("reflect")
    return ", ".join(parts) or "a plain connect"


def stage_step(stages: StageResult) -> str:
    """What the stages found, for debug=true."""
    parts = [f"stages: {stages.error or 'passed'}"]
    if stages.tls_ms is not None:
        parts.append(f"tls {stages.tls_ms:.3f} ms")
        if stages.tls_version is not None:
            parts.append(f"{stages.tls_version} {stages.cipher}")
    if stages.expect_ms is not None:
        parts.append(f"expect {stages.expect_ms:.3f} ms, matched {stages.matched!r}")
    return ", ".join(parts)


def answer_body(query: Query, record: Record, duration: float, dns_seconds: float) -> bytes:
    """The 200 answer's body: Prometheus text, or with debug=true the steps, the record and
    the metrics that would have been returned, in plain text."""
    metrics = exposition(record, duration, dns_seconds)
    if not query.debug:
        return metrics
    query.step(connect_step(record))
    if record.stages is not None:
        query.step(stage_step(record.stages))
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


class OnDemand:
    """The GET /probe handler: at most `limit` requests at once, each one attempt."""

    def __init__(
        self,
        engine: Engine,
        threads: int,
        write: Callable[[Record], None],
        running: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self._pool = LookupPool("resolve-probe", threads)  # its own: the schedule's stay free
        self.resolver = Resolver(ttl=0.0, pool=self._pool)
        self.write = write
        self.running = running
        self.limit = 0
        self.default_timeout = 1.0
        self.networks: tuple[Network, ...] = ()
        self.allowed = Exclusions()
        self.modules: Mapping[str, StageSpec | None] = {}  # [modules.NAME]: ?module=NAME
        self.active = 0  # requests resolving or connecting now
        self.connecting = 0  # requests waiting for their attempt's record
        self.lookups: set[asyncio.Task[Any]] = set()  # cancelled at shutdown

    def configure(self, config: Config, limit: int) -> None:
        """At start and on every reload."""
        self.limit = limit
        self.default_timeout = config.defaults.timeout
        self.networks = config.metrics.probe_allow
        self.allowed = allow_list(self.networks)
        self.modules = config.modules

    def stop_lookups(self) -> None:
        for task in list(self.lookups):
            task.cancel()  # the request gets 503 at once

    def close(self) -> None:
        self._pool.close()

    async def __call__(self, request: ProbeRequest) -> Answer:
        try:
            target = parse_target(request.target, no_port_hint="")
        except TargetError as exc:
            return text_answer(400, f"bad target: {exc}")
        if target.count() != 1:
            return text_answer(400, "bad target: give exactly one port")
        if request.module is not None and request.module not in self.modules:
            known = ", ".join(sorted(self.modules)) or "none"
            return text_answer(400, f"unknown module {request.module!r} (modules: {known})")
        if not self.running():
            return text_answer(503, "shutting down")
        if self.active >= self.limit:
            return text_answer(503, "busy: every /probe slot is taken, try again")
        self.active += 1
        try:
            return await self._probe(request, next(target.endpoints()))
        finally:
            self.active -= 1

    async def _probe(self, request: ProbeRequest, endpoint: Endpoint) -> Answer:
        query = make_query(
            request.target,
            endpoint,
            request.timeout,
            request.scrape_timeout,
            request.debug,
            self.default_timeout,
        )
        extra = {"name": endpoint.target, "via": "http"}
        began = time.monotonic()
        lookup = asyncio.get_running_loop().create_task(
            self.resolver.resolve(endpoint.host, query.timeout)
        )
        self.lookups.add(lookup)
        lookup.add_done_callback(self.lookups.discard)
        try:
            addresses = await lookup
        except ResolveError as exc:
            dns = time.monotonic() - began
            query.step(f"resolve {endpoint.host}: failed, {exc.code} ({dns * 1000:.3f} ms)")
            record = unresolved_record(
                endpoint.target, endpoint.host, endpoint.port, exc.code, 1, dns * 1000
            )
            record.extra = extra
            self.write(record)
            return self._answer(query, record, began, dns)
        except asyncio.CancelledError:
            if self.running():
                raise  # not ours: the request itself was cancelled
            return text_answer(503, "shutting down")  # shutdown abandons pending lookups
        dns = time.monotonic() - began
        shown = ", ".join(a.ip for a in addresses)
        query.step(f"resolve {endpoint.host}: {shown} ({dns * 1000:.3f} ms)")
        # Checked after resolution, on the very address we will connect to: a name cannot
        # smuggle in an address outside probe_allow.
        allowed = [a for a in addresses if self.allowed.contains(a.ip)]
        nets = ", ".join(str(n) for n in self.networks)
        if not allowed:
            query.step(f"allow: no address inside probe_allow ({nets}): refused, no connection")
            if query.debug:
                return Answer(403, debug_text(query, None, None))
            message = f"{request.target} is outside probe_allow; no connection was made"
            return text_answer(403, message)
        query.step(f"allow: {allowed[0].ip} is inside probe_allow ({nets})")
        query.step(f"address chosen: {allowed[0].ip} ({allowed[0].family_name})")
        if self.engine.closed or not self.running():
            return text_answer(503, "shutting down")
        stages = None if request.module is None else self.modules[request.module]
        if request.module is not None:
            query.step(f"module: {request.module} ({describe_stages(stages)})")
        attempt = Attempt(endpoint, allowed[0], 1, query.timeout, dns_ms=dns * 1000, stages=stages)
        self.connecting += 1
        try:
            record = await self.engine.attempt(attempt)
        except asyncio.CancelledError:
            return text_answer(503, "shutting down")  # never started, or abandoned
        finally:
            self.connecting -= 1
        record.extra = extra
        self.write(record)
        return self._answer(query, record, began, dns)

    @staticmethod
    def _answer(query: Query, record: Record, began: float, dns: float) -> Answer:
        body = answer_body(query, record, time.monotonic() - began, dns)
        return Answer(200, body, answer_type(query))
