"""The daemon's responder (`[serve]`) and its place in the mesh (`[mesh]`): the part that
answers other nodes' connections, probes every peer with reflect on the schedule engine,
and serves /api/mesh and /mesh.

With a mesh and no `[serve] listen`, the responder listens on the peers' port on every
address: a node of the mesh must answer the others. Its name (the `by` of its answers,
and its name in the matrix) is `[serve] name`, else the host name."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..engine import Engine
from ..record import Record
from ..serve.command import default_name
from ..serve.limits import ServeLimits
from ..serve.server import Server
from .config import Config
from .runner import should_log


class Meshing:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        write: Callable[[Record], None],
        log: Any,
        http_port: Callable[[], int],
    ) -> None:
        self.config = config
        self.engine = engine
        self.write = write
        self.log = log
        self.http_port = http_port
        self.name = config.serve.name or default_name()
        self.server: Server | None = None
        self.node: Any = None  # MeshNode while there is a mesh
        self.page: Any = None
        self._last: dict[str, tuple[str, str | None]] = {}
        mesh = config.mesh
        if mesh.peers is not None:
            from ..mesh.node import MeshNode
            from ..mesh.page import MeshPage

            self.node = MeshNode(
                self.name, engine, self._write, log, mesh.peers, mesh.interval,
                config.defaults.timeout,
            )  # fmt: skip
            self.page = MeshPage(self.node, http_port, lambda: self.config.metrics.probe_allow)

    def routes(self) -> list[web.RouteDef]:
        return [] if self.page is None else self.page.routes()

    def listens(self) -> list[tuple[str | None, int]]:
        listen: list[tuple[str | None, int]] = [(h.host, h.port) for h in self.config.serve.listen]
        if not listen and self.config.mesh.peers is not None:
            ports = sorted({port for _, port in self.config.mesh.peers.endpoints})
            listen = [(None, port) for port in ports]
        return listen

    async def start(self) -> str | None:
        """Listen and start the rounds; the reason when the responder cannot listen."""
        listens = self.listens()
        if listens:
            serve = self.config.serve
            limits = ServeLimits(serve.max_connections, serve.rate)
            self.server = Server(self.name, limits, self.log.info)
            try:
                bound = await self.server.start(listens)
            except OSError as exc:
                where = ", ".join(f"{h or '*'}:{p}" for h, p in listens)
                reason = exc.strerror or os.strerror(exc.errno or 0)
                return f"cannot listen on {where} (serve.listen): {reason}"
            self.log.info("serving", listen=bound, by=self.name)
            if self.node is not None:
                self.node.own_ports = frozenset(int(b.rsplit(":", 1)[1]) for b in bound)
        if self.node is not None:
            self.node.start()
        return None

    def reconfigure(self, config: Config) -> None:
        """A reload: the mesh's peers, interval and timeout, the responder's limits (listen
        and name take effect at the next start)."""
        self.config = config
        mesh = config.mesh
        if self.node is not None and mesh.peers is not None:
            self.node.configure(mesh.peers, mesh.interval, config.defaults.timeout)
        if self.server is not None:
            serve = config.serve
            self.server.set_limits(ServeLimits(serve.max_connections, serve.rate))

    def stop(self) -> None:
        """Stop probing peers (the responder keeps answering until `close`)."""
        if self.node is not None:
            self.node.stop()

    async def close(self) -> None:
        self.stop()
        if self.server is not None:
            self.server.close()
        if self.page is not None:
            await self.page.close()

    def _write(self, record: Record) -> None:
        """A mesh record to the log, under `[log] attempts` as a target's would be."""
        name = (record.extra or {}).get("name", record.target)
        previous = self._last.get(name)
        self._last[name] = (str(record.outcome), record.error)
        if should_log(self.config.log.attempts, record, previous):
            self.write(record)
