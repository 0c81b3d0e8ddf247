"""The daemon's metrics, GET /probe's answer, and sharding (`probe run --shard`).

In-process tests feed `Metrics` real records of real loopback connects (refused, open) or
records built as the engine builds them; end-to-end tests run `probe run` as a subprocess
against real listeners, closed ports and full accept queues on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import importlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import (
    Daemon,
    FullQueueListener,
    RecordingListener,
    Samples,
    closed_port,
    config_toml,
    has_ipv6_loopback,
    http_fetch,
    make_record,
    parse_prometheus,
    record,
    run_probe,
    target_toml,
    unlabelled,
    value,
    wait_for,
    with_label,
)
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from probe import __version__
from probe.daemon import fleet
from probe.daemon.app import own_targets
from probe.daemon.config import parse_config
from probe.daemon.http import accepts_gzip
from probe.daemon.metrics import (
    LAG_BUCKETS,
    LATENCY_BUCKETS,
    Metrics,
    PlainHistogram,
    core_name,
    error_label,
    info_labels,
    render,
    sanitize_label_name,
)
from probe.daemon.ondemand import TIMEOUT_OFFSET
from probe.errors import ConfigError, UsageError
from probe.record import OUTCOMES
from probe.stages.reflect import translated
from probe.stages.result import StageResult

pytestmark = pytest.mark.module_unit  # its module-scoped fixtures start once a run

PROMTOOL = shutil.which("promtool")


class T:
    def __init__(self, name: str, histograms: bool = True, **labels: str) -> None:
        self.name = name
        self.labels = labels
        self.histograms = histograms


def scrape(m: Metrics) -> tuple[str, Samples]:
    text = m.exposition().decode()
    return text, parse_prometheus(text)


# -- the series ---------------------------------------------------------------------------------


def test_every_outcome_series_exists_at_zero_from_the_first_schedule() -> None:
    """The outcomes and the connect time exist at 0 (ratios and the mean see a first
    failure or answer); the counters most targets never move are born with their first
    event, as each error's, which saves Prometheus two series a target."""
    m = Metrics(lambda: 0.0)
    m.set_targets([T("never", team="net")])
    _, s = scrape(m)
    for outcome in OUTCOMES:
        assert value(s, "probe_attempts_total", target="never", outcome=outcome) == 0.0
    assert value(s, "probe_connect_seconds_total", target="never") == 0.0
    assert value(s, "probe_syn_retransmits_total", target="never") is None
    assert value(s, "probe_skipped_slots_total", target="never") is None
    assert value(s, "probe_target_info", target="never", team="net") == 1.0
    assert value(s, "probe_targets") == 1.0
    assert value(s, "probe_up", target="never") is None  # unknown until the first attempt


def test_the_rarer_counters_are_born_with_their_first_event() -> None:
    m = Metrics(lambda: 0.0, standard=False)  # no process collectors: their values move
    m.set_targets([T("a"), T("b")])
    m.add_skipped("a", 2)
    m.add_skipped("b", 0)  # nothing skipped: still no series
    m.observe("a", record("open", None, 1005.0, None, syn_retransmits=1))
    m.observe("b", record("open", None, 0.2, 0.1, syn_retransmits=0))
    m.resolve_failed("a")
    text, s = scrape(m)
    for name in ("probe_skipped_slots_total", "probe_syn_retransmits_total",
                 "probe_resolve_failures_total"):  # fmt: skip
        assert value(s, name, target="a") == (2.0 if "skipped" in name else 1.0), name
        assert value(s, name, target="b") is None, name
    assert text.encode() == generate_latest(m.registry)  # the same numbers in both views


def test_observe_counts_errors_latency_rtt_and_retransmits() -> None:
    m = Metrics(lambda: 0.0)
    m.set_targets([T("a")])
    m.observe("a", record("refused", "ECONNREFUSED", 0.2, None))
    m.observe("a", record("refused", "ECONNREFUSED", 0.3, None))
    m.observe("a", record("timeout", "ETIMEDOUT", 300.0, None))
    m.observe("a", record("open", None, 1005.0, None, syn_retransmits=1))
    m.observe("a", record("open", None, 0.5, 0.04))
    _, s = scrape(m)
    assert value(s, "probe_errors_total", target="a", error="ECONNREFUSED") == 2.0
    assert value(s, "probe_errors_total", target="a", error="ETIMEDOUT") == 1.0
    assert with_label(s, "probe_errors_total", "error", "None") == {}
    # latency: open and refused only (4 of 5); RTT: open attempts with a sample only
    assert value(s, "probe_connect_latency_seconds_count", target="a") == 4.0
    assert value(s, "probe_tcp_rtt_seconds_count", target="a") == 1.0
    assert value(s, "probe_tcp_rtt_seconds_sum", target="a") == pytest.approx(0.00004)
    assert value(s, "probe_tcp_rtt_seconds_bucket", target="a", le="0.0001") == 1.0
    assert value(s, "probe_syn_retransmits_total", target="a") == 1.0
    assert value(s, "probe_up", target="a") == 1.0


