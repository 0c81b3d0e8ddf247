"""`probe run`: the daemon. serve → startup → run until a signal → graceful shutdown.

The same engine, concurrency bound and record as `probe check`; the schedule decides when,
the metrics and the log sink hear about every attempt. Signals are captured once, on the
loop, and stay captured until exit: SIGHUP reloads the config and reopens the log file
(coalesced, so a storm of them is one reload per loop turn), SIGTERM and SIGINT stop
scheduling, let the attempts in flight finish (bounded by their timeout), flush, and exit 0.
During that drain SIGHUP is ignored, and a second SIGTERM/SIGINT ends it at once: attempts
still in flight are abandoned without a record (their outcome is unknown, and any outcome
written would be false), named in one "abandoned" event, then "stopped", exit 0.

Whatever arrives over HTTP, scheduled probes keep their slots: `GET /probe` has an engine,
a concurrency limit and a lookup pool of its own, and scheduled names keep their last good
addresses while DNS fails or hangs. A log that cannot be written stops the daemon loudly: a
prober that silently drops its records is worse than one that stops.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import signal
import sqlite3
import time
from pathlib import Path as FilePath
from typing import Any

from .. import loop as event_loop
from ..engine import Attempt, Engine, EngineOptions, check_source
from ..engine.nofile import fit_concurrency
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, SinkError, TargetError, report
from ..output.log import configure, event_logger
from ..output.writer import RecordWriter, stdout_writer
from ..record import OPEN, Record, unresolved_record
from ..resolve import Address, KeptNames, LookupPool, ResolveError, Resolver, literal
from ..syntax import Endpoint, parse_target
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
from .history import BUCKETS, History
from .http import MAX_CONNECTIONS, PROBE_TIMEOUT_MAX, Answer, HttpServer, ProbeRequest
from .metrics import Metrics, check_labels
from .paths import Health, Path, path_of, select
from .schedule import Clock, Job, Schedule
from .status import StatusPage
from .store import Saved, Store, default_directory, open_store

FLUSH_EVERY = 0.1  # seconds between log flushes, log-file checks and clock-step checks
RESOLVE_TTL = 60.0  # seconds: a months-long run follows DNS changes
RESOLVE_DEADLINE = 5.0  # seconds a scheduled name's re-resolution may take
LOOKUP_THREADS = 4  # getaddrinfo threads for the schedule, and as many for GET /probe
LATE_START = 0.1  # seconds: a scheduled start later than this is counted and logged
# The loop's timers count whole milliseconds (libuv): a slot less than half a millisecond
# away fires at once, and the timer of one further away may fire early. Slots due within
# this much are started now, instead of spinning through the loop until their instant.
EARLY = 0.001
ABANDON_NAMES = 20  # names listed in the "abandoned" event

Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def _job_key(target: ResolvedTarget) -> str:
    """A target's identity: its phase derives from this, so edits elsewhere keep it."""
    return f"{target.name}\0{target.address}"


