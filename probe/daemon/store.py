"""The daemon's durable state, in SQLite (the standard library's), so a restart loses
neither a target's state and its since-time nor the history the status page draws.

What is kept, per target (targets are rows of `targets`, keyed by name):
- its damped state and since-time, and every state change with its reason (`changes`);
- per-minute buckets for MINUTE_DAYS (`minutes`), downsampled into hours for the retention
  (`hours`) and into days for the uptime bar (`days`): attempts, failures, the per-outcome
  counts, the median band (lowest and highest per-minute p50) and the slowest answer;
- its last ATTEMPTS_KEPT attempts with their local endpoints (`attempts`, a ring by slot).

Writes never happen on the event loop: the loop appends plain tuples to a deque (O(1), no
lock), and one writer thread drains it every FLUSH_EVERY seconds in one transaction (WAL
mode, synchronous=NORMAL: a crash or kill -9 loses at most the last batch, never the file).
Every write is additive (a minute written twice adds up), so a partial minute saved at
shutdown and its rest written after a restart make one correct minute. Reads for pages run
on a reader thread with a connection of its own (WAL: readers never wait for the writer).

A store that cannot be opened or read is a warning and a fresh start: a corrupt file is
moved aside (`*.corrupt-EPOCH`), never deleted, and never a reason not to probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

FILE_NAME = "probe.sqlite3"
SCHEMA_VERSION = 1
FLUSH_EVERY = 0.5  # seconds between two batched commits
MINUTE_DAYS = 1  # per-minute rows kept this many days; hours and days for the retention
ATTEMPTS_KEPT = 20  # last attempts kept per target
CHANGES_RESTORED = 10  # state changes read back per target at start
PRUNE_EVERY = 600.0  # seconds between two prunings of rows past their retention
PRUNE_CHUNK = 200  # targets pruned per transaction (the writer lock is held that long)
BUSY_TIMEOUT_MS = 5000  # shards sharing one file wait for each other's commits this long

Warn = Callable[..., None]  # warn(event-ish message, **fields): the daemon's logger

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS targets (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, up INTEGER, since REAL);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER NOT NULL, at REAL NOT NULL, before TEXT, after TEXT, reason TEXT);
CREATE INDEX IF NOT EXISTS changes_by_target ON changes (id, at);
CREATE TABLE IF NOT EXISTS minutes (
    id INTEGER NOT NULL, minute INTEGER NOT NULL, attempts INTEGER, failures INTEGER,
    outcomes BLOB, p50 REAL, max REAL, PRIMARY KEY (id, minute)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hours (
    id INTEGER NOT NULL, hour INTEGER NOT NULL, attempts INTEGER, failures INTEGER,
    p50_lo REAL, p50_hi REAL, max REAL, PRIMARY KEY (id, hour)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS days (
    id INTEGER NOT NULL, day INTEGER NOT NULL, attempts INTEGER, failures INTEGER,
    PRIMARY KEY (id, day)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER NOT NULL, slot INTEGER NOT NULL, at REAL, outcome TEXT, error TEXT,
    local_address TEXT, local_port INTEGER, latency_ms REAL, rtt_ms REAL,
    PRIMARY KEY (id, slot)) WITHOUT ROWID;
"""

# Additive upserts: the same minute written twice (a partial one before a restart, its rest
# after) sums up; the median band widens to cover both, the slowest is the larger.
_LO = "min(coalesce({0}, excluded.{0}), coalesce(excluded.{0}, {0}))"
_HI = "max(coalesce({0}, excluded.{0}), coalesce(excluded.{0}, {0}))"
_MINUTE = (
    "INSERT INTO minutes VALUES (?,?,?,?,?,?,?) ON CONFLICT (id, minute) DO UPDATE SET "
    "attempts = attempts + excluded.attempts, failures = failures + excluded.failures, "
    f"outcomes = excluded.outcomes, p50 = {_HI.format('p50')}, max = {_HI.format('max')}"
)
_HOUR = (
    "INSERT INTO hours VALUES (?,?,?,?,?,?,?) ON CONFLICT (id, hour) DO UPDATE SET "
    "attempts = attempts + excluded.attempts, failures = failures + excluded.failures, "
    f"p50_lo = {_LO.format('p50_lo')}, p50_hi = {_HI.format('p50_hi')}, "
    f"max = {_HI.format('max')}"
)
_DAY = (
    "INSERT INTO days VALUES (?,?,?,?) ON CONFLICT (id, day) DO UPDATE SET "
    "attempts = attempts + excluded.attempts, failures = failures + excluded.failures"
)