def per_target(s: Samples) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, labels in s:
        target = dict(labels).get("target")
        if target is not None:
            out[target] = out.get(target, 0) + 1
    return out


def test_reflected_attempts_count_translations_and_preserved_ports() -> None:
    """What a `probe serve` answered, counted per target: seen as itself (nothing
    translated), its port rewritten, its address rewritten with the port kept."""
    m = Metrics(lambda: 0.0)
    m.set_targets([T("far")])
    for seen in ("127.0.0.1:40000", "127.0.0.1:50000", "127.0.0.2:40000"):
        stages = StageResult()
        stages.reflected = True
        stages.seen_as = seen
        stages.translated = translated(seen, ("127.0.0.1", 40000))
        m.observe("far", make_record(local_port=40000, stages=stages))
    _, s = scrape(m)
    assert value(s, "probe_reflected_attempts_total", target="far") == 3.0
    assert value(s, "probe_translated_attempts_total", target="far") == 2.0
    assert value(s, "probe_port_preserved_attempts_total", target="far") == 2.0
    m.forget("far")
    assert value(scrape(m)[1], "probe_translated_attempts_total", target="far") is None


def test_a_target_without_histograms_keeps_to_the_series_budget() -> None:
    """The budget (docs/metrics.md): a refused target has 9 series (every outcome, its one
    error, its connect time, up, info), an open one 8; a retransmitted SYN adds one;
    histograms = true adds the buckets."""
    m = Metrics(lambda: 0.0)
    m.set_targets([T("refused", histograms=False), T("open", histograms=False), T("full")])
    m.observe("refused", record("refused", "ECONNREFUSED", 0.2, None))
    m.observe("open", record("open", None, 0.2, 0.1))
    for name in ("open", "full"):
        m.observe(name, record("refused", "ECONNREFUSED", 0.2, None))
        m.observe(name, record("open", None, 1005.0, 0.5, syn_retransmits=1))
        m.observe(name, record("refused", "ECONNREFUSED", 0.3, None))
    m.set_up("refused", False)
    m.set_up("open", True)
    _, s = scrape(m)
    counts = per_target(s)
    assert counts["refused"] == 9, sorted(k for k in s if dict(k[1]).get("target") == "refused")
    assert counts["open"] == 5 + 1 + 1 + 1 + 1 + 1  # outcomes, its error, connect, SYN, up, info
    assert counts["full"] > 9 + 2 * len(LATENCY_BUCKETS)
    assert value(s, "probe_connect_seconds_total", target="open") == pytest.approx(1.0057)
    answered = sum(value(s, "probe_attempts_total", target="open", outcome=o) or 0
                   for o in ("open", "refused"))  # fmt: skip
    assert answered == 4.0  # the mean's denominator
    assert value(s, "probe_connect_seconds_total", target="full") == pytest.approx(1.0055)
    assert value(s, "probe_connect_latency_seconds_count", target="open") is None
    assert value(s, "probe_tcp_rtt_seconds_count", target="open") is None
    assert value(s, "probe_connect_latency_seconds_bucket", target="full", le="1.05") == 3.0
    # a reload that turns them off drops the buckets; on again, they start empty
    m.set_targets([T("open", histograms=False), T("full", histograms=False)])
    _, s = scrape(m)
    assert value(s, "probe_connect_latency_seconds_count", target="full") is None
    assert value(s, "probe_connect_seconds_total", target="full") == pytest.approx(1.0055)
    m.set_targets([T("open", histograms=True), T("full", histograms=False)])
    m.observe("open", record("refused", "ECONNREFUSED", 0.2, None))
    _, s = scrape(m)
    assert value(s, "probe_connect_latency_seconds_count", target="open") == 1.0
    assert value(s, "probe_connect_seconds_total", target="open") == pytest.approx(1.0059)
    m.set_targets([T("open", histograms=False)])
    m.observe("open", record("open", None, 0.2, 0.1))
    assert per_target(scrape(m)[1])["open"] == 10  # more attempts add no series


