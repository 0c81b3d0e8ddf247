"""Local ports from a fixed range (`-s ADDR:LO-HI`), so a firewall rule or a capture filter
can single out probe traffic.

Ports are handed out round-robin, each to one attempt in flight at a time, so every port
in a capture belongs to one attempt. The socket is bound to (ADDR, port) before connect()
with SO_REUSEADDR: a port whose last connection sits in TIME_WAIT can be bound again, and
the kernel refuses only a 4-tuple that is really taken. IP_BIND_ADDRESS_NO_PORT does not
apply: it defers the *kernel's* choice of a port to connect(), and here we choose it.

A port can still be busy for one destination (our own earlier connection to it in
TIME_WAIT after a graceful close: EADDRNOTAVAIL at connect()) or for every destination
(another program holds it: EADDRINUSE at bind()). Either is this machine's state, not the
target's answer: the port is skipped and the next one tried, never a record.
"""

from __future__ import annotations

import errno
import socket
import weakref

# bind(): the port is held by a socket that does not share it (a listener, another program).
BUSY_AT_BIND = frozenset({errno.EADDRINUSE})
# connect(): this (local, remote) 4-tuple exists already, e.g. in TIME_WAIT.
BUSY_AT_CONNECT = frozenset({errno.EADDRNOTAVAIL, errno.EADDRINUSE})


class PortRange:
    """The ports LO..HI of one local address, round-robin, one attempt per port at a time."""

    __slots__ = ("__weakref__", "_in_use", "_next", "address", "hi", "lo", "skipped")

    def __init__(self, address: str, lo: int, hi: int) -> None:
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"bad local port range {lo}-{hi}")
        self.address = address
        self.lo = lo
        self.hi = hi
        self._next = lo
        self._in_use: set[int] = set()
        self.skipped = 0  # ports passed over because they were busy: our machine, not a target

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    def take(self) -> int | None:
        """The next port round-robin that no attempt of ours holds; None when all are held."""
        if len(self._in_use) >= self.size:
            return None
        port = self._next
        while port in self._in_use:
            port = port + 1 if port < self.hi else self.lo
        self._next = port + 1 if port < self.hi else self.lo
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        self._in_use.discard(port)

    def bind(self, sock: socket.socket) -> int | None:
        """Bind `sock` to the next usable port of the range and return it (held until
        `release`). None: every port is held or busy right now, a shortage here. Errors
        other than a busy port (the address left this machine) are raised."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(self.size):
            port = self.take()
            if port is None:
                return None
            try:
                sock.bind((self.address, port))
            except OSError as exc:
                self.release(port)
                if exc.errno in BUSY_AT_BIND:
                    self.skipped += 1
                    continue
                raise
            return port
        return None


_shared: weakref.WeakValueDictionary[tuple[str, int, int], PortRange] = (
    weakref.WeakValueDictionary()
)


def shared_range(address: str, lo: int, hi: int) -> PortRange:
    """The one allocator of this range in this process: engines that share a source range
    (the daemon's schedule and its GET /probe) share its ports, one attempt per port."""
    found = _shared.get((address, lo, hi))
    if found is None:
        found = _shared[(address, lo, hi)] = PortRange(address, lo, hi)
    return found


def fit_to_range(concurrency: int, ports: PortRange | None) -> int:
    """Concurrency a range allows: one attempt per port, so at most its size."""
    return concurrency if ports is None else max(1, min(concurrency, ports.size))
