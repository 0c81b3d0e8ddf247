"""psping's latency histogram, as text: equal-width buckets from the fastest to the slowest
attempt, a count and a bar for each. Pure: latencies in, lines out."""

from __future__ import annotations

from collections.abc import Sequence

from ..words import plural

BUCKETS = 10
BAR = 40  # characters of the longest bar


def histogram_lines(latencies_ms: Sequence[float], buckets: int = BUCKETS) -> list[str]:
    """Lines for `latencies_ms`; none for no latencies. Each bucket is [low, high), the
    last one closed; identical latencies make one bucket."""
    if not latencies_ms:
        return []
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    low, high = min(latencies_ms), max(latencies_ms)
    n = buckets if high > low else 1
    width = (high - low) / n
    counts = [0] * n
    for x in latencies_ms:
        i = int((x - low) / width) if width else 0
        counts[min(i, n - 1)] += 1
    edges = [low + i * width for i in range(n)] + [high]
    top = max(counts)
    digits = len(str(top))
    label = max(len(f"{e:.3f}") for e in edges)
    lines = [f"latency histogram ({plural(len(latencies_ms), 'attempt')}, ms):"]
    for i, count in enumerate(counts):
        bar = "#" * round(BAR * count / top)
        if count and not bar:
            bar = "#"
        lines.append(
            f"  {edges[i]:>{label}.3f} - {edges[i + 1]:>{label}.3f}  {count:>{digits}}  {bar}"
        )
    return lines
