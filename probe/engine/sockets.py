"""The socket calls of one attempt, apart from the engine's bookkeeping: binding a source
before connect(), reading the answer, and what the kernel knows of the handshake."""

from __future__ import annotations

import socket
import struct
import sys

LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER 0: close() sends RST, no TIME_WAIT
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None
# struct tcp_info (linux/tcp.h): 8 u8, then u32s. tcpi_rtt (microseconds) is the 16th u32,
# tcpi_total_retrans (segments sent again, the SYN included) the 24th, after tcpi_rcv_space.
_TCPI_RTT_OFFSET = 8 + 15 * 4  # 68
_TCPI_TOTAL_RETRANS_OFFSET = 8 + 23 * 4  # 100
_TCPI_LEN = _TCPI_TOTAL_RETRANS_OFFSET + 4
_u32 = struct.Struct("I").unpack_from
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def bind_source(sock: socket.socket, source: tuple[str, int]) -> None:
    """Bind before connect() (`-s`). With an address alone, let connect()
    pick the port: bind() by itself would reserve one port per address for every socket.
    A port range (`-s ADDR:LO-HI`) is bound by `ports.PortRange`, one port at a time."""
    address, port = source
    if port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    elif sock.family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((address, port))


def check_source(source: tuple[str, int], ports: tuple[int, int] | None = None) -> None:
    """Bind once, up front, so a source that is not ours fails at start, not mid-run. With
    a port range, the address is checked here; a busy port of it is skipped at run time."""
    family = socket.AF_INET6 if ":" in source[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        bind_source(sock, source)


def connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _tcp_info(sock: socket.socket) -> bytes | None:
    if _TCP_INFO is None:
        return None
    try:
        info: bytes = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_LEN)
    except OSError:
        return None
    return info if len(info) >= _TCPI_LEN else None


def handshake(sock: socket.socket) -> tuple[float | None, int | None]:
    """(rtt_ms, syn_retransmits) of a connected socket, from one TCP_INFO read. No RTT
    when the SYN was sent again: the kernel took no sample from a retransmitted segment
    (Karn's rule) and `tcpi_rtt` still holds its initial value, not a measurement."""
    info = _tcp_info(sock)
    if info is None:
        return None, None
    retransmits: int = _u32(info, _TCPI_TOTAL_RETRANS_OFFSET)[0]
    if retransmits:
        return None, retransmits
    rtt_us: int = _u32(info, _TCPI_RTT_OFFSET)[0]
    return rtt_us / 1000.0, 0


def syn_retransmits(sock: socket.socket) -> int | None:
    """How many times the SYN was sent again, for an attempt that did not connect
    (timeout, or a reset after a retransmit); None where the platform cannot say."""
    info = _tcp_info(sock)
    if info is None:
        return None
    count: int = _u32(info, _TCPI_TOTAL_RETRANS_OFFSET)[0]
    return count
