"""The daemon's Prometheus metrics, in a registry of their own, apart from the code measured.

The daemon tells `set_targets` which targets it schedules (every outcome series of a target
exists at 0 from then on, so ratios include targets that never succeeded) and calls
`observe` with each finished record. The per-target families (nearly all of a big page)
are kept as numbers and text per target by series.py; the rest are prometheus-client
metrics; the page is prometheus-client's text either way. The `target` label is the
target's name (unique in the config; it defaults to the address).
A target with `addresses = "all"` has, besides, one series per address in the `probe_path_*`
metrics (labels `target`, `address`, `family`; daemon/paths.py says why).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import __version__
from ..errors import ConfigError
from ..record import OPEN, OUTCOMES, REFUSED, Record
from .series import Series, escape
from .tls_series import TlsSeries

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Edges chosen for TCP connect times (docs/metrics.md gives each one's reason): fine steps
# below 1 s (loopback is tens of microseconds, across the world hundreds of ms), then steps
# around the kernel's SYN retransmissions. A dropped SYN is sent again after 1 s, then after
# 3, 7, 15, 31 and 63 s from the start (the timeout doubles), so a connect that lost k SYNs takes
# that long plus one round trip: an edge at each of those times and one 5 % past it keep
# such a population in a bucket as narrow as the quantile error allowed (10 %). The kernel
# RTT shares the buckets, so the two histograms compare bucket by bucket.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 1.05, 1.1, 1.25, 1.5, 2.0,
    3.0, 3.15, 5.0,
    7.0, 7.35, 10.0,
    15.0, 15.75,
    31.0, 32.55, 63.0,
)  # fmt: skip
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
RELOAD_RESULTS = ("ok", "failed")

# The `error` label takes errno and resolver code names only (ECONNREFUSED, EAI_NONAME,
# SELF_CONNECT, E123 for an errno without a name): a bounded set. Anything else is OTHER.
_ERROR_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,31}\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_NOT_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")
RESERVED_LABELS = frozenset({"target"})


class Target(Protocol):
    """What the metrics need of a scheduled target (ResolvedTarget has it)."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def histograms(self) -> bool: ...


def core_name() -> str:
    """Which engine core serves the sweeps: the native one when it is built, else python."""
    try:
        from ..engine import native  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return "python"
    core = getattr(native, "CORE", "python")
    return core if isinstance(core, str) else "python"


_ERROR_LABELS: dict[str, str] = {}  # error → label, for the few errors attempts meet
_ERROR_LABELS_KEPT = 256


def error_label(error: str | None) -> str | None:
    """The `error` label of a record's error, from a bounded set of names."""
    if error is None:
        return None
    label = _ERROR_LABELS.get(error)
    if label is None:
        label = error if _ERROR_NAME.match(error) else "OTHER"
        if len(_ERROR_LABELS) < _ERROR_LABELS_KEPT:
            _ERROR_LABELS[error] = label
    return label


def sanitize_label_name(name: str) -> str:
    """A Prometheus label name for a config label name: invalid characters become `_`, a
    leading digit gets a `_` before it, and the reserved `__` prefix shrinks to one `_`."""
    out = _NOT_LABEL_CHAR.sub("_", name) or "_"
    if out[0].isdigit():
        out = "_" + out
    if out.startswith("__"):
        out = "_" + out.lstrip("_")
    return out


