"""`probe run`: the daemon. Builds the parts, then serve → run until a signal → shutdown.

The parts: `runner` (schedule → resolve → engine → state), `ondemand` (GET /probe), their
two `engines`, `metrics`, `meshing`, `web`. Signals are captured once, on the loop, and stay
captured until exit: SIGHUP reloads the config and reopens the log file (coalesced: a storm
of them is one reload per loop turn); SIGTERM and SIGINT stop scheduling, let the attempts
in flight finish (bounded by their timeout), flush, and exit 0. During that drain SIGHUP is
ignored, and a second SIGTERM/SIGINT ends it at once: attempts still in flight are abandoned
without a record (any outcome written would be false), named in one "abandoned" event. A
log that cannot be written stops the daemon loudly: a prober that silently drops its
records is worse than one that stops.
"""

from __future__ import annotations

import asyncio
import signal

from .. import loop as event_loop
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, SinkError, report
from ..output.log import configure, event_logger
from ..output.writer import OUTPUT_DRAIN, RecordWriter, stdout_writer
from . import fleet
from .collector import Collector
from .config import Config, ResolvedTarget, load_config, log_format, metrics_listen, needs_restart
from .engines import Engines
from .http import PROBE_TIMEOUT_MAX
from .meshing import Meshing
from .metrics import Metrics
from .ondemand import OnDemand
from .runner import Runner, own_targets
from .runner import _job_key as _job_key  # the schedule's key, for tests
from .shortage import PortShortages
from .web import Web

RESOLVE_TTL = 60.0  # seconds: a months-long run follows DNS changes
RESOLVE_DEADLINE = 5.0  # seconds a scheduled name's re-resolution may take
LOOKUP_THREADS = 4  # getaddrinfo threads for the schedule, and as many for GET /probe
ABANDON_NAMES = 20  # names listed in the "abandoned" event


