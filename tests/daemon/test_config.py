"""Tests for probe.config: schema, defaults, one-line error messages, robustness."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import subprocess
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import probe_cmd
from hypothesis import given, settings
from hypothesis import strategies as st

from probe.daemon.config import (
    ClusterConfig,
    Config,
    ConfigError,
    EngineConfig,
    HostPort,
    LogConfig,
    MetricsConfig,
    ResolvedTarget,
    TargetDefaults,
    engine_source,
    load_config,
    metrics_listen,
    parse_config,
    probe_allow_networks,
    resolved_targets,
)
from probe.limits import MAX_CONFIG_BYTES
from probe.syntax import Source

FULL = """
[defaults]
interval = 5
timeout = 0.25

[engine]
concurrency = 64
source = "127.0.0.9"

[log]
format = "console"
file = "/var/log/probe.log"

[metrics]
listen = "[::1]:9000"
probe_allow = ["127.0.0.0/8", "2001:db8::/32"]

[[targets]]
address = "127.0.0.1:8080"
name = "seed"
interval = 2.5
timeout = 30.0
labels = { team = "net", _zone = "a1" }

[[targets]]
address = "[2001:db8::1]:443"

[[targets]]
address = "example.com:22"
timeout = 3
"""


def error_of(text: str, path: str = "config.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- valid input -------------------------------------------------------------


def test_full_config_is_resolved_once() -> None:
    cfg = parse_config(FULL)
    assert cfg.defaults == TargetDefaults(interval=5.0, timeout=0.25)
    assert isinstance(cfg.defaults.interval, float)
    assert cfg.engine == EngineConfig(concurrency=64, source=Source("127.0.0.9"))
    assert cfg.log == LogConfig(format="console", file="/var/log/probe.log")
    assert cfg.metrics == MetricsConfig(
        listen=HostPort("::1", 9000),
        probe_allow=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
    )
    assert str(cfg.metrics.listen) == "[::1]:9000"
    assert cfg.cluster == ClusterConfig(shard=None)
    seed = cfg.targets[0]
    assert (seed.name, seed.interval, seed.timeout) == ("seed", 2.5, 30.0)
    assert seed.labels == {"team": "net", "_zone": "a1"}
    assert cfg.targets[1].name == "[2001:db8::1]:443"
    assert cfg.targets[1].interval == 5.0
    assert cfg.targets[1].labels == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.engine = EngineConfig()  # type: ignore[misc]


def test_resolved_targets_apply_defaults_and_strip_brackets() -> None:
    cfg = parse_config(FULL)
    seed, v6, host = resolved_targets(cfg)
    assert seed == ResolvedTarget(
        name="seed",
        address="127.0.0.1:8080",
        host="127.0.0.1",
        port=8080,
        interval=2.5,
        timeout=30.0,  # timeout above interval is allowed
        labels={"team": "net", "_zone": "a1"},
    )
    assert (v6.name, v6.host, v6.port, v6.interval, v6.timeout) == (
        "[2001:db8::1]:443",
        "2001:db8::1",
        443,
        5.0,
        0.25,
    )
    assert (host.host, host.port, host.interval, host.timeout) == ("example.com", 22, 5.0, 3.0)
    assert cfg.resolved_targets() == [seed, v6, host]
    with pytest.raises(TypeError):
        seed.labels["team"] = "other"  # type: ignore[index]
    assert len({seed, v6, host}) == 3  # hashable despite the labels mapping


def test_helper_views() -> None:
    cfg = parse_config(FULL)
    assert metrics_listen(cfg) == ("::1", 9000)
    assert engine_source(cfg) == ("127.0.0.9", 0)
    assert probe_allow_networks(cfg) == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_empty_file_gives_documented_defaults() -> None:
    cfg = parse_config("")
    assert cfg == Config()
    assert (cfg.defaults.interval, cfg.defaults.timeout) == (10.0, 1.0)
    assert (cfg.engine.concurrency, cfg.engine.source, cfg.engine.lag_limit_ms) == (1000, None, 2.0)
    assert (cfg.log.format, cfg.log.file) == (None, None)  # None: the daemon decides
    assert cfg.metrics.listen == HostPort("127.0.0.1", 9464)
    assert [str(n) for n in cfg.metrics.probe_allow] == ["127.0.0.0/8", "::1/128"]
    assert cfg.metrics.probe_concurrency == 10
    assert cfg.cluster.shard is None
    assert cfg.targets == ()
    assert resolved_targets(cfg) == []
    assert metrics_listen(cfg) == ("127.0.0.1", 9464)
    assert engine_source(cfg) is None


def test_partial_sections_keep_other_defaults() -> None:
    cfg = parse_config('[engine]\nsource = "[::1]:4000"\n[metrics]\nlisten = ""\n')
    assert cfg.engine.concurrency == 1000
    assert engine_source(cfg) == ("::1", 4000)
    assert metrics_listen(cfg) is None
    assert cfg.metrics.probe_allow == probe_allow_networks(Config())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("127.1.2.3", ("127.1.2.3", 0)),
        ("127.1.2.3:5000", ("127.1.2.3", 5000)),
        ("::1", ("::1", 0)),
        ("[::1]", ("::1", 0)),
        ("[fe80::1%eth0]:7", ("fe80::1%eth0", 7)),
    ],
)
def test_engine_source_forms(source: str, expected: tuple[str, int]) -> None:
    assert engine_source(parse_config(f'[engine]\nsource = "{source}"\n')) == expected


def test_limits_are_inclusive_at_the_top() -> None:
    cfg = parse_config(
        "[defaults]\ninterval = 86400\ntimeout = 3600\n[engine]\nconcurrency = 1000000\n"
        '[[targets]]\naddress = "h:65535"\n[[targets]]\naddress = "h:1"\n'
    )
    assert cfg.defaults.interval == 86400.0
    assert [t.port for t in resolved_targets(cfg)] == [65535, 1]


def test_load_config_reads_file_and_strips_bom(tmp_path: Path) -> None:
    path = tmp_path / "probe.toml"
    path.write_bytes(b"\xef\xbb\xbf" + FULL.encode())
    assert load_config(path) == parse_config(FULL)
    assert load_config(str(path)).engine.concurrency == 64


# --- errors: one line, "{path}: {key}: {problem}" ------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[defaults]\ninterval = -1\n",
            "config.toml: defaults.interval: expected float >= 0.001, got -1",
        ),
        (
            "[defaults]\ninterval = 86401\n",
            "config.toml: defaults.interval: expected float <= 86400, got 86401",
        ),
        (
            "[defaults]\ninterval = nan\n",
            "config.toml: defaults.interval: expected float >= 0.001, got nan",
        ),
        (
            "[defaults]\ninterval = 1e-300\n",
            "config.toml: defaults.interval: expected float >= 0.001, got 1e-300",
        ),
        (
            "[defaults]\ntimeout = nan\n",
            "config.toml: defaults.timeout: expected float > 0, got nan",
        ),
        (
            "[defaults]\ntimeout = inf\n",
            "config.toml: defaults.timeout: expected float <= 3600, got inf",
        ),
        (
            "[defaults]\ntimeout = 0\n",
            "config.toml: defaults.timeout: expected float > 0, got 0",
        ),
        (
            "[defaults]\ntimeout = 3600.5\n",
            "config.toml: defaults.timeout: expected float <= 3600, got 3600.5",
        ),
        (
            "[engine]\nconcurrency = 0\n",
            "config.toml: engine.concurrency: expected integer >= 1, got 0",
        ),
        (
            "[engine]\nconcurrency = 1000001\n",
            "config.toml: engine.concurrency: expected integer <= 1000000, got 1000001",
        ),
        (
            '[[targets]]\naddress = "h:1"\ninterval = 0.0\n',
            "config.toml: targets[0].interval: expected float >= 0.001, got 0.0",
        ),
        (
            '[[targets]]\naddress = "h:1"\ntimeout = 4000\n',
            "config.toml: targets[0].timeout: expected float <= 3600, got 4000",
        ),
    ],
)
def test_out_of_range_numbers(text: str, expected: str) -> None:
    assert error_of(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[defaults]\ninterval = "fast"\n',
            'config.toml: defaults.interval: expected float, got string "fast"',
        ),
        (
            "[engine]\nconcurrency = 1.5\n",
            "config.toml: engine.concurrency: expected integer, got float 1.5",
        ),
        (
            "[engine]\nconcurrency = true\n",
            "config.toml: engine.concurrency: expected integer, got boolean true",
        ),
        (
            "[engine]\nsource = 5\n",
            "config.toml: engine.source: expected string, got integer 5",
        ),
        ("defaults = 3\n", "config.toml: defaults: expected table, got integer 3"),
        (
            '[metrics]\nprobe_allow = "127.0.0.0/8"\n',
            'config.toml: metrics.probe_allow: expected array, got string "127.0.0.0/8"',
        ),
        (
            '[metrics]\nprobe_allow = ["127.0.0.0/8", 3]\n',
            "config.toml: metrics.probe_allow[1]: expected string, got integer 3",
        ),
        (
            "[log]\nformat = 1\n",
            "config.toml: log.format: expected string, got integer 1",
        ),
        (
            '[[targets]]\naddress = "h:1"\nname = 7\n',
            "config.toml: targets[0].name: expected string, got integer 7",
        ),
        (
            '[[targets]]\naddress = "h:1"\ninterval = 2021-01-01\n',
            "config.toml: targets[0].interval: expected float, got date 2021-01-01",
        ),
        (
            '[[targets]]\naddress = "h:1"\nlabels = { team = 1 }\n',
            "config.toml: targets[0].labels.team: expected string, got integer 1",
        ),
        (
            '[[targets]]\naddress = "h:1"\nlabels = ["a"]\n',
            "config.toml: targets[0].labels: expected table, got array",
        ),
        ("[[targets]]\naddress = 8080\n", "config.toml: targets[0].address: expected string"),
    ],
)
def test_wrong_types(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_single_bracket_targets_gets_a_hint() -> None:
    message = error_of('[targets]\naddress = "h:1"\n')
    assert message.startswith("config.toml: targets: expected array, got table")
    assert "[[targets]]" in message


def test_log_format_must_be_a_known_choice() -> None:
    assert error_of('[log]\nformat = "xml"\n') == (
        'config.toml: log.format: expected one of "console", "json", got "xml"'
    )


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (
            'zzz = "red"\n',
            "zzz",
            "valid keys: defaults, engine, log, metrics, cluster, store, serve, mesh, modules, "
            "targets",
        ),
        ('[metrics]\nlsiten = "x"\n', "metrics.lsiten", 'did you mean "listen"?'),
        ("[defaults]\nintervall = 3\n", "defaults.intervall", 'did you mean "interval"?'),
        ("[engine]\nzzz = 3\n", "engine.zzz", "valid keys: concurrency, source, lag_limit"),
        ('[[targets]]\naddress = "h:1"\nlables = {}\n', "targets[0].lables", '"labels"'),
        (
            '[[targets]]\naddress = "h:1"\n[[targets]]\naddress = "g:1"\nport = 1\n',
            "targets[1].port",
            "",
        ),
    ],
)
def test_unknown_keys(text: str, key: str, hint: str) -> None:
    message = error_of(text)
    assert message.startswith(f"config.toml: {key}: unknown key (typo?)")
    assert hint in message


def test_unknown_key_with_odd_characters_is_quoted_and_kept_on_one_line() -> None:
    message = error_of('"a.b\\nc" = 1\n')
    assert message.startswith('config.toml: "a.b\\nc": unknown key (typo?)')


def test_missing_address() -> None:
    assert error_of('[[targets]]\nname = "x"\n') == (
        "config.toml: targets[0].address: required key is missing"
    )


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("127.0.0.1:70000", "port 70000 out of range 1-65535"),
        ("127.0.0.1:0", "port 0 out of range 1-65535"),
        ("h:99999999999999999999", "bad port '99999999999999999999'"),
        ("h:nosuchservice", "has no TCP service 'nosuchservice'"),
        ("h:+80", "bad port '+80'"),
        ("h:\u0668\u0660", "ports are numbers 1-65535"),  # Arabic-Indic digits are not a port
        ("127.0.0.1", "missing port in '127.0.0.1': write HOST:PORT"),
        ("h:", "no port after ':' in 'h:'"),
        (":80", "missing host in ':80'"),
        (" h:80", "leading or trailing space"),
        ("h\\t:80", "bad character in host"),
        ("::1:80", 'IPv6 addresses need brackets: write "[::1]:80"'),
        ("fe80::zz:80", "write IPv6 addresses as [ADDR]:PORT"),
        ("[::1]", "missing port in '[::1]'"),
        ("[::1]:", "no port after ':'"),
        ("127.1:80", "four decimal octets"),
        ("2130706433:80", "four decimal octets"),
        ("127.0.0.0/8:80", "not a network"),
        ("127.0.0.1-3:80", "not a range"),
        ("127.0.0.1:80,81", "bad port '80,81'"),
        ("[::1]x", "after ']'"),
        ("[::1:80", "missing ']'"),
        ("[127.1.2.3]:80", "bad IPv6 address '127.1.2.3'"),
        ("[]:80", "bad IPv6 address ''"),
        ("a]:80", "bad character in host"),
    ],
)
def test_bad_target_addresses(address: str, problem: str) -> None:
    message = error_of(f'[[targets]]\naddress = "{address}"\n', "/etc/probe.toml")
    assert message.startswith("/etc/probe.toml: targets[0].address: ")
    assert problem in message


def test_bad_address_in_later_target_names_its_index() -> None:
    text = "".join(f'[[targets]]\naddress = "{a}"\n' for a in ("a:1", "b:1", "c:70000"))
    assert error_of(text) == "config.toml: targets[2].address: port 70000 out of range 1-65535"


def test_duplicate_names() -> None:
    text = "".join(f'[[targets]]\naddress = "h{i}:1"\nname = "{n}"\n' for i, n in enumerate("abca"))
    assert error_of(text) == (
        'config.toml: targets[3].name: duplicate target name "a", already used by targets[0]'
    )


def test_duplicate_names_via_address_default() -> None:
    message = error_of('[[targets]]\naddress = "h:1"\n[[targets]]\naddress = "h:1"\n')
    assert message.startswith('config.toml: targets[1].name: duplicate target name "h:1"')
    assert "targets[0]" in message


def test_same_address_with_distinct_names_is_fine() -> None:
    cfg = parse_config('[[targets]]\naddress = "h:1"\n[[targets]]\naddress = "h:1"\nname = "b"\n')
    assert [t.name for t in resolved_targets(cfg)] == ["h:1", "b"]


def test_empty_name_is_rejected() -> None:
    assert error_of('[[targets]]\naddress = "h:1"\nname = ""\n').startswith(
        "config.toml: targets[0].name: expected string of length >= 1"
    )


@pytest.mark.parametrize("label", ["a-b", "1abc", "", "a\\n", "é"])
def test_bad_label_names(label: str) -> None:
    message = error_of(f'[[targets]]\naddress = "h:1"\nlabels = {{ ok = "x", "{label}" = "y" }}\n')
    assert message.startswith("config.toml: targets[0].labels: invalid label name ")
    assert json.dumps(json.loads(f'"{label}"'), ensure_ascii=False) in message
    assert "[a-zA-Z_][a-zA-Z0-9_]*" in message


@pytest.mark.parametrize(
    ("cidr", "problem"),
    [
        ("banana", '"banana" is not a valid CIDR'),
        ("127.0.0.0/33", "is not a valid CIDR"),
        ("127.0.0.1/8", 'has host bits set; did you mean "127.0.0.0/8"?'),
        ("", '"" is not a valid CIDR'),
    ],
)
def test_bad_cidr(cidr: str, problem: str) -> None:
    message = error_of(f'[metrics]\nprobe_allow = ["127.0.0.0/8", "{cidr}"]\n')
    assert message.startswith("config.toml: metrics.probe_allow[1]: ")
    assert problem in message


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("0.0.0.0:65536", "out of range 0-65535"),
        (":65536", "out of range 0-65535"),
        ("::1:9464", 'IPv6 addresses need brackets: write "[::1]:9464"'),
        ("::1", 'IPv6 addresses need brackets and a port: write "[::1]:PORT"'),
        ("[::1]", "missing port"),
    ],
)
def test_bad_metrics_listen(listen: str, problem: str) -> None:
    message = error_of(f'[metrics]\nlisten = "{listen}"\n')
    assert message.startswith("config.toml: metrics.listen: ")
    assert problem in message


def test_metrics_listen_accepts_hostname_and_port_zero() -> None:
    assert metrics_listen(parse_config('[metrics]\nlisten = "localhost:0"\n')) == ("localhost", 0)


@pytest.mark.parametrize("listen", ["9464", ":9464"])
def test_metrics_listen_takes_an_exporters_port_alone(listen: str) -> None:
    """`:PORT`, as exporters write it (and a bare PORT): every IPv4 address."""
    config = parse_config(f'[metrics]\nlisten = "{listen}"\n')
    assert metrics_listen(config) == ("0.0.0.0", 9464)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("eth0", "bad source address 'eth0': give an IP address"),
        ("127.0.0.1:70000", "out of range"),
        ("[127.0.0.1]:5", "brackets are for IPv6 addresses"),
        ("127.0.0.1:x", "bad port 'x'"),
    ],
)
def test_bad_engine_source(source: str, problem: str) -> None:
    message = error_of(f'[engine]\nsource = "{source}"\n')
    assert message.startswith("config.toml: engine.source: ")
    assert problem in message


def test_nul_in_log_file() -> None:
    assert error_of('[log]\nfile = "a\\u0000b"\n') == (
        "config.toml: log.file: path contains a NUL character"
    )


def test_toml_syntax_error_reports_line_and_column() -> None:
    message = error_of('[engine]\nconcurrency = 5\nsource = = "x"\n', "my.toml")
    assert message == "my.toml: line 3, column 10: Invalid value"


def test_toml_syntax_error_at_end_of_document() -> None:
    assert error_of("targets = [1,") == "config.toml: at end of document: Invalid value"


def test_toml_duplicate_section() -> None:
    message = error_of("[log]\n[log]\n")
    assert message.startswith("config.toml: line 2, column ")
    assert "twice" in message


def test_deep_nesting_is_a_config_error() -> None:
    message = error_of("x = " + "[" * 5000)
    assert message.startswith("config.toml: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"
    assert info.value.path == str(path)


def test_directory_is_not_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r": cannot read: Is a directory$"):
        load_config(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[log]\nfile = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: line 2, column 12: not valid UTF-8 (byte 0xe9); TOML files must be UTF-8"
    )


def test_error_from_file_uses_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[defaults]\ntimeout = -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: defaults.timeout: expected float > 0, got -1"
    assert (info.value.key, info.value.problem) == (
        "defaults.timeout",
        "expected float > 0, got -1",
    )


def test_resolved_objects_are_frozen() -> None:
    cfg = parse_config(FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.targets[0].port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.targets[0].labels["x"] = "y"  # type: ignore[index]


# --- robustness properties -----------------------------------------------------


def assert_config_or_config_error(text: str) -> None:
    try:
        result = parse_config(text, "prop.toml")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith("prop.toml: ")
        assert message.isprintable(), message
    else:
        assert isinstance(result, Config)
        resolved_targets(result)
        metrics_listen(result)
        engine_source(result)
        probe_allow_networks(result)


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_never_escapes_as_another_exception(text: str) -> None:
    assert_config_or_config_error(text)


def toml_value(value: Any) -> str:
    """Serialise to inline TOML; good enough for junk, not a general encoder."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, str):
        # JSON escapes are valid TOML escapes; DEL must be escaped in TOML too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