def test_histograms_are_off_by_default_and_set_in_defaults_or_per_target() -> None:
    base = '[[targets]]\naddress = "127.0.0.1:1"\n\n[[targets]]\naddress = "127.0.0.1:2"\n'
    assert [t.histograms for t in parse_config(base).targets] == [False, False]
    text = "[defaults]\nhistograms = true\n\n" + base + "histograms = false\n"
    assert [t.histograms for t in parse_config(text).targets] == [True, False]
    with pytest.raises(ConfigError, match="histograms"):
        parse_config('[defaults]\nhistograms = "yes"\n')


def test_render_is_prometheus_clients_text_byte_for_byte() -> None:
    m = Metrics(lambda: 0.0)
    for name in ("ProcessCollector", "GCCollector", "PlatformCollector"):  # values move
        for c in [c for c in m.registry._collector_to_names if type(c).__name__ == name]:
            m.registry.unregister(c)
    m.set_targets([T("a", team='q"uote\\back\nline', zone="é"), T("b")])
    m.observe("a", record("refused", "ECONNREFUSED", 0.2, None))
    m.observe("b", record("open", None, 0.25, 0.01))
    m.add_skipped("b", 3)
    m.config_loaded(False)
    m.lag.observe(0.003)
    text = render(m.registry)
    assert text == generate_latest(m.registry)
    assert b'team="q\\"uote\\\\back\\nline"' in text


def test_plain_histogram_is_prometheus_clients_histogram_byte_for_byte() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    doc = "Actual start minus planned start of scheduled attempts."
    h = Histogram("probe_schedule_lag_seconds", doc, buckets=LAG_BUCKETS, registry=theirs)
    plain = PlainHistogram("probe_schedule_lag_seconds", doc, LAG_BUCKETS)
    ours.register(plain)
    assert generate_latest(ours) == generate_latest(theirs)  # empty: every bucket at 0
    for amount in (0.0, 0.0005, 0.00051, 0.001, 0.0123, 1.0, 2.5, 1e-9, 0.3):  # edges: `<=`
        h.observe(amount)
        plain.observe(amount)
    assert generate_latest(ours) == generate_latest(theirs)
    assert render(ours) == generate_latest(theirs)


def test_the_daemons_page_is_prometheus_clients_text_byte_for_byte() -> None:
    """The per-target families are made from plain structures, not prometheus-client's
    children: the page served must still be exactly what generate_latest makes of them."""
    m = Metrics(lambda: 0.0, standard=False)  # no process collectors: their values move
    m.set_targets([T("a", team='q"uote\\back\nline', zone="é"), T("b"), T("c", aaa="1")])
    m.observe("a", record("refused", "ECONNREFUSED", 0.2, None))
    m.observe("b", record("open", None, 0.25, 0.01, syn_retransmits=2))
    m.observe("b", record("timeout", "ETIMEDOUT", 1000.0, None))
    m.observe("c", record("open", None, 7000.0, 6000.0))  # past the last bucket: +Inf
    m.set_up("b", True)
    m.add_skipped("b", 3)
    m.resolve_failed("c")
    m.lag.observe(0.003)
    before = m.exposition()
    assert before == generate_latest(m.registry)
    m.observe("a", record("refused", "ECONNREFUSED", 0.3, None))  # a target's text is remade
    m.set_targets([T("a", team="new"), T("b")])  # relabelled, and c removed
    after = m.exposition()
    assert after == generate_latest(m.registry) and after != before
    assert 'target="c"' not in after.decode()
    big = m.series.targets["a"]  # counts past a million: Go's exponent form (1.234567e+06)
    assert big.latency is not None
    big.attempts[0] = big.latency.counts[3] = 1_234_567
    m.series.redraw(big)
    assert m.exposition() == generate_latest(m.registry)
    assert b"1.234567e+06" in m.exposition()
    m.observe("a", record("refused", "ECONNREFUSED", 0.3, None))  # an attempt's lines too
    m.observe("a", record("timeout", "ETIMEDOUT", 1000.0, None))  # a second error
    assert m.exposition() == generate_latest(m.registry)
    assert b'probe_attempts_total{outcome="open",target="a"} 1.234567e+06' in m.exposition()
    assert value(parse_prometheus(after.decode()), "probe_attempts_total", target="a",
                 outcome="refused") == 2.0  # fmt: skip


def test_error_label_is_bounded_to_code_names() -> None:
    assert error_label(None) is None
    for name in ("ECONNREFUSED", "EAI_NONAME", "SELF_CONNECT", "E123"):
        assert error_label(name) == name
    for odd in ("connection refused", "x" * 5, "E" * 40, 'E"}', ""):
        assert error_label(odd) == "OTHER"


