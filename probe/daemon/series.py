"""Every target's own series, in plain per-target structures, their text kept up to date.

At 10,000 targets the per-target families are ~90,000 samples, a 5.7 MB page: through
prometheus-client's labelled children (a lock and a value object per bucket) and its
`collect()` (a Sample tuple per sample) one page costs seconds of CPU, too much for the
daemon's loop, and rendering it in a forked child costs the schedule its slots all the
same. So a target's counters are a few lists of ints, and its text, one string per
family, is remade as the numbers change: an attempt remakes the lines it moved (its
outcomes, its error, its connect time). A scrape is then only a join of those strings,
made in pieces with places between them where the caller lets the loop run
(http.SharedRender).

Measured in-process at 10,000 targets, 90 % refused, every target attempted since the
last scrape (2026-12-07, load 7): remaking each target's text at the scrape, the page and
its gzip took 61 ms of CPU and the attempts 11 ms per 10,000; kept up to date, 21 ms and
35 ms. The CPU over a 15 s scrape interval is the same (~75 ms), but the scrape waits for
a third of it, and Prometheus' scrape duration counts that wait (with the loop let run
between bursts, ~300 ms became 50-100 ms at that load). The 30-bucket histograms (opt-in)
are the exception: remade at the next scrape, not at every attempt.

The text is prometheus-client's, byte for byte (`collect()` feeds the same numbers to
`generate_latest`, and a test compares the two): scrapers see prometheus-client's page.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..record import OPEN, OUTCOMES, REFUSED, Record

INFO_NAME = "probe_target_info"
RENDER_SLICE = 10  # histogram targets whose text is remade between two places to pause
JOIN_SLICE = 200  # targets' text of one family taken, or joined and encoded, in one piece
_OUTCOME = {outcome: i for i, outcome in enumerate(OUTCOMES)}

# (name in the page, documentation, type); the order is the page's
FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("probe_attempts", "Connect attempts by outcome.", "counter"),
    (
        "probe_errors",
        "Failed attempts by reason: the record's error (errno or resolver code name).",
        "counter",
    ),
    (
        "probe_connect_seconds",
        "Connect time summed over the attempts that got an answer (open or refused), every "
        'target: over the rate of probe_attempts_total{outcome=~"open|refused"}, the mean. '
        "Buckets: probe_connect_latency_seconds.",
        "counter",
    ),
    (
        "probe_connect_latency_seconds",
        "Connect latency of attempts that got an answer (open or refused), for targets "
        "with histograms = true.",
        "histogram",
    ),
    (
        "probe_tcp_rtt_seconds",
        "Kernel handshake round-trip time (TCP_INFO) of open attempts with a real sample, "
        "for targets with histograms = true.",
        "histogram",
    ),
    (
        "probe_syn_retransmits",
        "SYNs sent again (TCP_INFO), summed over the target's attempts; from the first one.",
        "counter",
    ),
    (
        "probe_up",
        "1 when the target is up: up_after open attempts in a row make it 1, down_after "
        "failed ones 0 (with addresses = all: every address up); absent until decided.",
        "gauge",
    ),
    (
        INFO_NAME,
        "Config labels of each target, always 1: join with "
        "`* on(target) group_left(LABEL) probe_target_info`.",
        "gauge",
    ),
    (
        "probe_skipped_slots",
        "Scheduled slots not probed: the previous attempt was still running, or the "
        "daemon was stalled; from the first one.",
        "counter",
    ),
    (
        "probe_resolve_failures",
        "Re-resolutions of the target's name that failed or hung; the last good "
        "addresses were kept.",
        "counter",
    ),
)
ATTEMPTS, ERRORS, CONNECT, LATENCY, RTT, RETRANSMITS, UP, INFO, SKIPPED, RESOLVE = range(
    len(FAMILIES)
)


def escape(value: str) -> str:
    """A label value in the text format."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def _headers() -> list[str]:
    out = []
    for name, doc, kind in FAMILIES:
        shown = name + "_total" if kind == "counter" else name
        doc = doc.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {shown} {doc}\n# TYPE {shown} {kind}\n")
    return out


_HEADERS = _headers()


def number(value: float) -> str:
    """prometheus-client's form of a sample value (Go's), quicker for the small whole
    numbers most samples are."""
    if 0 <= value < 1_000_000:  # what floatToGoString gives these, without its checks
        return f"{value}.0" if value.__class__ is int else repr(value)
    return floatToGoString(value)  # type: ignore[no-untyped-call,no-any-return]


