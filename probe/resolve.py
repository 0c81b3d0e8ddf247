"""Names → addresses: getaddrinfo on threads of our own, with deadlines.

`probe check` resolves each name once per run (`Resolver()` on the loop's getaddrinfo). The
daemon needs more: a lookup that hangs (a dead DNS server) must neither hold an attempt past
its timeout nor take the threads other lookups need, and it must not keep the process from
exiting. So the daemon gives each side its own `LookupPool` (daemon threads: a hung
getaddrinfo cannot be cancelled, only abandoned, and concurrent.futures would join it at
exit), every wait has a deadline, and `KeptNames` keeps a scheduled name's last good answer
while its re-resolution fails or hangs.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# IP literals need no resolver: kept apart so the native core imports them without asyncio.
from .address import Address as Address
from .address import ResolveError as ResolveError
from .address import literal as literal

_EAI_NAMES = {
    getattr(socket, name): name
    for name in dir(socket)
    if name.startswith("EAI_") and isinstance(getattr(socket, name), int)
}
TIMED_OUT = "EAI_AGAIN"  # what getaddrinfo itself says when the servers do not answer in time
Infos = list[tuple[Any, ...]]


class LookupPool:
    """A fixed number of daemon threads running getaddrinfo. Bounded, so hung lookups on one
    side cannot starve the other side's pool; daemon threads, so a lookup that never returns
    is abandoned at exit instead of joined."""

    def __init__(self, name: str, threads: int) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        self._closed = False
        for thread in self._threads:
            thread.start()

    def getaddrinfo(self, host: str, family: int) -> asyncio.Future[Infos]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Infos] = loop.create_future()
        if self._closed:
            done.set_exception(ResolveError(TIMED_OUT))
        else:
            self._jobs.put((loop, done, host, family))
        return done

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, done, host, family = job
            if done.done():  # its waiter gave up while it sat in the queue
                continue
            try:
                result: Any = socket.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
                failed = False
            except BaseException as exc:  # handed to the loop as the future's exception
                result, failed = exc, True
            try:
                loop.call_soon_threadsafe(_settle, done, result, failed)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def close(self) -> None:
        """Stop taking lookups; idle threads end, a thread stuck in getaddrinfo is left."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)


def _settle(done: asyncio.Future[Infos], result: Any, failed: bool) -> None:
    if done.done():
        return
    if failed:
        done.set_exception(result)
    else:
        done.set_result(result)


class Resolver:
    """Caches answers (and failures) per name; concurrent lookups of one name share a query."""

    def __init__(
        self,
        family: int = 0,
        cache_size: int = 4096,
        ttl: float | None = None,
        pool: LookupPool | None = None,
    ) -> None:
        """`ttl`: seconds an answer is kept (None: the whole run, as `probe check` wants;
        a daemon that runs for months re-resolves). `pool`: threads of our own (None: the
        loop's getaddrinfo)."""
        self.family = family
        self._cache: OrderedDict[str, tuple[asyncio.Future[tuple[Address, ...]], float]] = (
            OrderedDict()
        )
        self._size = cache_size
        self._ttl = ttl
        self._pool = pool

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

    async def resolve(self, host: str, deadline: float | None = None) -> tuple[Address, ...]:
        """The addresses of `host`; past `deadline` seconds, ResolveError(EAI_AGAIN) (the
        lookup itself goes on, shared, for whoever asks next)."""
        found = self._entry(host)
        if found is None:
            found = asyncio.ensure_future(self._lookup(host))
            found.add_done_callback(_retrieve)
            self._cache[host] = (found, time.monotonic() + (self._ttl or 0.0))
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        if deadline is None:
            return await asyncio.shield(found)
        try:
            return await asyncio.wait_for(asyncio.shield(found), deadline)
        except TimeoutError:
            raise ResolveError(TIMED_OUT) from None

    async def _lookup(self, host: str) -> tuple[Address, ...]:
        lit = literal(host, self.family)
        if lit is not None:
            return (lit,)
        try:
            if self._pool is not None:
                infos = await self._pool.getaddrinfo(host, self.family)
            else:
                loop = asyncio.get_running_loop()
                infos = await loop.getaddrinfo(
                    host, None, family=self.family, type=socket.SOCK_STREAM
                )
        except (socket.gaierror, UnicodeError) as exc:
            raise _failure(exc) from None
        return _addresses(infos)


def lookup(host: str, family: int = 0) -> tuple[Address, ...]:
    """What `Resolver.resolve` answers, looked up here and now (blocking: on a thread of the
    caller's; the native core's feed)."""
    lit = literal(host, family)
    if lit is not None:
        return (lit,)
    try:
        infos = socket.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _failure(exc) from None
    return _addresses(infos)


