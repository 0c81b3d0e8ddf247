"""The status page: `GET /` (HTML, inline SVG charts) and `GET /api/targets` (the same, JSON).

One latency scale for the whole page (the slowest answer among its rows, rounded up to a
readable number), written on the chart column's header; a 90-day uptime bar per row from the
durable store (target_page.py draws a target's own page, badge.py its badge).

Built from the history the daemon keeps, on the daemon's loop, touching only what the page
shows: the order and the counts come from status_order (a byte per target, kept current from
the history's log of state changes, no pass over 10,000 targets per build), and only the
requested page's rows are built, a few between two yields to the loop. A rendered answer is
kept for MAX_AGE seconds and concurrent requests for the same one share a single build, so
browsers left open cost one build a second at most. Every text from the config (names,
addresses, labels) is escaped; the page runs only our own script, from /static/status.js,
under a strict CSP.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlencode

import msgspec
from aiohttp import web
from multidict import MultiMapping

from ..address import host_port
from . import target_page
from .badge import badge_svg
from .config import ResolvedTarget
from .history import BUCKET_SECONDS, BUCKETS, Bucket, History, TargetHistory, updown
from .pagetext import _clock, _duration, _e, _iso, _ms, _nice, _response, _round
from .status_order import DOWN, UNKNOWN, UP, Order
from .store import Store

T = TypeVar("T")
MAX_AGE = 1.0  # seconds a rendered page or JSON answer is reused
ROW_CHUNK = 2  # rows built between two yields (a full hour's row: ~0.3 ms)
HTML_CHUNK = 10  # rows rendered between two yields (a new row's HTML: ~30 µs)
JSON_CHUNK = 20  # rows encoded between two yields (~14 µs a row)
PER_PAGE = 100  # rows on one page; the rest are a click (or ?page=N) away
LABELS_SHOWN = 50  # label filters offered as links
CACHE_ENTRIES = 64  # distinct query strings cached at once
ROW_CACHE = 20 * PER_PAGE  # rows kept for reuse
CHART_W, CHART_H = 240, 36  # the chart's coordinates
SHOWN_W = 180  # its width on the page
DAYS = 90  # the uptime bar's length
BADGE_DAYS = 30  # the badge's uptime span
_FULL = 100.0
DAYS_MAX_AGE = 60.0  # seconds a target's bar is reused (it changes once a minute at most)
DAY_STEP, DAY_H = 2, 14  # one day's mark in the bar (1.5 drawn, 0.5 gap: status.css)

COLUMNS = ("name", "address", "state", "since", "last outcome", "local endpoint", "latency",
           "RTT", "uptime", "last hour", "90 days", "state changes")  # fmt: skip
# Each cell's class (the narrow layout shows name, state, since and outcome first; the rest
# on a tap), in COLUMNS order.
CELL_CLASSES = ("name", "address", "state", "since", "outcome", "local", "num latency",
                "num rtt", "num uptime", "chart", "days", "changes")  # fmt: skip


class QueryError(ValueError):
    """A malformed query string: 400 with this message."""


# -- what the page shows (also the JSON of /api/targets) ---------------------------------------


class Chart(msgspec.Struct, gc=False):
    """SVG path data (viewBox 0 0 CHART_W CHART_H): the p50 line, the p50..max smoke, and a
    red mark per minute with failures (its height the share failed)."""

    scale_ms: float
    p50: str
    smoke: str
    fail: str


class ChangeRow(msgspec.Struct, gc=False, rename={"before": "from", "after": "to"}):
    at: str
    before: str
    after: str
    reason: str | None
    text: str


class Row(msgspec.Struct, gc=False):  # no cycles: the collector need not look
    name: str
    address: str
    labels: dict[str, str]
    state: str
    since: str | None
    outcome: str | None
    error: str | None
    local: str | None
    latency_ms: float | None
    rtt_ms: float | None
    last: str | None
    uptime_pct: float | None
    attempts: int  # in the window
    # Tuples, not lists: once the collector has seen a row it stops tracking it, so rows
    # kept for reuse are not scanned by every full collection.
    cells: tuple[str, ...]  # the text columns as shown, in COLUMNS order up to "uptime"
    chart: Chart
    buckets: tuple[tuple[float, int, int, float | None, float | None] | None, ...]
    changes: tuple[ChangeRow, ...]  # newest first
    high_ms: float | None = None  # the slowest answer of the window: the page's scale
    # Uptime % of each of the last DAYS days, oldest first (None: no attempt that day).
    days: tuple[float | None, ...] = ()
    # Optional columns (Page.extra_columns), by column name: what later stages add.
    extra: dict[str, str] = {}


class Group(msgspec.Struct, gc=False):
    name: str  # "" when not grouped
    rows: list[Row]


class Page(msgspec.Struct, gc=False, kw_only=True):
    generated: str
    window_s: int = BUCKETS * BUCKET_SECONDS  # the format's own figures, the same every page
    bucket_s: int = BUCKET_SECONDS
    total: int  # targets in the config
    matched: int  # after the label filter
    counts: dict[str, int]  # up/down/unknown among the matched
    page: int
    pages: int
    per_page: int = PER_PAGE
    labels: list[str]  # the filters asked for, KEY:VALUE
    group: str
    offered: list[str]  # label filters the config has (capped)
    groups: list[Group]
    scale_ms: float = 1.0  # every chart's top: one latency scale for the page
    days_from: str = ""  # the first day of the uptime bars, YYYY-MM-DD (UTC)
    extra_columns: list[str] = []  # optional columns, shown after "RTT"


@dataclass(frozen=True, slots=True)
class Query:
    labels: tuple[tuple[str, str], ...] = ()
    group: str = ""
    page: int = 1

    @classmethod
    def parse(cls, query: MultiMapping[str]) -> Query:
        labels: list[tuple[str, str]] = []
        for text in query.getall("label", []):
            key, sep, value = text.partition(":")
            if not sep or not key:
                raise QueryError(f"bad label filter {text!r}: write KEY:VALUE, e.g. team:net")
            labels.append((key, value))
        group = query.get("group", "")
        page_text = query.get("page", "1")
        if not (page_text.isascii() and page_text.isdigit()) or len(page_text) > 6:
            raise QueryError(f"bad page {page_text!r}: a number from 1")
        return cls(tuple(labels), group, max(1, int(page_text)))

    def string(self, **change: Any) -> str:
        labels = change.get("labels", self.labels)
        pairs = [("label", f"{k}:{v}") for k, v in labels]
        group = change.get("group", self.group)
        if group:
            pairs.append(("group", group))
        page = change.get("page", self.page)
        if page != 1:
            pairs.append(("page", str(page)))
        return "?" + urlencode(pairs) if pairs else "?"


# -- building -----------------------------------------------------------------------------------


class StatusPage:
    def __init__(
        self,
        targets: Callable[[], Iterable[ResolvedTarget]],
        history: History,
        clock: Callable[[], float] = time.time,
        store: Callable[[], Store | None] = lambda: None,
        extra_columns: tuple[str, ...] = (),
        extras: Callable[[str], dict[str, str]] | None = None,
    ) -> None:
        """`extra_columns` and `extras` (name → {column: text}) add optional columns: the
        place for what later stages know of a target (TLS version, days to expiry)."""
        self._targets = targets
        self._history = history
        self._clock = clock
        self._store = store  # the daemon's durable store, once it is open (None: none)
        self._extra_columns = extra_columns
        self._extras = extras
        self._days: dict[str, tuple[float, tuple[float | None, ...]]] = {}
        self._cache: dict[tuple[str, Query], tuple[float, object]] = {}
        self._building: dict[tuple[str, Query], asyncio.Task[Any]] = {}
        self._rows: dict[str, tuple[tuple[float | None, int], ResolvedTarget, Row]] = {}
        self._order = Order(history)
        self._kept_html: dict[str, tuple[Row, tuple[str, str]]] = {}

    async def answer(self, kind: str, query: Query) -> bytes:
        """The rendered page ("html") or JSON ("json"), from the cache when fresh enough;
        both are rendered from one build of the page."""
        return await self._once((kind, query), lambda: self._render(kind, query))

    async def _render(self, kind: str, query: Query) -> bytes:
        page = await self._once(("page", query), lambda: self.build(query))
        if kind == "html":
            return await render_html(page, query, self._parts)
        return await render_json(page)

    async def _once(self, key: tuple[str, Query], make: Callable[[], Awaitable[T]]) -> T:
        """`make()` at most once per MAX_AGE per key, however many ask. It runs as a task of
        its own: a client that hangs up does not cancel it for the others waiting on it."""
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < MAX_AGE:
            return cast(T, cached[1])
        task = self._building.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._keep(key, make()))
            self._building[key] = task
            task.add_done_callback(lambda _: self._building.pop(key, None))
        return cast(T, await asyncio.shield(task))

    async def _keep(self, key: tuple[str, Query], made: Awaitable[T]) -> T:
        value = await made
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()  # crafted query strings cannot grow it without bound
        self._cache[key] = (time.monotonic(), value)
        return value

    async def build(self, query: Query) -> Page:
        now = self._clock()
        order = self._order
        await order.sync(list(self._targets()), LABELS_SHOWN)
        selection = await order.selection(query.labels, query.group)
        matched = sum(len(order.targets) if p is None else len(p) for _, p in selection)
        pages = max(1, math.ceil(matched / PER_PAGE))
        page = min(query.page, pages)
        counted, picked = order.pick(selection, (page - 1) * PER_PAGE, PER_PAGE)
        counts = {"down": counted[DOWN], "unknown": counted[UNKNOWN], "up": counted[UP]}
        targets, histories = order.targets, self._history.targets
        groups: list[Group] = []
        made = 0
        for group, positions in picked:
            name = f"{query.group}: {group or '(none)'}" if query.group else ""
            rows: list[Row] = []
            groups.append(Group(name, rows))
            for n in positions:
                made += 1
                if made % ROW_CHUNK == 0:
                    await asyncio.sleep(0)
                target = targets[n]
                rows.append(self._row(target, histories.get(target.name), now))
        highs = [r.high_ms for g in groups for r in g.rows if r.high_ms is not None]
        scale = _nice(max(highs)) if highs else 1.0
        today = int(now // 86400)
        days = await self._bars([r.name for g in groups for r in g.rows], today)
        extras = self._extras
        for g in groups:
            for i, row in enumerate(g.rows):
                bar = days.get(row.name, ())
                extra = extras(row.name) if extras is not None else {}
                if row.chart.scale_ms != scale or row.days != bar or row.extra != extra:
                    row = g.rows[i] = msgspec.structs.replace(
                        row, chart=_chart(row.buckets, scale), days=bar, extra=extra
                    )
                    self._keep_row(row)
        return Page(
            generated=_iso(now),
            total=len(targets),
            matched=matched,
            counts=counts,
            page=page,
            pages=pages,
            labels=[f"{k}:{v}" for k, v in query.labels],
            group=query.group,
            offered=order.offered,
            groups=groups,
            scale_ms=scale,
            days_from=time.strftime("%Y-%m-%d", time.gmtime((today - DAYS + 1) * 86400)),
            extra_columns=list(self._extra_columns),
        )

    async def _bars(self, names: list[str], today: int) -> dict[str, tuple[float | None, ...]]:
        """Each name's uptime by day from the store (read on its thread), kept a minute."""
        store = self.store
        if store is None:
            return {}
        clock = time.monotonic()
        kept = self._days
        missing = [n for n in names if (k := kept.get(n)) is None or k[0] < clock]
        if missing:
            first = today - DAYS + 1
            got = await store.days(missing, first)
            if len(kept) >= ROW_CACHE:
                kept.clear()
            for name in missing:
                by_day = got.get(name, {})
                bar = tuple(
                    None if not (af := by_day.get(d)) or not af[0]
                    else _FULL if not af[1]  # one shared object for the usual day
                    else round(100.0 * (af[0] - af[1]) / af[0], 3)
                    for d in range(first, today + 1)
                )  # fmt: skip
                kept[name] = (clock + DAYS_MAX_AGE, bar)
        return {n: kept[n][1] for n in names if n in kept}

    @property
    def store(self) -> Store | None:
        return self._store()

    def _keep_row(self, row: Row) -> None:
        kept = self._rows.get(row.name)
        if kept is not None:
            self._rows[row.name] = (kept[0], kept[1], row)

    def _row(self, target: ResolvedTarget, history: TargetHistory | None, now: float) -> Row:
        """A row changes when a record comes or a minute ends; between, only its "since"
        does. Rows are kept and reused until then (most targets are polled more often
        than they are probed)."""
        if history is None:
            return _row(target, None, now)
        version = (history.last_at, int(now // BUCKET_SECONDS))
        kept = self._rows.get(target.name)
        if kept is not None and kept[0] == version and kept[1] is target:
            row = kept[2]
            if history.since is not None:
                since = _duration(now - history.since)
                if since != row.cells[3]:
                    row.cells = (*row.cells[:3], since, *row.cells[4:])
            return row
        row = _row(target, history, now)
        if len(self._rows) >= ROW_CACHE:
            self._rows.clear()
        self._rows[target.name] = (version, target, row)
        return row

    def _parts(self, row: Row) -> tuple[str, str]:
        """row_parts, kept for as long as the row itself is kept."""
        kept = self._kept_html.get(row.name)
        if kept is not None and kept[0] is row:
            return kept[1]
        parts = row_parts(row, self._extra_columns)
        if len(self._kept_html) >= ROW_CACHE:
            self._kept_html.clear()
        self._kept_html[row.name] = (row, parts)
        return parts

    # -- aiohttp ---------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self._html),
            web.get("/api/targets", self._json),
            web.get("/target/{name:.+}", self._target),
            web.get("/badge/{file:.+}", self._badge),
            web.get("/static/status.js", _static("status.js", "text/javascript")),
            web.get("/static/target.js", _static("target.js", "text/javascript")),
            web.get("/static/status.css", _static("status.css", "text/css")),
        ]

    async def _find(self, name: str) -> ResolvedTarget | None:
        await self._order.sync(list(self._targets()), LABELS_SHOWN)
        return self._order.find(name)

    async def _target(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        target = await self._find(name)
        ctype = "text/html; charset=utf-8"
        if target is None:
            return _response(404, target_page.not_found(name), ctype)
        history = self._history.get(name)
        return _response(200, await target_page.render(target, history, self.store,
                                                       self._clock()), ctype)  # fmt: skip

    async def _badge(self, request: web.Request) -> web.Response:
        """State and uptime: over BADGE_DAYS days from the store, else over the hour."""
        file = request.match_info["file"]
        name = file.removesuffix(".svg")
        target = await self._find(name) if file.endswith(".svg") else None
        if target is None:
            return _response(404, b"no such target\n", "text/plain; charset=utf-8")
        history = self._history.get(name)
        now = self._clock()
        attempts = failures = 0
        span = "1 h"
        if self.store is not None:
            today = int(now // 86400)
            days = (await self.store.days([name], today - BADGE_DAYS + 1)).get(name, {})
            attempts = sum(a for a, _ in days.values())
            failures = sum(f for _, f in days.values())
            span = f"{BADGE_DAYS} d"
        if not attempts and history is not None:
            attempts, failures = _totals(history.buckets(now))
            span = "1 h"
        uptime = 100.0 * (attempts - failures) / attempts if attempts else None
        state = updown(None if history is None else history.state)
        return _response(200, badge_svg(name, state, uptime, span), "image/svg+xml")

    async def _html(self, request: web.Request) -> web.Response:
        return await self._respond(request, "html", "text/html; charset=utf-8")

    async def _json(self, request: web.Request) -> web.Response:
        return await self._respond(request, "json", "application/json")

    async def _respond(self, request: web.Request, kind: str, ctype: str) -> web.Response:
        try:
            query = Query.parse(request.query)
        except QueryError as exc:
            return _response(400, (str(exc) + "\n").encode(), "text/plain; charset=utf-8")
        return _response(200, await self.answer(kind, query), ctype)


def _static(name: str, ctype: str) -> Callable[[web.Request], Any]:
    body = resources.files(__package__).joinpath("static", name).read_bytes()

    async def handler(_: web.Request) -> web.Response:
        return _response(200, body, f"{ctype}; charset=utf-8")

    return handler


_encode = msgspec.json.Encoder().encode


async def render_json(page: Page) -> bytes:
    """The page as JSON, its rows encoded a few at a time between yields to the loop (the
    whole page at once, ~120 KiB, held the loop for over a millisecond)."""
    groups: list[msgspec.Raw] = []
    for group in page.groups:
        rows: list[bytes] = []
        for n, row in enumerate(group.rows, 1):
            rows.append(_encode(row))
            if n % JSON_CHUNK == 0:
                await asyncio.sleep(0)
        head = _encode(msgspec.structs.replace(group, rows=[]))[:-2]  # up to `"rows":[`
        groups.append(msgspec.Raw(head + b",".join(rows) + b"]}"))
    return _encode(msgspec.structs.replace(page, groups=cast(list[Group], groups)))


def _totals(buckets: Iterable[Bucket | None]) -> tuple[int, int]:
    """(attempts, failures) over a window's minutes."""
    attempts = failures = 0
    for b in buckets:
        if b is not None:
            attempts += b.attempts
            failures += b.failures
    return attempts, failures


def _row(target: ResolvedTarget, history: TargetHistory | None, now: float) -> Row:
    labels = dict(target.labels)
    if history is None:
        cells = (target.name, target.address, "unknown", "", "", "", "", "", "")
        return Row(target.name, target.address, labels, "unknown", None, None, None, None,
                   None, None, None, None, 0, cells, _chart(()), (None,) * BUCKETS, ())  # fmt: skip
    buckets = history.buckets(now)
    attempts, failures = _totals(buckets)
    opened = attempts - failures
    uptime = 100.0 * opened / attempts if attempts else None
    state = updown(history.state)
    port = history.local_port
    local = None if port is None else host_port(history.local_address or "?", port)
    outcome = history.outcome or ""
    if history.error:
        outcome = f"{outcome} {history.error}"
    cells = (
        target.name,
        target.address,
        state,
        "" if history.since is None else _duration(now - history.since),
        outcome,
        local or "",
        _ms(history.latency_ms),
        _ms(history.rtt_ms),
        "" if uptime is None else f"{uptime:.1f} %",
    )
    kept = tuple(
        None if b is None else (b.start, b.attempts, b.failures, _round(b.p50_ms), _round(b.max_ms))
        for b in buckets
    )
    highs = [b.max_ms for b in buckets if b is not None and b.max_ms is not None]
    changes = tuple(
        ChangeRow(_iso(c.at), c.before, c.after, c.reason,
                  f"{_clock(c.at)} {c.before}→{c.after}" + (f" {c.reason}" if c.reason else ""))
        for c in reversed(history.changes)
    )  # fmt: skip
    return Row(
        name=target.name,
        address=target.address,
        labels=labels,
        state=state,
        since=None if history.since is None else _iso(history.since),
        outcome=history.outcome,
        error=history.error,
        local=local,
        latency_ms=_round(history.latency_ms),
        rtt_ms=_round(history.rtt_ms),
        last=None if history.last_at is None else _iso(history.last_at),
        uptime_pct=None if uptime is None else round(uptime, 3),
        attempts=attempts,
        cells=cells,
        chart=_chart(kept),
        buckets=kept,
        changes=changes,
        high_ms=max(highs) if highs else None,
    )


_STEP = f"{CHART_W / BUCKETS:g}"
_LEFT = [f"{i * CHART_W / BUCKETS:g}" for i in range(BUCKETS)]


Kept = tuple[float, int, int, float | None, float | None]  # Row.buckets' entries


def _chart(buckets: Iterable[Bucket | Kept | None], scale: float | None = None) -> Chart:
    """SmokePing's picture in a few paths: linear scale from 0 to `scale` (the page's), or
    to the window's max."""
    entries = [
        b if b is None or isinstance(b, Bucket) else Bucket(b[0], b[1], b[2], (), b[3], b[4])
        for b in buckets
    ]
    if scale is None:
        highs = [b.max_ms for b in entries if b is not None and b.max_ms is not None]
        scale = _nice(max(highs)) if highs else 1.0
    per_ms = CHART_H / scale
    p50: list[str] = []
    smoke: list[str] = []
    fail: list[str] = []
    pen_down = False
    for left, b in zip(_LEFT, entries, strict=False):
        if b is None:
            pen_down = False
            continue
        mid = b.p50_ms
        if mid is None:
            pen_down = False
        else:  # a step line: one flat stroke per minute, joined to its neighbours
            y = f"{CHART_H - per_ms * min(mid, scale):.1f}"
            p50.append(f"{'L' if pen_down else 'M'}{left} {y}h{_STEP}")
            pen_down = True
            top = b.max_ms
            if top is not None and top > mid:
                smoke.append(f"M{left} {CHART_H - per_ms * top:.1f}h{_STEP}V{y}h-{_STEP}z")
        if b.failures:
            h = max(2.0, CHART_H * b.failures / b.attempts)
            fail.append(f"M{left} {CHART_H - h:.1f}h{_STEP}v{h:.1f}h-{_STEP}z")
    return Chart(scale, "".join(p50), "".join(smoke), "".join(fail))


# -- HTML ---------------------------------------------------------------------------------------


async def render_html(
    page: Page, query: Query, parts: Callable[[Row], tuple[str, str]] | None = None
) -> bytes:
    """The page as HTML; `parts` gives a row's HTML around its "since" cell (row_parts, or
    a cache of it)."""
    parts = parts or row_parts
    out: list[str] = [
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light dark">'
        "<title>probe status</title>"
        '<link rel="stylesheet" href="/static/status.css">'
        '<script src="/static/status.js" defer></script></head><body>'
        '<header><h1>probe</h1><p id="summary">',
        _e(summary(page)),
        '</p><div id="announce" class="sr-only" role="status" aria-live="polite"></div>'
        '<nav id="filters">',
    ]
    out.append(f'<a href="{_e(query.string(labels=(), page=1))}">all</a>')
    for text in page.offered:
        key, _, value = text.partition(":")
        href = query.string(labels=((key, value),), page=1)
        current = ' class="current"' if text in page.labels else ""
        out.append(f' <a href="{_e(href)}"{current}>{_e(text)}</a>')
    keys = sorted({t.partition(":")[0] for t in page.offered})
    if keys:
        out.append(' <span class="sep">group by</span>')
        out.append(f' <a href="{_e(query.string(group="", page=1))}">none</a>')
        for key in keys:
            current = ' class="current"' if key == page.group else ""
            href = _e(query.string(group=key, page=1))
            out.append(f' <a href="{href}"{current}>{_e(key)}</a>')
    out.append('</nav></header><main><table id="targets"><thead><tr>')
    heads = header_cells(page)
    out.extend(heads)
    out.append("</tr></thead>")
    n = 0
    for group in page.groups:
        out.append(f'<tbody data-group="{_e(group.name)}">')
        if group.name:
            out.append(f'<tr class="group"><th colspan="{len(heads)}">{_e(group.name)}</th></tr>')
        for row in group.rows:
            n += 1
            if n % HTML_CHUNK == 0:
                await asyncio.sleep(0)
            head, tail = parts(row)
            out.extend((head, _e(row.cells[3]), tail))
        out.append("</tbody>")
    out.append("</table>")
    if page.pages > 1:
        out.append('<nav id="pages">')
        for p in range(1, page.pages + 1):
            current = ' class="current"' if p == page.page else ""
            out.append(f' <a href="{_e(query.string(page=p))}"{current}>{p}</a>')
        out.append("</nav>")
    out.append("</main></body></html>\n")
    return "".join(out).encode()


def header_cells(page: Page) -> list[str]:
    """The table's header: the chart column carries the page's one latency scale, the days
    column the first day; optional columns go after RTT."""
    cells: list[str] = []
    for name, cls in zip(COLUMNS, CELL_CLASSES, strict=True):
        if name == "last hour":
            text = (f'last hour <span id="scale" class="axis">0 to {_e(_scale(page.scale_ms))}'
                    "</span>")  # fmt: skip
        elif name == "90 days":
            text = f'90 days <span id="days-from" class="axis">from {_e(page.days_from)}</span>'
        else:
            text = _e(name)
        cells.append(f'<th class="{cls}">{text}</th>')
        if name == "RTT":
            cells.extend(f'<th class="extra">{_e(c)}</th>' for c in page.extra_columns)
    return cells


def _scale(ms: float) -> str:
    return f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"


def summary(page: Page) -> str:
    c = page.counts
    head = f"{page.matched} targets" if page.matched == page.total else (
        f"{page.matched} of {page.total} targets")  # fmt: skip
    text = f"{head}: {c['up']} up, {c['down']} down, {c['unknown']} unknown"
    if page.pages > 1:
        text += f" · page {page.page} of {page.pages}"
    return f"{text} · {page.generated}"


def target_href(name: str) -> str:
    """The target's own page (any character of a name survives the trip)."""
    return "/target/" + quote(name, safe="")


def row_parts(row: Row, extra_columns: Iterable[str] = ()) -> tuple[str, str]:
    """A row's HTML before and after its "since" cell: the only part that changes while a
    row is kept, so the rest is made once per row, not once per build."""
    c = [_e(text) for text in row.cells]
    labels = " ".join(f"{k}={v}" for k, v in row.labels.items())
    name = (
        f'<a href="{_e(target_href(row.name))}">{c[0]}</a>'
        + (f'<div class="labels">{_e(labels)}</div>' if labels else "")
        + '<button type="button" class="more" aria-expanded="false">details</button>'
    )
    state = _e(row.state)
    changes = "".join(f"<li>{_e(ch.text)}</li>" for ch in row.changes)
    ch = row.chart
    svg = (
        f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" width="{SHOWN_W}" '
        f'height="{CHART_H}" preserveAspectRatio="none" role="img">'
        f"<title>p50 and max per minute, 0 to "
        f"{ch.scale_ms:g} ms; red: failures</title>"
        f'<path class="fail" d="{_e(ch.fail)}"/><path class="smoke" d="{_e(ch.smoke)}"/>'
        f'<path class="p50" d="{_e(ch.p50)}"/></svg>'
    )
    extra = "".join(
        f'<td class="extra" data-col="{_e(col)}">{_e(row.extra.get(col, ""))}</td>'
        for col in extra_columns
    )
    return (
        f'<tr class="target state-{state}" data-name="{c[0]}"><td class="name">{name}</td>'
        f'<td class="address">{c[1]}</td><td class="state">{c[2]}</td><td class="since">',
        f'</td><td class="outcome">{c[4]}</td><td class="local">{c[5]}</td>'
        f'<td class="num latency">{c[6]}</td><td class="num rtt">{c[7]}</td>{extra}'
        f'<td class="num uptime">{c[8]}</td><td class="chart">{svg}</td>'
        f'<td class="days">{days_svg(row.days)}</td>'
        f'<td class="changes"><ul class="changes">{changes}</ul></td></tr>',
    )


DAY_CLASSES = ("none", "bad", "warn", "ok")


def day_class(pct: float | None) -> int:
    """A day's mark: no data, under 99 %, under 99.9 %, or at least 99.9 % up."""
    if pct is None:
        return 0
    return 3 if pct >= 99.9 else (2 if pct >= 99.0 else 1)


def days_svg(days: tuple[float | None, ...]) -> str:
    """The uptime bar: one mark per day, drawn as a dashed stroke per run of days of the same
    kind (a few dozen bytes for a steady target, whatever the number of days)."""
    paths: list[list[str]] = [[], [], [], []]
    run_start, kind = 0, -1
    for i, pct in enumerate((*days, -1.0)):
        k = -1 if pct == -1.0 else day_class(pct)
        if k != kind:
            if kind >= 0:
                paths[kind].append(
                    f"M{run_start * DAY_STEP} {DAY_H / 2:g}h{(i - run_start) * DAY_STEP}"
                )
            run_start, kind = i, k
    known = [p for p in days if p is not None]
    worst = f"; worst day {min(known):.2f} %" if known else ""
    title = f"uptime by day, {len(known)} days with attempts{worst}"
    width = DAYS * DAY_STEP
    body = "".join(
        f'<path class="day-{DAY_CLASSES[k]}" d="{"".join(d)}"/>' for k, d in enumerate(paths) if d
    )
    return (
        f'<svg class="days" viewBox="0 0 {width} {DAY_H}" width="{width}" height="{DAY_H}" '
        f'role="img"><title>{_e(title)}</title>{body}</svg>'
    )
