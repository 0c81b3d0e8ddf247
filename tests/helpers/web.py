"""HTTP GETs against the daemon (no proxies, whatever the environment says)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from email.message import Message

# urllib must not send 127.0.0.1 requests through an http_proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_fetch(
    port: int, path: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """(status, response headers, body) of GET http://127.0.0.1:PORT/PATH."""
    url = f"http://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _http.open(request, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def http_get(
    port: int, path: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """(status, content type, body as text) of GET http://127.0.0.1:PORT/PATH."""
    status, got, body = http_fetch(port, path, timeout, headers)
    return status, got.get("Content-Type", ""), body.decode()