class Daemon:
    def __init__(
        self, path: str, config: Config, writer: RecordWriter, shard: fleet.Shard | None = None
    ) -> None:
        """Builds every part; `serve()` starts them. Runs on the daemon's loop."""
        self.path = path
        self.shard_override = shard  # --shard or the environment: wins over [cluster] shard
        self.shard = shard
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.exit_code = EXIT_OK
        self.fatal: str | None = None
        self._stopped = asyncio.Event()
        self._abandon = asyncio.Event()  # a second SIGTERM/SIGINT during the drain
        self._built = False
        self.writer = writer
        # Before anything logs. Every line, record or event, goes through one guard: a log
        # that breaks on any of them stops the daemon (_die), never a traceback from the
        # callback that happened to write.
        write_record = configure(writer, log_format(config), self._die)
        self.log = event_logger()
        self.engines = Engines(config, metrics_listen(config) is not None, self.log)
        self.metrics = Metrics(lambda: float(self.engines.inflight))
        self.engines.hook(self._engine_closed, PortShortages(self.metrics.port_shortages, self.log))
        self.runner = Runner(
            self.engines.schedule,
            (RESOLVE_TTL, RESOLVE_DEADLINE, LOOKUP_THREADS),
            self.metrics,
            writer,
            write_record,
            self._die,
            self.log,
        )
        self.runner.log_attempts = config.log.attempts
        self.ondemand = OnDemand(
            self.engines.probe,
            LOOKUP_THREADS,
            self.runner.write,
            lambda: self.runner.running,
        )
        self.ondemand.configure(config, self.engines.probe_limit)
        self.meshing = Meshing(
            config, self.engines.schedule, self.runner.write, self.log, lambda: self.web.port
        )
        parts = (self.engines, self.metrics, self.runner, self.ondemand)
        self.web = Web(config, *parts, self.meshing.routes())
        self._reload_pending = False
        self.collector = Collector(self.loop)
        self._built = True

    async def serve(self) -> int:
        failed = await self.web.start(self.log) or await self.meshing.start()
        if failed is not None:
            await self._close()
            report(failed)
            return EXIT_USAGE
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.loop.add_signal_handler(signal.SIGINT, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        targets = self._own_targets(self.config)
        self.runner.start(targets, await self.runner.open_store(self.config.store, targets))
        self.metrics.config_loaded(True, reload=False)
        # What start-up and the first records build lives as long as the daemon: out of the
        # cyclic collector's way, so a full collection never walks 10,000 targets' objects
        # while starts wait (collector.py).
        self.collector.settled(self.runner.first_round())
        shard = {"shard": str(self.shard)} if self.shard is not None else {}
        self.log.info("started", config=self.path, targets=len(self.runner.schedule.jobs), **shard)
        await self._stopped.wait()
        return await self._shutdown()

    def _own_targets(self, config: Config) -> list[ResolvedTarget]:
        targets, self.shard = own_targets(self.path, config, self.shard_override)
        return targets

    # -- reload ---------------------------------------------------------------------------------

    def _request_reload(self) -> None:
        """Coalesce: however many SIGHUPs arrive, one reload per loop turn, of the latest file."""
        if not self._reload_pending:
            self._reload_pending = True
            self.loop.call_soon(self._reload)

    def _reload(self) -> None:
        self._reload_pending = False
        if self._stopped.is_set():
            return
        try:
            self._apply_reload()
        except SinkError as exc:  # the log file could not be opened anew
            self._die(str(exc))

    def _apply_reload(self) -> None:
        self.writer.reopen()
        old = self.config
        try:
            new = load_config(self.path, fleet.owner(self.shard_override))
            targets = self._own_targets(new)
        except ConfigError as exc:
            return self._reload_failed(str(exc), str(exc))
        try:  # what can fail is tried before anything is applied
            self.engines.check(old, new)
            if new.log.file != old.log.file:
                self.writer.retarget(new.log.file or None)
        except (OSError, SinkError) as exc:
            reason = str(exc if isinstance(exc, SinkError) else f"engine.source: {exc.strerror}")
            return self._reload_failed(f"{self.path}: {reason}", reason)
        self.engines.reconfigure(old, new)
        self.ondemand.configure(new, self.engines.probe_limit)
        self.meshing.reconfigure(new)
        self.config = new
        self.runner.log_attempts = new.log.attempts
        notes = {"needs_restart": keys} if (keys := needs_restart(old, new)) else {}
        counts = self.runner.apply(targets)
        self.collector.settled(self.runner.first_round())
        self.metrics.config_loaded(True)
        self.log.info("reload", result="ok", config=self.path, **counts, **notes)

    def _reload_failed(self, message: str, error: str) -> None:
        report(f"reload failed, keeping the running config: {message}", prefix="")
        self.metrics.config_loaded(False)
        self.log.info("reload", result="failed", config=self.path, error=error)

    # -- stop and shutdown ----------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop scheduling now; the shutdown drains what is in flight."""
        self.runner.stop()
        self.meshing.stop()
        self._stopped.set()

    async def _shutdown(self) -> int:
        self.runner.stop()
        self.collector.stop()
        # Handlers stay installed until exit: during the drain a SIGHUP is ignored and a
        # second SIGTERM/SIGINT ends the drain, instead of killing us mid-record.
        self.loop.add_signal_handler(signal.SIGTERM, self._abandon.set)
        self.loop.add_signal_handler(signal.SIGINT, self._abandon.set)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.runner.stop_lookups()
        self.ondemand.stop_lookups()
        if not self.engines.closed:
            # Every attempt in flight ends by its own deadline; this bound is a safety net.
            longest = self.runner.longest_timeout()
            if self.web.server is not None:
                longest = max(longest, PROBE_TIMEOUT_MAX)  # a GET /probe may ask for this long
            if not await self.engines.drain(longest + 1.0, self._abandon):
                self._report_abandoned()
        self.engines.close()  # what is still waiting for a record gets 503
        await self.web.stop()
        await self._close()
        if self.fatal is None:
            self.log.info("stopped", config=self.path)
        if self.fatal is None:  # (that write may have found the log broken)
            try:
                self.writer.close(OUTPUT_DRAIN)  # a reader that does not read: no longer
            except SinkError as exc:
                self.fatal, self.exit_code = str(exc), EXIT_FAILED
        if self.fatal is not None:
            report(self.fatal)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)  # from here to exit, nothing left to interrupt
        return self.exit_code

    def _report_abandoned(self) -> None:
        names, probes = self.runner.running_names(), self.ondemand.connecting
        if names or probes:
            inflight = self.engines.inflight
            abandoned = {"names": names[:ABANDON_NAMES], "probe_requests": probes}
            self.log.info("abandoned", attempts=inflight, **abandoned)

    async def _close(self) -> None:
        await self.runner.close()
        self.ondemand.close()
        await self.meshing.close()

    def _engine_closed(self) -> None:
        for engine in self.engines.both:
            if engine.failure is not None and self.fatal is None:
                self._die(str(engine.failure))

    def _die(self, message: str) -> None:
        """The log cannot be written: stop now and say so, naming the file."""
        if self.fatal is None:
            self.fatal = message
            self.exit_code = EXIT_FAILED
        if self._built:
            self.stop()
        else:  # an event of a part being built: serve() goes straight to the shutdown
            self._stopped.set()


async def _serve(path: str, config: Config, shard: fleet.Shard | None) -> int:
    """Open what can fail with a usage error first, then build the daemon and serve."""
    try:
        writer = stdout_writer(config.log.file or None)
    except SinkError as exc:
        report(str(exc))
        return EXIT_USAGE
    try:
        Engines.check(None, config)
    except OSError as exc:
        report(f"{path}: engine.source: cannot bind: {exc.strerror}")
        return EXIT_USAGE
    return await Daemon(path, config, writer, shard).serve()


def run_daemon(path: str, shard: fleet.Shard | None = None) -> int:
    """Load the config (ConfigError escapes: the caller reports it) and serve until a signal.
    `shard`: --shard; when None, the environment's PROBE_SHARD (UsageError if malformed)."""
    if shard is None:
        shard = fleet.shard_from_env()
    config = load_config(path, fleet.owner(shard))
    own_targets(path, config, shard)  # refuse a config whose labels or shard are bad, now
    # a usable config, but likely not the one meant (said after the checks that refuse one)
    if not config.targets and config.mesh.peers is None and not config.serve.listen:
        report(f"{path} has no targets: probing nothing but GET /probe", prefix="warning")
    return event_loop.run(_serve(path, config, shard))