SHARED_KEYS = ["interval", "timeout", "family", "addresses", "down_after", "up_after"]
SECTIONS = {
    "defaults": SHARED_KEYS,
    "engine": ["concurrency", "source", "lag_limit"],
    "log": ["format", "file"],
    "metrics": ["listen", "probe_allow", "probe_concurrency"],
    "cluster": ["shard"],
}
TARGET_KEYS = ["address", "name", *SHARED_KEYS, "labels"]
PLAUSIBLE_STRINGS = [
    "",
    "json",
    "console",
    "127.0.0.1:80",
    "[::1]:80",
    "::1",
    "127.0.0.1",
    "127.0.0.0/8",
    "127.0.0.1/8",
    "h:0",
    "h:65536",
    "[::1",
    "team",
    "a-b",
    "ipv4",
    "ipv6",
    "any",
    "all",
    "first",
    "0/2",
    "2/2",
    "127.0.0.1:4000-4100",
    "127.1:80",
]
scalars = (
    st.sampled_from(PLAUSIBLE_STRINGS)
    | st.text(max_size=12)
    | st.integers()
    | st.integers(-2, 70000)
    | st.floats()
    | st.booleans()
    | st.datetimes()
    | st.dates()
)
junk_keys = st.sampled_from(PLAUSIBLE_STRINGS) | st.text(max_size=8)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk_keys, inner, max_size=4),
    max_leaves=12,
)