def test_removed_targets_drop_every_series() -> None:
    m = Metrics(lambda: 0.0)
    m.set_targets([T("gone", team="x"), T("kept", team="y")])
    for name in ("gone", "kept"):
        m.observe(name, record("refused", "ECONNREFUSED", 0.2, None))
        m.observe(name, record("open", None, 0.2, 0.01))
        m.add_skipped(name, 2)
    m.set_targets([T("kept", team="z")])
    text, s = scrape(m)
    assert 'target="gone"' not in text
    assert value(s, "probe_errors_total", target="kept", error="ECONNREFUSED") == 1.0
    assert value(s, "probe_target_info", target="kept", team="z") == 1.0  # relabelled
    assert value(s, "probe_target_info", target="kept", team="y") is None
    assert value(s, "probe_targets") == 1.0


def test_info_label_names_are_sanitized_and_target_is_refused() -> None:
    assert sanitize_label_name("team") == "team"
    assert sanitize_label_name("a-b.c") == "a_b_c"
    assert sanitize_label_name("9lives") == "_9lives"
    assert sanitize_label_name("__meta") == "_meta"
    assert info_labels({"team": "net", "__x": "1"}) == {"team": "net", "_x": "1"}
    with pytest.raises(ValueError, match="reserved"):
        info_labels({"target": "x"})
    with pytest.raises(ValueError, match="both become"):
        info_labels({"__x": "1", "_x": "2"})


