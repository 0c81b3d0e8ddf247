"""The daemon: its config builders and `probe run` in a subprocess (`Daemon`: config, log,
HTTP, signals), in this namespace or another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Rec, T, wait_for
from .netns import Netns, in_netns
from .prometheus import Samples, metrics_of, parse_prometheus, value
from .records import read_lines, ts
from .run import _environ, probe_cmd
from .sockets import FullQueueListener, SocketSampler, closed_port
from .web import http_get


def target_toml(
    name: str, address: str, labels: Mapping[str, str] | None = None, **keys: Any
) -> str:
    """One `[[targets]]` table; `keys` are further keys (interval, family, ...)."""
    lines = ["[[targets]]", f"address = {json.dumps(address)}", f"name = {json.dumps(name)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    if labels:
        inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in labels.items())
        lines.append(f"labels = {{ {inner} }}")
    return "\n".join(lines) + "\n"


INTERVAL = 0.2  # seconds: config_toml's [defaults] interval


def config_toml(
    log: Path | None,
    targets: str,
    *,
    listen: str = "127.0.0.1:0",
    interval: float = INTERVAL,
    timeout: float = 0.3,
    concurrency: int | None = None,
    extra: str = "",
) -> str:
    """A daemon config logging JSON to `log` (None: stdout) and listening on a free
    loopback port; `extra` goes into [metrics]."""
    log_file = "" if log is None else str(log)
    engine = "" if concurrency is None else f"[engine]\nconcurrency = {concurrency}\n\n"
    return (
        f"[defaults]\ninterval = {interval}\ntimeout = {timeout}\n\n{engine}"
        f'[log]\nformat = "json"\nfile = {json.dumps(log_file)}\n\n'
        f'[metrics]\nlisten = "{listen}"\n{extra}\n' + targets
    )


@dataclass
class Daemon:
    """`probe run --config PATH` in a subprocess, with its log, stdout and stderr in files.
    Configs listen on 127.0.0.1:0 (a free port); `port` reads the one from the log."""

    dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes]
    _port: int | None = field(default=None)

    @classmethod
    def start(
        cls,
        tmp: Path,
        text: str | None,
        log: Path | None = None,
        cwd: Path | None = None,
        args: tuple[str, ...] | None = None,
        wrap: list[str] | None = None,
        flags: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> Daemon:
        """Write `text` to tmp/config.toml (None: it is already there) and run the daemon on
        it; `args` replaces `--config PATH`, `flags` follow it (--shard I/N); `wrap` goes
        before the command (unshare, ...); `env` is added to a shard-free environment."""
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "config.toml"
        if text is not None:
            config.write_text(text)
        with (tmp / "stdout").open("wb") as stdout, (tmp / "stderr").open("wb") as stderr:
            proc = subprocess.Popen(
                [
                    *(wrap or []),
                    *probe_cmd(),
                    "run",
                    *(("--config", str(config)) if args is None else args),
                    *flags,
                ],
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                cwd=cwd or tmp,
                # Its durable store in the test's directory (a restart in the same tmp finds it).
                env=_environ({"STATE_DIRECTORY": str(tmp / "state"), **(env or {})}),
            )
        return cls(tmp, config, log or tmp / "stdout", proc)

    # files

    def lines(self, path: Path | None = None) -> list[Rec]:
        return read_lines(path or self.log)

    def records(self, name: str | None = None, path: Path | None = None) -> list[Rec]:
        return [
            line
            for line in self.lines(path)
            if line.get("event") == "probe" and (name is None or line.get("name") == name)
        ]

    def events(self, event: str) -> list[Rec]:
        return [line for line in self.lines() if line.get("event") == event]

    @property
    def stderr(self) -> str:
        return (self.dir / "stderr").read_text(errors="replace")

    def rewrite(self, text: str) -> None:
        """Replace the config file atomically, as an editor or config manager would."""
        tmp = self.config.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.config)

    # waiting

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 10.0) -> T:
        """`wait_for`, failing at once (with stderr) if the daemon died."""

        def alive_or_done() -> T | None:
            got = check()
            if got or self.proc.poll() is None:
                return got
            got = check()  # the daemon may have written it just before it exited
            if got:
                return got
            raise AssertionError(
                f"daemon exited {self.proc.returncode} while waiting for {what}; "
                f"stderr: {self.stderr!r}"
            )

        return wait_for(what, alive_or_done, timeout)

    def wait_records(
        self, name: str, n: int, after: float = 0.0, timeout: float = 15.0
    ) -> list[Rec]:
        def enough() -> list[Rec] | None:
            recs = [r for r in self.records(name) if ts(r) > after]
            return recs if len(recs) >= n else None

        return self.wait(f"{n} records of {name!r} after {after}", enough, timeout)

    def wait_event(self, event: str, timeout: float = 15.0, **fields: Any) -> Rec:
        def found() -> Rec | None:
            for line in self.events(event):
                if all(line.get(k) == v for k, v in fields.items()):
                    return line
            return None

        return self.wait(f"event {event} {fields}", found, timeout)

    def wait_inflight(self, n: int = 1, timeout: float = 10.0) -> None:
        """Until `probe_inflight` (attempts in flight, both engines) is at least `n`."""

        def enough() -> bool:
            return (value(self.metrics()[1], "probe_inflight") or 0) >= n

        self.wait(f"{n} attempts in flight", enough, timeout)

    def wait_draining(self) -> None:
        """After SIGTERM: until /healthz answers 503, the sign that the drain has begun."""
        self.wait("the drain to begin", lambda: self.get("/healthz")[0] == 503)

    @property
    def port(self) -> int:
        """The metrics port the daemon listens on (from its `listening` event)."""
        if self._port is None:
            ev = self.wait_event("listening", timeout=15.0)
            host, _, port = ev["address"].rpartition(":")
            assert host == "127.0.0.1"
            self._port = int(port)
        return self._port

    def get(
        self, path: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        return http_get(self.port, path, timeout, headers)

    def metrics(self) -> tuple[str, Samples]:
        """The /metrics page, as text and parsed."""
        status, _, body = self.get("/metrics")
        assert status == 200, body
        return body, parse_prometheus(body)

    # stopping

    def send(self, sig: signal.Signals) -> None:
        assert self.proc.poll() is None, f"daemon already exited: {self.stderr!r}"
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 5.0) -> int:
        """Send `sig` (if still running) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """The exit code of a daemon expected to stop by itself."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon still running: {self.stderr!r}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        """Cleanup: SIGTERM, and SIGKILL if it has not exited within 10 s."""
        try:
            self.stop(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


# Starts `probe run` with module constants of probe.daemon.app set first (short TTLs for a
# test that cannot wait a minute), and optionally a wall clock that steps by STEP seconds
# once the file FLAG exists (looked at every 20 ms at most).
LAUNCH = r"""
import json, os, sys, time
patches = json.loads(sys.argv[1])
step = patches.pop("_clock_step", None)
if step:
    real, mono, state = time.time, time.monotonic, {"at": 0.0, "on": False}
    def stepped():
        now = mono()
        if not state["on"] and now - state["at"] > 0.02:
            state["at"], state["on"] = now, os.path.exists(step[1])
        return real() + (step[0] if state["on"] else 0.0)
    time.time = stepped
