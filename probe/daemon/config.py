"""Load and validate the daemon's TOML configuration.

Every problem surfaces as one :class:`ConfigError` whose ``str()`` is a single
line ``{path}: {key}: {problem}``, so an operator can fix a typo without
reading a traceback.  Types and numeric limits are enforced declaratively by
msgspec; only what msgspec cannot express (address syntax, CIDRs, duplicate
names) is checked by hand in ``__post_init__``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import msgspec
import msgspec.inspect as mi

from ..errors import ConfigError, TargetError
from ..targets import parse_source, parse_target

__all__ = [
    "Config",
    "ConfigError",
    "Defaults",
    "Engine",
    "Log",
    "Metrics",
    "ResolvedTarget",
    "TargetConfig",
    "engine_source",
    "load_config",
    "metrics_listen",
    "parse_config",
    "probe_allow_networks",
    "resolved_targets",
]

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

_Segment = str | int
_Segments = tuple[_Segment, ...]


class _FieldError(ValueError):
    """Carries the offending key out of ``__post_init__``.

    msgspec reports ``__post_init__`` failures at the struct, not the field, but
    keeps the original exception as ``__cause__``, so the key survives the trip.
    """

    def __init__(self, field_path: _Segments, problem: str) -> None:
        super().__init__(problem)
        self.field_path = field_path


# ---------------------------------------------------------------------------
# Value rendering shared by error messages
# ---------------------------------------------------------------------------

_MAX_SHOWN: Final = 60


def _show(value: object) -> str:
    """Render a value the way it looked in TOML, short enough for one line."""
    text: str
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        if len(value) > _MAX_SHOWN:
            value = value[:_MAX_SHOWN] + "..."
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, int):
        text = str(value) if abs(value) < 10**_MAX_SHOWN else "a huge integer"
    elif isinstance(value, float):
        text = {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    elif isinstance(value, datetime | date | time):
        text = value.isoformat()
    elif isinstance(value, list):
        text = "an array"
    elif isinstance(value, dict):
        text = "a table"
    else:  # pragma: no cover - tomllib produces nothing else
        text = type(value).__name__
    return text


# ---------------------------------------------------------------------------
# Address syntax
# ---------------------------------------------------------------------------

_V6_HINT: Final = 'write IPv6 addresses in brackets, e.g. "[::1]:8080"'


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _parse_port(text: str, lowest: int) -> int:
    if not text:
        raise ValueError("missing port (expected HOST:PORT or [IPV6]:PORT)")
    # isdigit() alone would accept non-ASCII digits such as "٨٠".
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"port {_show(text)} is not a number")
    # Cap the length before int(): Python refuses to parse very long digit strings.
    port = int(text) if len(text) <= 6 else 1_000_000
    if not lowest <= port <= 65535:
        shown = text if len(text) <= 12 else text[:12] + "..."
        raise ValueError(f"port {shown} out of range {lowest}-65535")
    return port


def _check_host(host: str) -> None:
    if not host:
        raise ValueError("host is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in host):
        raise ValueError(f"host {_show(host)} contains whitespace or control characters")


def _split_bracketed(address: str) -> tuple[str, str | None]:
    """Split ``[v6]`` or ``[v6]:port``; the port is ``None`` when absent."""
    end = address.find("]")
    if end < 0:
        raise ValueError("missing ']' after IPv6 address")
    inner, rest = address[1:end], address[end + 1 :]
    _check_host(inner)
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        raise ValueError(f"{_show(inner)} inside [...] is not an IPv6 address") from None
    if not rest:
        return inner, None
    if not rest.startswith(":"):
        raise ValueError(f"unexpected {_show(rest)} after ']' (expected :PORT)")
    return inner, rest[1:]


def _split_host_port(address: str, *, lowest_port: int) -> tuple[str, int]:
    """Parse ``HOST:PORT`` / ``[V6]:PORT``; host is returned without brackets."""
    if address.startswith("["):
        host, port_text = _split_bracketed(address)
        if port_text is None:
            raise ValueError(f"missing port after ']' (expected [{host}]:PORT)")
        return host, _parse_port(port_text, lowest_port)
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"missing port in {_show(address)} (expected HOST:PORT or [IPV6]:PORT)")
    if ":" in host:
        if _is_ipv6(host):
            raise ValueError(f'IPv6 addresses need brackets: write "[{host}]:{port_text}"')
        if _is_ipv6(address):
            raise ValueError(f'IPv6 addresses need brackets and a port: write "[{address}]:PORT"')
        raise ValueError(f"too many ':' in {_show(address)}; {_V6_HINT}")
    if "[" in host or "]" in host:
        raise ValueError(f"unbalanced brackets in {_show(address)}; {_V6_HINT}")
    _check_host(host)
    return host, _parse_port(port_text, lowest_port)


def _parse_source(source: str) -> tuple[str, int]:
    """``ADDR``, ``ADDR:PORT`` or ``[V6]:PORT``, by the same parser as ``probe check -s``."""
    try:
        return parse_source(source)
    except TargetError as exc:
        raise ValueError(str(exc)) from None


def _target_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT``, by the same parser as ``probe check``; one port only."""
    try:
        if address != address.strip():
            raise TargetError(f"leading or trailing space in {_show(address)}")
        target = parse_target(address, no_port_hint="")
    except TargetError as exc:
        raise ValueError(str(exc)) from None
    if target.count() != 1:
        raise ValueError(f"one port per target, got {_show(address)}")
    return target.host, target.ports[0][0]


