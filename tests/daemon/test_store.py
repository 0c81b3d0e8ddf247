"""The durable store: what goes in comes back after a restart, writes add up, a corrupt or
unusable store is a warning and a fresh start, and a kill -9 in the middle of writing leaves
a readable file. Real SQLite files in the test's directory; real processes for the kill."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Daemon,
    RecordingListener,
    closed_port,
    config_toml,
    http_fetch,
    make_record,
    target_toml,
    wait_for,
)

from probe.daemon.config import parse_config
from probe.daemon.history import BUCKET_SECONDS, BUCKETS, History
from probe.daemon.store import FILE_NAME, Seen, Store, default_directory, open_store
from probe.errors import ConfigError
from probe.record import OPEN, REFUSED

T0 = 1_800_000_000.0  # a minute boundary
Warnings = list[tuple[str, dict[str, Any]]]


def opened(directory: Path, warnings: Warnings, clock: float = T0) -> Store:
    store = open_store(directory, 90, lambda e, **f: warnings.append((e, f)), lambda: clock)
    assert store is not None, warnings
    return store


def feed(history: History, name: str, start: float, minutes: int, down_from: int) -> None:
    """Three records a minute; refused from minute `down_from` on."""
    for m in range(minutes):
        for j in range(3):
            at = start + m * BUCKET_SECONDS + j * 20 + 1
            up = m < down_from
            outcome = OPEN if up else REFUSED
            error = None if up else "ECONNREFUSED"
            rec = make_record(started=at, outcome=outcome, error=error, latency_ms=1.0 + m,
                              local_port=40000 + m * 3 + j)  # fmt: skip
            history.observe(name, rec, up)


def test_default_directory_follows_the_contract(tmp_path: Path) -> None:
    assert default_directory({"STATE_DIRECTORY": "/a:/b", "XDG_STATE_HOME": "/x"}) == Path("/a")
    assert default_directory({"XDG_STATE_HOME": "/x"}) == Path("/x/probe")
    assert default_directory({}) == Path.home() / ".local/state/probe"


def test_store_config_keys() -> None:
    cfg = parse_config('[store]\npath = "/var/lib/probe"\nretention = 30\n')
    assert (cfg.store.path, cfg.store.retention_days) == ("/var/lib/probe", 30.0)
    assert parse_config("").store.path is None
    for text, word in (("retention = 0", "retention"), ('retention = "90d"', "retention"),
                       ("paht = 'x'", "path")):  # fmt: skip
        with pytest.raises(ConfigError, match=word):
            parse_config(f"[store]\n{text}\n")


def test_what_goes_in_comes_back(tmp_path: Path) -> None:
    warnings: Warnings = []
    store = opened(tmp_path, warnings)
    store.start()
    history = History(sink=store.put)
    feed(history, "web", T0, 10, down_from=6)
    history.flush()  # the tenth minute, still open
    store.close()
    assert warnings == []

    again = opened(tmp_path, warnings)
    now = T0 + 10 * BUCKET_SECONDS + 5
    saved = again.load(["web", "other"], now, BUCKETS)
    assert set(saved) == {"web"}
    web = saved["web"]
    assert web.up is False and web.since == T0 + 6 * BUCKET_SECONDS + 1
    assert [(b, a, r) for _, b, a, r in web.changes] == [
        ("unknown", "up", None),
        ("up", "down", "ECONNREFUSED"),
    ]
    assert [m for m, *_ in web.minutes] == [int(T0 // 60) + m for m in range(10)]
    assert web.last is not None and web.last.local_port == 40000 + 9 * 3 + 2
    assert web.last.outcome == REFUSED

    restored = History()
    restored.restore(saved, now)
    before = history.targets["web"].buckets(now)
    after = restored.targets["web"].buckets(now)
    assert [b and (b.attempts, b.failures, b.max_ms) for b in after] == [
        b and (b.attempts, b.failures, b.max_ms) for b in before
    ]
    assert restored.targets["web"].since == web.since
    assert restored.targets["web"].state is False
    again.close()


def test_a_minute_written_in_two_parts_adds_up(tmp_path: Path) -> None:
    """A partial minute saved at shutdown, its rest after a restart: one minute, summed;
    the hour and day rows agree."""
    warnings: Warnings = []
    for part in range(2):
        store = opened(tmp_path, warnings)
        saved = store.load(["web"], T0 + 30, BUCKETS)
        store.start()
        history = History(sink=store.put)
        history.restore(saved, T0 + 30)
        rec = make_record(started=T0 + 10 + part, outcome=OPEN, latency_ms=2.0 + part)
        history.observe("web", rec, True)
        history.flush()
        store.close()
    conn = sqlite3.connect(tmp_path / FILE_NAME)
    assert conn.execute("SELECT attempts, failures, p50, max FROM minutes").fetchall() == [
        (2, 0, 3.0, 3.0)
    ]
    assert conn.execute("SELECT attempts, p50_lo, p50_hi FROM hours").fetchall() == [(2, 2.0, 3.0)]
    assert conn.execute("SELECT attempts FROM days").fetchall() == [(2,)]
    conn.close()


async def test_page_reads(tmp_path: Path) -> None:
    warnings: Warnings = []
    store = opened(tmp_path, warnings)
    store.start()
    history = History(sink=store.put)
    feed(history, "web", T0, 30, down_from=20)
    store.flush_now()
    store.close()
    store = opened(tmp_path, warnings)
    end = T0 + 30 * 60
    columns = await store.columns("web", T0, end, 600.0)
    assert [(c.start, c.attempts, c.failures) for c in columns] == [
        (T0, 30, 0),
        (T0 + 600, 30, 0),
        (T0 + 1200, 27, 27),  # the 30th minute is still open: not in the store yet
    ]
    assert columns[0].p50_lo == 1.0 and columns[0].p50_hi == 10.0 and columns[0].max_ms == 10.0
    long = await store.columns("web", end - 7 * 86400, end, 3600.0)
    assert sum(c.attempts for c in long) == 87 and sum(c.failures for c in long) == 27
    changes = await store.changes("web", 50)
    assert [c[2] for c in changes] == ["down", "up"]  # newest first
    attempts = await store.attempts("web")
    assert len(attempts) == 20 and attempts[0].at > attempts[-1].at
    days = await store.days(["web", "none"], int(T0 // 86400) - 89)
    assert days == {"web": {int(T0 // 86400): (87, 27)}, "none": {}}
    assert await store.columns("none", T0, end, 600.0) == []
    store.close()


def test_a_corrupt_store_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"not a database at all, " * 100)
    warnings: Warnings = []
    store = opened(tmp_path, warnings)
    assert [(e, f["result"]) for e, f in warnings] == [("store", "fresh")]
    assert Path(warnings[0][1]["moved_to"]).read_bytes().startswith(b"not a database")
    assert store.load(["x"], T0, BUCKETS) == {}
    store.close()


def test_an_unusable_directory_means_no_store(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    warnings: Warnings = []
    got = open_store(tmp_path / "file" / "sub", 90, lambda e, **f: warnings.append((e, f)))
    assert got is None and warnings[0][1]["result"] == "unavailable"


WRITER = """
import sys, time
from pathlib import Path
from probe.daemon.store import open_store, Minute, Seen, Change, FLUSH_EVERY
import probe.daemon.store as s
s.FLUSH_EVERY = 0.001
store = open_store(Path(sys.argv[1]), 90, lambda *a, **k: None)
store.start()
n = 0
printed = False
while True:
    for k in range(500):
        name = f"t{k}"
        store.put(Minute(name, 29_000_000 + n, b"\\x01\\x00" * 5, 5, 4, 1.0, 2.0))
        store.put(Seen(name, 1.8e9 + n, "open", None, "127.0.0.1", 40000, 1.0, 0.5))
        store.put(Change(name, 1.8e9 + n, "up", "down", "ECONNREFUSED", False, 1.8e9 + n))
    n += 1
    if n >= 3 and store.batches and not printed:
        printed = print("writing", flush=True) or True  # a commit is in: the kill is mid-run
    while len(store._queue) > 5000:
        time.sleep(0.0005)
