"""The human summary of a check, from the merged result: a tcping-style block per target in
repeat mode, and for sweeps the count of what was not shown, the non-open ports of each
host as compact ranges, and the event loop's lag where it could matter."""

from __future__ import annotations

from ..output.histogram import histogram_lines
from ..record import OPEN, OUTCOMES, REFUSED, TIMEOUT
from ..words import plural
from .plan import Plan
from .result import (
    PROBED,
    ShareResult,
    TargetStats,
    bridged_ranges,
    port_ranges,
    unprobed_in,
)

LAG_SHOWN_AFTER = 5.0  # seconds: a run this long shows its loop lag
LAG_SHOWN_ABOVE_MS = 5.0  # or one whose p99 lag was above this,
LAG_SAMPLES = 50  # over this many samples at least (a lone late tick is not a p99)
RANGES_SHOWN = 24  # most ranges on a host's line before "… (N more)"


def target_block(label: str, stats: TargetStats) -> list[str]:
    """`--- target ---`, then tcping's counts and open latencies."""
    outcomes = stats.outcomes
    sent = sum(outcomes.values())
    opened = outcomes[OPEN]
    loss = 100.0 * (sent - opened) / sent if sent else 0.0
    other = sent - opened - outcomes[REFUSED] - outcomes[TIMEOUT]
    lines = [
        f"--- {label} ---",
        f"{plural(sent, 'attempt')}, {opened} open, {outcomes[REFUSED]} refused, "
        f"{outcomes[TIMEOUT]} timeout, {other} other, {loss:.1f}% loss",
    ]
    lat = stats.latency
    if lat.n:
        lines.append(
            f"latency min/avg/max/mdev = {lat.low:.3f}/{lat.mean:.3f}/{lat.high:.3f}/"
            f"{lat.mdev:.3f} ms"
        )
    if stats.kept is not None:
        lines.extend(histogram_lines(stats.kept.values))  # --histogram
    return lines


def compact(ranges: list[tuple[int, int]]) -> str:
    """`1-21,23-65535`; past RANGES_SHOWN ranges, the rest as a count."""
    shown = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges[:RANGES_SHOWN]]
    text = ",".join(shown)
    if len(ranges) > RANGES_SHOWN:
        text += f",… ({len(ranges) - RANGES_SHOWN} more ranges)"
    return text


def summary(plan: Plan, result: ShareResult) -> list[str]:
    lines: list[str] = []
    for (target, address), stats in result.per_target.items():
        label = target if address is None or address in target else f"{target} ({address})"
        lines.extend(target_block(label, stats))
    output = plan.output
    hidden = not output.list_mode or (output.open_only and result.attempts > result.outcomes[OPEN])
    if hidden and not result.per_target:
        lines.append(count_line(result))
    if not output.list_mode and result.ports:
        for (host, address), bitmaps in result.ports.items():
            name = host if address is None or address == host else f"{host} ({address})"
            for outcome in OUTCOMES:
                if outcome in bitmaps:
                    lines.append(f"{name}: {outcome} {_ports_line(result, bitmaps, outcome)}")
    if result.elapsed > LAG_SHOWN_AFTER or (
        result.lag_p99_ms > LAG_SHOWN_ABOVE_MS and result.lag_samples >= LAG_SAMPLES
    ):
        lines.append(
            f"event loop lag p99 {result.lag_p99_ms:.1f} ms, max {result.lag_max_ms:.1f} ms"
        )
    if result.stopped_by and plan.count != 0:  # -c 0 runs until interrupted: its usual end
        lines.append(interrupted_line(plan, result))
    return lines


def _ports_line(result: ShareResult, bitmaps: dict[str, bytearray], outcome: str) -> str:
    """A host's ports of one outcome as ranges; after an interruption, ranges run on across
    the ports no worker reached, and the line says how many those are."""
    probed = bitmaps.get(PROBED)
    if not result.stopped_by or probed is None:
        return compact(port_ranges(bitmaps[outcome]))
    ranges = bridged_ranges(bitmaps[outcome], probed)
    text = compact(ranges)
    skipped = unprobed_in(ranges, probed)
    if skipped:
        text += f" ({plural(skipped, 'port')} inside not probed: interrupted)"
    return text


def interrupted_line(plan: Plan, result: ShareResult) -> str:
    """`interrupted: 6915 of 65535 endpoints probed` (repeat mode: attempts made)."""
    if plan.repeat:
        total = None if plan.endpoints is None else plan.endpoints * plan.count
        done, noun, verb = result.attempts, "attempt", "made"
    else:
        total = plan.endpoints if plan.shard is None else None
        # one record per endpoint (and address) so far: the run ended before its tally
        done, noun, verb = max(result.targets, result.attempts), "endpoint", "probed"
    if total is not None:
        done = min(done, total)
    if total is None:
        return f"interrupted: {plural(done, noun)} {verb}"
    return f"interrupted: {done} of {plural(total, noun)} {verb}"


def count_line(result: ShareResult) -> str:
    outcomes = result.outcomes
    total = result.attempts
    elapsed = result.elapsed
    rate = total / elapsed if elapsed > 0 else 0.0
    rest = [
        f"{outcomes[o]} {o}"
        for o in OUTCOMES
        if o != OPEN
        if outcomes[o] or o in (REFUSED, TIMEOUT)
    ]
    line = (
        f"{plural(total, 'attempt')} in {elapsed:.2f} s ({rate:.0f}/s): "
        f"{outcomes[OPEN]} open; {', '.join(rest)} not shown"
    )
    if result.excluded:
        line += f"; {plural(result.excluded, 'endpoint')} excluded"
    return line
