"""Prometheus text: parsed into samples, looked up by name and labels."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> Samples:
    """Samples of a Prometheus text exposition: (name, labels) -> value."""
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        out[(m[1], frozenset(_LABEL.findall(m[2] or "")))] = float(m[3])
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample of `name` with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def unlabelled(text: str) -> dict[str, float]:
    """The samples without labels (a /probe answer's), by name."""
    return {name: v for (name, labels), v in parse_prometheus(text).items() if not labels}


def with_label(samples: Samples, name: str, label: str, val: str) -> dict[frozenset[Any], float]:
    """Every sample of `name` whose `label` is `val`."""
    return {labels: v for (n, labels), v in samples.items() if n == name and (label, val) in labels}


def metrics_of(get: Callable[[str], tuple[int, str, str]]) -> dict[Any, float]:
    status, _, body = get("/metrics")
    assert status == 200, body
    return parse_prometheus(body)


def skipped_total(samples: dict[Any, float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "probe_skipped_slots_total")
