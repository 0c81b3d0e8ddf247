"""/api/mesh (this node's row) and /mesh (the NxN matrix, drawn from every node's row).

The matrix page fetches the peers' rows itself, server-side: only from peer addresses
inside `[metrics] probe_allow` (as /probe may connect only there), a few at a time, each
within a deadline and a size cap, and keeps the assembled rows for a few seconds so that
many viewers cost one round of fetches. The page is plain HTML under a strict CSP: no
script, the one stylesheet from /static/mesh.css, every name escaped."""

from __future__ import annotations

import asyncio
import html
import ipaddress
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from ..record import format_timestamp
from ..serve.answer import endpoint_text
from ..syntax import allow_list
from .node import MeshNode

FETCH_TIMEOUT = 1.0  # seconds for one peer's row
FETCH_CONCURRENCY = 16
ROW_LIMIT = 1 << 20  # bytes of one peer's row
CACHE_MIN, CACHE_MAX = 1.0, 5.0  # seconds the assembled rows are kept (half an interval)
NAME_MAX = 128
MAX_NODES = 256  # the matrix's side at most: a peer's row cannot make the page unbounded

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class Rows:
    """Every node's row: this node's own, and each peer's as fetched (or why not)."""

    def __init__(self, rows: dict[str, dict[str, Any]], missing: dict[str, str], at: float):
        self.rows = rows  # node name -> its row
        self.missing = missing  # peer endpoint -> why its row is not here
        self.at = at


class MeshPage:
    def __init__(
        self, node: MeshNode, http_port: Callable[[], int], allow: Callable[[], Sequence[Network]]
    ) -> None:
        self.node = node
        self.http_port = http_port
        self.allow = allow
        self._cached: Rows | None = None
        self._refresh: asyncio.Task[Rows] | None = None
        self._session: aiohttp.ClientSession | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/mesh", self._api),
            web.get("/mesh", self._page),
            web.get("/static/mesh.css", _static("mesh.css", "text/css")),
        ]

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._session is not None:
            await self._session.close()

    # -- handlers --------------------------------------------------------------------------------

    async def _api(self, _: web.Request) -> web.Response:
        return _response(200, _encode(self.node.row()), "application/json")

    async def _page(self, request: web.Request) -> web.Response:
        src, dst = request.query.get("from"), request.query.get("to")
        if (src is None) != (dst is None) or any(
            q is not None and (len(q) > NAME_MAX or not q.isprintable()) for q in (src, dst)
        ):
            return _response(400, b"give both from=NAME and to=NAME, or neither\n", "text/plain")
        rows = await self.rows()
        if src is not None and dst is not None:
            pair = rows.rows.get(src, {}).get("peers", {}).get(dst)
            if pair is None:
                return _response(404, b"no such pair\n", "text/plain")
            return _response(200, render_pair(src, dst, pair).encode(), "text/html")
        return _response(200, render_matrix(rows, self.node.name).encode(), "text/html")

    # -- the rows --------------------------------------------------------------------------------

    async def rows(self) -> Rows:
        cached = self._cached
        ttl = min(CACHE_MAX, max(CACHE_MIN, self.node.interval / 2))
        if cached is not None and time.monotonic() - cached.at < ttl:
            return cached
        if self._refresh is None or self._refresh.done():  # one round of fetches at a time
            self._refresh = asyncio.ensure_future(self._fetch_all())
        return await asyncio.shield(self._refresh)

    async def _fetch_all(self) -> Rows:
        node = self.node
        own = node.row()
        rows = {own["node"]: own}
        missing: dict[str, str] = {}
        port = self.http_port()
        allowed = allow_list(self.allow())  # as /probe judges it, IPv4-mapped included
        addresses = sorted({address for address, _ in node.pairs})
        gate = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(address: str) -> None:
            where = endpoint_text((address, port))
            if not allowed.contains(address):
                missing[where] = "outside [metrics] probe_allow"
                return
            async with gate:
                try:
                    row = await self._fetch(where)
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                    missing[where] = type(exc).__name__ if not str(exc) else str(exc)[:200]
                    return
            name = row.get("node")
            if isinstance(name, str) and isinstance(row.get("peers"), dict):
                rows.setdefault(name, row)
            else:
                missing[where] = "not a mesh row"

        await asyncio.gather(*(one(a) for a in addresses))
        self._cached = Rows(rows, missing, time.monotonic())
        return self._cached

    async def _fetch(self, where: str) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=FETCH_CONCURRENCY, use_dns_cache=False),
                trust_env=False,
            )
        async with self._session.get(f"http://{where}/api/mesh", allow_redirects=False) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = b""
            while chunk := await resp.content.read(ROW_LIMIT + 1 - len(body)):
                body += chunk
                if len(body) > ROW_LIMIT:
                    raise ValueError("row too large")
            try:
                return _decode(body)
            except msgspec.DecodeError:
                raise ValueError("not JSON") from None


# -- rendering ------------------------------------------------------------------------------------

e = html.escape


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.2f}"


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{100 * value:.0f}%"


def _head(title: str) -> list[str]:
    return [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{e(title)}</title>",
        '<link rel="stylesheet" href="/static/mesh.css"></head><body>',
    ]


