"""`probe run`: the daemon. serve → startup → run until a signal → graceful shutdown.

The same engine, concurrency bound and record as `probe check`; the schedule decides when,
the metrics and the log sink hear about every attempt. Signals are captured once, on the
loop: SIGHUP reloads the config and reopens the log file (coalesced, so a storm of them is
one reload per loop turn), SIGTERM and SIGINT stop scheduling, let the attempts in flight
finish (bounded by their timeout), flush, and exit 0. A log that cannot be written stops
the daemon loudly: a prober that silently drops its records is worse than one that stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from .. import loop as event_loop
from ..engine import Attempt, Engine, EngineOptions, check_source
from ..engine.limits import fit_concurrency
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, SinkError, report
from ..output.log import configure, event_logger
from ..output.writer import stdout_writer
from ..record import OPEN, Record, unresolved_record
from ..resolve import Address, ResolveError, Resolver
from ..targets import Endpoint
from . import fleet, ondemand
from .config import (
    Config,
    ResolvedTarget,
    engine_source,
    load_config,
    metrics_listen,
    probe_allow_networks,
    resolved_targets,
)
from .history import History
from .http import Answer, HttpServer
from .metrics import Metrics, check_labels
from .schedule import Job, Schedule
from .status import StatusPage

FLUSH_EVERY = 0.1
RESOLVE_TTL = 60.0  # seconds: a months-long run follows DNS changes
PROBE_TIMEOUT_MAX = ondemand.PROBE_TIMEOUT_MAX

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _job_key(target: ResolvedTarget) -> str:
    """A target's identity: its phase derives from this, so edits elsewhere keep it."""
    return f"{target.name}\0{target.address}"


