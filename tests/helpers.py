"""The tests' one harness. Real sockets: listeners that record their peers, closed ports,
listeners whose accept queue is full (connects to them time out, no root needed), network
namespaces for sweeps and faults (root and iproute2 needed; skipped otherwise) and their
firewall rules. Records: parsed and checked against the contract. The daemon: `probe run`
in a subprocess (`Daemon`), its config builders, its HTTP pages and Prometheus text."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import pytest

from probe.record import Outcome, Record

T = TypeVar("T")
Rec = dict[str, Any]

ROOT = Path(__file__).resolve().parent.parent

# The record's keys, in the order of ../shared/CONTRACT.md (`name` is the daemon's only).
# Written out here, not taken from probe/, so the tests check the code against the contract.
CONTRACT_KEYS = [
    "event",
    "timestamp",
    "target",
    "host",
    "port",
    "address",
    "family",
    "local_address",
    "local_port",
    "outcome",
    "error",
    "latency_ms",
    "rtt_ms",
    "syn_retransmits",
    "dns_ms",
    "attempt",
]
KEYS = set(CONTRACT_KEYS)
OUTCOMES = ("open", "refused", "timeout", "unreachable", "error")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

# urllib must not send 127.0.0.1 requests through an http_proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- records -----------------------------------------------------------------------------------


def parse_records(
    data: str | bytes, keys: set[str] | None = None, check: bool = False
) -> list[Rec]:
    """Every line a whole JSON probe record with exactly `keys` (the contract's by default),
    the last one ended by a newline, or the test fails. `check`: each record's types and
    invariants too (`check_record`)."""
    text = data.decode() if isinstance(data, bytes) else data
    assert text == "" or text.endswith("\n"), f"last line is cut: {text[-200:]!r}"
    want = KEYS if keys is None else keys
    out = []
    for line in text.split("\n")[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line[:200]!r}") from None
        assert isinstance(rec, dict), line
        assert set(rec) == want, line
        assert rec["event"] == "probe", line
        if check:
            check_record(rec)
        out.append(rec)
    return out


def check_record(rec: Rec) -> None:
    """The contract's types and the invariants between a record's keys."""
    assert TIMESTAMP.fullmatch(rec["timestamp"]), rec["timestamp"]
    assert isinstance(rec["port"], int) and 1 <= rec["port"] <= 65535
    assert rec["outcome"] in OUTCOMES
    assert rec["family"] in ("ipv4", "ipv6", None)
    assert isinstance(rec["latency_ms"], int | float) and rec["latency_ms"] >= 0
    assert isinstance(rec["attempt"], int) and rec["attempt"] >= 1
    assert isinstance(rec["dns_ms"], int | float) and rec["dns_ms"] >= 0
    if rec["outcome"] == "open":
        assert rec["error"] is None
    else:
        assert isinstance(rec["error"], str) and rec["error"]
        assert rec["rtt_ms"] is None
    retransmits = rec["syn_retransmits"]
    assert retransmits is None or (isinstance(retransmits, int) and retransmits >= 0)
    if retransmits:  # Karn's rule: no RTT sample from a resent SYN
        assert rec["rtt_ms"] is None
    if rec["local_port"] is None:  # never reached connect(): nothing to count
        assert retransmits is None
    if rec["outcome"] in ("open", "refused", "timeout", "unreachable"):
        assert isinstance(rec["local_port"], int) and 1 <= rec["local_port"] <= 65535
        assert isinstance(rec["local_address"], str)
        assert isinstance(rec["address"], str)


def make_record(**changes: Any) -> Record:
    """A record as the engine builds one (an open loopback attempt with its RTT sample), for
    the in-process tests of what consumes records; `changes` sets any field."""
    fields: dict[str, Any] = {
        "started": time.time(),
        "target": "127.0.0.1:9",
        "host": "127.0.0.1",
        "port": 9,
        "address": "127.0.0.1",
        "family": "ipv4",
        "local_address": "127.0.0.1",
        "local_port": 40000,
        "outcome": Outcome.OPEN,
        "error": None,
        "latency_ms": 1.0,
        "rtt_ms": 0.5,
        "syn_retransmits": 0,
        "dns_ms": 0.0,
        "attempt": 1,
    }
    return Record(**(fields | changes))


def read_lines(path: Path) -> list[Rec]:
    """Every complete line of a JSON-lines file, parsed; a line that is not JSON fails."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[Rec] = []
    for raw in data.split(b"\n")[:-1]:  # the last piece is empty or a line being written
        try:
            line = json.loads(raw)
        except ValueError:
            raise AssertionError(f"{path}: not a JSON line: {raw[:200]!r}") from None
        assert isinstance(line, dict), raw
        out.append(line)
    return out


def ts(line: Rec) -> float:
    """A record's or event's timestamp as epoch seconds."""
    when = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return when.replace(tzinfo=UTC).timestamp()


def no_traceback(stderr: str | bytes) -> None:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 15.0, step: float = 0.02
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline.
    A wait returns as soon as its condition holds, so a generous deadline costs a passing
    test nothing (a daemon's start-up can take seconds on a loaded 2-core machine)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(step)


def http_fetch(
    port: int, path: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """(status, response headers, body) of GET http://127.0.0.1:PORT/PATH."""
    url = f"http://127.0.0.1:{port}{path}"
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _http.open(request, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def http_get(
    port: int, path: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """(status, content type, body as text) of GET http://127.0.0.1:PORT/PATH."""
    status, got, body = http_fetch(port, path, timeout, headers)
    return status, got.get("Content-Type", ""), body.decode()


def kill(proc: subprocess.Popen[Any]) -> None:
    """Kill a child this test started (by its own handle) and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class RecordingListener:
    """A listener on loopback that accepts and remembers each peer's address."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.peers.append((peer[0], peer[1]))
            conn.close()

    def wait_peers(self, n: int, timeout: float = 2.0) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.peers) >= n:
                    return list(self.peers)
            time.sleep(0.01)
        with self._lock:
            return list(self.peers)

    def assert_not_reached(self) -> None:
        """Nothing connected here (given the time to), while a connection of our own still
        is seen: the silence means something."""
        time.sleep(0.3)  # a connection, had one been made, would have been accepted by now
        assert self.peers == []
        with socket.create_connection((self.host, self.port), timeout=2):
            pass
        assert len(self.wait_peers(1)) == 1

    def close(self) -> None:
        self._stop = True
        self._thread.join(1)
        self.sock.close()


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on: bound (so no one else takes it) but never listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    port: int = s.getsockname()[1]
    _held.append(s)
    return port


_held: list[socket.socket] = []


class FullQueueListener:
    """listen(0) and connections nobody accepts: the kernel drops further SYNs, so connects
    to it time out, which is how a timeout is made without root or a firewall."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port: int = self.sock.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        self.fillers: list[socket.socket] = []
        for _ in range(16):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(0.3)
            try:
                c.connect(("127.0.0.1", self.port))
            except (TimeoutError, OSError):
                c.close()
                return  # the queue is full: this SYN was dropped
            self.fillers.append(c)
        raise RuntimeError("accept queue never filled")

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.sock.close()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def can_netns() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's ip"
    return None


class Netns:
    """A throwaway network namespace with only `lo`, up. Everything in it is ours."""

    def __init__(self) -> None:
        self.name = f"probetest-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *cmd], check=True, text=True, capture_output=True, **kw
        )

    def popen(self, *cmd: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.prefix(), *cmd], text=True, **kw)

    @contextlib.contextmanager
    def etc(self, name: str, text: str) -> Iterator[None]:
        """/etc/NAME inside the namespace is `text` while the block runs (`ip netns exec`
        bind-mounts /etc/netns/NS/NAME over it): a resolver or a hosts file of our own."""
        parent = Path("/etc/netns")
        created_parent = not parent.exists()
        own = parent / self.name
        own.mkdir(parents=True, exist_ok=True)
        try:
            (own / name).write_text(text)
            yield
        finally:
            shutil.rmtree(own, ignore_errors=True)
            if created_parent:
                with contextlib.suppress(OSError):  # another test's namespace files are there
                    parent.rmdir()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def probe_cmd() -> list[str]:
    """The installed console script beside this interpreter (what the README installs)."""
    exe = Path(sys.executable).with_name("probe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "probe"]


NS_SERVER = """
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    socks.append(s)
def serve(s):
    while True:
        conn, _ = s.accept()
        conn.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
sys.stdin.read()
"""


class NsServer:
    """Listeners inside a namespace that accept and close, until closed. Port 0: the
    kernel picks one; `ports` holds what was bound, in order."""

    def __init__(self, ns: Netns, *ports: int) -> None:
        self.proc = ns.popen(
            sys.executable,
            "-c",
            NS_SERVER,
            *map(str, ports),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.ports = [int(p) for p in self.proc.stdout.readline().split()]
        assert len(self.ports) == len(ports), "the namespace server did not start"

    def close(self) -> None:
        kill(self.proc)


# -- Prometheus text -------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> Samples:
    """Samples of a Prometheus text exposition: (name, labels) -> value."""
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"not a sample line: {line!r}"
        out[(m[1], frozenset(_LABEL.findall(m[2] or "")))] = float(m[3])
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample of `name` with exactly these labels, or None."""
    return samples.get((name, frozenset(labels.items())))


def unlabelled(text: str) -> dict[str, float]:
    """The samples without labels (a /probe answer's), by name."""
    return {name: v for (name, labels), v in parse_prometheus(text).items() if not labels}


def with_label(samples: Samples, name: str, label: str, val: str) -> dict[frozenset[Any], float]:
    """Every sample of `name` whose `label` is `val`."""
    return {labels: v for (n, labels), v in samples.items() if n == name and (label, val) in labels}


# -- the daemon's config ---------------------------------------------------------------------------


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


def run_probe(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 20.0,
) -> subprocess.CompletedProcess[str]:
    """`probe ARGS` to its end, output captured, `input` (or nothing) on its stdin; `env` is
    added to a shard-free environment."""
    return subprocess.run(
        [*probe_cmd(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        env=_environ(env),
    )


def _environ(env: Mapping[str, str] | None) -> dict[str, str]:
    """This environment without any PROBE_SHARD* (a test's daemon owns every target unless
    the test says otherwise), plus `env`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("PROBE_SHARD")}
    return kept | dict(env or {})


# -- the daemon ----------------------------------------------------------------------------------


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


def need_tools(ns: Netns, *tools: str) -> None:
    """Skip unless every tool is installed and each firewall among them (iptables,
    ip6tables) works inside the namespace."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} on this machine")
    for tool in ("iptables", "ip6tables"):
        if tool not in tools:
            continue
        try:
            ns.run(tool, "-L", "INPUT", "-n")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"{tool} does not work here: {exc.stderr.strip()}")


def drop_syns(ns: Netns, ports: int | str, *match: str, chain: str = "INPUT") -> None:
    """Drop the SYNs to `ports` (5001 or "6000:6199") on the namespace's `lo`: on the way in
    (INPUT, after a capture on `lo` has seen them leave) or on the way out (OUTPUT)."""
    way = "-i" if chain == "INPUT" else "-o"
    ns.run(
        "iptables", "-A", chain, way, "lo", "-p", "tcp", "--syn", "--dport", str(ports),
        *match, "-j", "DROP",
    )  # fmt: skip


# every 2nd SYN, starting with the first: each connect gets through on its first resend
EVERY_OTHER = ("-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0")


def check_in(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    """`probe check ARGS` inside the namespace; no traceback on stderr, whatever the exit."""
    result = subprocess.run(
        [*ns.prefix(), *probe_cmd(), "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    no_traceback(result.stderr)
    return result


def free_port_block(n: int, start: int) -> int:
    """The first of `n` consecutive loopback ports, from `start` up, free right now."""
    for lo in range(start, 30000, n):
        socks = []
        try:
            for p in range(lo, lo + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return lo
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port block")


# -- a daemon in a namespace of its own, with a DNS server of ours

# A DNS server for the namespace's loopback: names under .test are 127.0.0.1 (TTL 0) while
# the control file is absent; names starting with "hang", and every name while the control
# file exists, get no answer at all — a dead DNS server, as the resolver sees one. Optional
# arguments: the address to listen on, and the A records (comma-separated) of every name.
FAKE_DNS = r"""
import os, socket, struct, sys
hang = sys.argv[1]
bind = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
records = (sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1").split(",")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    if os.path.exists(hang) or len(data) < 17:
        continue
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1 : i + 1 + data[i]])
        i += 1 + data[i]
    qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
    question = data[12 : i + 5]
    name = b".".join(labels).decode("ascii", "replace").lower()
    if name.startswith("hang"):  # never answered; the test may wait until it was asked
        with open(hang + ".asked", "a") as asked:
            asked.write(name + "\n")
        continue
    known = name.endswith(".test")
    answers = []
    if known and qtype == 1:
        answers = [b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton(a)
                   for a in records]
    answer = b"".join(answers)
    flags = 0x8180 | (0 if known else 3)
    qid = struct.unpack("!H", data[:2])[0]
    head = struct.pack("!HHHHHH", qid, flags, 1, len(answers), 0, 0)
    s.sendto(head + question + answer, peer)
"""


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


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns: Netns, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on a thread that joined the namespace: the sockets it makes live there."""
    out: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed back to the caller
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


class DnsNetns:
    """A namespace whose resolver asks our DNS server on its loopback."""

    def __init__(self, ns: Netns, tmp: Path) -> None:
        self.ns = ns
        self.hang_file = tmp / "dns-hangs"
        self.etc = Path("/etc/netns") / ns.name
        self.etc.mkdir(parents=True)
        # One try, 30 s: a lookup of a dead server hangs far longer than any test waits.
        (self.etc / "resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n"
        )
        self.server = ns.popen(
            sys.executable, "-c", FAKE_DNS, str(self.hang_file), stdout=subprocess.PIPE
        )
        assert self.server.stdout is not None
        assert self.server.stdout.readline().strip() == "ready"

    def hang(self) -> None:
        """From now on the DNS server answers nothing."""
        self.hang_file.touch()

    def asked(self) -> set[str]:
        """The names starting with "hang" (never answered) that lookups have asked for."""
        try:
            return set(Path(f"{self.hang_file}.asked").read_text().split())
        except FileNotFoundError:
            return set()

    def close(self) -> None:
        self.server.kill()
        self.server.wait(5)
        shutil.rmtree(self.etc, ignore_errors=True)


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


def metrics_of(get: Callable[[str], tuple[int, str, str]]) -> dict[Any, float]:
    status, _, body = get("/metrics")
    assert status == 200, body
    return parse_prometheus(body)


def skipped_total(samples: dict[Any, float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "probe_skipped_slots_total")


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


# -- faults from the kernel: firewall rules, port ranges, sockets by inode


def assert_local_endpoint(rec: Rec, range_: tuple[int, int] | None = None) -> None:
    assert isinstance(rec["local_address"], str) and rec["local_address"], rec
    assert isinstance(rec["local_port"], int), rec
    lo, hi = range_ or (1, 65535)
    assert lo <= rec["local_port"] <= hi, rec


def firewall(ns: Netns, *rule: str, tool: str = "iptables") -> None:
    """One rule on the namespace's loopback, outgoing direction."""
    ns.run(tool, "-A", "OUTPUT", "-o", "lo", "-p", "tcp", *rule)


def port_range(ns: Netns, lo: int, hi: int) -> None:
    ns.run("sysctl", "-w", f"net.ipv4.ip_local_port_range={lo} {hi}")


PORT_HOLDER = """
import socket, sys
held = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    held.append(s)
print("held", flush=True)
sys.stdin.readline()
for s in held:
    s.close()
print("released", flush=True)
sys.stdin.read()
"""


def hold_ports(ns: Netns, lo: int, hi: int) -> subprocess.Popen[str]:
    """The namespace's ephemeral range narrowed to LO-HI and every port of it bound by
    another process (PORT_HOLDER), until a line on its stdin releases them."""
    port_range(ns, lo, hi)
    holder = ns.popen(
        sys.executable,
        "-c",
        PORT_HOLDER,
        *map(str, range(lo, hi + 1)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def pipe_into_head(
    cmd: list[str], tmp_path: Path, prefix: list[str] | None = None
) -> tuple[str, int, str]:
    """`cmd 2>err | head -1` in a real shell: (head's output, cmd's exit status, cmd's stderr)."""
    err = tmp_path / "stderr"
    line = " ".join(map(shlex.quote, cmd))
    script = f'{line} 2>{shlex.quote(str(err))} | head -1; echo "rc=${{PIPESTATUS[0]}}" >&2'
    result = subprocess.run(
        [*(prefix or []), "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    m = re.search(r"rc=(\d+)", result.stderr)
    assert m, result.stderr
    return result.stdout, int(m[1]), err.read_text()


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(link[8:-1])
    return found


def tcp_by_inode() -> dict[str, int]:
    """inode → remote port of every TCP socket in this namespace."""
    table: dict[str, int] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] != "0":
                table[fields[9]] = int(fields[2].rpartition(":")[2], 16)
    return table


class SocketSampler:
    """Samples a process's sockets on a thread: all of them, and those connecting to `port`."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self.most_total = 0
        self.most_out = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                mine = socket_inodes(self.pid)
            except OSError:
                return
            table = tcp_by_inode()
            out = sum(1 for inode in mine if table.get(inode) == self.port)
            self.most_total = max(self.most_total, len(mine))
            self.most_out = max(self.most_out, out)
            self.samples += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


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


# -- a record with only the fields a metrics test sets


def record(
    outcome: str,
    error: str | None,
    latency_ms: float,
    rtt_ms: float | None,
    syn_retransmits: int | None = 0,
) -> Record:
    return make_record(
        target="127.0.0.1:1", port=1, outcome=outcome, error=error, latency_ms=latency_ms,
        rtt_ms=rtt_ms, syn_retransmits=syn_retransmits,
    )  # fmt: skip


def check_reading_stdin(first: str, *flags: str) -> subprocess.Popen[str]:
    """`probe check - --json FLAGS` with a pipe for stdin that has had one line, `first`, so
    far: the rest is the test's to write (or to leave unwritten)."""
    proc = subprocess.Popen(
        [*probe_cmd(), "check", "-", "--json", *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(f"{first}\n")
    proc.stdin.flush()
    return proc


# -- `probe serve`, and namespaces joined by veth pairs -----------------------------------------


class Responder:
    """`probe serve ARGS` in a subprocess (inside `ns` when given), its JSON lines in a
    file; `endpoints` are what it bound, from its `serving` event."""

    def __init__(self, tmp: Path, *args: str, ns: Netns | None = None) -> None:
        self.out = tmp / f"serve-{uuid.uuid4().hex[:6]}.jsonl"
        self.err = tmp / f"{self.out.stem}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [*(ns.prefix() if ns else ()), *probe_cmd(), "serve", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        serving = wait_for("probe serve to listen", self._serving, 20)
        self.endpoints: list[str] = serving[0]["listen"]

    def _serving(self) -> list[Rec]:
        if self.proc.poll() is not None:
            raise AssertionError(f"probe serve exited: {self.err.read_text()}")
        return self.events("serving")

    def lines(self) -> list[Rec]:
        text = self.out.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def events(self, event: str) -> list[Rec]:
        return [line for line in self.lines() if line.get("event") == event]

    @property
    def port(self) -> int:
        return int(self.endpoints[0].rsplit(":", 1)[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(10) == 0, "probe serve: SIGTERM is exit 0"
            except subprocess.TimeoutExpired:
                kill(self.proc)
                raise AssertionError("probe serve did not stop on SIGTERM") from None
        no_traceback(self.err.read_text())


def veth(a: Netns, a_addr: str, b: Netns, b_addr: str) -> tuple[str, str]:
    """A veth pair between two namespaces, each end up with its address (`10.9.0.1/24`,
    private, inside namespaces the test made); the two interface names."""
    tag = uuid.uuid4().hex[:6]
    a_if, b_if = f"va{tag}", f"vb{tag}"
    a.run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    a.run("ip", "addr", "add", a_addr, "dev", a_if)
    b.run("ip", "addr", "add", b_addr, "dev", b_if)
    a.run("ip", "link", "set", a_if, "up")
    b.run("ip", "link", "set", b_if, "up")
    return a_if, b_if


# -- a mesh of daemons in namespaces on a bridge ------------------------------------------------

MESH_NET = "10.78.0"  # private, only inside the namespaces made here
MESH_HUB = f"{MESH_NET}.254"
MESH_PORT, MESH_HTTP = 7070, 9464
MESH_INTERVAL, MESH_TIMEOUT = 3.0, 2.0
MESH_CELL = re.compile(
    r'<td class="(\w+)"><a href="[^"]*" title="([^"]+) → ([^"]+)">(.*?)</a></td>'
)


def mesh_ip(i: int) -> str:
    return f"{MESH_NET}.{i + 1}"


def mesh_name(i: int) -> str:
    return f"n{i:02d}"


MESH_CONFIG = """\
[metrics]
listen = "0.0.0.0:{http}"
probe_allow = ["{net}.0/24"]

[log]
format = "json"
file = "{log}"

[defaults]
timeout = {timeout}

[serve]
name = "{name}"

[mesh]
peers = "mesh.test:{port}"
interval = {interval}
"""


class MeshNet:
    """N namespaces on a bridge (in a hub namespace that also runs the DNS server: every
    node's address under `mesh.test`), each running `probe run` in mesh mode, named n00,
    n01, ...; `row(i)` and `matrix(i)` read node i's /api/mesh and /mesh."""

    def __init__(
        self, tmp: Path, n: int, interval: float = MESH_INTERVAL, timeout: float = MESH_TIMEOUT
    ) -> None:
        self.hub = Netns()
        self.nodes: list[Netns] = []
        self.daemons: list[Daemon] = []
        self.dns: subprocess.Popen[str] | None = None
        self.etc: list[Path] = []
        need_tools(self.hub, "iptables")
        self.hub.run("ip", "link", "add", "br0", "type", "bridge")
        self.hub.run("ip", "addr", "add", f"{MESH_HUB}/24", "dev", "br0")
        self.hub.run("ip", "link", "set", "br0", "up")
        for i in range(n):
            ns = Netns()
            self.nodes.append(ns)
            ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}",
                   "netns", self.hub.name)  # fmt: skip
            ns.run("ip", "addr", "add", f"{mesh_ip(i)}/24", "dev", "eth0")
            ns.run("ip", "link", "set", "eth0", "up")
            self.hub.run("ip", "link", "set", f"h{i}", "master", "br0", "up")
            etc = Path("/etc/netns") / ns.name
            etc.mkdir(parents=True)
            (etc / "resolv.conf").write_text(
                f"nameserver {MESH_HUB}\noptions timeout:2 attempts:2\n"
            )
            self.etc.append(etc)
        records = ",".join(mesh_ip(i) for i in range(n))
        self.dns = self.hub.popen(sys.executable, "-c", FAKE_DNS, str(tmp / "no-hang"), MESH_HUB,
                                  records, stdout=subprocess.PIPE)  # fmt: skip
        assert self.dns.stdout is not None and self.dns.stdout.readline().strip() == "ready"
        for i, ns in enumerate(self.nodes):
            home = tmp / mesh_name(i)
            home.mkdir()
            log = home / "log"
            text = MESH_CONFIG.format(
                http=MESH_HTTP, net=MESH_NET, log=log, timeout=timeout, name=mesh_name(i),
                port=MESH_PORT, interval=interval,
            )  # fmt: skip
            start_in(home, text, log, self.daemons, ns=ns)
        for d in self.daemons:
            d.wait_event("started", timeout=60)

    def row(self, i: int) -> dict[str, Any]:
        status, _, body = ns_get(self.nodes[i], MESH_HTTP, "/api/mesh")
        assert status == 200, body
        row: dict[str, Any] = json.loads(body)
        return row

    def matrix(self, i: int = 0) -> tuple[str, dict[tuple[str, str], tuple[str, str]]]:
        status, ctype, body = ns_get(self.nodes[i], MESH_HTTP, "/mesh", timeout=10)
        assert status == 200 and ctype.startswith("text/html"), body
        cells = {(m[2], m[3]): (m[1], m[4]) for m in MESH_CELL.finditer(body)}
        return body, cells

    def close(self) -> None:
        for d in self.daemons:
            d.kill()
        if self.dns is not None:
            kill(self.dns)
        for etc in self.etc:
            shutil.rmtree(etc, ignore_errors=True)
        for ns in (*self.nodes, self.hub):
            ns.delete()