def _histogram_template(name: str, le: Sequence[str]) -> tuple[str, str]:
    """A histogram's text as a %-format template (label, count, label, count, ... label,
    sum: for whole counts below a million) and as a `str.format` one ({0} the label, then
    every value, for any counts)."""
    short = [f'{name}_bucket{{le="{b}",%s}} %d.0\n' for b in le]
    short += [f"{name}_count{{%s}} %d.0\n", f"{name}_sum{{%s}} %s\n"]
    lines = [f'{name}_bucket{{{{le="{b}",{{0}}}}}} {{{i + 1}}}\n' for i, b in enumerate(le)]
    lines.append(f"{name}_count{{{{{{0}}}}}} {{{len(le) + 1}}}\n")
    lines.append(f"{name}_sum{{{{{{0}}}}}} {{{len(le) + 2}}}\n")
    return "".join(short), "".join(lines)


_ATTEMPTS = "".join(f'probe_attempts_total{{outcome="{o}",%s}} %d.0\n' for o in OUTCOMES)


class Histogram:
    """One target's histogram: counts per bucket (not cumulative; the last is +Inf), sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0

    def observe(self, bounds: Sequence[float], value: float) -> None:
        self.counts[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value
        self.sum += value


class TargetSeries:
    """One target's numbers, and its text per family (`lines`), kept up to date by Series
    as the numbers change; the histograms' text is remade at the next page (`stale`)."""

    __slots__ = (
        "answered_sum",
        "attempts",
        "errors",
        "histograms",
        "info",
        "label",
        "latency",
        "lines",
        "name",
        "resolve_failures",
        "retransmits",
        "rtt",
        "skipped",
        "stale",
        "up",
    )

    def __init__(self, name: str, info: Mapping[str, str], histograms: bool = False) -> None:
        self.name = name
        self.histograms = histograms  # latency and RTT buckets kept and shown
        self.label = f'target="{escape(name)}"'
        self.info: dict[str, str] = {}
        self.attempts = [0] * len(OUTCOMES)  # every outcome's series at 0 from the start
        self.answered_sum = 0.0  # connect time of the open and refused ones, from the start
        self.errors: dict[str, int] = {}  # error label → count, in the order first seen
        self.latency: Histogram | None = None  # None: no series until the first sample
        self.rtt: Histogram | None = None
        self.retransmits = 0  # 0: no series until the first (as each error's)
        self.up: int | None = None  # None: no series (not decided yet)
        self.skipped = 0  # 0: no series until the first
        self.resolve_failures = 0  # 0: no series until the first
        self.lines = [""] * len(FAMILIES)  # the text of each family; "": no series
        self.stale = False  # the histograms' lines are behind their numbers
        self.relabel(info)

    def relabel(self, info: Mapping[str, str]) -> None:
        self.info = dict(info)
        labels = sorted([("target", self.name), *self.info.items()])
        shown = ",".join([f'{k}="{escape(v)}"' for k, v in labels])
        self.lines[INFO] = f"{INFO_NAME}{{{shown}}} 1.0\n"