def default_directory(env: Mapping[str, str] | None = None) -> Path:
    """systemd's $STATE_DIRECTORY (its first entry), else $XDG_STATE_HOME/probe, else
    ~/.local/state/probe."""
    env = os.environ if env is None else env
    state = env.get("STATE_DIRECTORY", "")
    if state:
        return Path(state.split(":")[0])
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg:
        return Path(xdg) / "probe"
    return Path.home() / ".local" / "state" / "probe"


# -- what is written (plain tuples: made on the loop, read on the writer thread) ----------------


class Minute(NamedTuple):
    """One minute of a target (or the part of it seen so far: rows add up)."""

    name: str
    minute: int  # epoch minutes
    outcomes: bytes  # array("H") of counts in record.OUTCOMES order
    attempts: int
    failures: int
    p50_ms: float | None
    max_ms: float | None


class Change(NamedTuple):
    name: str
    at: float
    before: str
    after: str
    reason: str | None
    up: bool | None  # the state after it
    since: float


class Seen(NamedTuple):
    """One attempt, for the last-attempts list."""

    name: str
    at: float
    outcome: str
    error: str | None
    local_address: str | None
    local_port: int | None
    latency_ms: float
    rtt_ms: float | None


Write = Minute | Change | Seen


# -- what is read back -------------------------------------------------------------------------


@dataclass(slots=True)
class Saved:
    """A target as the store last knew it."""

    up: bool | None = None
    since: float | None = None
    changes: list[tuple[float, str, str, str | None]] = field(default_factory=list)  # oldest 1st
    minutes: list[tuple[int, tuple[int, ...], float | None, float | None]] = field(
        default_factory=list
    )  # (minute, outcome counts, p50, max), oldest first
    last: Seen | None = None


class Column(NamedTuple):
    """One column of a chart: a span of time summed up."""

    start: float  # epoch seconds
    attempts: int
    failures: int
    p50_lo: float | None
    p50_hi: float | None
    max_ms: float | None