def section(names: list[str]) -> st.SearchStrategy[Any]:
    """Mostly the right keys with junk values, sometimes a stray key or a non-table."""
    return (
        st.dictionaries(st.sampled_from(names), junk, max_size=len(names))
        | st.dictionaries(st.sampled_from(names) | junk_keys, junk, max_size=3)
        | junk
    )


document = st.fixed_dictionaries(
    {},
    optional={
        **{name: section(keys) for name, keys in SECTIONS.items()},
        "targets": st.lists(section(TARGET_KEYS), max_size=4) | junk,
    },
) | st.dictionaries(junk_keys | st.sampled_from(list(SECTIONS)), junk, max_size=4)


@settings(max_examples=300)
@given(document)
def test_arbitrary_documents_never_escape_as_another_exception(doc: dict[str, Any]) -> None:
    text = "".join(f"{toml_value(k)} = {toml_value(v)}\n" for k, v in doc.items())
    assert_config_or_config_error(text)


hosts = (
    st.ip_addresses(v=4).map(str)
    | st.ip_addresses(v=6).map(lambda a: f"[{a}]")
    | st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True)
)


@given(hosts, st.integers(1, 65535), st.floats(0.001, 86400), st.booleans())
def test_valid_targets_round_trip(host: str, port: int, interval: float, named: bool) -> None:
    address = f"{host}:{port}"
    name = 'name = "t"\n' if named else ""
    cfg = parse_config(f'[[targets]]\naddress = "{address}"\n{name}interval = {interval!r}\n')
    (target,) = resolved_targets(cfg)
    assert target.host == host.strip("[]")
    assert target.port == port
    assert target.interval == interval
    assert target.timeout == 1.0
    assert target.name == ("t" if named else address)