def test_a_target_label_in_the_config_is_exit_2_naming_the_key(tmp_path: Path) -> None:
    text = config_toml(
        tmp_path / "probe.log",
        target_toml("a", "127.0.0.1:1") + target_toml("b", "127.0.0.1:2", {"target": "x"}),
    )
    (tmp_path / "config.toml").write_text(text)
    done = run_probe("run", "--config", "config.toml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "config.toml: targets[1].labels.target: label 'target' is reserved" in done.stderr
    checked = run_probe("validate", "config.toml", cwd=tmp_path)
    assert checked.returncode == 2 and "targets[1].labels.target" in checked.stderr


def test_build_info_names_version_and_core() -> None:
    try:
        native = importlib.import_module("probe.engine.native")
    except ImportError:
        expected = "python"
    else:
        expected = getattr(native, "CORE", "python")
    assert core_name() == expected
    _, s = scrape(Metrics(lambda: 0.0))
    assert value(s, "probe_build_info", version=__version__, core=expected) == 1.0


def test_process_and_platform_collectors_are_in_our_registry() -> None:
    _, s = scrape(Metrics(lambda: 0.0))
    names = {name for name, _ in s}
    assert {"process_cpu_seconds_total", "process_open_fds", "python_info"} <= names


# -- a real daemon ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, dict[str, str]]]:
    """One daemon on an open, a refused and a timing-out target, plus a labelled one."""
    tmp = tmp_path_factory.mktemp("live")
    web = RecordingListener()
    full = FullQueueListener()
    shut = closed_port()
    targets = {"web": web.target, "shut": f"127.0.0.1:{shut}", "slow": full.target}
    text = config_toml(
        tmp / "probe.log",
        target_toml("web", web.target, {"team": "core", "tier": "1"}, histograms=True)
        + target_toml("shut", targets["shut"], {"team": "edge"})
        + target_toml("slow", full.target),
        extra='probe_allow = ["127.0.0.1/32", "::1/128"]\n',
    )
    p = Daemon.start(tmp, text, tmp / "probe.log")
    try:
        p.wait_event("listening")
        p.wait("records of every target", lambda: all(len(p.records(n)) >= 3 for n in targets))
        yield p, targets
    finally:
        p.close()
        web.close()
        full.close()


@pytest.fixture(scope="module")
def prober(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A daemon asked only for /probe, and a target that never answers: the serial tests'
    own (the module's `live` daemon runs on another worker), quick to start."""
    tmp = tmp_path_factory.mktemp("prober")
    full = FullQueueListener()
    text = config_toml(
        tmp / "probe.log",
        target_toml("shut", f"127.0.0.1:{closed_port()}"),
        extra='probe_allow = ["127.0.0.1/32"]\n',
    )
    p = Daemon.start(tmp, text, tmp / "probe.log")
    try:
        p.wait_event("listening")
        yield p, full.target
    finally:
        p.close()
        full.close()


def test_metrics_page_of_a_real_daemon(live: tuple[Daemon, dict[str, str]]) -> None:
    p, _ = live
    _, s = p.metrics()
    for name in ("web", "shut", "slow"):
        for outcome in OUTCOMES:
            assert value(s, "probe_attempts_total", target=name, outcome=outcome) is not None
    assert (value(s, "probe_attempts_total", target="shut", outcome="open")) == 0.0
    assert (value(s, "probe_errors_total", target="shut", error="ECONNREFUSED") or 0) >= 3
    assert (value(s, "probe_errors_total", target="slow", error="ETIMEDOUT") or 0) >= 3
    assert with_label(s, "probe_errors_total", "target", "web") == {}
    assert (value(s, "probe_tcp_rtt_seconds_count", target="web") or 0) >= 1
    # without histograms = true: the answered connects' summed time, no buckets
    assert 0 < (value(s, "probe_connect_seconds_total", target="shut") or 0) < 1
    assert value(s, "probe_connect_latency_seconds_count", target="shut") is None
    assert value(s, "probe_target_info", target="web", team="core", tier="1") == 1.0
    assert value(s, "probe_target_info", target="shut", team="edge") == 1.0
    assert value(s, "probe_target_info", target="slow") == 1.0
    assert value(s, "probe_config_last_reload_successful") == 1.0
    started = value(s, "probe_config_last_reload_success_timestamp_seconds")
    assert started is not None and time.time() - 60 < started <= time.time()
    assert value(s, "probe_build_info", version=__version__, core=core_name()) == 1.0
    assert value(s, "process_resident_memory_bytes")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    ("header", "gzip_ok"),
    [("gzip", True), ("deflate, GZIP;q=0.5", True), ("*", True), ("gzip;q=0", False),
     ("identity", False), ("", False), ("gzip;q=nope", False), ("gzip ; q=0.0", False)],
)  # fmt: skip
def test_accept_encoding(header: str, gzip_ok: bool) -> None:
    assert accepts_gzip(header) is gzip_ok


def test_metrics_answers_gzip_when_asked(live: tuple[Daemon, dict[str, str]]) -> None:
    """Prometheus sends `Accept-Encoding: gzip`: the page comes compressed, the same
    series; `q=0` or no header: plain text."""
    p, _ = live
    status, headers, body = http_fetch(p.port, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    plain_status, plain_headers, plain = http_fetch(p.port, "/metrics")
    assert plain_status == 200 and "Content-Encoding" not in plain_headers
    assert len(body) * 3 < len(plain)
    assert set(parse_prometheus(text)) <= set(parse_prometheus(plain.decode()))
    assert value(parse_prometheus(text), "probe_target_info", target="shut", team="edge") == 1.0
    _, refused, _ = http_fetch(p.port, "/metrics", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused


def test_promtool_check_metrics_is_clean_on_a_real_page(
    live: tuple[Daemon, dict[str, str]],
) -> None:
    p, targets = live
    body, _ = p.metrics()
    assert "probe_target_info{" in body and "probe_errors_total{" in body
    done = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=body, capture_output=True, text=True
    )
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done
    # the /probe answer too
    _, _, answer = p.get("/probe?target=" + urllib.parse.quote(targets["shut"]))
    done = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=answer, capture_output=True, text=True
    )
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done


def reload_shown(p: Daemon, ok: float) -> Samples:
    def check() -> Samples | None:
        s = p.metrics()[1]
        return s if value(s, "probe_config_last_reload_successful") == ok else None

    return p.wait(f"probe_config_last_reload_successful {ok}", check)


def test_reload_status_metrics(tmp_path: Path, daemons: list[Daemon]) -> None:
    shut = closed_port()
    good = config_toml(tmp_path / "probe.log", target_toml("a", f"127.0.0.1:{shut}"))
    p = Daemon.start(tmp_path, good, tmp_path / "probe.log")
    daemons.append(p)
    p.wait_event("listening")
    _, s = p.metrics()
    first = value(s, "probe_config_last_reload_success_timestamp_seconds")
    assert value(s, "probe_config_last_reload_successful") == 1.0
    assert value(s, "probe_config_reloads_total", result="failed") == 0.0
    p.rewrite(good + "[[targets]]\naddress = 'nonsense'\n")
    p.send(signal.SIGHUP)
    s = reload_shown(p, 0.0)
    assert value(s, "probe_config_reloads_total", result="failed") == 1.0
    assert value(s, "probe_config_last_reload_success_timestamp_seconds") == first
    assert first is not None
    wait_for("the clock past the first load's time", lambda: time.time() > first)
    p.rewrite(good + target_toml("b", f"127.0.0.1:{shut}", {"team": "t"}))
    p.send(signal.SIGHUP)
    s = reload_shown(p, 1.0)
    assert value(s, "probe_config_reloads_total", result="ok") == 1.0
    later = value(s, "probe_config_last_reload_success_timestamp_seconds")
    assert first is not None and later is not None and later > first
    assert value(s, "probe_target_info", target="b", team="t") == 1.0
    for outcome in OUTCOMES:
        assert value(s, "probe_attempts_total", target="b", outcome=outcome) is not None
    # a reload that brings a reserved label is refused like any invalid config
    p.rewrite(good + target_toml("c", f"127.0.0.1:{shut}", {"target": "x"}))
    p.send(signal.SIGHUP)
    s = reload_shown(p, 0.0)
    assert value(s, "probe_target_info", target="b", team="t") == 1.0
    assert "targets[1].labels.target" in p.stderr
    assert p.stop() == 0


# -- GET /probe ---------------------------------------------------------------------------------


def probe(p: Daemon, target: str, query: str = "", **headers: str) -> tuple[int, str, str]:
    return p.get(f"/probe?target={urllib.parse.quote(target, safe='')}{query}", headers=headers)


def fnv1a32(data: bytes) -> int:
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) % 2**32
    return h


def test_probe_answers_blackbox_series(live: tuple[Daemon, dict[str, str]]) -> None:
    p, targets = live
    status, ctype, body = probe(p, targets["web"])
    assert status == 200 and ctype.startswith("text/plain; version="), body
    v = unlabelled(body)
    assert v["probe_success"] == 1.0
    assert v["probe_ip_protocol"] == 4.0
    assert v["probe_ip_addr_hash"] == float(fnv1a32(socket.inet_aton("127.0.0.1")))
    assert 0 <= v["probe_dns_lookup_time_seconds"] <= v["probe_duration_seconds"]
    assert 0 < v["probe_local_port"] < 65536
    assert 0 < v["probe_rtt_seconds"] <= v["probe_duration_seconds"], v
    assert v["probe_syn_retransmits"] == 0.0
    assert "probe_failed_due_to" not in body


def test_probe_failure_reason(live: tuple[Daemon, dict[str, str]]) -> None:
    p, targets = live
    _, _, body = probe(p, targets["shut"])
    s = parse_prometheus(body)
    assert value(s, "probe_success") == 0.0
    assert value(s, "probe_failed_due_to", reason="ECONNREFUSED") == 1.0
    assert len(with_label(s, "probe_failed_due_to", "reason", "ECONNREFUSED")) == 1


def test_probe_localhost_has_a_dns_time(live: tuple[Daemon, dict[str, str]]) -> None:
    p, targets = live
    port = targets["web"].rpartition(":")[2]
    status, _, body = probe(p, f"localhost:{port}")
    assert status == 200, body
    v = unlabelled(body)
    assert v["probe_ip_protocol"] in (4.0, 6.0)
    assert v["probe_dns_lookup_time_seconds"] > 0


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
def test_probe_ipv6_protocol(live: tuple[Daemon, dict[str, str]]) -> None:
    p, _ = live
    web6 = RecordingListener("::1")
    try:
        status, _, body = probe(p, web6.target)
        assert status == 200, body
        v = unlabelled(body)
        assert v["probe_success"] == 1.0 and v["probe_ip_protocol"] == 6.0
        packed = socket.inet_pton(socket.AF_INET6, "::1")
        assert v["probe_ip_addr_hash"] == float(fnv1a32(packed))
    finally:
        web6.close()


@pytest.mark.serial
@pytest.mark.parametrize(
    ("query", "header", "expected"),
    [
        ("&timeout=0.4", None, 0.4),  # the request's timeout
        ("&timeout=2", "1.2", 1.2 - TIMEOUT_OFFSET),  # the scrape timeout less the margin
        ("&timeout=0.4", "10", 0.4),  # the smaller of the two
        ("", "0.6", 0.3),  # a header smaller than twice the margin: half of it
    ],
)
def test_probe_timeout_is_the_smaller_of_query_and_scrape_header(
    prober: tuple[Daemon, str], query: str, header: str | None, expected: float
) -> None:
    p, slow = prober
    headers = {} if header is None else {"X-Prometheus-Scrape-Timeout-Seconds": header}
    with ThreadPoolExecutor(2) as pool:  # both wait out the timeout: side by side
        plain = pool.submit(probe, p, slow, query, **headers)
        debug = pool.submit(probe, p, slow, query + "&debug=true", **headers)
        (status, _, body), (_, _, text) = plain.result(), debug.result()
    assert status == 200, body
    s = parse_prometheus(body)
    assert value(s, "probe_failed_due_to", reason="ETIMEDOUT") == 1.0
    took = value(s, "probe_duration_seconds")
    assert took is not None and expected - 0.02 <= took < expected + 0.6, (took, expected)
    assert f"timeout: {expected:g} s" in text


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "nan", "inf"])
def test_probe_unusable_scrape_header_is_ignored(
    live: tuple[Daemon, dict[str, str]], bad: str
) -> None:
    p, targets = live
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": bad}
    status, _, body = probe(p, targets["web"], "&debug=true", **headers)
    assert status == 200, body
    assert "timeout: 0.3 s (the config's defaults.timeout 0.3 s)" in body


