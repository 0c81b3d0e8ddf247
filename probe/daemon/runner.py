"""The scheduled probing: schedule → resolve → engine → state, history and metrics.

Each target's slot fires on the loop's timer; its name is resolved (awaited the first time,
with the attempt's timeout; after that the last good addresses are at hand while DNS fails
or hangs); one attempt goes to the engine per chosen address; each record is written, and
updates the damped up/down state of its path, the status page's history and the metrics.
The flush tick writes the log out, follows a rotated log file, and re-anchors the schedule
when the wall clock steps.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Any

from ..engine import Attempt, Engine
from ..errors import ConfigError, SinkError
from ..output.writer import RecordWriter
from ..record import OPEN, Record, unresolved_record
from ..resolve import Address, KeptNames, LookupPool, ResolveError, Resolver, literal
from ..syntax import Endpoint
from . import fleet
from .config import Config, ResolvedTarget, StoreConfig, resolved_targets
from .history import BUCKETS, History
from .metrics import Metrics, check_labels
from .paths import Health, Path, path_of, select
from .schedule import Clock, Job, Schedule
from .store import Saved, Store, default_directory, open_store

FLUSH_EVERY = 0.1  # seconds between log flushes, log-file checks and clock-step checks
LATE_START = 0.1  # seconds: a scheduled start later than this is counted and logged
# Slots due within this much are started now: one wake-up of the loop starts every slot of
# the next 10 ms (at 1,000 starts a second, under 100 wake-ups instead of ~300, each costing
# the process 20-40 µs of CPU), and a start that early is as good as on its slot. (The
# loop's timers count whole milliseconds, and may fire up to one early.)
EARLY = 0.01


def should_log(mode: str, record: Record, previous: tuple[str, str | None] | None) -> bool:
    """Whether `record` goes to the log under `mode`; `previous` is its path's last
    (outcome, error), None before the first."""
    if mode == "failures":
        return record.outcome != OPEN
    if mode == "changes":
        return previous != (record.outcome, record.error)
    return True


def _job_key(target: ResolvedTarget) -> str:
    """A target's identity: its phase derives from this, so edits elsewhere keep it."""
    return f"{target.name}\0{target.address}"


def extra_of(target: ResolvedTarget) -> tuple[Endpoint, dict[str, Any]]:
    """A target's attempts' endpoint, and the fields its records carry beyond the
    contract's: its name and labels."""
    extra: dict[str, Any] = {"name": target.name}
    if target.labels:
        extra["labels"] = dict(target.labels)
    return Endpoint(target.address, target.host, target.port), extra


def _updown(up: bool | None) -> str:
    return "unknown" if up is None else ("up" if up else "down")


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