class Daemon:
    def __init__(self, path: str, config: Config, shard: fleet.Shard | None = None) -> None:
        self.path = path
        self.shard_override = shard  # --shard or the environment: wins over [cluster] shard
        self.shard = shard
        self.config = config
        self.schedule: Schedule[ResolvedTarget] = Schedule()
        self.state: dict[str, bool] = {}  # name → up at the last attempt
        self.attempts: dict[str, int] = {}  # name → attempts made, for the record's number
        self.running = False
        self.exit_code = EXIT_OK
        self.fatal: str | None = None
        self._stopped = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._reload_pending = False
        self._answers: set[asyncio.Future[Record]] = set()  # GET /probe waiting for a record
        self._allow: Networks = probe_allow_networks(config)
        self.history = History()  # what the status page shows

    # -- startup --------------------------------------------------------------------------------

    async def serve(self) -> int:
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        try:
            self.writer = stdout_writer(cfg.log.file or None)
        except SinkError as exc:
            return self._fail(str(exc), EXIT_USAGE)
        source = engine_source(cfg)
        if source is not None:
            try:
                check_source(source)
            except OSError as exc:
                return self._fail(
                    f"{self.path}: engine.source: cannot bind: {exc.strerror}", EXIT_USAGE
                )
        self.write_record = configure(self.writer, log_format(cfg))
        self.log = event_logger()
        concurrency, _ = fit_concurrency(cfg.engine.concurrency)
        self.engine = Engine(
            EngineOptions(
                timeout=cfg.defaults.timeout,
                concurrency=concurrency,
                source=source,
                shortage_giveup=None,  # a daemon waits out a shortage, however long
            )
        )
        self.engine.on_close.append(self._engine_closed)
        self.resolver = Resolver(ttl=RESOLVE_TTL)
        self.metrics = Metrics(lambda: float(self.engine.inflight))
        self.http: HttpServer | None = None
        listen = metrics_listen(cfg)
        if listen is not None:
            self.http = HttpServer(
                listen[0], listen[1], self.metrics.exposition, lambda: self.running, self._probe,
                routes=self._status_routes(),
            )  # fmt: skip
            try:
                host, port = await self.http.start()
            except OSError as exc:
                return self._fail(
                    f"cannot listen on {cfg.metrics.listen}: {exc.strerror}", EXIT_USAGE
                )
            self.log.info("listening", address=f"{host}:{port}")
        self._install_signals()
        self._apply_targets(self._own_targets(cfg))
        self.metrics.config_loaded(True, reload=False)
        self.running = True
        self._flush_handle = self.loop.call_later(FLUSH_EVERY, self._flush_tick)
        self.log.info(
            "started",
            config=self.path,
            targets=len(self.schedule.jobs),
            **({"shard": str(self.shard)} if self.shard is not None else {}),
        )
        await self._stopped.wait()
        return await self._shutdown()

    def _install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.loop.add_signal_handler(signal.SIGINT, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self._request_reload)

    # -- scheduling -----------------------------------------------------------------------------

    def _apply_targets(self, targets: list[ResolvedTarget]) -> tuple[int, int, int]:
        now = time.time()
        items = [(_job_key(t), t.interval, t) for t in targets]
        previous = {job.key: job.item.name for job in self.schedule.jobs.values()}
        added, removed, kept = self.schedule.update(items, now)
        current = {t.name for t in targets}
        for key in removed:
            name = previous[key]
            if name not in current:
                self.metrics.forget(name)
                self.history.forget(name)
                self.state.pop(name, None)
                self.attempts.pop(name, None)
        self.metrics.set_targets(targets)
        self._arm()
        return len(added), len(removed), len(kept)

    def _own_targets(self, config: Config) -> list[ResolvedTarget]:
        targets, self.shard = own_targets(self.path, config, self.shard_override)
        return targets

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.schedule.next_due()
        if due is None or self._stopped.is_set():
            return
        delay = max(0.0, due - time.time())
        self._timer = self.loop.call_at(self.loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.time()
        for job, planned, start in self.schedule.pop_due(now):
            if job.skipped:
                self.metrics.add_skipped(job.item.name, job.skipped)
                job.skipped = 0
            if start:
                self.metrics.lag.observe(max(0.0, now - planned))
                self._start(job)
        self._arm()

    def _start(self, job: Job[ResolvedTarget]) -> None:
        target = job.item
        job.running = True
        number = self.attempts.get(target.name, 0) + 1
        self.attempts[target.name] = number
        addresses = self.resolver.cached(target.host)
        if addresses is not None:
            self._submit(job, addresses[0], number)
        else:
            self.loop.create_task(self._resolve_then_submit(job, number))

    async def _resolve_then_submit(self, job: Job[ResolvedTarget], number: int) -> None:
        target = job.item
        try:
            addresses = await self.resolver.resolve(target.host)
        except ResolveError as exc:
            record = unresolved_record(target.address, target.host, target.port, exc.code, number)
            record.extra = _extra(target)
            self._finished(job, record)
            return
        if not self.engine.closed:
            self._submit(job, addresses[0], number)

    def _submit(self, job: Job[ResolvedTarget], address: Address, number: int) -> None:
        target = job.item
        endpoint = Endpoint(target.address, target.host, target.port)
        attempt = Attempt(endpoint, address, number, target.timeout)
        extra = _extra(target)

        def done(record: Record, _: Attempt, final: bool) -> None:
            record.extra = extra
            if final:
                self._finished(job, record)

        self.engine.submit(attempt, done)

    def _write(self, record: Record) -> None:
        try:
            self.write_record(record)
        except SinkError as exc:
            self._die(str(exc))

    def _finished(self, job: Job[ResolvedTarget], record: Record) -> None:
        job.running = False
        name = job.item.name
        self._write(record)
        if not job.active:
            return  # removed by a reload while in flight: record it, keep no state
        self.metrics.observe(name, record)
        up = record.outcome == OPEN
        before = self.state.get(name)
        if before is not up:
            self.state[name] = up
            self.log.info(
                "state",
                name=name,
                target=record.target,
                **{"from": _updown(before), "to": _updown(up)},
            )
        self.history.observe(name, record, self.state.get(name))

    def _status_routes(self) -> list[web.RouteDef]:
        """`GET /` and `/api/targets`: the status page, over the targets being scheduled."""
        page = StatusPage(lambda: [job.item for job in self.schedule.jobs.values()], self.history)
        return page.routes()

    # -- GET /probe: the query and the answer are ondemand.py's ---------------------------------

    async def _probe(self, request: web.Request) -> Answer:
        try:
            query = ondemand.parse_query(
                request.query, request.headers, self.config.defaults.timeout
            )
        except ondemand.BadQuery as exc:
            return _text(400, str(exc))
        endpoint = query.endpoint
        extra = {"name": endpoint.target, "via": "http"}
        began = time.perf_counter()
        try:
            addresses = await self.resolver.resolve(endpoint.host)
        except ResolveError as exc:
            dns = time.perf_counter() - began
            query.step(f"resolve {endpoint.host}: failed, {exc.code} ({dns * 1000:.3f} ms)")
            record = unresolved_record(
                endpoint.target, endpoint.host, endpoint.port, exc.code, 1, dns * 1000
            )
            record.extra = extra
            self._write(record)
            return self._probe_answer(query, record, began, dns)
        dns = time.perf_counter() - began
        shown = ", ".join(a.ip for a in addresses)
        query.step(f"resolve {endpoint.host}: {shown} ({dns * 1000:.3f} ms)")
        # Checked after resolution, on the very address we will connect to: a name cannot
        # smuggle in an address outside probe_allow.
        allowed = [a for a in addresses if _allowed(a.ip, self._allow)]
        nets = ", ".join(str(n) for n in self._allow)
        if not allowed:
            query.step(f"allow: no address inside probe_allow ({nets}): refused, no connection")
            message = f"{query.text} is outside probe_allow; no connection was made"
            if query.debug:
                return Answer(403, ondemand.debug_text(query, None, None))
            return _text(403, message)
        query.step(f"allow: {allowed[0].ip} is inside probe_allow ({nets})")
        query.step(f"address chosen: {allowed[0].ip} ({allowed[0].family_name})")
        engine = self.engine
        if engine.closed or not self.running:
            return _text(503, "shutting down")
        if engine.inflight + engine.queued >= engine.ceiling:
            return _text(503, "busy: every attempt slot is taken, try again")
        answered: asyncio.Future[Record] = self.loop.create_future()

        def done(record: Record, _: Attempt, final: bool) -> None:
            record.extra = extra
            if final and not answered.done():  # the client may have hung up
                answered.set_result(record)

        attempt = Attempt(endpoint, allowed[0], 1, query.timeout, dns_ms=dns * 1000)
        engine.submit(attempt, done)
        self._answers.add(answered)
        try:
            record = await answered
        except asyncio.CancelledError:
            return _text(503, "shutting down")
        finally:
            self._answers.discard(answered)
        self._write(record)
        return self._probe_answer(query, record, began, dns)

    @staticmethod
    def _probe_answer(query: ondemand.Query, record: Record, began: float, dns: float) -> Answer:
        took = time.perf_counter() - began
        body = ondemand.answer_body(query, record, took, dns)
        return Answer(200, body, ondemand.answer_type(query))

    # -- signals and reload -----------------------------------------------------------------------

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
            self.writer.reopen()
        except SinkError as exc:
            self._die(str(exc))
            return
        try:
            new = load_config(self.path)
            targets = self._own_targets(new)
        except ConfigError as exc:
            report(f"reload failed, keeping the running config: {exc}", prefix="")
            self.metrics.config_loaded(False)
            self.log.info("reload", result="failed", config=self.path, error=str(exc))
            return
        notes = self._apply_config(new)
        if notes is None:
            return
        added, removed, kept = self._apply_targets(targets)
        self.metrics.config_loaded(True)
        self.log.info(
            "reload",
            result="ok",
            config=self.path,
            added=added,
            removed=removed,
            kept=kept,
            **({"needs_restart": notes} if notes else {}),
        )

    def _apply_config(self, new: Config) -> list[str] | None:
        """Take what can change while running; name what needs a restart. None: refused,
        and nothing was changed (what can fail is tried before anything is applied)."""
        old = self.config
        source = engine_source(new)
        try:
            if source is not None and new.engine.source != old.engine.source:
                check_source(source)
            if new.log.file != old.log.file:
                self.writer.retarget(new.log.file or None)
        except (OSError, SinkError) as exc:
            reason = exc if isinstance(exc, SinkError) else f"engine.source: {exc.strerror}"
            report(f"reload failed, keeping the running config: {self.path}: {reason}", "")
            self.metrics.config_loaded(False)
            self.log.info("reload", result="failed", config=self.path, error=str(reason))
            return None
        concurrency = fit_concurrency(new.engine.concurrency)[0]
        self.engine.reconfigure(
            replace(
                self.engine.options,
                source=source,
                timeout=new.defaults.timeout,
                concurrency=concurrency,
            )
        )
        self._allow = probe_allow_networks(new)
        self.config = new
        return [
            key
            for key, changed in (
                ("log.format", new.log.format != old.log.format),
                ("metrics.listen", new.metrics.listen != old.metrics.listen),
            )
            if changed
        ]

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop scheduling now; the shutdown drains what is in flight."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.running = False
        self._stopped.set()

    # -- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self) -> int:
        self.running = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)
        engine = self.engine
        if not engine.closed:
            engine.drop_queued()
            # Every attempt in flight ends by its own deadline; this bound is a safety net.
            timeouts = [job.item.timeout for job in self.schedule.jobs.values()]
            if self.http is not None:
                timeouts.append(PROBE_TIMEOUT_MAX)  # a GET /probe may ask for this long
            longest = max([engine.options.timeout, *timeouts])
            with contextlib.suppress(TimeoutError, SinkError):
                await asyncio.wait_for(engine.drain(), timeout=longest + 1.0)
            engine.close()
        for answered in self._answers:
            answered.cancel()  # its attempt was queued, never started: the client gets 503
        self._flush_handle.cancel()
        if self.http is not None:
            await self.http.stop()
        if self.fatal is None:
            self.log.info("stopped", config=self.path)
            try:
                self.writer.close()
            except SinkError as exc:
                self._report(str(exc))
                self.exit_code = EXIT_FAILED
        if self.fatal is not None:
            self._report(self.fatal)
        return self.exit_code

    def _flush_tick(self) -> None:
        try:
            self.writer.flush()
        except SinkError as exc:
            self._die(str(exc))
            return
        self._flush_handle = self.loop.call_later(FLUSH_EVERY, self._flush_tick)

    def _engine_closed(self) -> None:
        if self.engine.failure is not None and self.fatal is None:
            self._die(str(self.engine.failure))

    def _die(self, message: str) -> None:
        """The log cannot be written: stop now and say so, naming the file."""
        if self.fatal is None:
            self.fatal = message
            self.exit_code = EXIT_FAILED
        self.stop()

    def _fail(self, message: str, code: int) -> int:
        self._report(message)
        return code

    @staticmethod
    def _report(message: str) -> None:
        report(message)