class Series(Collector):
    """The per-target families of every scheduled target. Its `collect()` is for
    prometheus-client's own exposition (tests compare); the daemon serves `pieces()`."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = (*buckets, math.inf)
        self._le = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self._latency = _histogram_template(FAMILIES[LATENCY][0], self._le)
        self._rtt = _histogram_template(FAMILIES[RTT][0], self._le)
        self.targets: dict[str, TargetSeries] = {}

    # -- changes -----------------------------------------------------------------------------

    def keep(self, wanted: Mapping[str, tuple[Mapping[str, str], bool]]) -> None:
        """The scheduled targets now (name → info labels, histograms): new ones start at 0,
        kept ones take their new labels, removed ones lose every series; a target whose
        histograms were turned off loses its buckets, one turned on starts them empty."""
        for name in [n for n in self.targets if n not in wanted]:
            del self.targets[name]
        for name, (info, histograms) in wanted.items():
            series = self.targets.get(name)
            if series is None:
                self.targets[name] = series = TargetSeries(name, info, histograms)
                self.redraw(series)
                continue
            if series.info != info:
                series.relabel(info)
            if series.histograms != histograms:
                series.histograms = histograms
                series.latency = series.rtt = None
                series.lines[LATENCY] = series.lines[RTT] = ""
                series.stale = False

    def observe(self, name: str, record: Record, error: str | None) -> None:
        """Counts the attempt and remakes the lines it moved (~1.5 µs more than counting
        alone, 1,000 times a second at 10,000 targets every 10 s)."""
        s = self.targets.get(name)
        if s is None:
            return  # removed by a reload while its attempt was in flight
        outcome = record.outcome
        attempts = s.attempts
        attempts[_OUTCOME[outcome]] += 1
        lines = s.lines
        q = s.label
        o, r, t, u, e = attempts  # OUTCOMES' order
        if o < 1_000_000 and r < 1_000_000 and t < 1_000_000 and u < 1_000_000 and e < 1_000_000:
            lines[ATTEMPTS] = _ATTEMPTS % (q, o, q, r, q, t, q, u, q, e)
        else:
            lines[ATTEMPTS] = self._attempts(s)
        if error is not None:
            errors = s.errors
            count = errors[error] = errors.get(error, 0) + 1
            if len(errors) == 1:  # the common case: a target fails one way
                lines[ERRORS] = f'probe_errors_total{{error="{error}",{q}}} {number(count)}\n'
            else:
                lines[ERRORS] = self._errors(s)
        if outcome in (OPEN, REFUSED):
            seconds = record.latency_ms / 1000.0
            s.answered_sum += seconds
            lines[CONNECT] = f"probe_connect_seconds_total{{{q}}} {number(s.answered_sum)}\n"
            if s.histograms:
                if s.latency is None:
                    s.latency = Histogram(len(self.bounds))
                s.latency.observe(self.bounds, seconds)
                s.stale = True
            if s.histograms and outcome == OPEN and record.rtt_ms is not None:
                if s.rtt is None:
                    s.rtt = Histogram(len(self.bounds))
                s.rtt.observe(self.bounds, record.rtt_ms / 1000.0)
                s.stale = True
        retransmits = record.syn_retransmits
        if retransmits is not None and retransmits > 0:  # None: the platform cannot say
            s.retransmits += retransmits
            lines[RETRANSMITS] = self._counter(s, RETRANSMITS, s.retransmits)
        up = 1 if outcome == OPEN else 0
        if up != s.up:
            s.up = up
            lines[UP] = f"probe_up{{{q}}} {up}.0\n"

    def set_up(self, name: str, up: bool | None) -> None:
        s = self.targets.get(name)
        if s is None:
            return
        value = None if up is None else int(up)
        if value != s.up:
            s.up = value
            s.lines[UP] = "" if value is None else f"probe_up{{{s.label}}} {value}.0\n"

    def add_skipped(self, name: str, n: int) -> None:
        s = self.targets.get(name)
        if s is not None and n:
            s.skipped += n
            s.lines[SKIPPED] = self._counter(s, SKIPPED, s.skipped)

    def add_resolve_failure(self, name: str) -> None:
        s = self.targets.get(name)
        if s is not None:
            s.resolve_failures += 1
            s.lines[RESOLVE] = self._counter(s, RESOLVE, s.resolve_failures)

    # -- the text ----------------------------------------------------------------------------

    @staticmethod
    def _attempts(s: TargetSeries) -> str:
        """Every outcome's line: for counts below a million (the text's `N.0` then is Go's
        form too) one %-format of a template, ~3x quicker than a formatted string a line."""
        q = s.label
        o, r, t, u, e = s.attempts  # OUTCOMES' order
        if max(o, r, t, u, e) < 1_000_000:
            return _ATTEMPTS % (q, o, q, r, q, t, q, u, q, e)
        return "".join(
            [f'probe_attempts_total{{outcome="{k}",{q}}} {number(c)}\n'
             for k, c in zip(OUTCOMES, s.attempts, strict=True)]
        )  # fmt: skip

    @staticmethod
    def _errors(s: TargetSeries) -> str:
        q = s.label
        if len(s.errors) == 1:  # the common case: a target fails one way
            [(e, c)] = s.errors.items()
            return f'probe_errors_total{{error="{e}",{q}}} {number(c)}\n'
        return "".join(
            [f'probe_errors_total{{error="{e}",{q}}} {number(c)}\n'
             for e, c in s.errors.items()]
        )  # fmt: skip

    @staticmethod
    def _counter(s: TargetSeries, family: int, count: int) -> str:
        """The line of a counter born with its first event ("" before it)."""
        if not count:
            return ""
        return f"{FAMILIES[family][0]}_total{{{s.label}}} {number(count)}\n"

    def redraw(self, s: TargetSeries) -> None:
        """Remakes every line of the target from its numbers."""
        lines = s.lines
        lines[ATTEMPTS] = self._attempts(s)
        lines[ERRORS] = self._errors(s)
        lines[CONNECT] = f"probe_connect_seconds_total{{{s.label}}} {number(s.answered_sum)}\n"
        self._draw_histograms(s)
        lines[RETRANSMITS] = self._counter(s, RETRANSMITS, s.retransmits)
        lines[UP] = "" if s.up is None else f"probe_up{{{s.label}}} {s.up}.0\n"
        lines[SKIPPED] = self._counter(s, SKIPPED, s.skipped)
        lines[RESOLVE] = self._counter(s, RESOLVE, s.resolve_failures)

    def _draw_histograms(self, s: TargetSeries) -> None:
        s.lines[LATENCY] = self._histogram(self._latency, s.label, s.latency)
        s.lines[RTT] = self._histogram(self._rtt, s.label, s.rtt)
        s.stale = False

    @staticmethod
    def _histogram(template: tuple[str, str], q: str, h: Histogram | None) -> str:
        if h is None:
            return ""
        counts = list(itertools.accumulate(h.counts))
        total = counts[-1]
        end = floatToGoString(h.sum)  # type: ignore[no-untyped-call]
        if total < 1_000_000:
            pairs = [q, 0] * (len(counts) + 1)
            pairs[1::2] = [*counts, total]
            return template[0] % (*pairs, q, end)
        return template[1].format(q, *map(number, counts), number(total), end)

    def pieces(self) -> Iterator[bytes | None]:
        """The families' text in pieces; None marks a place where the caller may let the
        loop run. A slice of targets' lines is joined family by family at once (their
        histograms remade first if they moved), so a target changed after that shows as
        it was then; the joins are bytes, which the garbage collector does not track
        (a tuple a target per page made young collections 8x as frequent)."""
        targets = list(self.targets.values())
        parts: list[list[bytes]] = [[] for _ in FAMILIES]
        drawn = 0
        for start in range(0, len(targets), JOIN_SLICE):
            chunk = targets[start : start + JOIN_SLICE]
            for s in chunk:
                if s.stale:
                    self._draw_histograms(s)
                    drawn += 1
                    if drawn % RENDER_SLICE == 0:
                        yield None
            for family, out in enumerate(parts):
                out.append("".join([s.lines[family] for s in chunk]).encode())
            yield None
        for header, out in zip(_HEADERS, parts, strict=True):
            yield header.encode()
            for part in out:
                if part:
                    yield part  # the caller keeps these very bytes: no second copy
                yield None

    # -- prometheus-client's view ------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return [Metric(name, doc, kind) for name, doc, kind in FAMILIES]

    def collect(self) -> Iterable[Metric]:
        out = [Metric(name, doc, kind) for name, doc, kind in FAMILIES]
        for s in list(self.targets.values()):
            t = {"target": s.name}
            for outcome, count in zip(OUTCOMES, s.attempts, strict=True):
                out[ATTEMPTS].add_sample(
                    "probe_attempts_total", {**t, "outcome": str(outcome)}, float(count)
                )
            for error, count in s.errors.items():
                out[ERRORS].add_sample("probe_errors_total", {**t, "error": error}, float(count))
            out[CONNECT].add_sample("probe_connect_seconds_total", t, s.answered_sum)
            for family, h in ((LATENCY, s.latency), (RTT, s.rtt)):
                if h is None:
                    continue
                name = FAMILIES[family][0]
                total = 0
                for le, count in zip(self._le, h.counts, strict=True):
                    total += count
                    out[family].add_sample(f"{name}_bucket", {**t, "le": le}, float(total))
                out[family].add_sample(f"{name}_count", t, float(total))
                out[family].add_sample(f"{name}_sum", t, h.sum)
            if s.up is not None:
                out[UP].add_sample("probe_up", t, float(s.up))
            out[INFO].add_sample(INFO_NAME, {**t, **s.info}, 1.0)
            for family, count in (
                (RETRANSMITS, s.retransmits),
                (SKIPPED, s.skipped),
                (RESOLVE, s.resolve_failures),
            ):
                if count:
                    name = FAMILIES[family][0] + "_total"
                    out[family].add_sample(name, t, float(count))
        return out


def labelled(pieces: Iterable[bytes | None]) -> bytes:
    """The whole text at once (tests, and callers with no loop to keep running)."""
    return b"".join([p for p in pieces if p is not None])