def info_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The config labels as `probe_target_info` labels; ValueError names a label that would
    clash with `target` (or with another label after sanitizing)."""
    out: dict[str, str] = {}
    for name, value in labels.items():
        clean = sanitize_label_name(name)
        if clean in RESERVED_LABELS:
            raise ValueError(f"label {name!r} is reserved: metrics use it for the target's name")
        if clean in out:
            raise ValueError(f"labels {name!r} and another one both become {clean!r} in metrics")
        assert _LABEL_NAME.match(clean)
        out[clean] = value
    return out


def check_labels(path: str, label_sets: Iterable[Mapping[str, str]]) -> None:
    """ConfigError naming `targets[i].labels.NAME` for a label metrics cannot carry."""
    for i, labels in enumerate(label_sets):
        try:
            info_labels(labels)
        except ValueError as exc:
            bad = next((n for n in labels if sanitize_label_name(n) in RESERVED_LABELS), None)
            key = f"targets[{i}].labels" + (f".{bad}" if bad else "")
            raise ConfigError(path, key, str(exc)) from None


class Metrics:
    """The per-target families live in `series` (plain structures, text made per target);
    the rest are prometheus-client metrics in `_rest`. `registry` holds both, for
    prometheus-client's own exposition, which the daemon's page equals byte for byte."""

    def __init__(self, inflight: Callable[[], float], standard: bool = True) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise
        self.registry = CollectorRegistry(auto_describe=True)
        self._rest = CollectorRegistry(auto_describe=True)
        rest: list[Collector] = []
        if standard:  # the same collectors as prometheus-client's default registry, in ours
            rest += [PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR]
        path = ["target", "address", "family"]
        self.path_up = Gauge(
            "probe_path_up",
            "Like probe_up, for one address of a target with addresses = all.",
            path,
            registry=None,
        )
        self.path_attempts = Counter(
            "probe_path_attempts",
            "Connect attempts by outcome, for one address of a target with addresses = all.",
            [*path, "outcome"],
            registry=None,
        )
        self.path_latency = Histogram(
            "probe_path_connect_latency_seconds",
            "Connect latency (open or refused), for one address of a target with addresses = all.",
            path,
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._paths: dict[str, set[tuple[str, str]]] = {}  # name → (address, family) seen
        self.inflight = Gauge("probe_inflight", "Attempts in flight now.", registry=None)
        self.inflight.set_function(inflight)
        self.lag = PlainHistogram(
            "probe_schedule_lag_seconds",
            "Actual start minus planned start of scheduled attempts.",
            LAG_BUCKETS,
        )
        self.targets = Gauge("probe_targets", "Targets in the running config.", registry=None)
        self.reloads = Counter(
            "probe_config_reloads", "Config reloads by result.", ["result"], registry=None
        )
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        self.reload_ok = Gauge(
            "probe_config_last_reload_successful",
            "1 when the last config load (start or SIGHUP) succeeded; 0 while an invalid "
            "new config is refused and the old one runs.",
            registry=None,
        )
        self.reload_ok_time = Gauge(
            "probe_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (start or SIGHUP), Unix time.",
            registry=None,
        )
        self.build = Gauge(
            "probe_build_info",
            "Always 1: the running version and engine core.",
            ["version", "core"],
            registry=None,
        )
        self.build.labels(__version__, core_name()).set(1)
        self.late_starts = Counter(
            "probe_late_starts",
            "Scheduled attempts that started more than 0.1 s after their slot.",
            registry=None,
        )
        self.port_shortages = Counter(
            "probe_port_shortages",
            "Connects that found no free local port towards the destination (EADDRNOTAVAIL): "
            "this machine's shortage, never the target's failure; the attempt waited.",
            ["destination"],
            registry=None,
        )
        # reflect targets only: a series appears with a target's first answered attempt
        self.reflected = Counter(
            "probe_reflected_attempts",
            "Attempts whose `probe serve` answer was read (reflect = true).",
            ["target"],
            registry=None,
        )
        self.translated = Counter(
            "probe_translated_attempts",
            "Reflected attempts the far side saw from another address or port (a NAT).",
            ["target"],
            registry=None,
        )
        self.port_kept = Counter(
            "probe_port_preserved_attempts",
            "Reflected attempts the far side saw from the local port itself (port "
            "preservation; the share is this over probe_reflected_attempts_total).",
            ["target"],
            registry=None,
        )
        rest += [self.reflected, self.translated, self.port_kept]
        rest += [self.path_up, self.path_attempts, self.path_latency, self.inflight, self.lag]
        rest.append(self.port_shortages)
        rest += [self.targets, self.reloads, self.reload_ok, self.reload_ok_time, self.build]
        rest.append(self.late_starts)
        for collector in rest:
            self._rest.register(collector)
            self.registry.register(collector)
        self.series = Series(LATENCY_BUCKETS)
        self.registry.register(self.series)  # last: the page puts these families last
        self.tls = TlsSeries(LATENCY_BUCKETS)  # after them: only targets with TLS have these

    # -- targets -----------------------------------------------------------------------------

    def set_targets(self, targets: Iterable[Target]) -> None:
        """The scheduled targets now: new ones get every outcome series at 0, kept ones their
        current info labels, removed ones lose all their series."""
        wanted: dict[str, tuple[Mapping[str, str], bool]] = {}
        for target in targets:
            wanted[target.name] = (info_labels(target.labels), target.histograms)
        for name in [n for n in self._paths if n not in wanted]:
            self._forget_paths(name)
        for name in [n for n, (_, on) in wanted.items() if not on and n in self._paths]:
            for address, family in self._paths[name]:
                _remove(self.path_latency, name, address, family)
        self.series.keep(wanted)
        self.tls.keep(wanted)
        self.targets.set(len(wanted))

    def forget(self, name: str) -> None:
        """Drop a removed target's series, so dashboards do not show it frozen forever."""
        self.series.targets.pop(name, None)  # one target: not a pass over every other
        self.tls.targets.pop(name, None)
        for counter in (self.reflected, self.translated, self.port_kept):
            _remove(counter, name)
        self._forget_paths(name)

    def _forget_paths(self, name: str) -> None:
        for address, family in list(self._paths.pop(name, ())):
            self._paths[name] = set()
            self.forget_path(name, address, family)
        self._paths.pop(name, None)

    # -- attempts ----------------------------------------------------------------------------

    def observe(self, name: str, record: Record) -> None:
        self.series.observe(name, record, error_label(record.error))
        stages = record.stages
        if stages is not None:
            self.tls.observe(name, record)
            if stages.seen_as is not None:
                self._reflected(name, stages.seen_as, stages.translated, record.local_port)

    def _reflected(
        self, name: str, seen_as: str, translated: bool | None, local_port: int | None
    ) -> None:
        self.reflected.labels(name).inc()
        if translated:
            self.translated.labels(name).inc()
        if local_port is not None and seen_as.rsplit(":", 1)[1] == str(local_port):
            self.port_kept.labels(name).inc()

    def set_up(self, name: str, up: bool | None) -> None:
        """The damped state (daemon/state.py), which the daemon sets after `observe` (whose
        `probe_up` is the last attempt's); None (not decided yet) leaves no series."""
        self.series.set_up(name, up)

    def observe_path(
        self, name: str, address: str, family: str, record: Record, up: bool | None
    ) -> None:
        """One address's attempt (addresses = all), with that address's damped state."""
        self._paths.setdefault(name, set()).add((address, family))
        self.path_attempts.labels(name, address, family, record.outcome).inc()
        series = self.series.targets.get(name)
        if record.outcome in (OPEN, REFUSED) and series is not None and series.histograms:
            self.path_latency.labels(name, address, family).observe(record.latency_ms / 1000.0)
        if up is None:
            _remove(self.path_up, name, address, family)
        else:
            self.path_up.labels(name, address, family).set(1 if up else 0)

    def forget_path(self, name: str, address: str, family: str) -> None:
        """Drop one address's series: it left the name, or the target changed mode."""
        self._paths.get(name, set()).discard((address, family))
        for outcome in OUTCOMES:
            _remove(self.path_attempts, name, address, family, outcome)
        for metric in (self.path_latency, self.path_up):
            _remove(metric, name, address, family)

    def add_skipped(self, name: str, n: int) -> None:
        self.series.add_skipped(name, n)

    def resolve_failed(self, name: str) -> None:
        """A re-resolution of the target's name failed or hung (its last addresses kept)."""
        self.series.add_resolve_failure(name)

    # -- config ------------------------------------------------------------------------------

    def config_loaded(self, ok: bool, reload: bool = True) -> None:
        """A config load's result: at start (reload=False) and on every SIGHUP."""
        if reload:
            self.reloads.labels("ok" if ok else "failed").inc()
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_ok_time.set(time.time())

    # -- the page ----------------------------------------------------------------------------

    def pieces(self) -> Iterator[bytes | None]:
        """The page in pieces; None marks where the caller may let its loop run: the
        per-target part (nearly all of it) is made a slice of targets at a time."""
        yield render(self._rest)
        yield from self.series.pieces()
        yield from self.tls.pieces()

    def exposition(self) -> bytes:
        """The whole page at once."""
        return b"".join([piece for piece in self.pieces() if piece is not None])


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_TYPES = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram", "unknown": "untyped"}


