"""This node's side of the mesh: every interval, one reflect attempt to every peer but
itself, spread evenly over the interval; the records go to the log like any other, and
into this node's row (`row()`, served as /api/mesh).

A peer is named by the `by` of its answers (until one arrives, by its endpoint). Itself
is the peer whose answer carries this node's own name, or whose address is the one the
connect came from with a port this node's responder listens on: it is probed once, found
to be itself, and skipped from then on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..address import Address
from ..engine import Attempt, Engine
from ..record import Record, format_timestamp
from ..resolve import Resolver
from ..serve.answer import endpoint_text
from ..stages.spec import StageSpec
from ..syntax import Endpoint
from .peers import PeerSpec, resolve_peers
from .stats import WINDOW, Pair, seen_of

REFLECT = StageSpec(reflect=True)
RESOLVE_DEADLINE = 5.0


class MeshNode:
    def __init__(
        self,
        name: str,
        engine: Engine,
        write: Callable[[Record], None],
        log: Any,
        peers: PeerSpec,
        interval: float,
        timeout: float,
        own_ports: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.own_ports = own_ports  # where this node's responder listens
        self.engine = engine
        self.write = write
        self.log = log
        self.loop = asyncio.get_running_loop()
        self.configure(peers, interval, timeout)
        self.resolver = Resolver(ttl=interval)
        self.pairs: dict[tuple[str, int], Pair] = {}  # (address, port) -> this node's attempts
        self.names: dict[tuple[str, int], str] = {}  # (address, port) -> the peer's `by`
        self.selves: set[tuple[str, int]] = set()
        self.unresolved: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []  # this round's starts

    def configure(self, peers: PeerSpec, interval: float, timeout: float) -> None:
        """New peers, interval or timeout (a reload): from the next round on."""
        self.spec, self.interval, self.timeout = peers, interval, timeout

    def start(self) -> None:
        self._task = self.loop.create_task(self._rounds())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    async def _rounds(self) -> None:
        next_at = self.loop.time()
        while True:
            await self._round()
            next_at += self.interval
            now = self.loop.time()
            if next_at < now:  # a stall: skip the missed rounds, keep the cadence
                next_at += (now - next_at) // self.interval * self.interval + self.interval
            await asyncio.sleep(next_at - now)

    async def _round(self) -> None:
        found, self.unresolved = await resolve_peers(self.spec, self.resolver, RESOLVE_DEADLINE)
        peers = [(a, p) for a, p in found if (a.ip, p) not in self.selves]
        live = {(a.ip, p) for a, p in found}
        for key in [k for k in self.pairs if k not in live]:
            del self.pairs[key]  # a peer that left the name's answer leaves the row
        self.names = {k: v for k, v in self.names.items() if k in live}
        self.selves &= live
        if not peers:
            return
        step = self.interval / len(peers)
        order = sorted(peers, key=lambda ap: (ap[0].ip, ap[1]))
        self._timers = [
            self.loop.call_later(i * step, self._submit, address, port)
            for i, (address, port) in enumerate(order)
        ]

    def _submit(self, address: Address, port: int) -> None:
        if self.engine.closed:
            return
        text = endpoint_text((address.ip, port))
        endpoint = Endpoint(text, address.ip, port)
        attempt = Attempt(endpoint, address, 1, self.timeout, stages=REFLECT)
        self.engine.submit(attempt, self._done)

    def _done(self, record: Record, attempt: Attempt, final: bool) -> None:
        if not final:
            return
        key = (attempt.address.ip, attempt.endpoint.port)
        stages = record.stages
        by = None if stages is None else stages.seen_by
        own = record.local_address == record.address and key[1] in self.own_ports
        if by == self.name or own:
            self.selves.add(key)  # this node itself: never probed again
            self.pairs.pop(key, None)
            return
        if by is not None:
            self.names[key] = by
        name = self.names.get(key, endpoint_text(key))
        record.extra = {"name": name, "mesh": True}
        self.write(record)
        pair = self.pairs.get(key)
        if pair is None:
            pair = self.pairs[key] = Pair(key[0], key[1])
        pair.add(seen_of(record))

    def row(self) -> dict[str, Any]:
        """This node's row: its name and, per peer name, the pair's figures."""
        peers: dict[str, Any] = {}
        for key, pair in sorted(self.pairs.items()):
            name = self.names.get(key, endpoint_text(key))
            if name in peers:  # two peers answering with one name: both stay visible
                name = f"{name} ({endpoint_text(key)})"
            peers[name] = pair.json()
        return {
            "node": self.name,
            "at": format_timestamp(time.time()),
            "interval": self.interval,
            "window": WINDOW,
            "unresolved": self.unresolved,
            "peers": peers,
        }