def test_probe_debug_explains_the_steps(live: tuple[Daemon, dict[str, str]]) -> None:
    p, targets = live
    status, ctype, body = probe(p, targets["shut"], "&debug=true")
    assert status == 200 and ctype.startswith("text/plain; charset=utf-8")
    for step in (
        "timeout: 0.3 s",
        "resolve 127.0.0.1: 127.0.0.1",
        "allow: 127.0.0.1 is inside probe_allow (127.0.0.1/32, ::1/128)",
        "address chosen: 127.0.0.1 (ipv4)",
        "connect: refused, ECONNREFUSED, local 127.0.0.1:",
        "latency ",
        '"outcome":"refused"',
        "Metrics that would have been returned:",
        'probe_failed_due_to{reason="ECONNREFUSED"} 1.0',
    ):
        assert step in body, (step, body)


def test_probe_forbidden_keeps_403_and_connects_nowhere(
    live: tuple[Daemon, dict[str, str]],
) -> None:
    p, _ = live
    other = RecordingListener("127.0.0.2")
    try:
        for query in ("", "&debug=true"):
            status, _, body = probe(p, other.target, query)
            assert status == 403, body
        assert "allow: no address inside probe_allow" in body
        other.assert_not_reached()
    finally:
        other.close()


# -- sharding -----------------------------------------------------------------------------------


