"""The command line of `probe check` as one frozen plan, validated once, before anything runs.

Everything a run needs is here and nothing else decides: the parent and every worker run
the same plan (a worker takes its share by index). A bad token fails here with a
`UsageError` naming it; what cannot be known up front (a bad line deep in a file) fails
during the run, as the same error type.
"""

from __future__ import annotations

import errno
import os
import stat
from _socket import AF_INET, AF_INET6  # without socket.py's enums (start-up, see address.py)
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from ..address import literal
from ..engine import EngineOptions
from ..engine.nofile import DEFAULT_CONCURRENCY
from ..errors import TargetError, UsageError
from ..plain import Frozen
from ..syntax import (
    Exclusions,
    PortRanges,
    Target,
    iter_targets,
    join_host_port,
    parse_exclusions,
    parse_ports,
    parse_shard,
    parse_source_spec,
    parse_target,
    read_exclusions,
)

# At most this many endpoints and every attempt gets its own line, whatever the count
# (nmap lists up to 25 closed ports before it folds them into "Not shown").
T = TypeVar("T")

LIST_LIMIT = 32
MAX_WORKERS_PER_CPU = 2  # --workers is capped at this many per usable CPU
# A target column wider than this is not padded further (a long name keeps its width).
TARGET_WIDTH_MAX = 40
# Width for targets not known up front (files, standard input): `255.255.255.255:65535`.
TARGET_WIDTH_DEFAULT = 21

Format = Literal["human", "json", "csv"]

if TYPE_CHECKING:
    from ..stages.spec import StageSpec


class Output(Frozen):
    """What the run writes, and in which form."""

    __slots__ = (
        "format",
        "histogram",
        "json_file",
        "list_mode",
        "open_only",
        "target_width",
        "verbose",
    )
    format: Format
    open_only: bool  # --open: write and show only open attempts
    json_file: str | None  # -o FILE: the JSON records, besides the terminal's form
    list_mode: bool  # every attempt gets its own human line
    target_width: int
    histogram: bool  # --histogram: latency buckets after each target's summary
    verbose: bool  # -v: say on stderr which core runs the sweep, and why not the native one

    def __init__(
        self,
        format: Format = "human",
        open_only: bool = False,
        json_file: str | None = None,
        list_mode: bool = True,
        target_width: int = TARGET_WIDTH_DEFAULT,
        histogram: bool = False,
        verbose: bool = False,
    ) -> None:
        self._set(locals())


class Plan(Frozen):
    """One run of `probe check`, validated."""

    __slots__ = (
        "blocking_input",
        "concurrency_given",
        "count",
        "default_ports",
        "endpoints",
        "exclude",
        "family",
        "interval",
        "options",
        "output",
        "rate_epoch",
        "shard",
        "stages",
        "tokens",
        "workers",
    )
    tokens: tuple[str, ...]  # targets as given: HOST:PORTS, CIDR, ranges, @FILE, -
    default_ports: PortRanges | None  # -p
    count: int  # attempts per target; 0 = until interrupted
    interval: float
    options: EngineOptions  # the whole run's; a worker takes its share of rate and -C
    family: int  # 0, AF_INET or AF_INET6
    exclude: Exclusions | None  # --exclude and --exclude-file, as one set
    shard: tuple[int, int] | None  # --shard I/N: only this share of the endpoints
    workers: int
    blocking_input: bool  # standard input or a FIFO: read on a thread, by one process
    output: Output
    endpoints: int | None  # of the input, before exclusions; None: not counted up front
    # --rate's first slot (time.monotonic()), set when the run starts: every share paces
    # on one grid from it.
    rate_epoch: float | None
    stages: StageSpec | None  # after each connect: TLS, send/expect (the Python engine's)
    concurrency_given: bool  # -C was given (a lowered -C is then said on stderr)

    def __init__(
        self,
        tokens: tuple[str, ...],
        default_ports: PortRanges | None,
        count: int,
        interval: float,
        options: EngineOptions,
        family: int,
        exclude: Exclusions | None,
        shard: tuple[int, int] | None,
        workers: int,
        blocking_input: bool,
        output: Output,
        rate_epoch: float | None = None,
        stages: StageSpec | None = None,
        endpoints: int | None = None,
        concurrency_given: bool = False,
    ) -> None:
        self._set(locals())

    @property
    def repeat(self) -> bool:
        return self.count != 1