# --- per-target keys, inheritance, caps -----------------------------------------------------


def test_target_keys_inherit_from_defaults() -> None:
    cfg = parse_config(
        '[defaults]\nfamily = "ipv6"\naddresses = "all"\ndown_after = 3\nup_after = 2\n'
        '[[targets]]\naddress = "localhost:1"\n'
        '[[targets]]\naddress = "127.0.0.1:2"\nfamily = "ipv4"\naddresses = "first"\n'
        "down_after = 1\nup_after = 5\n"
    )
    a, b = cfg.targets
    assert (a.family, a.addresses, a.down_after, a.up_after) == ("ipv6", "all", 3, 2)
    assert (b.family, b.addresses, b.down_after, b.up_after) == ("ipv4", "first", 1, 5)
    plain = parse_config('[[targets]]\naddress = "h:1"\n').targets[0]
    assert (plain.family, plain.addresses, plain.down_after, plain.up_after) == (
        "any",
        "first",
        1,
        1,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[targets]]\naddress = "h:1"\nfamily = "inet"\n',
            'config.toml: targets[0].family: expected one of "any", "ipv4", "ipv6", got "inet"',
        ),
        (
            '[defaults]\naddresses = "some"\n',
            'config.toml: defaults.addresses: expected one of "all", "first", got "some"',
        ),
        (
            '[[targets]]\naddress = "h:1"\ndown_after = 0\n',
            "config.toml: targets[0].down_after: expected integer >= 1, got 0",
        ),
        (
            "[defaults]\nup_after = 1001\n",
            "config.toml: defaults.up_after: expected integer <= 1000, got 1001",
        ),
        (
            '[[targets]]\naddress = "[::1]:1"\nfamily = "ipv4"\n',
            'config.toml: targets[0].family: "[::1]:1" is an ipv6 address, family is ipv4',
        ),
        (
            '[defaults]\nfamily = "ipv6"\n[[targets]]\naddress = "127.0.0.1:1"\n',
            'config.toml: defaults.family: "127.0.0.1:1" is an ipv4 address, family is ipv6',
        ),
    ],
)
def test_bad_target_keys(text: str, expected: str) -> None:
    assert error_of(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("5", 5.0), ("0.5", 0.5), ("0", None), ("false", None), ("60000", 60000.0)],
)
def test_lag_limit(value: str, expected: float | None) -> None:
    assert parse_config(f"[engine]\nlag_limit = {value}\n").engine.lag_limit_ms == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", "expected float > 0, got -1"),
        ("true", "expected milliseconds > 0, or 0 or false to disable"),
        ("60001", "expected float <= 60000"),
        ('"5"', "expected float, got string"),
    ],
)
def test_bad_lag_limit(value: str, problem: str) -> None:
    assert error_of(f"[engine]\nlag_limit = {value}\n").startswith(
        f"config.toml: engine.lag_limit: {problem}"
    )