def names_config(names: list[str], shard: str = "") -> str:
    text = "".join(target_toml(n, f"127.0.0.1:{1000 + i}") for i, n in enumerate(names))
    return text


def test_three_shards_partition_the_targets_and_adding_one_moves_no_other() -> None:
    names = [f"svc-{i}" for i in range(300)]
    config = parse_config(names_config(names))
    shares = [
        {t.name for t in own_targets("c.toml", config, fleet.Shard(i, 3))[0]} for i in range(3)
    ]
    assert set().union(*shares) == set(names)
    assert sum(len(s) for s in shares) == len(names)  # disjoint: each has one owner
    assert all(60 < len(s) < 140 for s in shares), [len(s) for s in shares]
    grown = parse_config(names_config([*names, "new-one"]))
    after = [{t.name for t in own_targets("c.toml", grown, fleet.Shard(i, 3))[0]} for i in range(3)]
    for before, now in zip(shares, after, strict=True):
        assert before <= now and len(now - before) <= 1
    assert sum(len(now - before) for before, now in zip(shares, after, strict=True)) == 1


def test_shard_hash_is_stable_across_processes() -> None:
    # blake2b of the name, not Python's salted hash(): another interpreter agrees
    code = (
        "from probe.daemon.fleet import shard_of; print([shard_of(f'n{i}', 7) for i in range(50)])"
    )
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str([fleet.shard_of(f"n{i}", 7) for i in range(50)])


def test_shard_parsing_and_environment() -> None:
    assert fleet.parse_shard("2/3") == fleet.Shard(2, 3)
    for bad in ("3/3", "0/0", "-1/3", "1", "a/b", "1/3/4"):
        with pytest.raises(ValueError):
            fleet.parse_shard(bad)
    assert fleet.shard_from_env({}) is None
    assert fleet.shard_from_env({"PROBE_SHARD": "1/4"}) == fleet.Shard(1, 4)
    env = {"PROBE_SHARD_INDEX": "2", "PROBE_SHARD_COUNT": "5"}
    assert fleet.shard_from_env(env) == fleet.Shard(2, 5)
    both = {"PROBE_SHARD": "0/2", **env}
    assert fleet.shard_from_env(both) == fleet.Shard(0, 2)  # the one-variable form wins
    for bad_env in (
        {"PROBE_SHARD": "5/5"},
        {"PROBE_SHARD_INDEX": "1"},
        {"PROBE_SHARD_INDEX": "x", "PROBE_SHARD_COUNT": "3"},
        {"PROBE_SHARD_INDEX": "3", "PROBE_SHARD_COUNT": "3"},
    ):
        with pytest.raises(UsageError):
            fleet.shard_from_env(bad_env)