def build_plan(
    targets: Sequence[str],
    *,
    ports: str | None = None,
    timeout: float = 1.0,
    count: int = 1,
    interval: float = 1.0,
    concurrency: int | None = None,
    rate: float | None = None,
    retries: int = 0,
    source: str | None = None,
    family: int | None = None,
    fmt: Format = "human",
    workers: int | None = None,
    graceful_close: bool = False,
    exclude: Sequence[str] = (),
    exclude_files: Sequence[str] = (),
    input_lists: Sequence[str] = (),
    open_only: bool = False,
    json_file: str | None = None,
    shard: str | None = None,
    lag_limit_ms: float | None = 2.0,
    histogram: bool = False,
    stages: StageSpec | None = None,
    verbose: bool = False,
) -> Plan:
    """Validate every option and target token; the plan, or a UsageError naming the fault."""
    default_ports = _ports(ports)
    tokens = _join([*targets, *(f"@{path}" for path in input_lists)], default_ports, ports)
    if not tokens:
        raise UsageError("no targets: give HOST:PORTS, [IPV6]:PORTS, HOST with -p, @FILE or -")
    fam = {4: AF_INET, 6: AF_INET6}.get(family or 0, 0)
    bind = _source(source, fam)
    bound, source_ports = bind if bind is not None else (None, None)
    if bound is not None:
        fam = AF_INET6 if ":" in bound[0] else AF_INET
    endpoints, blocking, width = _preflight(tokens, default_ports)
    if fam:
        why = f"-s {source}" if bound is not None else f"-{family}"
        _same_family(tokens, default_ports, fam, why)
    # Repeat mode lists every attempt and a block per target whatever the targets came from:
    # input not counted up front (standard input, a long file) is listed as a short file is.
    list_mode = (endpoints is not None and endpoints <= LIST_LIMIT) or (
        endpoints is None and count != 1
    )
    exclusions = _exclusions(exclude, exclude_files)
    share = _shard(shard)
    # what the machine allows (the open-files limit, a source port range, a bind) is found
    # out by `settle`, before the run: planning touches nothing and says nothing
    asked = DEFAULT_CONCURRENCY if concurrency is None else concurrency
    options = EngineOptions(
        timeout=timeout,
        concurrency=asked,
        rate=rate,
        retries=retries,
        source=bound,
        source_ports=source_ports,
        graceful_close=graceful_close,
        lag_limit_ms=lag_limit_ms or None,
    )
    # More processes than CPUs only take turns on them (and each costs a fork and a loop).
    cpus = usable_cpus()
    wanted = cpus if workers is None else min(workers, MAX_WORKERS_PER_CPU * cpus)
    # A source range: one allocator hands out its ports, one per attempt, in one process.
    one = list_mode or blocking or source_ports is not None
    processes = 1 if one else max(1, min(wanted, asked))
    output = Output(fmt, open_only, json_file, list_mode, width, histogram, verbose)
    return Plan(
        tokens=tuple(tokens),
        default_ports=default_ports,
        count=count,
        interval=interval,
        options=options,
        family=fam,
        exclude=exclusions,
        shard=share,
        workers=processes,
        blocking_input=blocking,
        output=output,
        stages=stages,
        endpoints=endpoints,
        concurrency_given=concurrency is not None,
    )


def usable_cpus() -> int:
    """The default number of worker processes."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _join(tokens: list[str], default_ports: PortRanges | None, ports: str | None) -> list[str]:
    """`HOST PORT` → `HOST:PORT`. A number that cannot be a port (`2130706433`) is refused
    as what it looks like, a bad IPv4 literal, by the target parser's own message."""
    try:
        return join_host_port(tokens, ports is not None, ports)
    except TargetError as joined:
        for token in tokens:
            if token.isascii() and token.isdecimal() and (len(token) > 5 or int(token) > 65535):
                parse_target(token, default_ports or ((1, 1),))  # raises the literal's error
        raise joined from None


def _flag(flag: str, parse: Callable[[str], T], text: str) -> T:
    """A flag's value through its parser; a bad one is a usage error naming the flag."""
    try:
        return parse(text)
    except TargetError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def _ports(text: str | None) -> PortRanges | None:
    return None if text is None else _flag(f"-p {text!r}", parse_ports, text)