def test_source_port_range() -> None:
    cfg = parse_config('[engine]\nsource = "127.0.0.1:4000-4100"\n')
    assert cfg.engine.source == Source("127.0.0.1", 4000, 4100)
    assert engine_source(cfg) == ("127.0.0.1", 0)  # a range is read from engine.source
    assert error_of('[engine]\nsource = "127.0.0.1:4100-4000"\n') == (
        "config.toml: engine.source: source port range '4100-4000' runs backwards"
    )


@pytest.mark.parametrize(
    ("text", "probe"),
    [
        ("", 10),
        ("[engine]\nconcurrency = 5\n", 4),
        ("[engine]\nconcurrency = 1\n", 1),
        ("[metrics]\nprobe_concurrency = 3\n", 3),
        ("[engine]\nconcurrency = 50\n[metrics]\nprobe_concurrency = 49\n", 49),
    ],
)
def test_probe_concurrency(text: str, probe: int) -> None:
    cfg = parse_config(text)
    assert cfg.metrics.probe_concurrency == probe


def test_probe_concurrency_stays_below_the_schedule() -> None:
    assert error_of("[engine]\nconcurrency = 20\n[metrics]\nprobe_concurrency = 20\n") == (
        "config.toml: metrics.probe_concurrency: must be below engine.concurrency (20), got 20"
    )
    assert error_of("[metrics]\nprobe_concurrency = 0\n") == (
        "config.toml: metrics.probe_concurrency: expected integer >= 1, got 0"
    )