def test_config_shard_takes_text_or_the_parsed_pair() -> None:
    def config(shard: object) -> object:
        return SimpleNamespace(cluster=SimpleNamespace(shard=shard))

    assert fleet.config_shard(SimpleNamespace()) is None  # no [cluster] section at all
    assert fleet.config_shard(config("")) is None
    assert fleet.config_shard(config(None)) is None
    assert fleet.config_shard(config("1/3")) == fleet.Shard(1, 3)
    assert fleet.config_shard(config((2, 3))) == fleet.Shard(2, 3)
    with pytest.raises(ValueError):
        fleet.config_shard(config("3/3"))


def has_cluster_key() -> bool:
    try:
        parse_config('[cluster]\nshard = "0/2"\n')
    except ConfigError:
        return False
    return True


@pytest.mark.skipif(not has_cluster_key(), reason="[cluster] shard is not in the config yet")
def test_shard_precedence_flag_over_env_over_config(tmp_path: Path, daemons: list[Daemon]) -> None:
    names = [f"t{i}" for i in range(12)]
    text = config_toml(tmp_path / "probe.log", names_config(names), interval=60)
    with_config = text.replace("[metrics]", '[cluster]\nshard = "0/2"\n\n[metrics]')

    def kept(shard: fleet.Shard) -> float:
        return float(sum(1 for n in names if shard.owns(n)))

    cases = [
        ((), {}, fleet.Shard(0, 2)),  # config only
        ((), {"PROBE_SHARD": "1/3"}, fleet.Shard(1, 3)),  # env over config
        (("--shard", "2/4"), {"PROBE_SHARD": "1/3"}, fleet.Shard(2, 4)),  # flag over env
        ((), {"PROBE_SHARD_INDEX": "1", "PROBE_SHARD_COUNT": "2"}, fleet.Shard(1, 2)),
    ]
    for i, (args, env, shard) in enumerate(cases):
        d = tmp_path / str(i)
        own = with_config.replace(str(tmp_path), str(d))
        p = Daemon.start(d, own, d / "probe.log", flags=args, env=env)
        daemons.append(p)
        started = p.wait_event("started")
        assert started["shard"] == str(shard)
        assert started["targets"] == kept(shard)
        assert value(p.metrics()[1], "probe_targets") == kept(shard)
        p.stop()


def test_run_shard_flag_and_env_keep_their_share(tmp_path: Path, daemons: list[Daemon]) -> None:
    names = [f"t{i}" for i in range(12)]
    text = config_toml(tmp_path / "probe.log", names_config(names), interval=60)
    got: dict[str, set[str]] = {}
    for i in range(3):
        d = tmp_path / str(i)
        args: tuple[str, ...] = ("--shard", f"{i}/3") if i < 2 else ()
        env = {} if i < 2 else {"PROBE_SHARD_INDEX": "2", "PROBE_SHARD_COUNT": "3"}
        log = d / "probe.log"
        p = Daemon.start(
            d, text.replace(str(tmp_path / "probe.log"), str(log)), log, flags=args, env=env
        )
        daemons.append(p)
        assert p.wait_event("started")["shard"] == f"{i}/3"
        _, s = p.metrics()
        got[str(i)] = {
            dict(labels)["target"] for (n, labels), _ in s.items() if n == "probe_target_info"
        }
        assert got[str(i)] == {n for n in names if fleet.shard_of(n, 3) == i}
    assert set().union(*got.values()) == set(names)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--shard", "3/3"), {}, "--shard: bad shard '3/3': I must be below N"),
        (("--shard", "x"), {}, "--shard: bad shard 'x': write I/N"),
        ((), {"PROBE_SHARD": "1/0"}, "PROBE_SHARD: bad shard '1/0': N must be"),
        ((), {"PROBE_SHARD_COUNT": "3"}, "PROBE_SHARD_INDEX is not set"),
    ],
)
def test_bad_shard_is_exit_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    (tmp_path / "config.toml").write_text(config_toml(tmp_path / "probe.log", ""))
    done = run_probe("run", "--config", "config.toml", *args, cwd=tmp_path, env=env)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