def cell_class(pair: dict[str, Any]) -> str:
    state = pair.get("state")
    if state == "down":
        return "down"
    if state != "up":
        return "none"
    if (pair.get("loss") or 0) > 0 or (pair.get("syn_retransmits") or 0) > 0:
        return "warn"
    return "up"


def render_matrix(rows: Rows, here: str) -> str:
    names = set(rows.rows)
    for row in rows.rows.values():
        names.update(k for k in row.get("peers", {}) if isinstance(k, str))
    owners = sorted(rows.rows)  # the nodes whose rows are here come first
    others = sorted(n for n in names - set(owners) if len(n) <= NAME_MAX)
    nodes = sorted((owners + others)[:MAX_NODES])
    cut = len(owners) + len(others) - len(nodes)
    out = _head(f"probe mesh: {len(nodes)} nodes")
    out.append(f"<h1>mesh: {len(nodes)} nodes</h1>")
    out.append(
        f"<p>drawn by {e(here)} at {e(format_timestamp(time.time()))} from "
        f"{len(rows.rows)} rows. A cell is the row's node connecting to the column's: median "
        "/ p99 connect latency (ms), loss, translated share; the last attempt's error when "
        "down.</p>"
    )
    out.append('<table class="matrix"><thead><tr><th>from \\ to</th>')
    out.extend(f'<th class="col">{e(n)}</th>' for n in nodes)
    out.append("</tr></thead><tbody>")
    for src in nodes:
        src_row = rows.rows.get(src)
        out.append(f'<tr><th class="row">{e(src)}</th>')
        for dst in nodes:
            if src == dst:
                out.append('<td class="self"></td>')
                continue
            pair = None if src_row is None else src_row.get("peers", {}).get(dst)
            if not isinstance(pair, dict):
                out.append('<td class="none">-</td>')
                continue
            out.append(_cell(src, dst, pair))
        out.append("</tr>")
    out.append("</tbody></table>")
    if cut > 0:
        out.append(f"<p>{cut} more names in the rows are not drawn (at most {MAX_NODES}).</p>")
    if rows.missing:
        out.append("<h2>rows not fetched</h2><ul>")
        out.extend(f"<li>{e(w)}: {e(why)}</li>" for w, why in sorted(rows.missing.items()))
        out.append("</ul>")
    out.append("</body></html>")
    return "".join(out)


def _cell(src: str, dst: str, pair: dict[str, Any]) -> str:
    css = cell_class(pair)
    href = f"/mesh?from={_q(src)}&amp;to={_q(dst)}"
    lines = [f"{_ms(pair.get('median_ms'))} / {_ms(pair.get('p99_ms'))}"]
    lines.append(f"loss {_pct(pair.get('loss'))} · nat {_pct(pair.get('translated'))}")
    if css == "down":
        lines.append(str(pair.get("error") or "down"))
    elif pair.get("syn_retransmits"):
        lines.append(f"SYN x{pair['syn_retransmits']}")
    body = "<br>".join(e(line) for line in lines)
    title = e(f"{src} → {dst}")
    return f'<td class="{css}"><a href="{href}" title="{title}">{body}</a></td>'


def _q(text: str) -> str:
    from urllib.parse import quote

    return e(quote(text, safe=""))


def render_pair(src: str, dst: str, pair: dict[str, Any]) -> str:
    out = _head(f"probe mesh: {src} → {dst}")
    out.append(f'<p><a href="/mesh">mesh</a></p><h1>{e(src)} → {e(dst)}</h1><dl>')
    figures = (
        ("address", f"{pair.get('address')}:{pair.get('port')}"),
        ("state", pair.get("state")),
        ("error", pair.get("error")),
        ("attempts", pair.get("attempts")),
        ("loss", _pct(pair.get("loss"))),
        ("median connect", f"{_ms(pair.get('median_ms'))} ms"),
        ("p99 connect", f"{_ms(pair.get('p99_ms'))} ms"),
        ("translated", _pct(pair.get("translated"))),
        ("port kept", _pct(pair.get("port_kept"))),
        ("SYN retransmits", pair.get("syn_retransmits")),
    )
    out.extend(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in figures)
    out.append("</dl><h2>latest attempts</h2><table class=recent><thead><tr>")
    cols = ("at", "outcome", "error", "latency_ms", "syn_retransmits", "local", "seen_as",
            "translated")  # fmt: skip
    out.extend(f"<th>{c}</th>" for c in cols)
    out.append("</tr></thead><tbody>")
    recent = pair.get("recent")
    for attempt in reversed(recent if isinstance(recent, list) else []):
        if not isinstance(attempt, dict):
            continue
        out.append("<tr>" + "".join(f"<td>{e(str(attempt.get(c)))}</td>" for c in cols) + "</tr>")
    out.append("</tbody></table></body></html>")
    return "".join(out)


def _response(status: int, body: bytes, ctype: str) -> web.Response:
    return web.Response(
        status=status, body=body, headers={"Content-Type": f"{ctype}; charset=utf-8", **HEADERS}
    )


def _static(name: str, ctype: str) -> Callable[[web.Request], Any]:
    body = resources.files(__package__).joinpath(name).read_bytes()

    async def handler(_: web.Request) -> web.Response:
        return _response(200, body, ctype)

    return handler