class Runner:
    """Fires the schedule's slots and turns their records into state, history and metrics."""

    def __init__(
        self,
        engine: Engine,
        lookups: tuple[float, float, int],  # the names' (ttl, deadline, resolver threads)
        metrics: Metrics,
        writer: RecordWriter,
        write_record: Callable[[Record], None],
        die: Callable[[str], None],
        log: Any,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.engine = engine
        self.metrics = metrics
        self.writer = writer
        # A record (as every event) that finds the log broken stops the daemon at the sink
        # (log.configure's `broken`): it never raises here.
        self.write = write_record
        self.die = die  # the log cannot be written: the daemon stops, naming the file
        self.log = log
        self.clock = Clock()
        self.schedule: Schedule[ResolvedTarget] = Schedule()
        self.history = History()  # what the status page shows
        self.store: Store | None = None  # the durable state, opened by open_store()
        self.health = Health()  # damped up/down state of every series (down_after/up_after)
        self.attempts: dict[str, int] = {}  # name → attempts made, for the record's number
        self.log_attempts = "all"  # [log] attempts: which records are written (config.py)
        self._last: dict[Path, tuple[str, str | None]] = {}  # path → last (outcome, error)
        self.running = False
        ttl, deadline, threads = lookups
        self._pool = LookupPool("resolve-schedule", threads)
        resolver = Resolver(ttl=0.0, pool=self._pool)
        self.names = KeptNames(resolver, ttl, deadline, self._stale)
        self._hosts: dict[str, list[str]] = {}  # host → names of the targets on it
        self._literals: dict[str, tuple[Address, ...]] = {}  # hosts that are IP literals
        # name → its attempts' endpoint and its records' extra fields, made once per config
        self._shared: dict[str, tuple[Endpoint, dict[str, Any]]] = {}
        self._since: dict[str, float] = {}  # name → start of its attempt not finished yet
        self._timer: asyncio.TimerHandle | None = None
        self._flush_handle: asyncio.TimerHandle | None = None
        self.lookups: set[asyncio.Task[Any]] = set()  # waiting on a name: cancelled at stop

    def targets(self) -> list[ResolvedTarget]:
        return [job.item for job in self.schedule.jobs.values()]

    def track(self, task: asyncio.Task[Any]) -> None:
        self.lookups.add(task)
        task.add_done_callback(self.lookups.discard)

    # -- start and stop -------------------------------------------------------------------------

    def start(self, targets: list[ResolvedTarget], saved: dict[str, Saved]) -> None:
        """Schedule `targets` from their last known state (`saved`, from `open_store`)."""
        self.running = True
        self.apply(targets)
        self._restore(targets, saved)  # before the loop runs again: no attempt comes first
        if self.store is not None:
            self.store.start()
        self._flush_handle = self.loop.call_later(FLUSH_EVERY, self._flush_tick)

    def stop(self) -> None:
        """Stop scheduling now; what is in flight finishes (or is abandoned) elsewhere."""
        self.running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop_lookups(self) -> None:
        for task in list(self.lookups):
            task.cancel()  # pending lookups are abandoned at once; their /probe gets 503
        self.names.cancel()

    async def close(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if self.store is not None:
            self.history.flush()  # the minute in progress: its rest adds to it after a restart
            store = self.store
            await self.loop.run_in_executor(None, store.close)
            self.log.info("store", result="closed", path=str(store.path), **store.stats())
        self._pool.close()

    def running_names(self) -> list[str]:
        return sorted({job.item.name for job in self.schedule.jobs.values() if job.running})

    def first_round(self) -> float:
        """Seconds until every target has had its first record: the longest interval plus
        the longest timeout."""
        intervals = [job.interval for job in self.schedule.jobs.values()]
        return max(intervals, default=0.0) + self.longest_timeout()

    def longest_timeout(self) -> float:
        timeouts = [job.item.timeout for job in self.schedule.jobs.values()]
        return max([self.engine.options.timeout, *timeouts])

    # -- the durable state -----------------------------------------------------------------------

    async def open_store(self, cfg: StoreConfig, targets: list[ResolvedTarget]) -> dict[str, Saved]:
        """Open the store and read back what it knows of `targets` (on a thread: at 10,000
        targets that is a second's reading). Any failure: a warning and a fresh start."""
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

    # -- scheduling -----------------------------------------------------------------------------

    def apply(self, targets: list[ResolvedTarget]) -> dict[str, int]:
        """The targets to schedule from now on. Returns how many, by name, were added,
        removed, changed (any setting) and kept as they were: added + changed + kept is the
        new count, removed + changed + kept the old one."""
        before = {t.name: t for t in self.targets()}
        after = {t.name: t for t in targets}
        changed = sum(1 for n, t in after.items() if n in before and before[n] != t)
        both = sum(1 for n in after if n in before)
        counts = {
            "added": len(after) - both,
            "removed": len(before) - both,
            "changed": changed,
            "kept": both - changed,
        }
        now = self.clock.now()
        items = [(_job_key(t), t.interval, t) for t in targets]
        previous = {job.key: job.item.name for job in self.schedule.jobs.values()}
        _, removed, _ = self.schedule.update(items, now)
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
        self._shared = {t.name: extra_of(t) for t in targets}
        self.names.keep_only(set(self._hosts))
        self.metrics.set_targets(targets)
        if self._last:
            self._last = {p: v for p, v in self._last.items() if p.name in current}
        self._arm()
        return counts

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.schedule.next_due()
        if due is None or not self.running:
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
            if not start:
                self._unmeasured(job, now)
            else:
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

    def _unmeasured(self, job: Job[ResolvedTarget], now: float) -> None:
        """A slot skipped because the last attempt has not ended. Past its timeout it has
        not started: it waits on this machine (no local port towards the target, or every
        slot of the engine taken). The target's state is unknown then, so its probe_up is
        withdrawn instead of left frozen; the next record sets it again."""
        target = job.item
        if now - self._since.get(target.name, now) > target.timeout + target.interval:
            self.metrics.set_up(target.name, None)

    def _start(self, job: Job[ResolvedTarget]) -> None:
        target = job.item
        job.running = True
        self._since[target.name] = self.clock.now()
        number = self.attempts.get(target.name, 0) + 1
        self.attempts[target.name] = number
        addresses = self._literals.get(target.host)
        if addresses is not None:  # an IP literal: no lookup behind it
            self._submit_paths(job, addresses, number, 0.0)
            return
        addresses = self.names.get(target.host)
        if addresses is not None:
            self._submit_paths(job, addresses, number, self.names.cost_ms(target.host))
        else:
            self.track(self.loop.create_task(self._resolve_then_submit(job, number)))

    async def _resolve_then_submit(self, job: Job[ResolvedTarget], number: int) -> None:
        """A name never resolved yet: the lookup gets the attempt's timeout, no longer."""
        target = job.item
        began = time.perf_counter()
        try:
            addresses = await self.names.first(target.host, target.timeout)
        except ResolveError as exc:
            self._unresolved(job, exc.code, number, (time.perf_counter() - began) * 1000.0)
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
        if not chosen:  # the name has no address of this family
            self._unresolved(job, "EAI_ADDRFAMILY", number, dns_ms)
            return
        live = [path_of(target.name, target.addresses, a) for a in chosen]
        for path in self.health.keep(target.name, live):
            self._forget_path(path)  # the address left the name (or the mode changed)
        pending = [len(chosen)]
        for address, path in zip(chosen, live, strict=True):
            self._submit(job, address, path, number, dns_ms, pending)

    def _unresolved(self, job: Job[ResolvedTarget], code: str, number: int, dns_ms: float) -> None:
        """No address to connect to: the attempt's record carries the resolver's `code`."""
        target = job.item
        record = unresolved_record(target.address, target.host, target.port, code, number)
        record.extra = extra_of(target)[1]
        record.dns_ms = dns_ms
        self._finished(job, record, Path(target.name))

    def _submit(
        self,
        job: Job[ResolvedTarget],
        address: Address,
        path: Path,
        number: int,
        dns_ms: float,
        pending: list[int],
    ) -> None:
        target = job.item
        kept = self._shared.get(target.name)  # shared by its attempts: never changed
        endpoint, extra = kept if kept is not None else extra_of(target)
        attempt = Attempt(
            endpoint, address, number, target.timeout, dns_ms=dns_ms, stages=target.stages
        )

        def done(record: Record, _: Attempt, final: bool) -> None:
            record.extra = extra
            if final:
                pending[0] -= 1
                self._finished(job, record, path, pending[0] > 0)

        self.engine.submit(attempt, done)

    # -- records into state -----------------------------------------------------------------------

    def _finished(
        self, job: Job[ResolvedTarget], record: Record, path: Path, more: bool = False
    ) -> None:
        """`more`: other addresses of this round are still in flight."""
        job.running = more
        target = job.item
        if not more:
            self._since.pop(target.name, None)
        previous = self._last.get(path)
        self._last[path] = (record.outcome, record.error)
        if should_log(self.log_attempts, record, previous):
            self.write(record)
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
                    error=record.error,  # what the last attempt met (None when up)
                )
        self.metrics.observe(target.name, record)
        combined = self.health.combined(target.name)  # down when any path is down
        self.metrics.set_up(target.name, combined)
        self.history.observe(target.name, record, combined)

    def _forget_path(self, path: Path) -> None:
        if path.address:
            self.metrics.forget_path(*path.labels())

    # -- the flush and clock tick -----------------------------------------------------------------

    def _flush_tick(self) -> None:
        try:
            if self.writer.follow():
                self.log.info("log", result="reopened", file=self.writer.path)
            self.writer.flush()
        except SinkError as exc:
            self.die(str(exc))
            return
        step = self.clock.step()
        if step is not None and self.running:
            self.schedule.reanchor(self.clock.now())
            self.log.info("clock", step_s=round(step, 3))
            self._arm()
        self._flush_handle = self.loop.call_later(FLUSH_EVERY, self._flush_tick)