def _budget(config: Config, http: bool) -> tuple[int, int]:
    """(schedule's concurrency, /probe's): what fits in the descriptors once the HTTP
    connections and /probe's attempts have theirs."""
    probes = config.metrics.probe_concurrency if http else 0  # below engine.concurrency
    reserved = probes + (MAX_CONNECTIONS if http else 0)
    _, room = fit_concurrency(None)
    schedule = max(1, min(config.engine.concurrency, room - reserved))
    return schedule, max(1, min(probes, room - schedule - (MAX_CONNECTIONS if http else 0)))


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
        self.clock = Clock()
        self.schedule: Schedule[ResolvedTarget] = Schedule()
        self.history = History()  # what the status page shows
        self.store: Store | None = None  # the durable state, opened by serve()
        self.health = Health()  # damped up/down state of every series (down_after/up_after)
        self.attempts: dict[str, int] = {}  # name → attempts made, for the record's number
        self.running = False
        self.exit_code = EXIT_OK
        self.fatal: str | None = None
        self.writer = writer
        self.write_record = configure(writer, log_format(config))
        self.log = event_logger()
        listen = metrics_listen(config)
        concurrency, probes = _budget(config, listen is not None)
        concurrency = self._fit_source_range(config, concurrency)
        source = engine_source(config)
        ports = source_ports(config)
        self.engine = Engine(
            EngineOptions(
                timeout=config.defaults.timeout,
                concurrency=concurrency,
                source=source,
                source_ports=ports,
                shortage_giveup=None,  # a daemon waits out a shortage, however long
                lag_limit_ms=config.engine.lag_limit_ms,
            )
        )
        # GET /probe's own engine: its attempts can never take the schedule's slots.
        self.probe_engine = Engine(
            EngineOptions(
                timeout=config.defaults.timeout,
                concurrency=probes,
                source=source,
                source_ports=ports,  # the same allocator as the schedule's (engine/ports.py)
                shortage_giveup=None,
                lag_limit_ms=None,  # loop lag holds the schedule's engine down, not this one
            )
        )
        self.probe_limit = probes
        self.probe_active = 0  # GET /probe requests resolving or connecting now
        for engine in (self.engine, self.probe_engine):
            engine.on_close.append(self._engine_closed)
        self._pools = (
            LookupPool("resolve-schedule", LOOKUP_THREADS),
            LookupPool("resolve-probe", LOOKUP_THREADS),
        )
        self.names = KeptNames(
            Resolver(ttl=0.0, pool=self._pools[0]), RESOLVE_TTL, RESOLVE_DEADLINE, self._stale
        )
        self.probe_resolver = Resolver(ttl=0.0, pool=self._pools[1])
        self._hosts: dict[str, list[str]] = {}  # host → names of the targets on it
        self._literals: dict[str, tuple[Address, ...]] = {}  # hosts that are IP literals
        self._extras: dict[str, dict[str, Any]] = {}  # name → its records' extra fields
        self.metrics = Metrics(lambda: float(self.engine.inflight + self.probe_engine.inflight))
        self.http: HttpServer | None = None
        if listen is not None:
            self.http = HttpServer(
                listen[0], listen[1], self.metrics.pieces, lambda: self.running, self._probe,
                routes=self._status_routes(),
            )  # fmt: skip
        self._stopped = asyncio.Event()
        self._abandon = asyncio.Event()  # a second SIGTERM/SIGINT during the drain
        self._timer: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self._reload_pending = False
        self._answers: set[asyncio.Future[Record]] = set()  # GET /probe waiting for a record
        self._lookups: set[asyncio.Task[Any]] = set()  # waiting on a name: cancelled at stop
        self._allow: Networks = probe_allow_networks(config)

    # -- startup --------------------------------------------------------------------------------

    async def serve(self) -> int:
        if self.http is not None:
            try:
                host, port = await self.http.start()
            except OSError as exc:
                self._close_parts()
                return self._fail(
                    f"cannot listen on {self.config.metrics.listen}: {exc.strerror}", EXIT_USAGE
                )
            self.log.info("listening", address=f"{host}:{port}")
        self._install_signals()
        targets = self._own_targets(self.config)
        saved = await self._open_store(targets)
        self._apply_targets(targets)
        self._restore(targets, saved)  # before the loop runs again: no attempt comes first
        if self.store is not None:
            self.store.start()
        self.metrics.config_loaded(True, reload=False)
        # What start-up built lives as long as the daemon: out of the cyclic collector's way,
        # so a full collection never walks 10,000 targets' objects while starts wait.
        gc.freeze()
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

    async def _open_store(self, targets: list[ResolvedTarget]) -> dict[str, Saved]:
        """Open the store and read back what it knows of `targets` (on a thread: at 10,000
        targets that is a second's reading). Any failure: a warning and a fresh start."""
        cfg = self.config.store
        if cfg.path == "":
            return {}
        directory = default_directory() if cfg.path is None else FilePath(cfg.path)

        def warn(event: str, **fields: Any) -> None:
            self.loop.call_soon_threadsafe(lambda: self.log.warning(event, **fields))

        store = await self.loop.run_in_executor(
            None, open_store, directory, cfg.retention_days, warn
        )
        if store is None:
            return {}
        names = [t.name for t in targets]
        try:
            saved: dict[str, Saved] = await self.loop.run_in_executor(
                None, store.load, names, time.time(), BUCKETS
            )
        except sqlite3.Error as exc:
            self.log.warning("store", result="unreadable", path=str(store.path), error=str(exc))
            await self.loop.run_in_executor(None, store.close)
            store = await self.loop.run_in_executor(
                None, open_store, directory, cfg.retention_days, warn, time.time, True
            )
            if store is None:
                return {}
            saved = {}
        self.store = store
        self.history.sink = store.put
        return saved

    def _restore(self, targets: list[ResolvedTarget], saved: dict[str, Saved]) -> None:
        """The last known state of every target, at once: probe_up, the damper (so the first
        attempts re-confirm it rather than decide it anew) and the page's history."""
        if not saved:
            return
        self.history.restore(saved, time.time())
        restored = 0
        for target in targets:
            kept = saved.get(target.name)
            if kept is None or kept.up is None:
                continue
            self.health.seed(Path(target.name), kept.up, target.down_after, target.up_after)
            self.metrics.set_up(target.name, kept.up)
            restored += 1
        assert self.store is not None
        self.log.info("restored", path=str(self.store.path), targets=len(saved), states=restored)

    def _install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop)
        self.loop.add_signal_handler(signal.SIGINT, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self._request_reload)

    # -- scheduling -----------------------------------------------------------------------------

    def _apply_targets(self, targets: list[ResolvedTarget]) -> tuple[int, int, int]:
        now = self.clock.now()
        items = [(_job_key(t), t.interval, t) for t in targets]
        previous = {job.key: job.item.name for job in self.schedule.jobs.values()}
        added, removed, kept = self.schedule.update(items, now)
        current = {t.name for t in targets}
        for key in removed:
            name = previous[key]
            if name not in current:
                self.metrics.forget(name)
                self.attempts.pop(name, None)
                self.history.forget(name)
                for path in self.health.forget(name):
                    self._forget_path(path)
        self._hosts = {}
        for t in targets:
            self._hosts.setdefault(t.host, []).append(t.name)
        # Worked out once per config, not once per attempt (parsing an address is ~10 µs).
        self._literals = {h: (a,) for h in self._hosts if (a := literal(h)) is not None}
        self._extras = {t.name: _extra(t) for t in targets}
        self.names.keep_only(set(self._hosts))
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
        delay = max(0.0, due - self.clock.now())
        self._timer = self.loop.call_at(self.loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.clock.now()
        late, worst = 0, 0.0
        for job, planned, start in self.schedule.pop_due(now, EARLY):
            if job.skipped:
                self.metrics.add_skipped(job.item.name, job.skipped)
                job.skipped = 0
            if start:
                lag = max(0.0, now - planned)
                self.metrics.lag.observe(lag)
                if lag > LATE_START:
                    late += 1
                    worst = max(worst, lag)
                self._start(job)
        if late:
            self.metrics.late_starts.inc(late)
            self.log.info("late", starts=late, worst_ms=round(worst * 1000.0, 1))
        self._arm()

    def _start(self, job: Job[ResolvedTarget]) -> None:
        target = job.item
        job.running = True
        number = self.attempts.get(target.name, 0) + 1
        self.attempts[target.name] = number
        addresses = self._literals.get(target.host) or self.names.get(target.host)
        if addresses is not None:
            self._submit_paths(job, addresses, number, self.names.cost_ms(target.host))
        else:
            self._track(self.loop.create_task(self._resolve_then_submit(job, number)))

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _resolve_then_submit(self, job: Job[ResolvedTarget], number: int) -> None:
        """A name never resolved yet: the lookup gets the attempt's timeout, no longer."""
        target = job.item
        began = time.perf_counter()
        try:
            addresses = await self.names.first(target.host, target.timeout)
        except ResolveError as exc:
            record = unresolved_record(target.address, target.host, target.port, exc.code, number)
            record.extra = _extra(target)
            record.dns_ms = (time.perf_counter() - began) * 1000.0
            self._finished(job, record, Path(target.name))
            return
        # The lookup that serves this attempt (and, kept, those after it until the next one).
        dns_ms = 0.0 if literal(target.host) else self.names.cost_ms(target.host)
        if self.running and not self.engine.closed:
            self._submit_paths(job, addresses, number, dns_ms)
        else:
            job.running = False

    def _stale(self, host: str, code: str) -> None:
        """A scheduled name's re-resolution failed or hung: its last good addresses stay."""
        names = self._hosts.get(host, [])
        for name in names:
            self.metrics.resolve_failed(name)
        self.log.info("resolve", host=host, result="stale", error=code, names=names)

    def _submit_paths(
        self, job: Job[ResolvedTarget], addresses: tuple[Address, ...], number: int, dns_ms: float
    ) -> None:
        """One attempt per chosen address (`family`, `addresses`); the job runs until the
        last of them is recorded."""
        target = job.item
        chosen = select(addresses, target.family, target.addresses)
        if chosen:
            live = [path_of(target.name, target.addresses, a) for a in chosen]
            for path in self.health.keep(target.name, live):
                self._forget_path(path)  # the address left the name (or the mode changed)
        else:  # the name has no address of this family
            record = unresolved_record(
                target.address, target.host, target.port, "EAI_ADDRFAMILY", number
            )
            record.extra = _extra(target)
            record.dns_ms = dns_ms
            self._finished(job, record, Path(target.name))
            return
        pending = [len(chosen)]
        for address in chosen:
            self._submit(job, address, number, dns_ms, pending)

    def _submit(
        self,
        job: Job[ResolvedTarget],
        address: Address,
        number: int,
        dns_ms: float = 0.0,
        pending: list[int] | None = None,
    ) -> None:
        target = job.item
        endpoint = Endpoint(target.address, target.host, target.port)
        attempt = Attempt(endpoint, address, number, target.timeout, dns_ms=dns_ms)
        extra = self._extras.get(target.name) or _extra(target)  # shared: never changed
        path = path_of(target.name, target.addresses, address)

        def done(record: Record, _: Attempt, final: bool) -> None:
            record.extra = extra
            if final:
                if pending is not None:
                    pending[0] -= 1
                self._finished(job, record, path, pending is not None and pending[0] > 0)

        self.engine.submit(attempt, done)

    def _write(self, record: Record) -> None:
        try:
            self.write_record(record)
        except SinkError as exc:
            self._die(str(exc))

    def _finished(
        self, job: Job[ResolvedTarget], record: Record, path: Path, more: bool = False
    ) -> None:
        """`more`: other addresses of this round are still in flight."""
        job.running = more
        target = job.item
        self._write(record)
        if not job.active:
            return  # removed by a reload while in flight: record it, keep no state
        up = record.outcome == OPEN
        paths = [path]
        if record.address is None and not path.address:
            # No address to connect to (the name did not resolve): every path it had fails.
            paths = self.health.paths(path.name) or paths
        for path in paths:
            change = self.health.observe(path, up, target.down_after, target.up_after)
            if path.address:
                state = self.health.state(path)
                self.metrics.observe_path(path.name, path.address, path.family, record, state)
            if change is not None:
                where = {"address": path.address, "family": path.family} if path.address else {}
                self.log.info(
                    "state",
                    name=path.name,
                    target=record.target,
                    **where,
                    **{"from": _updown(change.before), "to": _updown(change.after)},
                )
        self.metrics.observe(target.name, record)
        combined = self.health.combined(target.name)  # down when any path is down
        self.metrics.set_up(target.name, combined)
        self.history.observe(target.name, record, combined)

    def _forget_path(self, path: Path) -> None:
        if path.address:
            self.metrics.forget_path(*path.labels())

    def _fit_source_range(self, config: Config, concurrency: int) -> int:
        """One attempt per port of `engine.source = "ADDR:LO-HI"`: a smaller range lowers
        the concurrency, said once (at start, or when a reload changes either)."""
        ports = source_ports(config)
        if ports is None or ports[1] - ports[0] + 1 >= concurrency:
            return concurrency
        size = ports[1] - ports[0] + 1
        address = config.engine.source.address if config.engine.source else ""
        self.log.info(
            "source_range",
            source=f"{address}:{ports[0]}-{ports[1]}",
            ports=size,
            concurrency=size,
            requested=concurrency,
        )
        return size

    def _status_routes(self) -> list[Any]:
        """`GET /` and `/api/targets`: the status page, over the targets being scheduled."""
        page = StatusPage(lambda: [job.item for job in self.schedule.jobs.values()], self.history)
        return page.routes()

    # -- GET /probe: the timeout and the answer are ondemand.py's -------------------------------

    async def _probe(self, request: ProbeRequest) -> Answer:
        try:
            target = parse_target(request.target, no_port_hint="")
        except TargetError as exc:
            return _text(400, f"bad target: {exc}")
        if target.count() != 1:
            return _text(400, "bad target: give exactly one port")
        if not self.running:
            return _text(503, "shutting down")
        if self.probe_active >= self.probe_limit:
            return _text(503, "busy: every /probe slot is taken, try again")
        self.probe_active += 1
        try:
            return await self._probe_one(request, next(target.endpoints()))
        finally:
            self.probe_active -= 1

    async def _probe_one(self, request: ProbeRequest, endpoint: Endpoint) -> Answer:
        query = ondemand.plan(
            request.target,
            endpoint,
            request.timeout,
            request.scrape_timeout,
            request.debug,
            self.config.defaults.timeout,
        )
        timeout = query.timeout
        extra = {"name": endpoint.target, "via": "http"}
        began = self.clock.mono()
        lookup = self.loop.create_task(self.probe_resolver.resolve(endpoint.host, timeout))
        self._track(lookup)
        try:
            addresses = await lookup
        except ResolveError as exc:
            dns = self.clock.mono() - began
            query.step(f"resolve {endpoint.host}: failed, {exc.code} ({dns * 1000:.3f} ms)")
            record = unresolved_record(
                endpoint.target, endpoint.host, endpoint.port, exc.code, 1, dns * 1000
            )
            record.extra = extra
            self._write(record)
            return self._probe_answer(query, record, began, dns)
        except asyncio.CancelledError:
            if self.running:
                raise  # not ours: the request itself was cancelled
            return _text(503, "shutting down")  # shutdown abandons pending lookups at once
        dns = self.clock.mono() - began
        shown = ", ".join(a.ip for a in addresses)
        query.step(f"resolve {endpoint.host}: {shown} ({dns * 1000:.3f} ms)")
        # Checked after resolution, on the very address we will connect to: a name cannot
        # smuggle in an address outside probe_allow.
        allowed = [a for a in addresses if _allowed(a.ip, self._allow)]
        nets = ", ".join(str(n) for n in self._allow)
        if not allowed:
            query.step(f"allow: no address inside probe_allow ({nets}): refused, no connection")
            if query.debug:
                return Answer(403, ondemand.debug_text(query, None, None))
            return _text(403, f"{request.target} is outside probe_allow; no connection was made")
        query.step(f"allow: {allowed[0].ip} is inside probe_allow ({nets})")
        query.step(f"address chosen: {allowed[0].ip} ({allowed[0].family_name})")
        engine = self.probe_engine
        if engine.closed or not self.running:
            return _text(503, "shutting down")
        answered: asyncio.Future[Record] = self.loop.create_future()

        def done(record: Record, _: Attempt, final: bool) -> None:
            record.extra = extra
            if final and not answered.done():  # the client may have hung up
                answered.set_result(record)

        attempt = Attempt(endpoint, allowed[0], 1, timeout, dns_ms=dns * 1000)
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

    def _probe_answer(
        self, query: ondemand.Query, record: Record, began: float, dns: float
    ) -> Answer:
        took = self.clock.mono() - began
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
        concurrency, probes = _budget(new, self.http is not None)
        if (new.engine.source, new.engine.concurrency) != (
            old.engine.source,
            old.engine.concurrency,
        ):
            concurrency = self._fit_source_range(new, concurrency)
        for engine, limit in ((self.engine, concurrency), (self.probe_engine, probes)):
            engine.reconfigure(
                EngineOptions(
                    timeout=new.defaults.timeout,
                    concurrency=limit,
                    source=source,
                    source_ports=source_ports(new),
                    shortage_giveup=None,
                    lag_limit_ms=engine.options.lag_limit_ms,
                )
            )
        self.probe_limit = probes
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

    def _abandon_drain(self) -> None:
        """A second SIGTERM/SIGINT: the operator will not wait for the drain."""
        self._abandon.set()

    async def _shutdown(self) -> int:
        self.running = False
        # Handlers stay installed until exit: during the drain a SIGHUP is ignored and a
        # second SIGTERM/SIGINT ends the drain, instead of killing us mid-record.
        self.loop.add_signal_handler(signal.SIGTERM, self._abandon_drain)
        self.loop.add_signal_handler(signal.SIGINT, self._abandon_drain)
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        for task in list(self._lookups):
            task.cancel()  # pending lookups are abandoned at once; their /probe gets 503
        self.names.cancel()
        engines = (self.engine, self.probe_engine)
        if not any(engine.closed for engine in engines):
            for engine in engines:
                engine.drop_queued()
            # Every attempt in flight ends by its own deadline; this bound is a safety net.
            timeouts = [job.item.timeout for job in self.schedule.jobs.values()]
            if self.http is not None:
                timeouts.append(PROBE_TIMEOUT_MAX)  # a GET /probe may ask for this long
            longest = max([self.engine.options.timeout, *timeouts])
            if not await self._drain(engines, longest + 1.0):
                self._report_abandoned()
        for engine in engines:
            engine.close()
        for answered in self._answers:
            answered.cancel()  # its attempt never started, or was abandoned: the client gets 503
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self.http is not None:
            await self.http.stop()
        if self.store is not None:
            self.history.flush()  # the minute in progress: its rest adds to it after a restart
            await self.loop.run_in_executor(None, self.store.close)
        self._close_parts()
        if self.fatal is None:
            self.log.info("stopped", config=self.path)
            try:
                self.writer.close()
            except SinkError as exc:
                self._report(str(exc))
                self.exit_code = EXIT_FAILED
        if self.fatal is not None:
            self._report(self.fatal)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)  # from here to exit, nothing left to interrupt
        return self.exit_code

    async def _drain(self, engines: tuple[Engine, ...], bound: float) -> bool:
        """Wait for the attempts in flight; False when a second signal (or the safety-net
        bound) ended the wait first."""
        drains = {self.loop.create_task(engine.drain()) for engine in engines}
        abandon = self.loop.create_task(self._abandon.wait())
        pending = set(drains)
        deadline = self.loop.time() + bound
        while pending and not abandon.done():
            left = deadline - self.loop.time()
            if left <= 0:
                break
            done, _ = await asyncio.wait(
                {*pending, abandon}, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending -= done
        abandon.cancel()
        for task in drains:
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()  # a sink failure: already in self.fatal
        return not pending

    def _report_abandoned(self) -> None:
        names = sorted({job.item.name for job in self.schedule.jobs.values() if job.running})
        probes = len(self._answers)
        if names or probes:
            self.log.info(
                "abandoned",
                attempts=self.engine.inflight + self.probe_engine.inflight,
                names=names[:ABANDON_NAMES],
                probe_requests=probes,
            )

    def _close_parts(self) -> None:
        for pool in self._pools:
            pool.close()

    def _flush_tick(self) -> None:
        try:
            if self.writer.follow():
                self.log.info("log", result="reopened", file=self.writer.path)
            self.writer.flush()
        except SinkError as exc:
            self._die(str(exc))
            return
        step = self.clock.step()
        if step is not None and not self._stopped.is_set():
            self.schedule.reanchor(self.clock.now())
            self.log.info("clock", step_s=round(step, 3))
            self._arm()
        self._flush_handle = self.loop.call_later(FLUSH_EVERY, self._flush_tick)

    def _engine_closed(self) -> None:
        for engine in (self.engine, self.probe_engine):
            if engine.failure is not None and self.fatal is None:
                self._die(str(engine.failure))

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


def _extra(target: ResolvedTarget) -> dict[str, Any]:
    extra: dict[str, Any] = {"name": target.name}
    if target.labels:
        extra["labels"] = dict(target.labels)
    return extra


def source_ports(config: Config) -> tuple[int, int] | None:
    """The local port range of `engine.source = "ADDR:LO-HI"`, None without one."""
    source = config.engine.source
    if source is None or not source.is_range:
        return None
    return source.port_lo, source.port_hi


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


async def _serve(path: str, config: Config, shard: fleet.Shard | None) -> int:
    """Open what can fail with a usage error first, then build the daemon and serve."""
    try:
        writer = stdout_writer(config.log.file or None)
    except SinkError as exc:
        report(str(exc))
        return EXIT_USAGE
    source = engine_source(config)
    if source is not None:
        try:
            check_source(source)
        except OSError as exc:
            report(f"{path}: engine.source: cannot bind: {exc.strerror}")
            return EXIT_USAGE
    return await Daemon(path, config, writer, shard).serve()


def log_format(cfg: Config) -> str:
    """The renderer: `[log] format` when set; when not, the console form for a person at a
    terminal (in colour unless NO_COLOR is set or TERM=dumb), JSON for files and pipes."""
    fmt = cfg.log.format
    to_tty = not cfg.log.file and os.isatty(1)
    if fmt is None:
        fmt = "console" if to_tty else "json"
    colour = to_tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return "console-colour" if fmt == "console" and colour else fmt


def run_daemon(path: str, shard: fleet.Shard | None = None) -> int:
    """Load the config (ConfigError escapes: the caller reports it) and serve until a signal.
    `shard`: --shard; when None, the environment's PROBE_SHARD (UsageError if malformed)."""
    config = load_config(path)
    if shard is None:
        shard = fleet.shard_from_env()
    own_targets(path, config, shard)  # refuse a config whose labels or shard are bad, now
    return event_loop.run(_serve(path, config, shard))