def log_format(cfg: Config) -> str:
    """The renderer: `[log] format` when set; when not, the console form for a person at a
    terminal (in colour unless NO_COLOR is set or TERM=dumb), JSON for files and pipes."""
    fmt = cfg.log.format
    to_tty = not cfg.log.file and os.isatty(1)
    if fmt is None:
        fmt = "console" if to_tty else "json"
    colour = to_tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return "console-colour" if fmt == "console" and colour else fmt


def _extra(target: ResolvedTarget) -> dict[str, Any]:
    extra: dict[str, Any] = {"name": target.name}
    if target.labels:
        extra["labels"] = dict(target.labels)
    return extra


def _updown(up: bool | None) -> str:
    return "unknown" if up is None else ("up" if up else "down")


def _allowed(ip: str, networks: Networks) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # judge where the packets really go
    return any(address in net for net in networks)


def _text(status: int, message: str) -> Answer:
    return Answer(status, (message + "\n").encode())


def own_targets(
    path: str, config: Config, override: fleet.Shard | None
) -> tuple[list[ResolvedTarget], fleet.Shard | None]:
    """The config's targets a daemon keeps: its shard's share (the override, else the
    config's [cluster] shard), label names checked for metrics. ConfigError otherwise."""
    check_labels(path, (t.labels for t in config.targets))
    shard = override
    if shard is None:
        try:
            shard = fleet.config_shard(config)
        except ValueError as exc:
            raise ConfigError(path, "cluster.shard", str(exc)) from None
    targets = resolved_targets(config)
    if shard is not None:
        targets = [t for t in targets if shard.owns(t.name)]
    return targets, shard


def run_daemon(path: str, shard: fleet.Shard | None = None) -> int:
    """Load the config (ConfigError escapes: the caller reports it) and serve until a signal.
    `shard`: --shard; when None, the environment's PROBE_SHARD (UsageError if malformed)."""
    config = load_config(path)
    if shard is None:
        shard = fleet.shard_from_env()
    own_targets(path, config, shard)  # refuse a config whose labels or shard are bad, now
    return event_loop.run(Daemon(path, config, shard).serve())