def _source(text: str | None, family: int) -> tuple[tuple[str, int], tuple[int, int] | None] | None:
    """`-s ADDR`, `ADDR:PORT` or `ADDR:LO-HI` → ((address, port), port range or None)."""
    if text is None:
        return None
    spec = _flag("-s", parse_source_spec, text)
    address = spec.address
    fam = AF_INET6 if ":" in address else AF_INET
    if family and family != fam:
        raise UsageError(f"-s {text}: source address family does not match -4/-6")
    bound = (address, 0 if spec.is_range else spec.port_lo)
    ports = (spec.port_lo, spec.port_hi) if spec.is_range else None
    return bound, ports


def _exclusions(items: Sequence[str], files: Sequence[str]) -> Exclusions | None:
    parts: list[Exclusions] = [_flag("--exclude", parse_exclusions, text) for text in items]
    parts += [_flag("--exclude-file", read_exclusions, path) for path in files]
    return Exclusions.union(parts) if parts else None


def _shard(text: str | None) -> tuple[int, int] | None:
    return None if text is None else _flag("--shard", parse_shard, text)


def _preflight(
    tokens: Sequence[str], default_ports: PortRanges | None
) -> tuple[int | None, bool, int]:
    """Check what can be checked before the first attempt: every literal token parses and
    every file is readable. Returns (endpoints, when few enough to count; whether some
    input may block; the target column's width)."""
    total: int | None = 0
    blocking = False
    width = 0
    for token in tokens:
        if token == "-":
            total, blocking = None, True
        elif token.startswith("@"):
            path = token[1:]
            if not path:
                raise UsageError("missing file name after '@'")
            # Checked without opening: opening and closing a FIFO would end its writer.
            try:
                mode = os.stat(path).st_mode
                if stat.S_ISDIR(mode):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                if not os.access(path, os.R_OK):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            except OSError as exc:
                raise UsageError(f"cannot read target file {path!r}: {exc.strerror}") from None
            if not stat.S_ISREG(mode):
                total, blocking = None, True  # a FIFO or a device: one reader, may block
            elif total is not None:
                counted = _count_file(token, default_ports)
                total = None if counted is None else total + counted[0]
                width = max(width, counted[1] if counted else TARGET_WIDTH_DEFAULT)
            else:
                width = max(width, TARGET_WIDTH_DEFAULT)
        else:
            target = parse_target(token, default_ports)  # a TargetError is a UsageError
            if total is not None:
                total += target.count()
            width = max(width, _width(target))
    return total, blocking, min(width or TARGET_WIDTH_DEFAULT, TARGET_WIDTH_MAX)


def _same_family(
    tokens: Sequence[str], default_ports: PortRanges | None, family: int, why: str
) -> None:
    """An address literal of the other family than -4/-6 or -s allow is a usage error, not a
    record: nothing could ever connect to it."""
    wanted = "IPv6" if family == AF_INET6 else "IPv4"
    for token in tokens:
        if token == "-" or token.startswith("@"):
            continue
        target = parse_target(token, default_ports)
        if target.addresses is not None:
            version = target.addresses.version
        else:
            try:
                found = literal(target.host)
            except ValueError:
                found = None
            if found is None:
                continue  # a name: its addresses of the wanted family are used
            version = 6 if found.family == AF_INET6 else 4
        if (version == 6) != (family == AF_INET6):
            if why.startswith("-s"):
                raise UsageError(
                    f"{why}: {token} is an IPv{version} address, which an {wanted} source "
                    "cannot reach"
                )
            raise UsageError(f"{why}: {token} is an IPv{version} address, not {wanted}")


def _count_file(token: str, default_ports: PortRanges | None) -> tuple[int, int] | None:
    """A small regular file's endpoints and target width, read ahead; None when it holds
    more than a list's worth or has a bad line (the run reports that line in its turn)."""
    total = width = 0
    try:
        for target in iter_targets([token], default_ports):
            total += target.count()
            width = max(width, _width(target))
            if total > LIST_LIMIT:
                return None
    except (TargetError, OSError):
        return None
    return total, width


def _width(target: Target) -> int:
    """The widest `host:port` label a target makes (names get room for their address)."""
    host = target.host
    addresses = target.addresses
    if addresses is not None:
        host = max(addresses[0], addresses[addresses.count() - 1], key=len)
    label = target.label(max(hi for _, hi in target.ports), host)
    is_ip = addresses is not None or literal(host) is not None
    return len(label) + (0 if is_ip else len(" [127.0.0.1]"))  # a typical address
