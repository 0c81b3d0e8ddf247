"""The daemon's one HTTP server, wired: /metrics, /healthz, GET /probe, the status pages and
the mesh's routes. `http` serves and hardens; this module says what is served, from which
part. Nothing listens when `[metrics] listen = ""`."""

from __future__ import annotations

from typing import Any

from .config import Config, metrics_listen
from .engines import Engines
from .http import HttpServer
from .metrics import Metrics
from .ondemand import OnDemand
from .runner import Runner
from .status import StatusPage
from .tls_series import STATUS_COLUMNS


class Web:
    """The HTTP server over the daemon's parts (`server` None: no HTTP at all)."""

    def __init__(
        self,
        config: Config,
        engines: Engines,
        metrics: Metrics,
        runner: Runner,
        ondemand: OnDemand,
        routes: list[Any],
    ) -> None:
        self.port = 0  # the port listened on, once started (the mesh answers peers with it)
        self.server: HttpServer | None = None
        self.listen = config.metrics.listen
        self.connections = engines.http_limit
        address = metrics_listen(config)
        if address is None:
            return
        # TLS targets at start: the page gains their version and days to expiry
        tls = any(t.stages is not None and t.stages.uses_tls for t in config.targets)
        page = StatusPage(
            runner.targets,
            runner.history,
            store=lambda: runner.store,
            extra_columns=STATUS_COLUMNS if tls else (),
            extras=metrics.tls.columns if tls else None,
        )
        self.server = HttpServer(
            address[0], address[1], metrics.pieces, lambda: runner.running, ondemand,
            routes=[*page.routes(), *routes], max_connections=self.connections,
        )  # fmt: skip

    async def start(self, log: Any) -> str | None:
        """Listen; what went wrong, in one line, when it cannot."""
        if self.server is None:
            return None
        try:
            host, self.port = await self.server.start()
        except OSError as exc:
            return f"cannot listen on {self.listen}: {exc.strerror}"
        log.info("listening", address=f"{host}:{self.port}", connections=self.connections)
        return None

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
