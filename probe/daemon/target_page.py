"""One target's page, `GET /target/NAME`: latency and failures over the last hour, 24 hours,
7 days and 30 days, every state change with its reason, the last attempts with their local
endpoints.

The hour comes from memory (history.py), the longer spans from the durable store (store.py,
read on its thread). Every chart on the page shares one latency scale, written on its axis;
each column is a median band (lowest to highest per-minute p50 within it), a mark for the
slowest answer, and a red bar for the share of attempts that failed. Charts take the
keyboard: Tab to one, arrow keys (Home, End) walk its columns and the readout below says
what the column holds (static/target.js; the page works without it). Every text from the
config or the network is escaped.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

from ..address import host_port
from .config import ResolvedTarget
from .history import TargetHistory, updown
from .pagetext import _duration, _e, _iso, _ms, _nice
from .store import Column, Seen, Store

CHANGES_SHOWN = 500  # state changes listed (the store keeps them for its retention)
W, H, LEFT, STRIP = 720, 120, 56, 18  # chart: plot width, plot height, axis, failure strip


class Span(NamedTuple):
    title: str
    seconds: int
    width: int  # seconds per column


SPANS = (
    Span("last hour", 3600, 60),
    Span("last 24 hours", 86400, 900),
    Span("last 7 days", 7 * 86400, 7200),
    Span("last 30 days", 30 * 86400, 28800),
)


def _hour(history: TargetHistory | None, now: float) -> list[Column]:
    if history is None:
        return []
    return [
        Column(b.start, b.attempts, b.failures, b.p50_ms, b.p50_ms, b.max_ms)
        for b in history.buckets(now)
        if b is not None
    ]


async def render(
    target: ResolvedTarget, history: TargetHistory | None, store: Store | None, now: float
) -> bytes:
    spans: list[list[Column]] = [_hour(history, now)]
    for span in SPANS[1:]:
        start = (now // span.width + 1) * span.width - span.seconds  # columns on the clock
        spans.append(await store.columns(target.name, start, now, span.width) if store else [])
    if store is not None:
        changes = await store.changes(target.name, CHANGES_SHOWN)
        attempts = await store.attempts(target.name)
    else:
        changes, attempts = [], []
    if not changes and history is not None:  # no store: what memory holds
        changes = [(c.at, c.before, c.after, c.reason) for c in reversed(history.changes)]
    if not attempts and history is not None and history.last_at is not None:
        h = history
        attempts = [Seen(target.name, h.last_at or 0.0, h.outcome or "", h.error,
                         h.local_address, h.local_port, h.latency_ms or 0.0, h.rtt_ms)]  # fmt: skip
    highs = [c.max_ms for cols in spans for c in cols if c.max_ms is not None]
    scale = _nice(max(highs)) if highs else 1.0
    out = [_head(target, history, now)]
    out.append(f'<section aria-labelledby="lat"><h2 id="lat">Latency and failures</h2>'
               f'<p class="note">One scale for every chart: 0 to {_e(_scale(scale))}. '
               "Band: lowest to highest median; mark: slowest answer; red: share of attempts "
               "failed. Focus a chart and use the arrow keys to read its columns.</p>")  # fmt: skip
    for k, (span, cols) in enumerate(zip(SPANS, spans, strict=True)):
        end = now if k == 0 else (now // span.width + 1) * span.width
        out.append(_figure(k, span, cols, scale, end))
    out.append("</section>")
    out.append(_changes(changes))
    out.append(_attempts(attempts))
    out.append("</main></body></html>\n")
    return "".join(out).encode()


def not_found(name: str) -> bytes:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>not found</title>'
        '<link rel="stylesheet" href="/static/status.css"></head><body><main>'
        f'<p>No target named <b class="name">{_e(name)}</b>. <a href="/">All targets</a></p>'
        "</main></body></html>\n"
    ).encode()


def _scale(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def _head(target: ResolvedTarget, history: TargetHistory | None, now: float) -> str:
    state = updown(None if history is None else history.state)
    since = ""
    if history is not None and history.since is not None:
        since = f" for {_duration(now - history.since)}, since {_iso(history.since)}"
    labels = " ".join(f"{k}={v}" for k, v in target.labels.items())
    last = ""
    if history is not None and history.outcome:
        last = history.outcome + (f" {history.error}" if history.error else "")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{_e(target.name)} · probe</title>"
        '<link rel="stylesheet" href="/static/status.css">'
        '<script src="/static/target.js" defer></script></head><body class="detail">'
        '<header><nav><a href="/" id="back">← all targets</a></nav>'
        f'<h1 class="name">{_e(target.name)}</h1>'
        f'<p class="summary state-{state}"><span class="state">{_e(state)}</span>'
        f"{_e(since)}</p>"
        f'<dl class="facts"><dt>address</dt><dd>{_e(target.address)}</dd>'
        + (f"<dt>labels</dt><dd>{_e(labels)}</dd>" if labels else "")
        + (f"<dt>last outcome</dt><dd>{_e(last)}</dd>" if last else "")
        + f"<dt>interval</dt><dd>{target.interval:g} s</dd>"
        + f"<dt>timeout</dt><dd>{target.timeout:g} s</dd></dl></header><main>"
    )


def _figure(k: int, span: Span, cols: list[Column], scale: float, end: float) -> str:
    n = span.seconds // span.width
    start = end - n * span.width
    step = W / n
    attempts = sum(c.attempts for c in cols)
    failures = sum(c.failures for c in cols)
    los = [c.p50_lo for c in cols if c.p50_lo is not None]
    his = [c.p50_hi for c in cols if c.p50_hi is not None]
    tops = [c.max_ms for c in cols if c.max_ms is not None]
    caption = f"{span.title}: {attempts} attempts, {failures} failed"
    if attempts:
        caption += f" ({100.0 * failures / attempts:.2f} %)"
    if los and his:
        caption += f"; median {_ms(min(los))} to {_ms(max(his))}"
    if tops:
        caption += f"; slowest {_ms(max(tops))}"
    per_ms = H / scale
    cw = f"{max(step - 0.5, 0.5):.2f}"  # a column's marks, a hair narrower than its step
    parts: list[str] = []
    for c in cols:
        i = int((c.start - start) // span.width)
        if not 0 <= i < n:
            continue
        x = LEFT + i * step
        text = _column_text(c, span.width)
        shapes = [f'<rect class="hit" x="{x:.1f}" y="0" width="{step:.2f}" height="{H + STRIP}"/>']
        if c.p50_lo is not None and c.p50_hi is not None:
            top = H - per_ms * min(c.p50_hi, scale)
            height = max(1.5, per_ms * (min(c.p50_hi, scale) - min(c.p50_lo, scale)))
            shapes.append(f'<rect class="band" x="{x:.1f}" y="{min(top, H - 1.5):.1f}" '
                          f'width="{cw}" height="{height:.1f}"/>')  # fmt: skip
        if c.max_ms is not None:
            y = H - per_ms * min(c.max_ms, scale)
            shapes.append(f'<rect class="slowest" x="{x:.1f}" y="{max(0.0, y - 1):.1f}" '
                          f'width="{cw}" height="1.5"/>')  # fmt: skip
        if c.failures and c.attempts:
            h = max(1.5, STRIP * c.failures / c.attempts)
            shapes.append(f'<rect class="fail" x="{x:.1f}" y="{H + STRIP - h:.1f}" '
                          f'width="{cw}" height="{h:.1f}"/>')  # fmt: skip
        parts.append(f'<g class="col" data-text="{_e(text)}">{"".join(shapes)}</g>')
    axis = "".join(
        f'<text class="tick" x="{LEFT - 6}" y="{H - H * f + 4:.0f}">{_e(_scale(scale * f))}</text>'
        f'<line class="grid" x1="{LEFT}" x2="{LEFT + W}" y1="{H - H * f:.0f}" '
        f'y2="{H - H * f:.0f}"/>'
        for f in (0.0, 0.5, 1.0)
    )
    times = (
        f'<text class="when" x="{LEFT}" y="{H + STRIP + 14}">{_e(_when(start))}</text>'
        f'<text class="when end" x="{LEFT + W}" y="{H + STRIP + 14}">{_e(_when(end))}</text>'
    )
    box = f"0 -6 {LEFT + W + 4} {H + STRIP + 24}"
    label = f"{caption}. Arrow keys: columns of {_every(span.width)}."
    return (
        f'<figure class="span" id="span-{k}"><figcaption>{_e(caption)}</figcaption>'
        f'<svg class="history" viewBox="{box}" tabindex="0" role="group" '
        f'aria-label="{_e(label)}" aria-describedby="readout-{k}">'
        f"{axis}{''.join(parts)}{times}"
        f'</svg><p class="readout" id="readout-{k}" aria-live="polite"></p></figure>'
    )


def _every(seconds: int) -> str:
    return f"{seconds // 60} minutes" if seconds < 3600 else f"{seconds // 3600} hours"


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(epoch)) + "Z"


def _column_text(c: Column, width: int) -> str:
    text = f"{_when(c.start)} + {_every(width) if width != 60 else '1 minute'}: "
    text += f"{c.attempts} attempts, {c.failures} failed"
    if c.p50_lo is not None and c.p50_hi is not None:
        band = _ms(c.p50_lo) if c.p50_lo == c.p50_hi else f"{_ms(c.p50_lo)} to {_ms(c.p50_hi)}"
        text += f"; median {band}"
    if c.max_ms is not None:
        text += f"; slowest {_ms(c.max_ms)}"
    return text


def _changes(changes: list[tuple[float, str, str, str | None]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(_iso(at))}</td><td>{_e(before)} → {_e(after)}</td>"
        f"<td>{_e(reason or '')}</td></tr>"
        for at, before, after, reason in changes
    )
    empty = "" if changes else '<tr><td colspan="3">none recorded</td></tr>'
    return (
        '<section aria-labelledby="chg"><h2 id="chg">State changes</h2>'
        '<table class="list"><thead><tr><th>when (UTC)</th><th>change</th><th>reason</th>'
        f"</tr></thead><tbody>{rows}{empty}</tbody></table></section>"
    )


def _attempts(attempts: list[Seen]) -> str:
    rows: list[str] = []
    for a in attempts:
        local = "" if a.local_port is None else host_port(a.local_address or "?", a.local_port)
        rtt = "" if a.rtt_ms is None or math.isnan(a.rtt_ms) else _ms(a.rtt_ms)
        rows.append(
            f"<tr><td>{_e(_iso_ms(a.at))}</td><td>{_e(a.outcome)}</td><td>{_e(a.error or '')}"
            f'</td><td class="local">{_e(local)}</td><td class="num">{_e(_ms(a.latency_ms))}'
            f'</td><td class="num">{_e(rtt)}</td></tr>'
        )
    empty = "" if attempts else '<tr><td colspan="6">none yet</td></tr>'
    return (
        '<section aria-labelledby="att"><h2 id="att">Last attempts</h2>'
        '<table class="list"><thead><tr><th>when (UTC)</th><th>outcome</th><th>error</th>'
        '<th>local endpoint</th><th class="num">latency</th><th class="num">RTT</th></tr>'
        f"</thead><tbody>{''.join(rows)}{empty}</tbody></table></section>"
    )


def _iso_ms(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