# -- opening -----------------------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=False)  # fmt: skip
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def _prepare(path: Path) -> sqlite3.Connection:
    conn = _connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"journal mode {mode}, not wal")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(_SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {row[0]}, this probe has {SCHEMA_VERSION}")
        conn.execute("SELECT count(*) FROM targets").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _move_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.replace(aside.with_name(aside.name + suffix))
    return aside


def open_store(
    directory: Path,
    retention_days: float,
    warn: Warn,
    clock: Callable[[], float] = time.time,
    fresh: bool = False,
) -> Store | None:
    """The store in `directory` (made if missing), or None, after a warning, when there can
    be none (the daemon then keeps its state in memory only). A file that is not a usable
    store (or any file, with `fresh`) is moved aside and a fresh one started."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        warn("store", result="unavailable", path=str(directory), error=str(exc))
        return None
    path = directory / FILE_NAME
    try:
        if fresh:
            _move_aside(path)
        conn = _prepare(path)
    except sqlite3.DatabaseError as exc:
        try:
            aside = _move_aside(path)
            conn = _prepare(path)
        except (OSError, sqlite3.Error) as again:
            warn("store", result="unavailable", path=str(path), error=str(again))
            return None
        warn("store", result="fresh", path=str(path), error=str(exc), moved_to=str(aside))
    except (OSError, sqlite3.Error) as exc:
        warn("store", result="unavailable", path=str(path), error=str(exc))
        return None
    return Store(path, conn, retention_days, warn, clock)


# -- the store ---------------------------------------------------------------------------------


class Store:
    """One file, one writer thread, one reader thread. `put` is the loop's only call on the
    hot path."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        retention_days: float,
        warn: Warn,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.retention_days = retention_days
        self._conn = conn  # the writer thread's (and load's, before it starts)
        self._warn = warn
        self._clock = clock
        self._queue: deque[Write] = deque()
        self._ids: dict[str, int] = {}
        self._slots: dict[int, int] = {}  # target id → next attempt slot
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="store-read")
        self._read_conn: sqlite3.Connection | None = None
        self._failing = False  # a write error was reported: say it once, and its recovery
        self._pruned = 0.0
        # What the writer did, for the daemon's numbers (read without a lock: ints and floats).
        self.batches = 0
        self.written = 0
        self.flush_max_ms = 0.0
        self.flush_total_ms = 0.0

    # -- loop side -------------------------------------------------------------------------------

    def put(self, item: Write) -> None:
        self._queue.append(item)  # deque.append is atomic: no lock on the loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-write", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued and stop the threads (blocking: at shutdown only)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self._flush()
        self._reader.submit(self._close_reader).result()
        self._reader.shutdown()
        self._conn.close()

    def stats(self) -> dict[str, float]:
        """What the writer did: batches committed, rows queued, and the time its commits
        took (a thread's time, not the loop's)."""
        mean = self.flush_total_ms / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "written": self.written,
            "commit_mean_ms": round(mean, 2),
            "commit_max_ms": round(self.flush_max_ms, 2),
        }

    def flush_now(self) -> None:
        """Ask the writer for a batch at once (tests, shutdown)."""
        self._wake.set()

    # -- writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_EVERY)
            self._wake.clear()
            stopping = self._stopping
            self._flush()
            if stopping:
                return
            if self._clock() - self._pruned >= PRUNE_EVERY:
                self._prune()

    def _flush(self) -> None:
        queue = self._queue
        batch: list[Write] = []
        while queue:
            batch.append(queue.popleft())
        if not batch:
            return
        began = time.perf_counter()
        try:
            self._write(batch)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.rollback()
            if not self._failing:
                self._failing = True
                self._warn("store", result="write_failed", path=str(self.path), error=str(exc),
                           lost=len(batch))  # fmt: skip
            return
        if self._failing:
            self._failing = False
            self._warn("store", result="writing", path=str(self.path))
        took = (time.perf_counter() - began) * 1000.0
        self.batches += 1
        self.written += len(batch)
        self.flush_total_ms += took
        self.flush_max_ms = max(self.flush_max_ms, took)

    def _id(self, name: str) -> int:
        known = self._ids.get(name)
        if known is not None:
            return known
        conn = self._conn
        row = conn.execute("SELECT id FROM targets WHERE name = ?", (name,)).fetchone()
        if row is None:
            cur = conn.execute("INSERT INTO targets (name) VALUES (?)", (name,))
            known = int(cur.lastrowid or 0)
        else:
            known = int(row[0])
        self._ids[name] = known
        return known

    def _slot(self, tid: int) -> int:
        slot = self._slots.get(tid)
        if slot is None:
            row = self._conn.execute(
                "SELECT slot FROM attempts WHERE id = ? ORDER BY at DESC LIMIT 1", (tid,)
            ).fetchone()
            slot = 0 if row is None else (int(row[0]) + 1) % ATTEMPTS_KEPT
        self._slots[tid] = (slot + 1) % ATTEMPTS_KEPT
        return slot

    def _write(self, batch: list[Write]) -> None:
        conn = self._conn
        minutes: list[tuple[Any, ...]] = []
        hours: list[tuple[Any, ...]] = []
        days: list[tuple[Any, ...]] = []
        seen: list[tuple[Any, ...]] = []
        conn.execute("BEGIN IMMEDIATE")
        for item in batch:
            tid = self._id(item.name)
            if isinstance(item, Minute):
                m = item.minute
                minutes.append((tid, m, item.attempts, item.failures, item.outcomes,
                                item.p50_ms, item.max_ms))  # fmt: skip
                hours.append((tid, m // 60, item.attempts, item.failures,
                              item.p50_ms, item.p50_ms, item.max_ms))  # fmt: skip
                days.append((tid, m // 1440, item.attempts, item.failures))
            elif isinstance(item, Seen):
                seen.append((tid, self._slot(tid), item.at, item.outcome, item.error,
                             item.local_address, item.local_port, item.latency_ms,
                             item.rtt_ms))  # fmt: skip
            else:
                conn.execute("INSERT INTO changes VALUES (?,?,?,?,?)",
                             (tid, item.at, item.before, item.after, item.reason))  # fmt: skip
                up = None if item.up is None else int(item.up)
                conn.execute("UPDATE targets SET up = ?, since = ? WHERE id = ?",
                             (up, item.since, tid))  # fmt: skip
        if minutes:
            conn.executemany(_MINUTE, minutes)
            conn.executemany(_HOUR, hours)
            conn.executemany(_DAY, days)
        if seen:
            conn.executemany("INSERT OR REPLACE INTO attempts VALUES (?,?,?,?,?,?,?,?,?)", seen)
        conn.execute("COMMIT")

    def _prune(self) -> None:
        """Rows past their retention go, a few targets per transaction (each one a range of
        its primary key, so no pass over the whole table holds the write lock). A target
        not probed within the retention (renamed, removed) goes whole, name and all."""
        now = self._clock()
        self._pruned = now
        minute_cut = int((now - MINUTE_DAYS * 86400) // 60)
        hour_cut = int((now - self.retention_days * 86400) // 3600)
        day_cut = int((now - self.retention_days * 86400) // 86400)
        at_cut = now - self.retention_days * 86400
        conn = self._conn
        gone: set[int] = set()
        try:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM targets")]
            for i in range(0, len(ids), PRUNE_CHUNK):
                conn.execute("BEGIN IMMEDIATE")
                for tid in ids[i : i + PRUNE_CHUNK]:
                    conn.execute("DELETE FROM minutes WHERE id = ? AND minute < ?",
                                 (tid, minute_cut))  # fmt: skip
                    conn.execute("DELETE FROM hours WHERE id = ? AND hour < ?", (tid, hour_cut))
                    conn.execute("DELETE FROM days WHERE id = ? AND day < ?", (tid, day_cut))
                    conn.execute("DELETE FROM changes WHERE id = ? AND at < ?", (tid, at_cut))
                    if self._forgotten(tid, at_cut):
                        gone.add(tid)
                conn.execute("COMMIT")
                if self._queue:
                    self._flush()  # the loop's writes do not wait for a whole pruning
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.rollback()
            self._warn("store", result="prune_failed", path=str(self.path), error=str(exc))
        if gone:
            self._ids = {n: i for n, i in self._ids.items() if i not in gone}
            for tid in gone:
                self._slots.pop(tid, None)

    def _forgotten(self, tid: int, at_cut: float) -> bool:
        """Delete a target with no attempt since `at_cut` and no rows left; True if it went."""
        conn = self._conn
        last = conn.execute("SELECT max(at) FROM attempts WHERE id = ?", (tid,)).fetchone()[0]
        if last is not None and last >= at_cut:
            return False
        conn.execute("DELETE FROM attempts WHERE id = ?", (tid,))
        for table in ("minutes", "hours", "days", "changes"):
            if conn.execute(f"SELECT 1 FROM {table} WHERE id = ? LIMIT 1", (tid,)).fetchone():
                return False
        conn.execute("DELETE FROM targets WHERE id = ?", (tid,))
        return True

    # -- reading back at start (before the writer starts) -----------------------------------------

    def load(self, names: Iterable[str], now: float, window_minutes: int) -> dict[str, Saved]:
        """What the store knows of `names`: state, since, the last changes, the complete
        minutes of the last `window_minutes`, the last attempt. Blocking (a thread)."""
        wanted = set(names)
        conn = self._conn
        out: dict[str, Saved] = {}
        by_id: dict[int, Saved] = {}
        for tid, name, up, since in conn.execute("SELECT id, name, up, since FROM targets"):
            self._ids[name] = tid
            if name in wanted:
                saved = Saved(None if up is None else bool(up), since)
                out[name] = by_id[tid] = saved
        if not by_id:
            return out
        for tid, at, before, after, reason in conn.execute(
            "SELECT id, at, before, after, reason FROM (SELECT *, row_number() OVER "
            "(PARTITION BY id ORDER BY at DESC) AS n FROM changes) WHERE n <= ? "
            "ORDER BY id, at",
            (CHANGES_RESTORED,),
        ):
            if (kept := by_id.get(tid)) is not None:
                kept.changes.append((at, before, after, reason))
        current = int(now // 60)
        first = current - window_minutes + 1
        query = ("SELECT minute, outcomes, p50, max FROM minutes "
                 "WHERE id = ? AND minute >= ? AND minute < ? ORDER BY minute")  # fmt: skip
        for tid, saved in by_id.items():
            for minute, blob, p50, high in conn.execute(query, (tid, first, current)):
                counts = array("H")
                counts.frombytes(blob or b"")
                saved.minutes.append((minute, tuple(counts), p50, high))
        for row in conn.execute(
            "SELECT id, at, outcome, error, local_address, local_port, latency_ms, rtt_ms "
            "FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY at DESC) AS n "
            "FROM attempts) WHERE n = 1"
        ):
            if (kept := by_id.get(row[0])) is not None:
                kept.last = Seen("", *row[1:])
        return out

    # -- reader thread (pages) -------------------------------------------------------------------

    def _reading(self) -> sqlite3.Connection:
        if self._read_conn is None:
            self._read_conn = _connect(self.path)
            self._read_conn.execute("PRAGMA query_only = 1")
        return self._read_conn

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """fn(connection) on the reader thread; sqlite3.Error comes back as None."""

        def run() -> Any:
            try:
                return fn(self._reading())
            except sqlite3.Error as exc:
                self._warn("store", result="read_failed", path=str(self.path), error=str(exc))
                return None

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    async def columns(self, name: str, start: float, end: float, width: float) -> list[Column]:
        """[start, end) in columns of `width` seconds (from minutes for a span within
        MINUTE_DAYS, else from hours); a column with no row is absent."""
        return list(await self.read(lambda c: _columns(c, name, start, end, width)) or [])

    async def changes(self, name: str, limit: int) -> list[tuple[float, str, str, str | None]]:
        """The newest `limit` state changes, newest first."""
        sql = ("SELECT at, before, after, reason FROM changes WHERE id = "
               "(SELECT id FROM targets WHERE name = ?) ORDER BY at DESC LIMIT ?")  # fmt: skip
        return list(await self.read(lambda c: c.execute(sql, (name, limit)).fetchall()) or [])

    async def attempts(self, name: str) -> list[Seen]:
        """The last attempts, newest first."""
        sql = ("SELECT at, outcome, error, local_address, local_port, latency_ms, rtt_ms "
               "FROM attempts WHERE id = (SELECT id FROM targets WHERE name = ?) "
               "ORDER BY at DESC")  # fmt: skip
        rows = await self.read(lambda c: c.execute(sql, (name,)).fetchall()) or []
        return [Seen(name, *row) for row in rows]

    async def days(self, names: list[str], first_day: int) -> dict[str, dict[int, tuple[int, int]]]:
        """name → {day: (attempts, failures)} from `first_day` (epoch days) on."""

        def run(c: sqlite3.Connection) -> dict[str, dict[int, tuple[int, int]]]:
            out: dict[str, dict[int, tuple[int, int]]] = {}
            sql = ("SELECT day, attempts, failures FROM days WHERE id = "
                   "(SELECT id FROM targets WHERE name = ?) AND day >= ?")  # fmt: skip
            for name in names:
                out[name] = {d: (a, f) for d, a, f in c.execute(sql, (name, first_day))}
            return out

        return dict(await self.read(run) or {})


def _columns(
    conn: sqlite3.Connection, name: str, start: float, end: float, width: float
) -> list[Column]:
    row = conn.execute("SELECT id FROM targets WHERE name = ?", (name,)).fetchone()
    if row is None:
        return []
    tid = row[0]
    if end - start <= MINUTE_DAYS * 86400:
        sql = (
            "SELECT CAST((minute * 60 - ?) / ? AS INTEGER) AS col, sum(attempts), sum(failures),"
            " min(p50), max(p50), max(max) FROM minutes WHERE id = ? AND minute >= ? "
            "AND minute < ? GROUP BY col ORDER BY col"
        )
        args: tuple[Any, ...] = (start, width, tid, int(start // 60), int(end // 60) + 1)
    else:
        sql = (
            "SELECT CAST((hour * 3600 - ?) / ? AS INTEGER) AS col, sum(attempts), "
            "sum(failures), min(p50_lo), max(p50_hi), max(max) FROM hours WHERE id = ? "
            "AND hour >= ? AND hour < ? GROUP BY col ORDER BY col"
        )
        args = (start, width, tid, int(start // 3600), int(end // 3600) + 1)
    return [
        Column(start + col * width, a or 0, f or 0, lo, hi, top)
        for col, a, f, lo, hi, top in conn.execute(sql, args)
        if col >= 0
    ]
