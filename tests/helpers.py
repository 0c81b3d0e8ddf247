"""Real sockets for the tests: listeners that record their peers, closed ports, listeners
whose accept queue is full (connects to them time out, no root needed), and network
namespaces for sweeps and faults (root and iproute2 needed; skipped otherwise)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

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
    "attempt",
]


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

    def run(self, *cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *cmd], check=True, text=True, capture_output=True, **kw
        )  # type: ignore[call-overload]

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.prefix(), *cmd], text=True, **kw)  # type: ignore[call-overload]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def probe_cmd() -> list[str]:
    """The installed console script beside this interpreter (what the README installs)."""
    exe = Path(sys.executable).with_name("probe")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "probe"]
