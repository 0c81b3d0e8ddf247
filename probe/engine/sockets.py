"""The socket calls of one attempt, apart from the engine's bookkeeping: binding a source
before connect(), reading the answer, and what the kernel knows of the handshake."""

from __future__ import annotations

import socket
import struct
import sys

LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER 0: close() sends RST, no TIME_WAIT
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
_TCPI_RTT_OFFSET = 68  # struct tcp_info: u32 tcpi_rtt (microseconds) after 8 u8 + 15 u32
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
# Linux 6.3+: the ephemeral range of one socket, (hi << 16) | lo; IPv6 sockets too.
IP_LOCAL_PORT_RANGE = getattr(socket, "IP_LOCAL_PORT_RANGE", 51)


def bind_source(
    sock: socket.socket, source: tuple[str, int], ports: tuple[int, int] | None = None
) -> None:
    """Bind before connect(), as the lesson allows. With an address alone, let connect()
    pick the port: bind() by itself would reserve one port per address for every socket.
    `ports` (`-s ADDR:LO-HI`) confines the port connect() picks to that range; a range with
    no free port is a shortage (EADDRNOTAVAIL at connect), like the system's own range."""
    address, port = source
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        if ports is not None:
            lo, hi = ports
            sock.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, struct.pack("I", hi << 16 | lo))
        if sock.family == socket.AF_INET or ports is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((address, port))


def check_source(source: tuple[str, int], ports: tuple[int, int] | None = None) -> None:
    """Bind once, up front, so a source that is not ours (or a port range this kernel cannot
    confine a socket to) fails at start, not mid-run."""
    family = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        bind_source(sock, source, ports)


def connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def rtt_ms(sock: socket.socket) -> float | None:
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < _TCPI_RTT_OFFSET + 4:
        return None
    rtt_us: int = struct.unpack_from("I", info, _TCPI_RTT_OFFSET)[0]
    return rtt_us / 1000.0
