"""What goes into the engine and what comes out of one connect, before it is a Record."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..record import Record
from ..resolve import Address
from ..syntax import Endpoint

if TYPE_CHECKING:
    from ..stages.result import StageResult
    from ..stages.spec import StageSpec


@dataclass(slots=True)
class Attempt:
    """One connect to make: where, which try. What a caller wants on the record besides
    (the daemon's name and labels) it adds in its own done-callback, not here."""

    endpoint: Endpoint
    address: Address
    number: int = 1  # 1-based attempt number for this target
    timeout: float | None = None  # None: the engine's
    retry: int = 0
    dns_ms: float = 0.0  # what resolving the name cost the caller; carried to the record
    self_connects: int = 0  # times the kernel connected this attempt's socket to itself
    stages: StageSpec | None = None  # what to do once connected (TLS, send/expect)


Done = Callable[[Record, Attempt, bool], None]  # (record, attempt, final: no retry follows)


@dataclass(slots=True)
class Result:
    """What the socket said about one attempt: one struct, not eight arguments."""

    err: int  # 0: connected; else the errno (or record.SELF_CONNECT)
    local: tuple[Any, ...] | None  # getsockname() once connect() was issued
    elapsed_ns: int  # just before connect() to the moment the outcome was known
    wall: float  # epoch seconds just before connect()
    rtt_ms: float | None = None  # the kernel's sample; None without one
    syn_retransmits: int | None = None  # None: not known (the platform, or no connect)
    timed_out: bool = False
    stages: StageResult | None = None  # what the stages after the connect found


class Slot:
    """An attempt in flight: its socket and its clocks. Plain attributes, no dataclass:
    one is made per attempt on the hot path."""

    __slots__ = ("attempt", "deadline", "done", "fd", "local", "on_done", "sock", "t0", "wall")

    def __init__(self, attempt: Attempt, on_done: Done, sock: socket.socket) -> None:
        self.attempt = attempt
        self.on_done = on_done
        self.sock = sock
        self.fd = sock.fileno()
        self.t0 = 0
        self.wall = 0.0
        self.deadline = 0.0
        self.local: tuple[Any, ...] | None = None
        self.done = False
