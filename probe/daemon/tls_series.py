"""Each TLS target's own series, under blackbox_exporter's names where the meaning is the
same: the certificate expiries as Unix seconds, the version as an info gauge, and the
handshake's duration as a histogram. A target gets them from its first handshake that
produced a session (a failed handshake has no certificate to report); a target without TLS
has none, so a daemon without TLS targets serves none of these families.

As in `series`, a target's text is made again only after it changed, and a scrape joins
those strings in pieces with places between them where the caller may let its loop run.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Iterator, Mapping, Sequence

from ..record import Record
from .series import JOIN_SLICE, escape, number

# (name in the page, documentation, type); the order is the page's
FAMILIES: tuple[tuple[str, str, str], ...] = (
    (
        "probe_ssl_earliest_cert_expiry",
        "Earliest notAfter of the certificates the server sent in the last TLS handshake, "
        "Unix seconds (blackbox_exporter's).",
        "gauge",
    ),
    (
        "probe_ssl_last_chain_expiry_timestamp_seconds",
        "Earliest notAfter of the verified chain in the last TLS handshake, Unix seconds; "
        "absent when verification is skipped (blackbox_exporter's).",
        "gauge",
    ),
    (
        "probe_tls_version_info",
        "The TLS version of the last handshake, always 1 (blackbox_exporter's).",
        "gauge",
    ),
    (
        "probe_tls_handshake_seconds",
        "Duration of TLS handshakes that produced a session.",
        "histogram",
    ),
)
EXPIRY, CHAIN, VERSION, HANDSHAKE = range(len(FAMILIES))
STATUS_COLUMNS = ("TLS", "cert expires in")  # the status page's columns for TLS targets


class _Target:
    __slots__ = ("buckets", "chain", "counts", "expiry", "label", "sum", "text", "version")

    def __init__(self, name: str, size: int) -> None:
        self.label = f'target="{escape(name)}"'
        self.expiry: float | None = None
        self.chain: float | None = None
        self.version: str | None = None
        self.counts = [0] * size
        self.sum = 0.0
        self.text: tuple[str, ...] | None = None
        self.buckets = True  # the histogram's buckets, or only its count and sum


class TlsSeries:
    """The TLS families of the scheduled targets that made a handshake."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = (*buckets, math.inf)
        self._le = [number(b) for b in self.bounds]
        self.targets: dict[str, _Target] = {}
        self._buckets: dict[str, bool] = {}  # name → its histograms setting

    def keep(self, wanted: Mapping[str, tuple[object, bool]]) -> None:
        """Only these targets (the scheduled ones: name → (info, histograms)) keep their
        series; a target's handshake buckets follow its `histograms` (without: only the
        +Inf bucket, count and sum), as its latency's do."""
        for name in [n for n in self.targets if n not in wanted]:
            del self.targets[name]
        self._buckets = {name: on for name, (_, on) in wanted.items()}
        for name, s in self.targets.items():
            if s.buckets != self._buckets[name]:
                s.buckets = self._buckets[name]
                s.text = None

    def observe(self, name: str, record: Record) -> None:
        stages = record.stages
        if stages is None or stages.tls_version is None or stages.tls_ms is None:
            return  # no TLS, or no session: nothing new to say about the certificate
        s = self.targets.get(name)
        if s is None:
            s = self.targets[name] = _Target(name, len(self.bounds))
            s.buckets = self._buckets.get(name, True)
        s.expiry = stages.cert_not_after
        s.chain = stages.chain_expiry
        s.version = stages.tls_version
        seconds = stages.tls_ms / 1000.0
        s.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        s.sum += seconds
        s.text = None

    def expiry(self, name: str) -> tuple[float | None, str | None]:
        """The last handshake's earliest expiry and version (the status page's)."""
        s = self.targets.get(name)
        return (None, None) if s is None else (s.expiry, s.version)

    def columns(self, name: str) -> dict[str, str]:
        """The status page's TLS columns for a target (STATUS_COLUMNS): the version and the
        days until the earliest certificate expiry, from its last handshake; empty until
        one produced a session."""
        s = self.targets.get(name)
        if s is None or s.version is None:
            return {}
        out = {STATUS_COLUMNS[0]: s.version}
        if s.expiry is not None:
            days = math.floor((s.expiry - time.time()) / 86400)
            out[STATUS_COLUMNS[1]] = f"{days} days" if days >= 0 else "expired"
        return out

    def _text(self, s: _Target) -> tuple[str, ...]:
        q = s.label
        name = FAMILIES[HANDSHAKE][0]
        lines = []
        for le, total in zip(self._le, itertools.accumulate(s.counts), strict=True):
            if s.buckets or le == "+Inf":  # without histograms: +Inf, count, sum (3 series)
                lines.append(f'{name}_bucket{{le="{le}",{q}}} {number(total)}\n')
        count = sum(s.counts)
        lines.append(f"{name}_count{{{q}}} {number(count)}\n{name}_sum{{{q}}} {number(s.sum)}\n")
        version = "" if s.version is None else escape(s.version)
        return (
            "" if s.expiry is None else f"{FAMILIES[EXPIRY][0]}{{{q}}} {number(s.expiry)}\n",
            "" if s.chain is None else f"{FAMILIES[CHAIN][0]}{{{q}}} {number(s.chain)}\n",
            f'{FAMILIES[VERSION][0]}{{{q},version="{version}"}} 1.0\n',
            "".join(lines),
        )

    def pieces(self) -> Iterator[bytes | None]:
        """The families' text in pieces (None: where the caller may let its loop run);
        nothing at all while no target has made a handshake."""
        if not self.targets:
            return
        texts = []
        for s in list(self.targets.values()):
            if s.text is None:
                s.text = self._text(s)
            texts.append(s.text)
        for family, (name, doc, kind) in enumerate(FAMILIES):
            if not any(t[family] for t in texts):
                continue
            yield f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode()
            for start in range(0, len(texts), JOIN_SLICE):
                yield "".join([t[family] for t in texts[start : start + JOIN_SLICE]]).encode()
                yield None
