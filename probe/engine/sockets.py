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


def bind_source(sock: socket.socket, source: tuple[str, int]) -> None:
    """Bind before connect(), as the lesson allows. With an address alone, let connect()
    pick the port: bind() by itself would reserve one port per address for every socket."""
    address, port = source
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    elif sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((address, port))


def check_source(source: tuple[str, int]) -> None:
    """Bind once, up front, so a source that is not ours fails at start, not mid-run."""
    family = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        bind_source(sock, source)


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
