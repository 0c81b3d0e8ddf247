"""The daemon's TOML configuration: read with bounds, checked, resolved once into a frozen
:class:`Config` (uvicorn's ``Config.load()``), which the daemon and its reloads take whole.

Every problem is one :class:`ConfigError` whose ``str()`` is a single line
``{path}: {key}: {problem}``. The key travels as data: the checker walks the parsed TOML
knowing where it is, and raises with the path segments in hand; no message is ever read
back. Addresses, sources and shards are parsed by :mod:`probe.syntax`, the one syntax of
the whole tool.

Bounds (issue 12): the file must be a regular file of at most 1 MiB (read at most that,
plus one byte); a dotted key of more than 16 parts is refused before parsing (tomllib is
quadratic in them); intervals are 1 ms to 1 day, timeouts above 0 up to
:data:`probe.limits.MAX_TIMEOUT`. A timeout may exceed its interval: a slot that comes
while the previous attempt to that target is still in flight is skipped (and counted).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from types import MappingProxyType
from typing import Any, Final, NoReturn, TypeVar

from ..errors import ConfigError, TargetError
from ..limits import MAX_CONFIG_BYTES, MAX_INTERVAL, MAX_TIMEOUT, MIN_INTERVAL
from ..stages.spec import StageSpec
from ..syntax import Source, parse_endpoint, parse_shard, parse_source_spec
from .stage_config import (
    MODULE_KEY,
    MODULE_NAME,
    STAGE_KEYS,
    StageConfigError,
    check_module_name,
)
from .stage_config import resolve as resolve_stages

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


@dataclass(frozen=True, slots=True)
class Caps:
    """The most one config may hold (issue 12): a hostile or mistaken file costs bounded
    work and memory. The bounds the CLI and `/probe` share live in :mod:`probe.limits`."""

    dotted_parts: int  # parts of one dotted key, refused before tomllib sees them
    concurrency: int  # engine.concurrency and metrics.probe_concurrency
    state_count: int  # down_after / up_after
    lag_limit_ms: float
    name: int  # characters of a target's name
    labels: int  # labels of one target
    label_value: int  # characters of one label's value
    allow: int  # networks in metrics.probe_allow
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
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
    probe_concurrency: int = DEFAULT_PROBE_CONCURRENCY  # the same as metrics.probe_concurrency


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str | None = None  # "json", "console", or None: the daemon decides (terminal?)
    file: str | None = None  # None: standard output


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


def needs_restart(old: Config, new: Config) -> list[str]:
    """The keys a reload changed that take effect only at the next start."""
    changed = (
        ("log.format", new.log.format != old.log.format),
        ("metrics.listen", new.metrics.listen != old.metrics.listen),
    )
    return [key for key, differs in changed if differs]


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


# -- sections -------------------------------------------------------------------------------

_SECTIONS: Final = (
    "defaults",
    "engine",
    "log",
    "metrics",
    "cluster",
    "store",
    "modules",
    "targets",
)
_DEFAULT_KEYS: Final = (
    "interval", "timeout", "family", "addresses", "down_after", "up_after", "histograms",
)  # fmt: skip
_STAGE_KEYS: Final = (*STAGE_KEYS, MODULE_KEY)  # per target and in [defaults]
_TARGET_KEYS: Final = ("address", "name", *_DEFAULT_KEYS, "labels", *_STAGE_KEYS)


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


# key → checker, for what [defaults] and each target share
_SHARED: Final[dict[str, Callable[[object, _Path], object]]] = {
    "interval": _interval,
    "timeout": _timeout,
    "family": lambda v, at: _choice(v, at, FAMILIES),
    "addresses": lambda v, at: _choice(v, at, ADDRESS_MODES),
    "down_after": _state_count,
    "up_after": _state_count,
    "histograms": _flag,
}


def _defaults(raw: object) -> TargetDefaults:
    at: _Path = ("defaults",)
    table = _table(raw, at)
    _known_keys(table, at, (*_DEFAULT_KEYS, *_STAGE_KEYS))
    values = {k: _SHARED[k](v, (*at, k)) for k, v in table.items() if k in _SHARED}
    return TargetDefaults(**values)  # type: ignore[arg-type]


def _engine(raw: object, probe_concurrency: object) -> EngineConfig:
    at: _Path = ("engine",)
    table = _table(raw, at)
    _known_keys(table, at, ("concurrency", "source", "lag_limit"))
    concurrency = 1000
    if "concurrency" in table:
        concurrency = _int(table["concurrency"], (*at, "concurrency"), ge=1, le=CAPS.concurrency)
    source = None
    if "source" in table:
        text = _str(table["source"], (*at, "source"))
        if text:
            source = _via(parse_source_spec, text, (*at, "source"))
    lag: float | None = DEFAULT_LAG_LIMIT_MS
    if "lag_limit" in table:
        value = table["lag_limit"]
        if value is False or (not isinstance(value, bool) and value == 0):
            lag = None  # 0 or false: never hold concurrency down for loop lag
        elif value is True:
            _fail((*at, "lag_limit"), "expected milliseconds > 0, or 0 or false to disable")
        else:
            lag = _float(value, (*at, "lag_limit"), gt=0, le=CAPS.lag_limit_ms)
    # [metrics] probe_concurrency: GET /probe's own limit, kept below the schedule's.
    pat: _Path = ("metrics", "probe_concurrency")
    if probe_concurrency is None:
        probe = min(DEFAULT_PROBE_CONCURRENCY, max(1, concurrency - 1))
    else:
        probe = _int(probe_concurrency, pat, ge=1, le=CAPS.concurrency)
        if probe >= concurrency:
            _fail(pat, f"must be below engine.concurrency ({concurrency}), got {probe}")
    return EngineConfig(concurrency, source, lag, probe)


def _log(raw: object) -> LogConfig:
    at: _Path = ("log",)
    table = _table(raw, at)
    _known_keys(table, at, ("format", "file"))
    fmt = _choice(table["format"], (*at, "format"), LOG_FORMATS) if "format" in table else None
    path = _str(table.get("file", ""), (*at, "file"))
    if "\x00" in path:
        _fail((*at, "file"), "path contains a NUL character")
    return LogConfig(fmt, path or None)


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


def _metrics(raw: object, probe_concurrency: int) -> MetricsConfig:
    at: _Path = ("metrics",)
    table = _table(raw, at)
    _known_keys(table, at, ("listen", "probe_allow", "probe_concurrency"))
    listen: HostPort | None = DEFAULT_LISTEN
    if "listen" in table:
        text = _str(table["listen"], (*at, "listen"))
        listen = None
        if text:
            host, port = _via(
                lambda t: parse_endpoint(t, allow_port_zero=True), text, (*at, "listen")
            )
            listen = HostPort(host, port)
    allow = DEFAULT_ALLOW_NETWORKS
    if "probe_allow" in table:
        items = _array(table["probe_allow"], (*at, "probe_allow"), max_items=CAPS.allow)
        allow = tuple(
            _network(_str(item, (*at, "probe_allow", i)), (*at, "probe_allow", i))
            for i, item in enumerate(items)
        )
    return MetricsConfig(listen, allow, probe_concurrency)


def _cluster(raw: object) -> ClusterConfig:
    at: _Path = ("cluster",)
    table = _table(raw, at)
    _known_keys(table, at, ("shard",))
    text = _str(table.get("shard", ""), (*at, "shard"))
    return ClusterConfig(_via(parse_shard, text, (*at, "shard")) if text else None)


def _store(raw: object) -> StoreConfig:
    at: _Path = ("store",)
    table = _table(raw, at)
    _known_keys(table, at, ("path", "retention"))
    path = _str(table["path"], (*at, "path")) if "path" in table else None
    if path is not None and "\x00" in path:
        _fail((*at, "path"), "path contains a NUL character")
    retention = 90.0
    if "retention" in table:
        value = table["retention"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail((*at, "retention"), f"expected a number of days, got {_show(value)}")
        if not 1 <= value <= 3650:
            _fail((*at, "retention"), f"days from 1 to 3650, got {value}")
        retention = float(value)
    return StoreConfig(path, retention)


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


def _family_of(host: str) -> str | None:
    try:
        return f"ipv{ipaddress.ip_address(host.partition('%')[0]).version}"
    except ValueError:
        return None  # a name


def _modules(raw: object) -> dict[str, dict[str, Any]]:
    """[modules.NAME] tables: stage keys only."""
    at: _Path = ("modules",)
    table = _table(raw, at)
    out: dict[str, dict[str, Any]] = {}
    for name, body in table.items():
        if not MODULE_NAME.match(name):
            _fail((*at, name), "a module name is 1-64 letters, digits, '_', '.' or '-'")
        module = _table(body, (*at, name))
        _known_keys(module, (*at, name), STAGE_KEYS)
        out[name] = module
    return out


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
    where, name = (
        (at, table.get(MODULE_KEY))
        if MODULE_KEY in table
        else (
            ("defaults",),
            defaults.get(MODULE_KEY),
        )
    )
    if name is not None:
        try:
            check_module_name(name, modules, (*where, MODULE_KEY))
        except StageConfigError as exc:
            _fail(exc.at, exc.problem)
        layers.append(modules[name])
    layers.append(table)
    return layers


def _target(
    raw: object,
    index: int,
    defaults: TargetDefaults,
    stage_defaults: Mapping[str, Any] | None = None,
    modules: Mapping[str, Mapping[str, Any]] | None = None,
) -> ResolvedTarget:
    at: _Path = ("targets", index)
    table = _table(raw, at)
    _known_keys(table, at, _TARGET_KEYS)
    if "address" not in table:
        _fail((*at, "address"), "required key is missing")
    address = _str(table["address"], (*at, "address"))
    host, port = _via(parse_endpoint, address, (*at, "address"))
    name = address
    if "name" in table:
        name = _str(table["name"], (*at, "name"), min_length=1, max_length=CAPS.name)
    shared = {k: _SHARED[k](table[k], (*at, k)) for k in _DEFAULT_KEYS if k in table}
    labels = _labels(table["labels"], (*at, "labels")) if "labels" in table else None
    merged = {k: shared.get(k, getattr(defaults, k)) for k in _DEFAULT_KEYS}
    literal = _family_of(host)
    if literal is not None and merged["family"] not in ("any", literal):
        where = (*at, "family") if "family" in table else ("defaults", "family")
        _fail(where, f"{_show(address)} is an {literal} address, family is {merged['family']}")
    return ResolvedTarget(
        name=name,
        address=address,
        host=host,
        port=port,
        labels=labels if labels is not None else MappingProxyType({}),
        stages=_stages(_stage_layers(table, at, stage_defaults or {}, modules or {}), at),
        **merged,  # type: ignore[arg-type]
    )


def _resolve(data: dict[str, Any]) -> Config:
    _known_keys(data, (), _SECTIONS)
    defaults = _defaults(data.get("defaults", {}))
    metrics_raw = data.get("metrics", {})
    probe_concurrency = (
        metrics_raw.get("probe_concurrency") if isinstance(metrics_raw, dict) else None
    )
    engine = _engine(data.get("engine", {}), probe_concurrency)
    log = _log(data.get("log", {}))
    metrics = _metrics(metrics_raw, engine.probe_concurrency)
    cluster = _cluster(data.get("cluster", {}))
    store = _store(data.get("store", {}))
    raw_targets = data.get("targets", [])
    if isinstance(raw_targets, dict):
        _fail(
            ("targets",),
            "expected array, got table; write each target as a [[targets]] section "
            "(double brackets)",
        )
    items = _array(raw_targets, ("targets",), max_items=1_000_000)
    raw_defaults = data.get("defaults", {})  # a table: _defaults checked it
    modules = _modules(data.get("modules", {}))
    targets = tuple(
        _target(item, i, defaults, raw_defaults, modules) for i, item in enumerate(items)
    )
    # Names key the metrics series and log lines: two targets sharing one would merge.
    seen: dict[str, int] = {}
    for i, target in enumerate(targets):
        if target.name in seen:
            hint = "" if "name" in items[i] else " (name defaults to the address)"
            _fail(
                ("targets", i, "name"),
                f"duplicate target name {_show(target.name)}{hint}, "
                f"already used by targets[{seen[target.name]}]",
            )
        seen[target.name] = i
    module_stages = MappingProxyType(
        {name: _stages([table], ("modules", name)) for name, table in modules.items()}
    )
    return Config(defaults, engine, log, metrics, cluster, targets, store, module_stages)


# -- reading and parsing --------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read (bounded), parse and resolve a config file; every failure is a ConfigError."""
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
    return parse_config(text.removeprefix("\ufeff"), shown)


def _read_bounded(shown: str) -> bytes:
    """At most MAX_CONFIG_BYTES + 1 bytes of a regular file: never a FIFO's or a device's
    endless stream (opened non-blocking, so a FIFO without a writer cannot hang us)."""
    try:
        fd = os.open(shown, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # an embedded NUL byte in the path
        raise ConfigError(shown, None, f"cannot read: {exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(shown, None, "cannot read: Is a directory")
        if not stat.S_ISREG(mode):
            raise ConfigError(shown, None, "not a regular file (a FIFO, device or socket)")
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


def parse_config(text: str, path: str = "config.toml") -> Config:
    """Check and resolve TOML text; ``path`` only labels error messages."""
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
    try:
        return _resolve(data)
    except _Invalid as exc:
        raise ConfigError(path, _render_key(exc.at), exc.problem) from None