import probe.daemon.app as app
for key, value in patches.items():
    setattr(app, key, value)
from probe.cli import main
sys.exit(main(sys.argv[2:]))
"""


def start_in(
    tmp: Path,
    text: str,
    log: Path,
    daemons: list[Daemon],
    ns: Netns | None = None,
    patches: dict[str, Any] | None = None,
    prefix: tuple[str, ...] = (),
) -> Daemon:
    """The real `probe run`, optionally inside `ns`, with app constants patched first."""
    config = tmp / "config.toml"
    config.write_text(text)
    with (tmp / "stdout").open("wb") as out, (tmp / "stderr").open("wb") as err:
        proc = subprocess.Popen(
            [
                *prefix,
                *(ns.prefix() if ns is not None else ()),
                sys.executable,
                "-c",
                LAUNCH,
                json.dumps(patches or {}),
                "run",
                "--config",
                str(config),
            ],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=tmp,
        )
    d = Daemon(tmp, config, log, proc)
    daemons.append(d)
    return d


def logging_one_target(tmp: Path, log: Path, daemons: list[Daemon]) -> Daemon:
    """A daemon probing one closed port into `log`, once its first two records are there."""
    d = start_in(
        tmp, config_toml(log, target_toml("a", f"127.0.0.1:{closed_port()}")), log, daemons
    )
    d.wait_records("a", 2)
    return d


def ns_get(ns: Netns, port: int, path: str, timeout: float = 5.0) -> tuple[int, str, str]:
    return in_netns(ns, http_get, port, path, timeout)


def draining(tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener) -> Daemon:
    """A daemon told to stop while its one attempt (2.9 s to a dropped SYN) is in flight."""
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("slow", full_queue.target, timeout=2.9), interval=3.0)
    d = start_in(tmp_path, text, log, daemons)

    def in_flight() -> bool:
        return value(metrics_of(d.get), "probe_inflight") == 1

    d.wait("the first attempt in flight", in_flight, timeout=15)
    d.send(signal.SIGTERM)  # the drain now waits up to 2.9 s for that attempt
    d.wait_draining()
    assert d.proc.poll() is None
    return d


def flood(
    d: Daemon, query: str, n: int, port: int, timeout: float
) -> tuple[list[tuple[int, str, str] | str], SocketSampler]:
    """`n` GETs of `query` at once, one thread each, while the daemon's sockets to `port`
    are sampled: every answer (or the repr of its connection error), and the sampler."""
    answers: list[tuple[int, str, str] | str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            got: tuple[int, str, str] | str = d.get(query, timeout=timeout)
        except Exception as exc:  # a dropped connection is an answer the tests look at
            got = repr(exc)
        with lock:
            answers.append(got)

    sampler = SocketSampler(d.proc.pid, port)
    threads = [threading.Thread(target=one) for _ in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(2 * timeout)
    finally:
        sampler.stop()
    return answers, sampler
