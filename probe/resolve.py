"""Name resolution, once per name per run, on the loop's non-blocking getaddrinfo."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass

_EAI_NAMES = {
    getattr(socket, name): name
    for name in dir(socket)
    if name.startswith("EAI_") and isinstance(getattr(socket, name), int)
}


@dataclass(frozen=True, slots=True)
class Address:
    family: int  # socket.AF_INET | socket.AF_INET6
    ip: str

    @property
    def family_name(self) -> str:
        return "ipv6" if self.family == socket.AF_INET6 else "ipv4"

    def sockaddr(self, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
        if self.family == socket.AF_INET6:
            return (self.ip, port, 0, 0)
        return (self.ip, port)


class ResolveError(Exception):
    """The name did not resolve; `code` is the resolver's name for why (EAI_NONAME, …)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def literal(host: str, family: int = 0) -> Address | None:
    """An IP literal without asking the resolver; raises ResolveError on a family mismatch."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    if family and family != fam:
        raise ResolveError("EAI_ADDRFAMILY")
    return Address(fam, str(ip))


class Resolver:
    """Caches answers (and failures) per name; concurrent lookups of one name share a query."""

    def __init__(self, family: int = 0, cache_size: int = 4096, ttl: float | None = None) -> None:
        """`ttl`: seconds an answer is kept (None: the whole run, as `probe check` wants;
        a daemon that runs for months re-resolves)."""
        self.family = family
        self._cache: OrderedDict[str, tuple[asyncio.Future[tuple[Address, ...]], float]] = (
            OrderedDict()
        )
        self._size = cache_size
        self._ttl = ttl

    def _entry(self, host: str) -> asyncio.Future[tuple[Address, ...]] | None:
        entry = self._cache.get(host)
        if entry is None:
            return None
        found, expires = entry
        if self._ttl is not None and found.done() and time.monotonic() > expires:
            del self._cache[host]
            return None
        self._cache.move_to_end(host)
        return found

    def cached(self, host: str) -> tuple[Address, ...] | None:
        """The answer if it is at hand, without awaiting: the daemon's fast path."""
        found = self._entry(host)
        if found is None or not found.done() or found.exception() is not None:
            return None
        return found.result()

    async def resolve(self, host: str) -> tuple[Address, ...]:
        found = self._entry(host)
        if found is None:
            found = asyncio.ensure_future(self._lookup(host))
            self._cache[host] = (found, time.monotonic() + (self._ttl or 0.0))
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return await asyncio.shield(found)

    async def _lookup(self, host: str) -> tuple[Address, ...]:
        lit = literal(host, self.family)
        if lit is not None:
            return (lit,)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, family=self.family, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ResolveError(_EAI_NAMES.get(exc.errno, f"EAI_{exc.errno}")) from None
        except UnicodeError:
            raise ResolveError("EAI_NONAME") from None
        seen: dict[tuple[int, str], None] = {}
        for fam, _, _, _, sockaddr in infos:
            if fam in (socket.AF_INET, socket.AF_INET6):
                seen[(fam, str(sockaddr[0]))] = None
        if not seen:
            raise ResolveError("EAI_NODATA")
        return tuple(Address(fam, ip) for fam, ip in seen)