def _failure(exc: socket.gaierror | UnicodeError) -> ResolveError:
    """A failed getaddrinfo as the resolver code's name; a name IDNA cannot encode is
    EAI_NONAME."""
    if isinstance(exc, socket.gaierror):
        return ResolveError(_EAI_NAMES.get(exc.errno, f"EAI_{exc.errno}"))
    return ResolveError("EAI_NONAME")


def _addresses(infos: Infos) -> tuple[Address, ...]:
    """getaddrinfo's answer as addresses, in its order, each once."""
    seen: dict[tuple[int, str], int] = {}
    for fam, _, _, _, sockaddr in infos:
        if fam == socket.AF_INET:
            seen[(fam, str(sockaddr[0]))] = 0
        elif fam == socket.AF_INET6:  # a link-local answer carries its interface
            seen[(fam, str(sockaddr[0]))] = int(sockaddr[3])
    if not seen:
        raise ResolveError("EAI_NODATA")
    return tuple(Address(fam, ip, scope) for (fam, ip), scope in seen.items())


def _retrieve(found: asyncio.Future[tuple[Address, ...]]) -> None:
    """A lookup nobody waits for any more still fails quietly (no 'never retrieved')."""
    if not found.cancelled():
        found.exception()


@dataclass
class _Name:
    addresses: tuple[Address, ...]
    refresh_at: float  # monotonic
    refreshing: bool = False
    cost_ms: float = 0.0  # how long the lookup that gave `addresses` took (records' dns_ms)


class KeptNames:
    """The scheduled targets' names. A name's first lookup is awaited (with its attempt's
    deadline); after that the schedule always has an answer at hand: the name is re-resolved
    in the background every `ttl`, and a re-resolution that fails or outlasts `deadline`
    keeps the last good addresses (reported through `on_stale(host, code)`), so a DNS
    outage never costs a slot. One lookup per name at a time, whoever waits for it."""

    def __init__(
        self,
        resolver: Resolver,
        ttl: float,
        deadline: float,
        on_stale: Callable[[str, str], None],
        retry: float = 10.0,
    ) -> None:
        self._resolver = resolver
        self._ttl = ttl
        self._deadline = deadline
        self._retry = min(retry, ttl)
        self._on_stale = on_stale
        self._names: dict[str, _Name] = {}
        self._lookups: dict[str, asyncio.Task[tuple[Address, ...]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, host: str) -> tuple[Address, ...] | None:
        """The addresses to use now (None: never resolved yet); starts a re-resolution when
        the answer is older than the ttl."""
        lit = literal(host)
        if lit is not None:
            return (lit,)
        name = self._names.get(host)
        if name is None:
            return None
        if not name.refreshing and time.monotonic() >= name.refresh_at:
            name.refreshing = True
            task = asyncio.get_running_loop().create_task(self._refresh(host, name))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return name.addresses

    def cost_ms(self, host: str) -> float:
        """What the lookup behind the addresses now in use cost (0 for literals and names
        never resolved): the `dns_ms` of the attempts it serves."""
        name = self._names.get(host)
        return 0.0 if name is None else name.cost_ms

    async def first(self, host: str, deadline: float) -> tuple[Address, ...]:
        """A name not resolved yet: its addresses within `deadline` seconds, else
        ResolveError(EAI_AGAIN). The lookup goes on, and its answer is kept when it lands."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._lookup(host)), deadline)
        except TimeoutError:
            raise ResolveError(TIMED_OUT) from None

    def _lookup(self, host: str) -> asyncio.Task[tuple[Address, ...]]:
        task = self._lookups.get(host)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._resolver.resolve(host))
            self._lookups[host] = task
            began = time.perf_counter()
            task.add_done_callback(lambda done: self._landed(host, done, began))
        return task

    def _landed(
        self, host: str, task: asyncio.Task[tuple[Address, ...]], began: float = 0.0
    ) -> None:
        self._lookups.pop(host, None)
        if task.cancelled() or task.exception() is not None:
            return
        addresses = task.result()
        cost = (time.perf_counter() - began) * 1000.0 if began else 0.0
        name = self._names.get(host)
        if name is None:
            self._names[host] = _Name(addresses, time.monotonic() + self._ttl, cost_ms=cost)
        else:
            name.addresses, name.refresh_at = addresses, time.monotonic() + self._ttl
            name.cost_ms = cost

    async def _refresh(self, host: str, name: _Name) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._lookup(host)), self._deadline)
        except (ResolveError, TimeoutError) as exc:
            name.refresh_at = time.monotonic() + self._retry
            self._on_stale(host, exc.code if isinstance(exc, ResolveError) else TIMED_OUT)
        finally:
            name.refreshing = False

    def keep_only(self, hosts: set[str]) -> None:
        """Forget names no target uses any more."""
        for host in [h for h in self._names if h not in hosts]:
            del self._names[host]

    def cancel(self) -> None:
        """Shutdown: nobody waits for a lookup any more."""
        for task in [*self._tasks, *self._lookups.values()]:
            task.cancel()