"""


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.7])
def test_kill_9_during_writes_leaves_a_readable_store(tmp_path: Path, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n", (
            proc.stderr.read() if proc.stderr else ""
        )
        time.sleep(delay)  # a moment inside the writing, at three different points
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    conn = sqlite3.connect(tmp_path / FILE_NAME)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    minutes = conn.execute("SELECT count(*), sum(attempts) FROM minutes").fetchone()
    hours = conn.execute("SELECT sum(attempts) FROM hours").fetchone()
    assert minutes[0] > 0 and minutes[1] == hours[0]  # every commit whole: none half-written
    conn.close()
    warnings: Warnings = []
    store = opened(tmp_path, warnings)
    assert warnings == []
    saved = store.load([f"t{k}" for k in range(500)], 1.8e9, BUCKETS)
    assert len(saved) == 500 and all(s.up is False for s in saved.values())
    store.close()


def test_daemon_restart_keeps_state_since_and_history(tmp_path: Path) -> None:
    """A real daemon, stopped and started again on the same store: the down target is down
    at once (with its old since), probe_up is there before any attempt, the changes stay."""
    up = RecordingListener()
    refused = f"127.0.0.1:{closed_port()}"
    try:
        # down_after = 50 on the second run: without the store no state for 25 s.
        def start(down_after: int) -> Daemon:
            text = target_toml("up", up.target) + target_toml("down", refused) + (
                f"down_after = {down_after}\n")  # fmt: skip
            log = tmp_path / f"log{down_after}"  # each run its own: its own "listening"
            d = Daemon.start(tmp_path, config_toml(log, text, interval=0.5), log)
            d.wait_event("listening")
            return d

        def rows(d: Daemon) -> dict[str, Any]:
            data = json.loads(http_fetch(d.port, "/api/targets")[2])
            return {r["name"]: r for g in data["groups"] for r in g["rows"]}

        first = start(1)
        try:
            before = wait_for(
                "both states",
                lambda: (
                    (r := rows(first))
                    and r["down"]["state"] == "down"
                    and r["up"]["state"] == "up"
                    and r
                ),
            )
        finally:
            assert first.stop(timeout=10) == 0, first.stderr
        second = start(50)
        try:
            second.wait_event("restored")
            metrics = http_fetch(second.port, "/metrics")[2].decode()
            assert 'probe_up{target="down"} 0.0' in metrics
            after = rows(second)
            assert after["down"]["state"] == "down"
            assert after["down"]["since"] == before["down"]["since"]
            assert "unknown→down ECONNREFUSED" in after["down"]["changes"][-1]["text"]
            assert after["up"]["state"] == "up"
            restored = second.events("restored")[0]
            assert restored["states"] == 2
        finally:
            assert second.stop(timeout=10) == 0, second.stderr
    finally:
        up.close()


def test_store_path_in_the_config_wins_and_empty_keeps_nothing(tmp_path: Path) -> None:
    """`[store] path` is the directory used instead of the environment's default (the
    helper's STATE_DIRECTORY); `path = ""` writes no store anywhere."""
    refused = f"127.0.0.1:{closed_port()}"
    chosen, default = tmp_path / "chosen", tmp_path / "state"
    chosen.mkdir()
    for path in (str(chosen), ""):
        log = tmp_path / f"log-{bool(path)}"
        text = config_toml(log, target_toml("down", refused), interval=0.2)
        d = Daemon.start(tmp_path, text + f"\n[store]\npath = {json.dumps(path)}\n", log)
        try:
            d.wait_records("down", 3)
        finally:
            assert d.stop(timeout=10) == 0, d.stderr
        assert not (default / FILE_NAME).exists()
    conn = sqlite3.connect(chosen / FILE_NAME)
    assert conn.execute("SELECT up FROM targets WHERE name = 'down'").fetchone() == (0,)
    conn.close()