def render(registry: CollectorRegistry) -> bytes:
    """prometheus-client's text format, byte for byte (a test compares), about twice as fast:
    a page of thousands of targets spends its time formatting samples, and ours never need
    the name escaping that generate_latest does for every sample. Anything unusual (an
    OpenMetrics-only sample, a timestamp, a name outside the legacy set) falls back to it."""
    out: list[str] = []
    for metric in registry.collect():
        name, kind = metric.name, metric.type
        if kind == "counter":
            name += "_total"
        elif kind == "info":
            name += "_info"
        kind = _TYPES.get(kind, kind)
        if not _NAME.match(name):
            return generate_latest(registry)
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        prefix = metric.name
        for sample in metric.samples:
            sname = sample.name
            if sample.timestamp is not None or (
                sname.startswith(prefix)
                and sname[len(prefix) :] in ("_created", "_gsum", "_gcount")
            ):
                return generate_latest(registry)
            value = floatToGoString(sample.value)  # type: ignore[no-untyped-call]
            if not sample.labels:
                out.append(f"{sname} {value}\n")
                continue
            items = sorted(sample.labels.items())
            if not all(_LABEL_NAME.match(k) for k, _ in items):
                return generate_latest(registry)
            labels = ",".join(f'{k}="{escape(v)}"' for k, v in items)
            out.append(f"{sname}{{{labels}}} {value}\n")
    return "".join(out).encode("utf-8")


class PlainHistogram(Collector):
    """A histogram without labels, observed at every scheduled start (1,000 a second at
    10,000 targets): a list of counts, ~4x quicker than prometheus-client's Histogram (a
    lock and a value object per bucket); its samples are the same."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = (*buckets, math.inf)
        self._le = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.counts = [0] * len(self.bounds)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1  # the first bound >= amount
        self.sum += amount

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative = itertools.accumulate(self.counts)
        family.add_metric([], list(zip(self._le, cumulative, strict=True)), self.sum)
        return [family]


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
