"""What every page of the daemon shares: the security headers, escaping, and how numbers,
durations and times are written."""

from __future__ import annotations

import html
import math
import time

from aiohttp import web

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_e = html.escape  # quote=True: safe in text and in double-quoted attributes


def _response(status: int, body: bytes, ctype: str) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": ctype, **HEADERS})


def _nice(value: float) -> float:
    """The next 1, 2 or 5 times a power of ten at or above `value` (a readable axis top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if value <= m * power:
            return float(m * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _round(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 3)


def _ms(ms: float | None) -> str:
    return "" if ms is None else f"{ms:.2f} ms"


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch))