def test_daemon_with_a_corrupt_store_warns_and_starts_fresh(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / FILE_NAME).write_bytes(b"\x00garbage" * 1000)
    refused = f"127.0.0.1:{closed_port()}"
    log = tmp_path / "log"
    d = Daemon.start(tmp_path, config_toml(log, target_toml("down", refused), interval=0.3), log)
    try:
        warned = d.wait_event("store", result="fresh")
        assert Path(warned["moved_to"]).read_bytes().startswith(b"\x00garbage")
        wait_for("the target's state", lambda: b'probe_up{target="down"} 0.0' in
                 http_fetch(d.port, "/metrics")[2])  # fmt: skip
    finally:
        assert d.stop(timeout=10) == 0, d.stderr
    conn = sqlite3.connect(state / FILE_NAME)  # the fresh store took the outage
    assert conn.execute("SELECT up FROM targets WHERE name = 'down'").fetchone() == (0,)
    conn.close()


def test_pruning_keeps_the_retention_and_forgets_targets_gone_for_longer(tmp_path: Path) -> None:
    warnings: Warnings = []
    day = 86400.0
    now = T0 + 100 * day
    store = open_store(tmp_path, 90, lambda e, **f: warnings.append((e, f)), lambda: now)
    assert store is not None
    old, kept = History(sink=store.put), History(sink=store.put)
    feed(old, "renamed", T0, 3, down_from=1)  # 100 days ago: past the 90-day retention
    feed(kept, "web", now - 2 * day, 3, down_from=1)  # two days ago
    feed(kept, "web", now - 600, 3, down_from=9)  # ten minutes ago
    old.flush()
    kept.flush()
    store._flush()
    store._prune()
    conn = sqlite3.connect(tmp_path / FILE_NAME)
    assert [r[0] for r in conn.execute("SELECT name FROM targets")] == ["web"]
    minutes = [m for (m,) in conn.execute("SELECT minute FROM minutes ORDER BY minute")]
    assert minutes == [int((now - 600) // 60) + m for m in range(3)]  # one day of minutes
    hours = [h for (h,) in conn.execute("SELECT hour FROM hours ORDER BY hour")]
    assert hours[0] == int((now - 2 * day) // 3600)  # hours for the retention
    assert conn.execute("SELECT count(*) FROM changes").fetchone()[0] == 3
    conn.close()
    store.put(Seen("renamed", now, "open", None, None, None, 1.0, None))  # back: a new id
    store._flush()
    assert set(store.load(["renamed", "web"], now, BUCKETS)) == {"renamed", "web"}
    store.close()
    assert warnings == []
