"""The attempt record: one per connect attempt, the same for `probe check` and the daemon."""

from __future__ import annotations

import errno
import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from .plain import Plain

if TYPE_CHECKING:
    from .stages.result import StageResult


class Outcome(StrEnum):
    """What an attempt found. A new outcome goes here, and into `outcome_of` below."""

    OPEN = "open"  # the handshake completed
    REFUSED = "refused"  # the peer answered with a reset
    TIMEOUT = "timeout"  # no answer within the timeout
    UNREACHABLE = "unreachable"  # ICMP unreachable, no route
    ERROR = "error"  # anything else about the target (name did not resolve, ...)


OPEN: Final = Outcome.OPEN
REFUSED: Final = Outcome.REFUSED
TIMEOUT: Final = Outcome.TIMEOUT
UNREACHABLE: Final = Outcome.UNREACHABLE
ERROR: Final = Outcome.ERROR
OUTCOMES: Final = tuple(Outcome)

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}
_REFUSED = {errno.ECONNREFUSED, errno.ECONNRESET}

# Not an errno: the socket connected to itself and a fixed source port makes that certain.
SELF_CONNECT: Final = -1


def outcome_of(err: int) -> Outcome:
    """The outcome a connect() errno stands for (0: open)."""
    if err == 0:
        return Outcome.OPEN
    if err in _REFUSED:
        return Outcome.REFUSED
    if err == errno.ETIMEDOUT:
        return Outcome.TIMEOUT
    if err in _UNREACHABLE:
        return Outcome.UNREACHABLE
    return Outcome.ERROR


def errno_name(err: int) -> str:
    """The record's `error` for an errno: `ECONNREFUSED`, ..., or `SELF_CONNECT`."""
    if err == SELF_CONNECT:
        return "SELF_CONNECT"
    return errno.errorcode.get(err, f"E{err}")


# The JSON record's keys without stages, in the order `output.jsonl.record_json` writes them
# (tested): the native core takes its order from here.
RECORD_KEYS: Final = (
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
)


class Record(Plain):
    """What one attempt found. Plain data: renderers in probe/output decide how it is
    written (the JSON form's keys and their order are `output.jsonl.record_json`'s)."""

    __slots__ = (
        "address",
        "attempt",
        "dns_ms",
        "error",
        "extra",
        "family",
        "host",
        "latency_ms",
        "local_address",
        "local_port",
        "outcome",
        "port",
        "rtt_ms",
        "stages",
        "started",
        "syn_retransmits",
        "target",
    )
    started: float  # wall clock (epoch seconds) just before connect()
    target: str
    host: str
    port: int
    address: str | None
    family: str | None  # "ipv4" | "ipv6"
    local_address: str | None
    local_port: int | None
    outcome: Outcome
    error: str | None
    latency_ms: float
    rtt_ms: float | None  # None: no kernel sample (not Linux, not open, SYN retransmitted)
    syn_retransmits: int | None  # None: the platform cannot say
    dns_ms: float  # time the caller spent resolving the name; 0 for literals
    attempt: int
    # Keys a caller adds after the engine is done (the daemon: name, labels); the engine
    # never reads or sets them.
    extra: dict[str, Any] | None
    # What the stages after the connect found (TLS, send/expect); None: none ran.
    stages: StageResult | None

    def __init__(
        self,
        started: float,
        target: str,
        host: str,
        port: int,
        address: str | None,
        family: str | None,
        local_address: str | None,
        local_port: int | None,
        outcome: Outcome,
        error: str | None,
        latency_ms: float,
        rtt_ms: float | None,
        syn_retransmits: int | None,
        dns_ms: float,
        attempt: int,
        extra: dict[str, Any] | None = None,
        stages: StageResult | None = None,
    ) -> None:
        self.started = started
        self.target = target
        self.host = host
        self.port = port
        self.address = address
        self.family = family
        self.local_address = local_address
        self.local_port = local_port
        self.outcome = outcome
        self.error = error
        self.latency_ms = latency_ms
        self.rtt_ms = rtt_ms
        self.syn_retransmits = syn_retransmits
        self.dns_ms = dns_ms
        self.attempt = attempt
        self.extra = extra
        self.stages = stages


_second_cache: tuple[int, str] = (-1, "")


def format_timestamp(epoch: float) -> str:
    """ISO 8601 UTC with exactly six fractional digits (isoformat drops them at .000000)."""
    global _second_cache
    micros = round(epoch * 1_000_000)
    seconds, frac = divmod(micros, 1_000_000)
    cached_second, prefix = _second_cache
    if cached_second != seconds:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_cache = (seconds, prefix)
    return f"{prefix}.{frac:06d}Z"


def unresolved_record(
    target: str, host: str, port: int, code: str, attempt: int, dns_ms: float = 0.0
) -> Record:
    """The record for a name that did not resolve: no connect, nothing local to report."""
    return Record(
        started=time.time(),
        target=target,
        host=host,
        port=port,
        address=None,
        family=None,
        local_address=None,
        local_port=None,
        outcome=ERROR,
        error=code,
        latency_ms=0.0,
        rtt_ms=None,
        syn_retransmits=None,
        dns_ms=dns_ms,
        attempt=attempt,
    )