@pytest.mark.parametrize(("value", "shard"), [('""', None), ('"0/1"', (0, 1)), ('"2/3"', (2, 3))])
def test_cluster_shard(value: str, shard: tuple[int, int] | None) -> None:
    assert parse_config(f"[cluster]\nshard = {value}\n").cluster.shard == shard


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"3/3"', "I must be below N"),
        ('"0/0"', "N must be"),
        ('"1"', "write I/N"),
        ('"-1/2"', "write I/N"),
        ('"a/b"', "write I/N"),
        ("1", "expected string, got integer 1"),
    ],
)
def test_bad_cluster_shard(value: str, problem: str) -> None:
    message = error_of(f"[cluster]\nshard = {value}\n")
    assert message.startswith("config.toml: cluster.shard: ")
    assert problem in message


def test_log_format_unset_means_the_daemon_decides() -> None:
    assert parse_config("[log]\n").log == LogConfig(format=None, file=None)
    assert parse_config('[log]\nformat = "json"\nfile = ""\n').log == LogConfig("json", None)


def test_sizes_are_bounded() -> None:
    long_name = "n" * 257
    assert error_of(f'[[targets]]\naddress = "h:1"\nname = "{long_name}"\n').startswith(
        "config.toml: targets[0].name: expected string of length <= 256"
    )
    labels = ", ".join(f"l{i} = 'x'" for i in range(33))
    assert error_of(f'[[targets]]\naddress = "h:1"\nlabels = {{ {labels} }}\n') == (
        "config.toml: targets[0].labels: expected at most 32 labels, got 33"
    )


