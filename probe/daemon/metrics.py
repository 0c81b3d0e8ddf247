"""The daemon's Prometheus metrics, in a registry of their own, apart from the code measured.

The daemon calls `observe` with each finished record; exposition is prometheus-client's.
The `target` label is the target's name (unique in the config; it defaults to the address).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from ..record import OPEN, OUTCOMES, REFUSED, Record

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Connect latency on loopback is tens of microseconds; across the world, hundreds of ms.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self, inflight: Callable[[], float]) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attempts = Counter(
            "probe_attempts", "Connect attempts by outcome.", ["target", "outcome"], registry=r
        )
        self.latency = Histogram(
            "probe_connect_latency_seconds",
            "Connect latency of attempts that got an answer (open or refused).",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.up = Gauge("probe_up", "1 when the target's last attempt was open.", ["target"],
                        registry=r)  # fmt: skip
        self.inflight = Gauge("probe_inflight", "Attempts in flight now.", registry=r)
        self.inflight.set_function(inflight)
        self.skipped = Counter(
            "probe_skipped_slots",
            "Scheduled slots not probed: the previous attempt was still running, or the "
            "daemon was stalled past the slot.",
            ["target"],
            registry=r,
        )
        self.lag = Histogram(
            "probe_schedule_lag_seconds",
            "Actual start minus planned start of scheduled attempts.",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.targets = Gauge("probe_targets", "Targets in the running config.", registry=r)
        self.reloads = Counter(
            "probe_config_reloads", "Config reloads by result.", ["result"], registry=r
        )
        self.late_starts = Counter(
            "probe_late_starts",
            "Scheduled attempts that started more than 0.1 s after their slot.",
            registry=r,
        )
        self.resolve_failures = Counter(
            "probe_resolve_failures",
            "Re-resolutions of the target's name that failed or hung; the last good "
            "addresses were kept.",
            ["target"],
            registry=r,
        )

    def observe(self, name: str, record: Record) -> None:
        self.attempts.labels(name, record.outcome).inc()
        if record.outcome in (OPEN, REFUSED):
            self.latency.labels(name).observe(record.latency_ms / 1000.0)
        self.up.labels(name).set(1 if record.outcome == OPEN else 0)

    def add_skipped(self, name: str, n: int) -> None:
        if n:
            self.skipped.labels(name).inc(n)

    def forget(self, name: str) -> None:
        """Drop a removed target's series, so dashboards do not show it frozen forever."""
        for outcome in OUTCOMES:
            _remove(self.attempts, name, outcome)
        for metric in (self.latency, self.up, self.skipped, self.resolve_failures):
            _remove(metric, name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def probe_exposition(record: Record | None, duration: float) -> bytes:
    """The blackbox-exporter-style answer to GET /probe, for one attempt."""
    registry = CollectorRegistry(auto_describe=True)
    success = Gauge("probe_success", "1 when the connect succeeded.", registry=registry)
    took = Gauge("probe_duration_seconds", "How long the probe took.", registry=registry)
    success.set(1 if record is not None and record.outcome == OPEN else 0)
    took.set(duration)
    if record is not None and record.local_port is not None:
        port = Gauge("probe_local_port", "Local port the kernel assigned.", registry=registry)
        port.set(record.local_port)
    if record is not None and record.rtt_ms is not None:
        rtt = Gauge("probe_rtt_seconds", "Kernel handshake RTT (TCP_INFO).", registry=registry)
        rtt.set(record.rtt_ms / 1000.0)
    return generate_latest(registry)
