"""The daemon's TOML configuration: read with bounds, checked, resolved once into a frozen
:class:`Config` (uvicorn's ``Config.load()``), which the daemon and its reloads take whole.

Every section is a table of key → checker (`Table`, `Key`, at "the key tables" below): a
new key is one row there and one field in its section's dataclass. Every problem is one
:class:`ConfigError` whose ``str()`` is a single line ``{path}: {key}: {problem}``. The key
travels as data: the checker walks the parsed TOML knowing where it is, and raises with the
path segments in hand; no message is ever read back. Addresses, sources and shards are
parsed by :mod:`probe.syntax`, the one syntax of the whole tool.

Bounds: the file must be a regular file of at most 1 MiB (read at most that, plus one
byte); a dotted key of more than 16 parts is refused before parsing (tomllib is quadratic
in them); intervals are 1 ms to 1 day, timeouts above 0 up to
:data:`probe.limits.MAX_TIMEOUT`. A timeout may exceed its interval: a slot that comes
while the previous attempt to that target is still in flight is skipped (and counted).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeVar

from ..address import host_port
from ..errors import ConfigError, TargetError
from ..limits import MAX_CONFIG_BYTES, MAX_INTERVAL, MAX_TIMEOUT, MIN_INTERVAL
from ..mesh.peers import PeerSpec
from ..serve.answer import MAX_NAME
from ..serve.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_RATE
from ..stages.spec import StageSpec
from ..syntax import Source, parse_endpoint, parse_shard, parse_source_spec
from ..syntax.endpoint import parse_listen
from ..syntax.sharding import shard_of
from . import target_lists
from .stage_config import (
    MODULE_KEY,
    MODULE_NAME,
    STAGE_KEYS,
    StageConfigError,
    check_module_name,
    fresh_files,
)
from .stage_config import resolve as resolve_stages
from .target_lists import MAX_GLOBS, MAX_TARGETS

__all__ = [
    "DEFAULT_PROBE_ALLOW",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "EngineConfig",
    "HostPort",
    "LogConfig",
    "MetricsConfig",
    "ResolvedTarget",
    "StoreConfig",
    "TargetDefaults",
    "engine_source",
    "load_config",
    "log_format",
    "metrics_listen",
    "needs_restart",
    "parse_config",
    "probe_allow_networks",
    "resolved_targets",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PROBE_ALLOW: Final = ("127.0.0.0/8", "::1/128")
DEFAULT_ALLOW_NETWORKS: Final = tuple(ipaddress.ip_network(n) for n in DEFAULT_PROBE_ALLOW)
DEFAULT_PROBE_CONCURRENCY: Final = 10
DEFAULT_LAG_LIMIT_MS: Final = 2.0  # the engine's own default
FAMILIES: Final = ("any", "ipv4", "ipv6")
ADDRESS_MODES: Final = ("all", "first")
LOG_FORMATS: Final = ("console", "json")
# [log] attempts: every record; only attempts that were not open; only an attempt whose
# outcome (and error) differs from its target's previous one. State events are always logged.
LOG_ATTEMPTS: Final = ("all", "failures", "changes")


@dataclass(frozen=True, slots=True)
class Caps:
    """The most one config may hold: a hostile or mistaken file costs bounded
    work and memory. The bounds the CLI and `/probe` share live in :mod:`probe.limits`."""

    dotted_parts: int  # parts of one dotted key, refused before tomllib sees them
    concurrency: int  # engine.concurrency and metrics.probe_concurrency
    state_count: int  # down_after / up_after
    lag_limit_ms: float
    name: int  # characters of a target's name
    labels: int  # labels of one target
    label_value: int  # characters of one label's value
    allow: int  # networks in metrics.probe_allow
    modules: int  # [modules.NAME] tables
    path: int  # characters of any other string (a file path, an address)


CAPS: Final = Caps(
    dotted_parts=16,
    concurrency=1_000_000,
    state_count=1_000,
    lag_limit_ms=60_000.0,
    name=256,
    labels=32,
    label_value=1024,
    allow=1024,
    modules=1024,
    path=4096,
)

# \Z, not $: "$" would also accept a name with a trailing newline.
_LABEL_NAME_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


# -- the resolved config --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostPort:
    """A listening endpoint; ``str()`` is how the user wrote it (brackets for IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        return host_port(self.host, self.port)


DEFAULT_LISTEN: Final = HostPort("127.0.0.1", 9464)


@dataclass(frozen=True, slots=True)
class TargetDefaults:
    """``[defaults]``: what every target inherits unless it says otherwise."""

    interval: float = 10.0
    timeout: float = 1.0
    family: str = "any"  # "ipv4", "ipv6" or "any"
    addresses: str = "first"  # "first" or "all"
    down_after: int = 1
    up_after: int = 1
    histograms: bool = False  # latency and RTT buckets in metrics (the series budget)


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """A target with defaults applied, so the scheduler never consults ``[defaults]``."""

    name: str
    address: str  # as written: HOST:PORT or [IPV6]:PORT
    host: str  # without brackets
    port: int
    interval: float
    timeout: float
    # Excluded from the hash so instances stay hashable despite holding a mapping.
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    family: str = "any"
    addresses: str = "first"
    down_after: int = 1
    up_after: int = 1
    histograms: bool = False
    # after the connect: TLS, send/expect, starttls (its own, its module's, [defaults]')
    stages: StageSpec | None = None


@dataclass(frozen=True, slots=True)
class EngineConfig:
    concurrency: int = 1000
    source: Source | None = None  # None: the kernel picks; ports 0/0: only the address is set
    lag_limit_ms: float | None = DEFAULT_LAG_LIMIT_MS  # None: the lag throttle is off
    graceful_close: bool = False  # FIN instead of RST after an open connect (--graceful-close)


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str | None = None  # "json", "console", or None: the daemon decides (terminal?)
    file: str | None = None  # None: standard output
    attempts: str = "all"  # which records: "all", "failures" or "changes" (LOG_ATTEMPTS)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: HostPort | None = DEFAULT_LISTEN  # None: no HTTP endpoint
    probe_allow: tuple[Network, ...] = DEFAULT_ALLOW_NETWORKS
    probe_concurrency: int = DEFAULT_PROBE_CONCURRENCY  # most GET /probe attempts at once


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    shard: tuple[int, int] | None = None  # (index, count); None: every target


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: str | None = None  # a directory; None: the default one (store.py); "": no store
    retention_days: float = 90.0  # hours and days kept (minutes: one day)


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """`[serve]`: the responder inside the daemon (none while `listen` is empty and there is
    no mesh; with a mesh, the peers' port on every address)."""

    listen: tuple[HostPort, ...] = ()
    name: str | None = None  # the name in every answer; None: the host name
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    rate: float = DEFAULT_RATE  # new connections per second from one source address


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """`[mesh]`: every peer (all addresses of one name, or a list) probed with reflect."""

    peers: PeerSpec | None = None  # None: no mesh
    interval: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole file, resolved: every value checked, every default applied."""

    defaults: TargetDefaults = TargetDefaults()
    engine: EngineConfig = EngineConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    cluster: ClusterConfig = ClusterConfig()
    targets: tuple[ResolvedTarget, ...] = ()
    store: StoreConfig = StoreConfig()
    # [modules.NAME]: stages that /probe?module=NAME runs (None: a plain connect)
    modules: Mapping[str, StageSpec | None] = field(default_factory=lambda: MappingProxyType({}))
    # target lists outside this file (target_lists.py), as written; their targets are above
    targets_file: str | None = None
    include: tuple[str, ...] = ()
    serve: ServeConfig = ServeConfig()
    mesh: MeshConfig = MeshConfig()

    def resolved_targets(self) -> list[ResolvedTarget]:
        return list(self.targets)


def resolved_targets(config: Config) -> list[ResolvedTarget]:
    """The targets in file order, defaults applied."""
    return list(config.targets)


def metrics_listen(config: Config) -> tuple[str, int] | None:
    """``(host, port)`` for the HTTP server, or ``None`` when it is disabled (port 0: the
    kernel picks, handy in tests)."""
    listen = config.metrics.listen
    return None if listen is None else (listen.host, listen.port)


def engine_source(config: Config) -> tuple[str, int] | None:
    """``(ip, port)`` to bind, or ``None`` to let the kernel choose. Port 0 pins only the
    address; for a port range (``ADDR:LO-HI``) it is 0 too: read ``config.engine.source``
    (:class:`~probe.syntax.Source`) to honour the range."""
    source = config.engine.source
    if source is None:
        return None
    return source.address, 0 if source.is_range else source.port_lo


def probe_allow_networks(config: Config) -> tuple[Network, ...]:
    return config.metrics.probe_allow


def log_format(config: Config) -> str:
    """The renderer: `[log] format` when set; when not, the console form for a person at a
    terminal (in colour unless NO_COLOR is set or TERM=dumb), JSON for files and pipes."""
    fmt = config.log.format
    to_tty = not config.log.file and os.isatty(1)
    if fmt is None:
        fmt = "console" if to_tty else "json"
    colour = to_tty and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    return "console-colour" if fmt == "console" and colour else fmt


# -- errors as data -------------------------------------------------------------------------

_Segment = str | int
_Path = tuple[_Segment, ...]


class _Invalid(Exception):
    """A problem at a key path; turned into a ConfigError (file, key, problem) at the edge."""

    def __init__(self, at: _Path, problem: str) -> None:
        super().__init__(problem)
        self.at = at
        self.problem = problem


def _fail(at: _Path, problem: str) -> NoReturn:
    raise _Invalid(at, problem)


_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def _render_key(segments: Sequence[_Segment]) -> str | None:
    parts: list[str] = []
    for seg in segments:
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
        else:
            name = seg if _BARE_KEY.fullmatch(seg) else json.dumps(seg, ensure_ascii=False)
            parts.append(f".{name}" if parts else name)
    return "".join(parts) or None


_MAX_SHOWN: Final = 60


def _show(value: object) -> str:
    """A value the way it looked in TOML, short enough for one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if len(value) > _MAX_SHOWN:
            value = value[:_MAX_SHOWN] + "..."
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**_MAX_SHOWN else "a huge integer"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return _type_name(value)


# TOML's names for what tomllib returns; order matters (bool before int, datetime before date).
_TYPE_NAMES: Final = (
    (bool, "boolean"),
    (str, "string"),
    (int, "integer"),
    (float, "float"),
    (datetime, "datetime"),
    (date, "date"),
    (time, "time"),
    (list, "array"),
    (dict, "table"),
)


def _type_name(value: object) -> str:
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), "value")