# --- files and parser bombs -------------------------------------------------------------------


def load_error(path: Path | str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_is_refused() -> None:
    assert load_error("/dev/zero") == "/dev/zero: not a regular file (a FIFO, device or socket)"


def test_fifo_is_refused_with_or_without_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    # no writer: opening must not block
    assert load_error(fifo).endswith("not a regular file (a FIFO, device or socket)")
    writer = os.open(fifo, os.O_RDWR)  # a writer that never stops
    try:
        os.write(writer, b"[engine]\n" * 100)
        assert load_error(fifo).endswith("not a regular file (a FIFO, device or socket)")
    finally:
        os.close(writer)


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    comment = b"# " + b"x" * 98 + b"\n"
    path.write_bytes(comment * (MAX_CONFIG_BYTES // len(comment) + 1))
    assert load_error(path) == f"{path}: file too large (over 1048576 bytes)"
    path.write_bytes((comment * (MAX_CONFIG_BYTES // len(comment)))[:MAX_CONFIG_BYTES])
    assert load_config(path) == Config()  # exactly the cap is fine


def test_dotted_key_bomb_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.toml"
    path.write_text("[engine]\nconcurrency = 5\n" + "a." * 200_000 + "a = 1\n")
    assert load_error(path) == f"{path}: line 3: a dotted key of more than 16 parts"
    path.write_text('"a".' * 100_000 + '"b" = 1\n')
    assert load_error(path) == f"{path}: line 1: a dotted key of more than 16 parts"
    path.write_text("[" + "a." * 100_000 + "a]\n")
    assert load_error(path) == f"{path}: line 1: a dotted key of more than 16 parts"


def test_dots_in_strings_and_comments_are_not_keys() -> None:
    dots = "." * 40
    cfg = parse_config(
        f'# {dots}\n[log]\nfile = "/tmp/{dots}"\n[[targets]]\naddress = "h:1"\n'
        f'labels = {{ a = \'{dots}\', b = """\n{dots}\n""" }}\n'
    )
    assert cfg.log.file == f"/tmp/{dots}"
    assert cfg.targets[0].labels["a"] == dots
    # 15 parts is a key like any other (unknown here)
    assert error_of("[defaults]\n" + ".".join("abcdefghijklmno") + " = 1\n").startswith(
        "config.toml: defaults.a: unknown key"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[engine]\nconcurrency = " + "9" * 5000 + "\n",
            "config.toml: a number has too many digits",
        ),
        (
            "[engine]\nconcurrency = 0x" + "f" * 5000 + "\n",
            "config.toml: engine.concurrency: expected integer <= 1000000, got a huge integer",
        ),
        (
            "[defaults]\ntimeout = 1" + "0" * 4000 + ".0\n",
            "config.toml: defaults.timeout: expected float <= 3600, got inf",
        ),
    ],
)
def test_huge_numbers_are_one_line(text: str, expected: str) -> None:
    assert error_of(text) == expected


def validate(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*probe_cmd(), "validate", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "bomb", "digits", "tiny-interval"])
def test_validate_refuses_hostile_files_with_one_line(tmp_path: Path, kind: str) -> None:
    path: Path | str = tmp_path / "c.toml"
    if kind == "dev-zero":
        path = "/dev/zero"
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "bomb":  # a 400 KB dotted key: minutes of tomllib without the cap
        Path(path).write_text("a." * 200_000 + "a = 1\n")
    elif kind == "digits":
        Path(path).write_text("[engine]\nconcurrency = " + "1" * 5000 + "\n")
    else:
        Path(path).write_text('[defaults]\ninterval = 1e-300\n[[targets]]\naddress = "h:1"\n')
    result = validate(path)  # the timeout above turns a hang into a failure
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.startswith(f"probe: error: {path}: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_validate_accepts_the_shipped_config() -> None:
    shipped = Path(__file__).resolve().parents[2] / "config.toml"
    result = validate(shipped)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{shipped}: valid, ")


@pytest.mark.parametrize("kind", ["dev-zero", "bomb", "tiny-interval"])
def test_run_refuses_hostile_files_at_start(tmp_path: Path, kind: str) -> None:
    path: Path | str = tmp_path / "c.toml"
    if kind == "dev-zero":
        path = "/dev/zero"
    elif kind == "bomb":
        Path(path).write_text("a." * 200_000 + "a = 1\n")
    else:
        Path(path).write_text('[defaults]\ninterval = 1e-300\n[[targets]]\naddress = "h:1"\n')
    result = subprocess.run(
        [*probe_cmd(), "run", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"probe: error: {path}: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr


# --- [serve] and [mesh] ------------------------------------------------------------------


def test_serve_and_mesh_tables() -> None:
    config = parse_config(
        '[serve]\nlisten = ["127.0.0.1:7070", "[::1]:0"]\nname = "node-a"\nrate = 5\n'
        '[mesh]\npeers = "mesh.test:7070"\ninterval = 2.5\n'
    )
    assert [str(h) for h in config.serve.listen] == ["127.0.0.1:7070", "[::1]:0"]
    assert config.serve.name == "node-a" and config.serve.rate == 5.0
    assert config.mesh.peers is not None
    assert config.mesh.peers.endpoints == (("mesh.test", 7070),)
    assert config.mesh.interval == 2.5
    listed = parse_config('[mesh]\npeers = ["127.0.0.1:1", "[::1]:2"]\n')
    assert listed.mesh.peers is not None
    assert listed.mesh.peers.endpoints == (("127.0.0.1", 1), ("::1", 2))
    plain = parse_config("")
    assert plain.serve.listen == () and plain.mesh.peers is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[serve]\nlisten = ["localhost:7070"]\n',
            'config.toml: serve.listen[0]: an IP address is needed, not the name "localhost"',
        ),
        (
            '[serve]\nname = ""\n',
            'config.toml: serve.name: expected string of length >= 1, got ""',
        ),
        ("[serve]\nlisten = 7070\n", "config.toml: serve.listen: expected array, got integer 7070"),
        (
            '[mesh]\npeers = "mesh.test"\n',
            "config.toml: mesh.peers: missing port in 'mesh.test': write HOST:PORT or [IPV6]:PORT",
        ),
        (
            "[mesh]\npeers = []\n",
            "config.toml: mesh.peers: no peers: give NAME:PORT or a list of HOST:PORT",
        ),
        (
            "[mesh]\ninterval = 5\n",
            "config.toml: mesh.peers: required with [mesh] interval: NAME:PORT or a list of "
            "HOST:PORT",
        ),
        (
            '[mesh]\npers = "a:1"\n',
            'config.toml: mesh.pers: unknown key (typo?); did you mean "peers"?',
        ),
    ],
)
def test_serve_and_mesh_errors(text: str, expected: str) -> None:
    assert error_of(text) == expected
