"""Real sockets: listeners that record their peers, closed ports, listeners whose accept
queue is full (connects to them time out, no root needed), sockets by inode, floods."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path


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
            time.sleep(0.005)  # the sampling period

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