def _got(value: object) -> str:
    if isinstance(value, list | dict):
        return f"got {_type_name(value)}"
    return f"got {_type_name(value)} {_show(value)}"


def _bound(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


# -- checkers: one value at one path --------------------------------------------------------


def _float(
    value: object,
    at: _Path,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(at, f"expected float, {_got(value)}")
    # Compare as written (an int may be huge); nan fails every comparison, so it is refused.
    if gt is not None and not value > gt:
        _fail(at, f"expected float > {_bound(gt)}, got {_show(value)}")
    if ge is not None and not value >= ge:
        _fail(at, f"expected float >= {_bound(ge)}, got {_show(value)}")
    if le is not None and not value <= le:
        _fail(at, f"expected float <= {_bound(le)}, got {_show(value)}")
    return float(value)


def _int(value: object, at: _Path, *, ge: int, le: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(at, f"expected integer, {_got(value)}")
    if value < ge:
        _fail(at, f"expected integer >= {ge}, got {_show(value)}")
    if value > le:
        _fail(at, f"expected integer <= {le}, got {_show(value)}")
    return value


def _str(value: object, at: _Path, *, min_length: int = 0, max_length: int = CAPS.path) -> str:
    if not isinstance(value, str):
        _fail(at, f"expected string, {_got(value)}")
    if len(value) < min_length:
        _fail(at, f"expected string of length >= {min_length}, got {_show(value)}")
    if len(value) > max_length:
        _fail(at, f"expected string of length <= {max_length}, got {_show(value)}")
    return value


def _choice(value: object, at: _Path, choices: Sequence[str]) -> str:
    text = _str(value, at)
    if text not in choices:
        shown = ", ".join(_show(c) for c in sorted(choices))
        _fail(at, f"expected one of {shown}, got {_show(text)}")
    return text


def _table(value: object, at: _Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(at, f"expected table, {_got(value)}")
    return value


def _array(value: object, at: _Path, *, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        _fail(at, f"expected array, {_got(value)}")
    if len(value) > max_items:
        _fail(at, f"expected at most {max_items} entries, got {len(value)}")
    return value


T = TypeVar("T")


def _via(parse: Callable[[str], T], text: str, at: _Path) -> T:
    """Run one of probe.syntax' parsers; its message is the problem at this key."""
    try:
        return parse(text)
    except TargetError as exc:
        _fail(at, str(exc))


def _known_keys(table: dict[str, Any], at: _Path, known: Sequence[str]) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f'; did you mean "{close[0]}"?' if close else f"; valid keys: {', '.join(known)}"
            _fail((*at, key), f"unknown key (typo?){hint}")


# -- the key tables ---------------------------------------------------------------------------
#
# Every section is a `Table`: key → `Key` (its checker, the field it fills, whether a reload
# can apply it). A new key is a row here and a field in its dataclass above; a new section
# is a `Table` and a row of `CONFIG`. Checks that span keys or sections are `derive` steps.

Checker = Callable[[object, _Path], Any]
_ABSENT: Final = object()


@dataclass(frozen=True, slots=True)
class Key:
    """One key of a table: how its value is checked and where it goes."""

    check: Checker | None  # (value, key path) → the checked value, or _fail; None: below
    field: str | None = None  # the built object's field; None: the key's own name
    restart: bool = False  # a reload that changes it takes effect at the next start only
    required: bool = False
    absent: object = _ABSENT  # checked in place of a missing key (sections: {})


# A stage key (tls, send, expect, ...): known in its table, but checked as one of the layers
# [defaults] → module → target that stage_config merges into the target's StageSpec.
STAGE: Final = Key(None)


@dataclass(frozen=True, slots=True)
class Table:
    """A TOML table: unknown keys refused (with a typo hint), each known one checked in the
    order of `keys`, then `derive` (checks across keys), then `build(**fields)`."""

    keys: Mapping[str, Key]
    build: Callable[..., Any]
    derive: Callable[[dict[str, Any], dict[str, Any], _Path], None] | None = None

    def __call__(self, value: object, at: _Path) -> Any:
        table = _table(value, at)
        _known_keys(table, at, tuple(self.keys))
        fields: dict[str, Any] = {}
        for key, spec in self.keys.items():
            raw = table.get(key, spec.absent)
            if raw is _ABSENT:
                if spec.required:
                    _fail((*at, key), "required key is missing")
                continue
            if spec.check is not None:
                fields[spec.field or key] = spec.check(raw, (*at, key))
        if self.derive is not None:
            self.derive(fields, table, at)
        return self.build(**fields)


def _tables_of(check: Checker, max_items: int) -> Checker:
    """A table of named tables (`[modules.NAME]`): NAME → the checked value."""

    def tables(value: object, at: _Path) -> dict[str, Any]:
        table = _table(value, at)
        if len(table) > max_items:
            _fail(at, f"expected at most {max_items} entries, got {len(table)}")
        return {name: check(item, (*at, name)) for name, item in table.items()}

    return tables


# -- checkers of single keys ------------------------------------------------------------------


def _interval(value: object, at: _Path) -> float:
    return _float(value, at, ge=MIN_INTERVAL, le=MAX_INTERVAL)


def _timeout(value: object, at: _Path) -> float:
    return _float(value, at, gt=0, le=MAX_TIMEOUT)


def _flag(value: object, at: _Path) -> bool:
    if not isinstance(value, bool):
        _fail(at, f"expected true or false, got {_show(value)}")
    return value


def _state_count(value: object, at: _Path) -> int:
    return _int(value, at, ge=1, le=CAPS.state_count)


def _concurrency(value: object, at: _Path) -> int:
    return _int(value, at, ge=1, le=CAPS.concurrency)


def _choice_of(choices: Sequence[str]) -> Checker:
    return lambda value, at: _choice(value, at, choices)


def _path(value: object, at: _Path) -> str:
    """A file or directory path, as written ("" included)."""
    path = _str(value, at)
    if "\x00" in path:
        _fail(at, "path contains a NUL character")
    return path


def _optional(parse: Callable[[str], T]) -> Checker:
    """A string parsed by one of probe.syntax' parsers; "" is None (not set)."""
    return lambda value, at: _via(parse, text, at) if (text := _str(value, at)) else None


def _lag_limit(value: object, at: _Path) -> float | None:
    if value is False or (not isinstance(value, bool) and value == 0):
        return None  # 0 or false: never hold concurrency down for loop lag
    if value is True:
        _fail(at, "expected milliseconds > 0, or 0 or false to disable")
    return _float(value, at, gt=0, le=CAPS.lag_limit_ms)


def _log_file(value: object, at: _Path) -> str | None:
    return _path(value, at) or None  # "": standard output


def _listen(value: object, at: _Path) -> HostPort | None:
    text = _str(value, at)
    if not text:
        return None  # no HTTP endpoint
    host, port = _via(parse_listen, text, at)
    return HostPort(host, port)


def _network(text: str, at: _Path) -> Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        _fail(at, f'{_show(text)} is not a valid CIDR (e.g. "127.0.0.0/8")')
    _fail(at, f'{_show(text)} has host bits set; did you mean "{loose}"?')


def _networks(value: object, at: _Path) -> tuple[Network, ...]:
    items = _array(value, at, max_items=CAPS.allow)
    return tuple(_network(_str(item, (*at, i)), (*at, i)) for i, item in enumerate(items))


def _retention(value: object, at: _Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail(at, f"expected a number of days, got {_show(value)}")
    if not 1 <= value <= 3650:
        _fail(at, f"days from 1 to 3650, got {value}")
    return float(value)


def _labels(raw: object, at: _Path) -> Mapping[str, str]:
    table = _table(raw, at)
    if len(table) > CAPS.labels:
        _fail(at, f"expected at most {CAPS.labels} labels, got {len(table)}")
    for name in table:
        if not _LABEL_NAME_RE.match(name):
            _fail(at, f"invalid label name {_show(name)}: must match [a-zA-Z_][a-zA-Z0-9_]*")
        if name == "target":  # metrics: the label of the target's name (probe_target_info)
            _fail((*at, name), "label 'target' is reserved: metrics use it for the target's name")
    return MappingProxyType(
        {k: _str(v, (*at, k), max_length=CAPS.label_value) for k, v in table.items()}
    )


def _name(value: object, at: _Path) -> str:
    return _str(value, at, min_length=1, max_length=CAPS.name)


def _family_of(host: str) -> str | None:
    try:
        return f"ipv{ipaddress.ip_address(host.partition('%')[0]).version}"
    except ValueError:
        return None  # a name


# -- the tables -------------------------------------------------------------------------------

# What [defaults] and each target share: a target's value, else [defaults]'.
SHARED: Final[dict[str, Key]] = {
    "interval": Key(_interval),
    "timeout": Key(_timeout),
    "family": Key(_choice_of(FAMILIES)),
    "addresses": Key(_choice_of(ADDRESS_MODES)),
    "down_after": Key(_state_count),
    "up_after": Key(_state_count),
    "histograms": Key(_flag),
}

# Per target and in [defaults]: stage keys and `module`, resolved by `_config`.
STAGES: Final[dict[str, Key]] = {k: STAGE for k in (*STAGE_KEYS, MODULE_KEY)}

DEFAULTS: Final = Table({**SHARED, **STAGES}, TargetDefaults)

ENGINE: Final = Table(
    {
        "concurrency": Key(_concurrency),
        "source": Key(_optional(parse_source_spec)),
        "lag_limit": Key(_lag_limit, field="lag_limit_ms"),
        "graceful_close": Key(_flag),
    },
    EngineConfig,
)

LOG: Final = Table(
    {
        "format": Key(_choice_of(LOG_FORMATS), restart=True),
        "file": Key(_log_file),
        "attempts": Key(_choice_of(LOG_ATTEMPTS)),
    },
    LogConfig,
)

METRICS: Final = Table(
    {
        "listen": Key(_listen, restart=True),
        "probe_allow": Key(_networks),
        "probe_concurrency": Key(_concurrency),  # checked against engine.concurrency: _config
    },
    MetricsConfig,
)

CLUSTER: Final = Table({"shard": Key(_optional(parse_shard))}, ClusterConfig)

STORE: Final = Table(
    {
        "path": Key(_path),  # "": no store
        "retention": Key(_retention, field="retention_days"),
    },
    StoreConfig,
)


def _serve_listen(value: object, at: _Path) -> tuple[HostPort, ...]:
    """`["ADDR:PORT", ...]` (one string is taken as a list of one), as `[metrics] listen` is
    written, but IP addresses only."""
    items = [value] if isinstance(value, str) else _array(value, at, max_items=64)
    out = []
    for i, item in enumerate(items):
        where = at if isinstance(value, str) else (*at, i)
        text = _str(item, where)
        host, port = _via(parse_listen, text, where)
        if _family_of(host) is None:
            _fail(where, f"an IP address is needed, not the name {_show(host)}")
        out.append(HostPort(host, port))
    return tuple(out)


def _serve_name(value: object, at: _Path) -> str:
    name = _str(value, at, min_length=1, max_length=MAX_NAME)
    if not name.isprintable():
        _fail(at, "printable characters only")
    return name


def _peers(value: object, at: _Path) -> PeerSpec:
    """`"NAME:PORT"` (every address of the name) or `["HOST:PORT", ...]`."""
    if not isinstance(value, str):
        items = _array(value, at, max_items=4096)
        value = [_str(v, (*at, i)) for i, v in enumerate(items)]
    try:
        return PeerSpec.parse(value)
    except ValueError as exc:
        _fail(at, str(exc))


SERVE: Final = Table(
    {
        "listen": Key(_serve_listen, restart=True),
        "name": Key(_serve_name, restart=True),
        "max_connections": Key(lambda v, at: _int(v, at, ge=1, le=CAPS.concurrency)),
        "rate": Key(lambda v, at: _float(v, at, ge=0.0, le=1_000_000.0)),
    },
    ServeConfig,
)


def _mesh_fields(fields: dict[str, Any], table: dict[str, Any], at: _Path) -> None:
    if "interval" in fields and "peers" not in fields:
        _fail((*at, "peers"), "required with [mesh] interval: NAME:PORT or a list of HOST:PORT")


MESH: Final = Table({"peers": Key(_peers), "interval": Key(_interval)}, MeshConfig, _mesh_fields)


def _target_fields(fields: dict[str, Any], table: dict[str, Any], at: _Path) -> None:
    """Where the address is, and the name that defaults to it (defaults are applied by
    `_config`, which knows [defaults])."""
    fields["host"], fields["port"] = _via(parse_endpoint, fields["address"], (*at, "address"))
    fields.setdefault("name", fields["address"])


TARGET: Final = Table(
    {
        "address": Key(_str, required=True),
        "name": Key(_name),
        **SHARED,
        "labels": Key(_labels),
        **STAGES,
    },
    dict,  # resolved into a ResolvedTarget by _config, with [defaults] applied
    _target_fields,
)


def _module(value: object, at: _Path) -> dict[str, Any]:
    """One [modules.NAME] table: stage keys only, kept raw for `_config` to resolve."""
    if not MODULE_NAME.match(str(at[-1])):
        _fail(at, "a module name is 1-64 letters, digits, '_', '.' or '-'")
    module = _table(value, at)
    _known_keys(module, at, STAGE_KEYS)
    return module


def _stages(layers: Sequence[Mapping[str, Any]], at: _Path) -> StageSpec | None:
    try:
        return resolve_stages(layers, at)
    except StageConfigError as exc:
        _fail(exc.at, exc.problem)


def _stage_layers(
    table: dict[str, Any], at: _Path, defaults: Mapping[str, Any], modules: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    """[defaults]' stage keys, then the module's (the target's `module`, else [defaults]'),
    then the target's own."""
    layers: list[Mapping[str, Any]] = [defaults]
    if MODULE_KEY in table:
        where, name = at, table.get(MODULE_KEY)
    else:
        where, name = ("defaults",), defaults.get(MODULE_KEY)
    if name is not None:
        try:
            check_module_name(name, modules, (*where, MODULE_KEY))
        except StageConfigError as exc:
            _fail(exc.at, exc.problem)
        layers.append(modules[name])
    layers.append(table)
    return layers


def _list_file(value: object, at: _Path) -> str | None:
    return _path(value, at) or None


def _globs(value: object, at: _Path) -> tuple[str, ...]:
    items = _array(value, at, max_items=MAX_GLOBS)
    return tuple(_path(item, (*at, i)) for i, item in enumerate(items))


# The directory relative list paths start from: the config file's (parse_config sets it).
_BASE: ContextVar[Path] = ContextVar("config_base", default=Path())
# Which listed targets a daemon keeps (its shard's, by name): the others are checked and
# their names counted, but not built, so a shard of a big fleet holds only its share.
_KEEP: ContextVar[Callable[[str], bool] | None] = ContextVar("config_keep", default=None)


def _keeper(cluster: ClusterConfig) -> Callable[[str], bool] | None:
    """The shard to keep: the caller's (--shard, PROBE_SHARD), else [cluster] shard."""
    keep = _KEEP.get()
    if keep is None and cluster.shard is not None:
        index, count = cluster.shard
        return lambda name: shard_of(name, count) == index
    return keep


def _listed(
    fields: dict[str, Any],
    table: dict[str, Any],
    resolved: list[ResolvedTarget],
    names: dict[str, str],
) -> None:
    """The targets of `targets_file` and `include`, checked as [[targets]] tables, added to
    `resolved`; `names` (name → where it was given) finds duplicates across all of them."""
    lists = target_lists.files(_BASE.get(), fields.get("targets_file"), fields.get("include", ()))
    if not lists:
        return
    raw_defaults, modules = table.get("defaults", {}), fields["modules"]
    plain = _stages(_stage_layers({}, ("defaults",), raw_defaults, modules), ("defaults",))
    keep = _keeper(fields["cluster"])
    for path in lists:
        for item in target_lists.items(path):
            if len(resolved) >= MAX_TARGETS:
                raise item.error(None, f"more than {MAX_TARGETS} targets in the config's lists")
            try:
                if len(item.table) == 1 and "address" in item.table:  # a line HOST:PORT
                    given = {"address": _str(item.table["address"], ("address",))}
                    _target_fields(given, item.table, ())
                else:
                    given = TARGET(item.table, ())
                name = given["name"]
                if keep is not None and not keep(name):
                    if name in names:
                        raise _Invalid(("name",), _duplicate(name, item, names))
                    names[name] = f"{item.file} line {item.line}"
                    continue
                stages = plain
                if not STAGES.keys().isdisjoint(item.table):
                    stages = _stages(_stage_layers(item.table, (), raw_defaults, modules), ())
                target = _resolve_target(given, (), fields["defaults"], stages)
            except _Invalid as exc:
                raise item.error(_render_key(exc.at) if exc.at else None, exc.problem) from None
            if target.name in names:
                raise item.error("name", _duplicate(target.name, item, names))
            names[target.name] = f"{item.file} line {item.line}"
            resolved.append(target)


def _duplicate(name: str, item: target_lists.Item, names: Mapping[str, str]) -> str:
    hint = "" if "name" in item.table else " (name defaults to the address)"
    return f"duplicate target name {_show(name)}{hint}, already used by {names[name]}"


def _targets(value: object, at: _Path) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        _fail(
            at,
            "expected array, got table; write each target as a [[targets]] section "
            "(double brackets)",
        )
    items = _array(value, at, max_items=1_000_000)
    return [TARGET(item, (*at, i)) for i, item in enumerate(items)]


def _resolve_target(
    given: dict[str, Any], at: _Path, defaults: TargetDefaults, stages: StageSpec | None
) -> ResolvedTarget:
    merged = {k: given.get(k, getattr(defaults, k)) for k in SHARED}
    literal = None if merged["family"] == "any" else _family_of(given["host"])
    if literal is not None and merged["family"] != literal:
        where = (*at, "family") if "family" in given else ("defaults", "family")
        address = given["address"]
        _fail(where, f"{_show(address)} is an {literal} address, family is {merged['family']}")
    return ResolvedTarget(**{**given, **merged}, stages=stages)


def _config(fields: dict[str, Any], table: dict[str, Any], at: _Path) -> None:
    """Checks across sections: GET /probe's limit stays below the schedule's; each target
    takes what it does not set from [defaults]; no two targets share a name."""
    engine: EngineConfig = fields["engine"]
    metrics: MetricsConfig = fields["metrics"]
    given = table.get("metrics")
    if isinstance(given, dict) and "probe_concurrency" in given:
        if metrics.probe_concurrency >= engine.concurrency:
            _fail(
                ("metrics", "probe_concurrency"),
                f"must be below engine.concurrency ({engine.concurrency}), "
                f"got {metrics.probe_concurrency}",
            )
    else:
        probe = min(DEFAULT_PROBE_CONCURRENCY, max(1, engine.concurrency - 1))
        fields["metrics"] = replace(metrics, probe_concurrency=probe)
    raw_defaults = table.get("defaults", {})  # a table: DEFAULTS checked it
    modules = fields["modules"]
    # Each module, then [defaults] (with its module), on its own first: a bad stage key is
    # named where it was written, and is found even when no target uses it.
    module_specs = {name: _stages([module], ("modules", name)) for name, module in modules.items()}
    _stages(_stage_layers({}, ("defaults",), raw_defaults, modules), ("defaults",))
    resolved = []
    for i, given in enumerate(fields["targets"]):
        at = ("targets", i)
        layers = _stage_layers(table["targets"][i], at, raw_defaults, modules)
        resolved.append(_resolve_target(given, at, fields["defaults"], _stages(layers, at)))
    # Names key the metrics series and log lines: two targets sharing one would merge.
    seen: dict[str, int] = {}
    for i, target in enumerate(resolved):
        if target.name in seen:
            hint = "" if "name" in table["targets"][i] else " (name defaults to the address)"
            _fail(
                ("targets", i, "name"),
                f"duplicate target name {_show(target.name)}{hint}, "
                f"already used by targets[{seen[target.name]}]",
            )
        seen[target.name] = i
    _listed(fields, table, resolved, {name: f"targets[{i}]" for name, i in seen.items()})
    fields["targets"] = tuple(resolved)
    fields["modules"] = MappingProxyType(module_specs)


# The whole file: its sections (and, later, its top-level keys).
CONFIG: Final = Table(
    {
        "defaults": Key(DEFAULTS, absent={}),
        "engine": Key(ENGINE, absent={}),
        "log": Key(LOG, absent={}),
        "metrics": Key(METRICS, absent={}),
        "cluster": Key(CLUSTER, absent={}),
        "store": Key(STORE, absent={}),
        "serve": Key(SERVE, absent={}),
        "mesh": Key(MESH, absent={}),
        "modules": Key(_tables_of(_module, CAPS.modules), absent={}),
        "targets": Key(_targets, absent=[]),
        "targets_file": Key(_list_file),
        "include": Key(_globs),
    },
    Config,
    _config,
)


def needs_restart(old: Config, new: Config) -> list[str]:
    """The keys a reload changed that take effect only at the next start."""
    changed: list[str] = []
    for section, key in CONFIG.keys.items():
        table = key.check
        if not isinstance(table, Table):
            continue
        for name, spec in table.keys.items():
            got = spec.field or name
            if spec.restart and getattr(getattr(old, section), got) != getattr(
                getattr(new, section), got
            ):
                changed.append(f"{section}.{name}")
    return changed


def _resolve(data: dict[str, Any]) -> Config:
    config: Config = CONFIG(data, ())
    return config


# -- reading and parsing --------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], keep: Callable[[str], bool] | None = None) -> Config:
    """Read (bounded), parse and resolve a config file; every failure is a ConfigError.
    `keep`: which listed targets (by name) a daemon builds; every line is checked all the
    same. None: the config's [cluster] shard, else every one."""
    shown = os.fspath(path)
    raw = _read_bounded(shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        column = len(raw[line_start : exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            shown,
            None,
            f"line {line}, column {column}: not valid UTF-8 "
            f"(byte 0x{raw[exc.start]:02x}); TOML files must be UTF-8",
        ) from None
    # Editors on Windows like to prepend a BOM, which tomllib rejects.
    return parse_config(text.removeprefix("\ufeff"), shown, keep)


def _read_bounded(shown: str) -> bytes:
    """At most MAX_CONFIG_BYTES + 1 bytes of a regular file: never a FIFO's or a device's
    endless stream."""
    fd = target_lists.open_regular(shown)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(shown, None, f"file too large (over {MAX_CONFIG_BYTES} bytes)")
    return b"".join(chunks)


_TOML_LOCATION: Final = re.compile(r"(.*) \(at (line \d+, column \d+|end of document)\)", re.S)
# Strings and comments, whose dots are not key separators.
_TOML_STRINGS: Final = re.compile(
    r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*'
)
_TOML_DELIMITERS: Final = re.compile(r"[=,\[\]{}]")


def _check_dotted_keys(text: str, path: str) -> None:
    """tomllib takes time quadratic in the parts of one dotted key (a 400 KB `a.a.a…` key
    runs for minutes): refuse keys of more than CAPS.dotted_parts parts before parsing."""
    if max((line.count(".") for line in text.split("\n")), default=0) < CAPS.dotted_parts:
        return  # no line has that many dots at all: the common case, in one pass
    # Blank out strings and comments (keeping their line breaks): their dots are no keys'.
    bare = _TOML_STRINGS.sub(lambda m: " " + "\n" * m[0].count("\n"), text)
    for number, line in enumerate(bare.split("\n"), 1):
        if line.count(".") < CAPS.dotted_parts:
            continue
        if any(token.count(".") >= CAPS.dotted_parts for token in _TOML_DELIMITERS.split(line)):
            raise ConfigError(
                path, None, f"line {number}: a dotted key of more than {CAPS.dotted_parts} parts"
            )


def parse_config(
    text: str, path: str = "config.toml", keep: Callable[[str], bool] | None = None
) -> Config:
    """Check and resolve TOML text; ``path`` labels error messages and is where relative
    target lists start; ``keep`` as in :func:`load_config`."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"file too large (over {MAX_CONFIG_BYTES} bytes)")
    _check_dotted_keys(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_LOCATION.fullmatch(str(exc))
        if m is None:
            problem = str(exc)
        else:  # "line 3, column 5: Invalid value" or "at end of document: Invalid value"
            where = m[2] if m[2].startswith("line") else f"at {m[2]}"
            problem = f"{where}: {m[1]}"
        raise ConfigError(path, None, problem) from None
    except RecursionError:
        raise ConfigError(path, None, "arrays or tables are nested too deeply") from None
    except ValueError:  # int() refuses more than 4300 digits
        raise ConfigError(path, None, "a number has too many digits") from None
    base, kept = _BASE.set(Path(path).parent), _KEEP.set(keep)
    fresh_files()  # TLS files are read again on every load (a renewed CA, same path)
    try:
        return _resolve(data)
    except _Invalid as exc:
        raise ConfigError(path, _render_key(exc.at), exc.problem) from None
    finally:
        _BASE.reset(base)
        _KEEP.reset(kept)