def _parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f'{_show(text)} is not a valid CIDR (e.g. "127.0.0.0/8")') from None
    raise ValueError(f'{_show(text)} has host bits set; did you mean "{loose}"?')


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------

# \Z, not $: "$" would also accept a name with a trailing newline.
_LABEL_NAME_PATTERN: Final = r"^[a-zA-Z_][a-zA-Z0-9_]*\Z"
_LABEL_NAME_RE: Final = re.compile(_LABEL_NAME_PATTERN)

Interval = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=3_600)]
Concurrency = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
LabelName = Annotated[str, msgspec.Meta(pattern=_LABEL_NAME_PATTERN)]
TargetName = Annotated[str, msgspec.Meta(min_length=1)]
LogFormat = Literal["json", "console"]

DEFAULT_PROBE_ALLOW: Final = ("127.0.0.0/8", "::1/128")


class Defaults(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Per-target settings that targets inherit unless they override them."""

    interval: Interval = 10.0
    timeout: Timeout = 1.0


class Engine(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Global knobs of the connect engine."""

    concurrency: Concurrency = 1000
    source: str = ""

    def __post_init__(self) -> None:
        if self.source:
            try:
                _parse_source(self.source)
            except ValueError as exc:
                raise _FieldError(("source",), str(exc)) from None


class Log(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Where structured logs go; ``file=""`` means standard output."""

    format: LogFormat = "json"
    file: str = ""

    def __post_init__(self) -> None:
        if "\x00" in self.file:
            raise _FieldError(("file",), "path contains a NUL character")


class Metrics(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """HTTP endpoint settings; ``probe_allow`` limits what ``GET /probe`` may reach."""

    listen: str = "127.0.0.1:9464"
    probe_allow: tuple[str, ...] = DEFAULT_PROBE_ALLOW

    def __post_init__(self) -> None:
        if self.listen:
            try:
                _split_host_port(self.listen, lowest_port=0)
            except ValueError as exc:
                raise _FieldError(("listen",), str(exc)) from None
        for i, cidr in enumerate(self.probe_allow):
            try:
                _parse_network(cidr)
            except ValueError as exc:
                raise _FieldError(("probe_allow", i), str(exc)) from None


class TargetConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One ``[[targets]]`` entry as written; see :class:`ResolvedTarget` for the merged view."""

    address: str
    name: TargetName | None = None
    interval: Interval | None = None
    timeout: Timeout | None = None
    labels: dict[LabelName, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            _target_address(self.address)
        except ValueError as exc:
            raise _FieldError(("address",), str(exc)) from None


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The whole file; every section is optional so an empty file is a valid config."""

    defaults: Defaults = msgspec.field(default_factory=Defaults)
    engine: Engine = msgspec.field(default_factory=Engine)
    log: Log = msgspec.field(default_factory=Log)
    metrics: Metrics = msgspec.field(default_factory=Metrics)
    targets: tuple[TargetConfig, ...] = ()

    def __post_init__(self) -> None:
        # Names key the metrics series and log lines, so two targets sharing one
        # would silently merge their data.
        seen: dict[str, int] = {}
        for i, target in enumerate(self.targets):
            name = target.name if target.name is not None else target.address
            if name in seen:
                hint = "" if target.name is not None else " (name defaults to the address)"
                raise _FieldError(
                    ("targets", i, "name"),
                    f"duplicate target name {_show(name)}{hint}, "
                    f"already used by targets[{seen[name]}]",
                )
            seen[name] = i

    def resolved_targets(self) -> list[ResolvedTarget]:
        """Shortcut for :func:`resolved_targets`."""
        return resolved_targets(self)


# ---------------------------------------------------------------------------
# Resolved views for the rest of the daemon
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """A target with defaults applied, so the scheduler never consults ``[defaults]``."""

    name: str
    address: str
    host: str
    port: int
    interval: float
    timeout: float
    # Excluded from the hash so instances stay hashable despite holding a mapping.
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)


def resolved_targets(config: Config) -> list[ResolvedTarget]:
    """Merge each target with ``[defaults]``; order follows the file."""
    out: list[ResolvedTarget] = []
    for target in config.targets:
        host, port = _target_address(target.address)
        out.append(
            ResolvedTarget(
                name=target.name if target.name is not None else target.address,
                address=target.address,
                host=host,
                port=port,
                interval=(
                    target.interval if target.interval is not None else config.defaults.interval
                ),
                timeout=target.timeout if target.timeout is not None else config.defaults.timeout,
                labels=MappingProxyType(dict(target.labels)),
            )
        )
    return out


def metrics_listen(config: Config) -> tuple[str, int] | None:
    """``(host, port)`` for the HTTP server, or ``None`` when it is disabled.

    The host has no brackets; port 0 is allowed (the OS picks, handy in tests).
    """
    if not config.metrics.listen:
        return None
    return _split_host_port(config.metrics.listen, lowest_port=0)


def engine_source(config: Config) -> tuple[str, int] | None:
    """``(ip, port)`` to pass as ``local_addr``, or ``None`` to let the kernel choose.

    Port 0 means only the address is pinned and the kernel picks the port.
    """
    if not config.engine.source:
        return None
    return _parse_source(config.engine.source)


def probe_allow_networks(
    config: Config,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parsed ``metrics.probe_allow``, already validated at load time."""
    return tuple(_parse_network(cidr) for cidr in config.metrics.probe_allow)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate a config file; every failure is a :class:`ConfigError`."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise ConfigError(shown, None, f"cannot read: {exc}") from None
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


_TOML_LOCATION: Final = re.compile(r"(.*) \(at (line \d+, column \d+|end of document)\)", re.S)


def parse_config(text: str, path: str = "config.toml") -> Config:
    """Validate TOML text; ``path`` is only used to label error messages."""
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
    try:
        return msgspec.convert(data, type=Config)
    except msgspec.ValidationError as exc:
        key, problem = _explain(exc, data)
        raise ConfigError(path, key, problem) from None


# ---------------------------------------------------------------------------
# Translating msgspec errors into "key: problem"
# ---------------------------------------------------------------------------

# msgspec formats: "<msg> - at `$.a[0].b`", "<msg> - at `key` in `$.a`", or just "<msg>".
_MSGSPEC_ERROR: Final = re.compile(r"(.*?)(?: - at `(key|\$[^`]*)`(?: in `(\$[^`]*)`)?)?", re.S)
_PATH_PART: Final = re.compile(r"\.([A-Za-z0-9_]+)|\[(\d+)\]|\[\.\.\.\]")
_UNKNOWN_FIELD: Final = re.compile(r"Object contains unknown field `(.*)`", re.S)
_MISSING_FIELD: Final = re.compile(r"Object missing required field `(.*)`", re.S)
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOML_TYPE_NAMES: Final = {
    "str": "string",
    "int": "integer",
    "bool": "boolean",
    "object": "table",
}
_SCALARS: Final = (str, int, float, datetime, date, time)
_MISSING: Final = object()
_ANY_DICT_KEY: Final = "[...]"


def _parse_msgspec_path(path: str) -> list[_Segment]:
    segments: list[_Segment] = []
    for m in _PATH_PART.finditer(path, 1):  # skip the leading "$"
        if m[1] is not None:
            segments.append(m[1])
        elif m[2] is not None:
            segments.append(int(m[2]))
        else:
            segments.append(_ANY_DICT_KEY)
    return segments


def _render_key(segments: Sequence[_Segment]) -> str | None:
    parts: list[str] = []
    for seg in segments:
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
        else:
            name = seg if _BARE_KEY.fullmatch(seg) else json.dumps(seg, ensure_ascii=False)
            parts.append(f".{name}" if parts else name)
    return "".join(parts) or None


def _lookup(data: object, segments: Sequence[_Segment]) -> object:
    for seg in segments:
        if isinstance(data, dict):
            data = data.get(seg, _MISSING)
        elif isinstance(data, list) and isinstance(seg, int) and seg < len(data):
            data = data[seg]
        else:
            return _MISSING
    return data


def _schema_at(segments: Sequence[_Segment]) -> mi.Type | None:
    """The declared type at a path, so messages can list valid keys and choices."""
    t: mi.Type | None = mi.type_info(Config)
    for seg in segments:
        t = _unwrap(t)
        if isinstance(t, mi.StructType) and isinstance(seg, str):
            t = next((f.type for f in t.fields if f.encode_name == seg), None)
        elif isinstance(t, mi.VarTupleType | mi.ListType) and isinstance(seg, int):
            t = t.item_type
        elif isinstance(t, mi.DictType):
            t = t.value_type
        else:
            return None
    return _unwrap(t)


def _unwrap(t: mi.Type | None) -> mi.Type | None:
    while True:
        if isinstance(t, mi.Metadata):
            t = t.type
        elif isinstance(t, mi.UnionType):
            t = next((m for m in t.types if not isinstance(m, mi.NoneType)), None)
        else:
            return t


def _friendly_types(match: re.Match[str]) -> str:
    """Speak TOML ("string", "table") rather than Python/JSON ("str", "object", "null")."""
    names: list[str] = []
    for alternative in match[1].split(" | "):
        head, _, rest = alternative.partition(" ")
        if head != "null":  # optional keys are simply omitted in TOML
            names.append(" ".join(filter(None, [_TOML_TYPE_NAMES.get(head, head), rest])))
    return " or ".join(names)


def _explain(exc: msgspec.ValidationError, data: dict[str, Any]) -> tuple[str | None, str]:
    """Turn a msgspec error into ``(key, problem)`` in the config's own vocabulary."""
    m = _MSGSPEC_ERROR.fullmatch(str(exc))
    assert m is not None  # the pattern matches any string
    body = m[1]
    if m[2] == "key":
        segments = _parse_msgspec_path(m[3])
        is_dict_key = True
    else:
        segments = _parse_msgspec_path(m[2] or "$")
        is_dict_key = False

    cause = exc.__cause__
    if isinstance(cause, _FieldError):
        return _render_key([*segments, *cause.field_path]), str(cause)

    if _ANY_DICT_KEY in segments:
        # msgspec does not say which entry of a table was wrong; find it ourselves.
        at = segments.index(_ANY_DICT_KEY)
        table = _lookup(data, segments[:at])
        bad = (
            next((k for k, v in table.items() if not isinstance(v, str)), None)
            if isinstance(table, dict)
            else None
        )
        segments = [*segments[:at], *([bad] if bad is not None else [])]

    if is_dict_key:
        table = _lookup(data, segments)
        names = table if isinstance(table, dict) else {}
        bad_name = next((k for k in names if not _LABEL_NAME_RE.match(k)), "")
        return _render_key(segments), (
            f"invalid label name {_show(bad_name)}: must match [a-zA-Z_][a-zA-Z0-9_]*"
        )

    if um := _UNKNOWN_FIELD.fullmatch(body):
        schema = _schema_at(segments)
        known = [f.encode_name for f in schema.fields] if isinstance(schema, mi.StructType) else []
        close = difflib.get_close_matches(um[1], known, n=1)
        hint = f'; did you mean "{close[0]}"?' if close else f"; valid keys: {', '.join(known)}"
        return _render_key([*segments, um[1]]), "unknown key (typo?)" + (hint if known else "")

    if mm := _MISSING_FIELD.fullmatch(body):
        return _render_key([*segments, mm[1]]), "required key is missing"

    value = _lookup(data, segments)
    key = _render_key(segments)
    if body.startswith("Invalid enum value"):
        schema = _schema_at(segments)
        if isinstance(schema, mi.LiteralType):
            choices = ", ".join(_show(v) for v in schema.values)
            return key, f"expected one of {choices}, got {_show(value)}"

    problem = re.sub(r"`([^`]*)`", _friendly_types, body)
    problem = re.sub(r"([<>]=? -?\d+)\.0\b", r"\1", problem)  # "> 0.0" reads oddly
    problem = problem[:1].lower() + problem[1:]
    if ", got " in problem:
        if isinstance(value, _SCALARS):
            problem += f" {_show(value)}"
    elif value is not _MISSING:
        problem += f", got {_show(value)}"
    if segments == ["targets"] and isinstance(value, dict):
        problem += "; write each target as a [[targets]] section (double brackets)"
    return key, problem
