"""Stages in the daemon: per target, from [defaults] and from [modules.NAME], scheduled and
through /probe?module=NAME, against the real servers of helpers/stages.py; their records, the
TLS metrics (compared with blackbox_exporter's documented values: expiry as Unix seconds)
and the config's refusals."""

from __future__ import annotations

import calendar
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CONTRACT_KEYS, Daemon, config_toml, parse_prometheus, run_probe, value
from helpers.stages import Certs, Servers, servers, tls10_possible

# trustme's certificates end at 3000-01-01T00:00:00Z: blackbox exposes that as Unix seconds
EXPIRY = float(calendar.timegm((3000, 1, 1, 0, 0, 0)))
KINDS = ("valid", "expired", "wrong_name", "untrusted")


@pytest.fixture(scope="module")
def srv() -> Iterator[Servers]:
    with servers() as s:
        yield s


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def ports(srv: Servers, certs: Certs) -> dict[str, int]:
    out = {kind: srv.tls(certs.context(kind)) for kind in KINDS}
    out["silent"] = srv.silent()
    out["smtp"] = srv.smtp(certs.context())
    out["flood"] = srv.flood()
    out["banner"] = srv.banner(b"SSH-2.0-test\r\n")
    out["tls10"] = srv.tls(certs.context("tls10")) if tls10_possible() is None else 0
    return out


def stage_config(log: Path, ports: dict[str, int], ca: str) -> str:
    tls = f"tls = {{ ca_file = {json.dumps(ca)} }}"
    targets = "".join(
        f'[[targets]]\nname = "{kind}"\naddress = "127.0.0.1:{ports[kind]}"\n{tls}\n\n'
        for kind in (*KINDS, "silent")
    )
    targets += (
        f'[[targets]]\nname = "smtp"\naddress = "127.0.0.1:{ports["smtp"]}"\nmodule = "smtp"\n\n'
        f'[[targets]]\nname = "flood"\naddress = "127.0.0.1:{ports["flood"]}"\n'
        'expect = "^never"\n\n'
        f'[[targets]]\nname = "banner"\naddress = "127.0.0.1:{ports["banner"]}"\n'
        'query_response = [{ expect = "^SSH-2\\\\.0" }]\n\n'
        f'[[targets]]\nname = "plain"\naddress = "127.0.0.1:{ports["valid"]}"\n\n'
        f"[modules.tls_ca]\n{tls}\n\n"
        f'[modules.smtp]\nstarttls = "smtp"\n{tls}\n\n'
        '[modules.ssh]\nexpect = "^SSH-2\\\\.0"\n\n'
        "[modules.plain]\n\n"
        f'[modules.tls10]\ntls = {{ ca_file = {json.dumps(ca)}, min_version = "TLS10" }}\n\n'
    )
    return config_toml(log, targets, interval=0.5, timeout=0.4)


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int], certs: Certs
) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("daemon")
    log = tmp / "log.jsonl"
    d = Daemon.start(tmp, stage_config(log, ports, certs.ca_file), log)
    try:
        assert d.port
        for name in (*KINDS, "silent", "smtp", "flood", "banner", "plain"):
            d.wait_records(name, 1)
        yield d
    finally:
        d.kill()


EXPECTED = {
    "valid": None,
    "expired": "CERT_EXPIRED",
    "wrong_name": "HOSTNAME_MISMATCH",
    "untrusted": "CERT_UNTRUSTED",
    "silent": "TLS_HANDSHAKE",
    "smtp": None,
    "flood": "EXPECT_MISMATCH",
    "banner": None,
    "plain": None,
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_scheduled_records(daemon: Daemon, name: str) -> None:
    rec = daemon.records(name)[0]
    assert rec["error"] == EXPECTED[name], rec
    assert rec["outcome"] == ("open" if EXPECTED[name] is None else "error")
    assert rec["local_port"] is not None and rec["rtt_ms"] is not None
    assert rec["syn_retransmits"] == 0
    keys = [k for k in rec if k not in ("name", "labels")]
    if name == "plain":
        assert keys == CONTRACT_KEYS  # a plain target's record is what it always was
    elif name in ("flood", "banner"):
        assert keys == [*CONTRACT_KEYS, "expect_ms", "matched"]
    else:
        assert "tls_ms" in keys
    if name == "banner":
        assert rec["matched"] == "SSH-2.0-test"
    if name in ("valid", "smtp"):
        assert rec["cert_not_after"] == "3000-01-01T00:00:00Z"


def test_tls_metrics_per_target(daemon: Daemon) -> None:
    _, samples = daemon.metrics()
    for name in ("valid", "smtp"):
        assert value(samples, "probe_ssl_earliest_cert_expiry", target=name) == EXPIRY
        # the verified chain's earliest: trustme's leaf and CA both end in the year 3000
        chain = value(samples, "probe_ssl_last_chain_expiry_timestamp_seconds", target=name)
        assert chain == EXPIRY
        assert value(samples, "probe_tls_version_info", target=name, version="TLSv1.3") == 1
        count = value(samples, "probe_tls_handshake_seconds_count", target=name)
        assert count is not None and count >= 1
        assert value(samples, "probe_tls_handshake_seconds_bucket", target=name, le="+Inf") == count
    for name in ("expired", "wrong_name", "untrusted", "silent", "flood", "banner", "plain"):
        assert value(samples, "probe_ssl_earliest_cert_expiry", target=name) is None
    for name in ("expired", "wrong_name", "untrusted", "silent", "flood"):
        errors = value(samples, "probe_errors_total", target=name, error=str(EXPECTED[name]))
        assert errors is not None and errors >= 1


@pytest.mark.parametrize(
    ("kind", "module", "error"),
    [
        ("valid", "tls_ca", None),
        ("expired", "tls_ca", "CERT_EXPIRED"),
        ("wrong_name", "tls_ca", "HOSTNAME_MISMATCH"),
        ("untrusted", "tls_ca", "CERT_UNTRUSTED"),
        ("silent", "tls_ca", "TLS_HANDSHAKE"),
        ("smtp", "smtp", None),
        ("flood", "ssh", "EXPECT_MISMATCH"),
        ("banner", "ssh", None),
        ("silent", "ssh", "EXPECT_TIMEOUT"),
    ],
)
def test_probe_with_module(
    daemon: Daemon, ports: dict[str, int], kind: str, module: str, error: str | None
) -> None:
    status, _, body = daemon.get(f"/probe?target=127.0.0.1:{ports[kind]}&module={module}&timeout=1")
    assert status == 200, body
    samples = parse_prometheus(body)
    assert value(samples, "probe_success") == (1 if error is None else 0)
    if error is not None:
        assert value(samples, "probe_failed_due_to", reason=error) == 1
    tls_ok = module in ("tls_ca", "smtp") and error is None
    expiry = value(samples, "probe_ssl_earliest_cert_expiry")
    assert expiry == (EXPIRY if tls_ok else None)
    if tls_ok:
        assert value(samples, "probe_tls_version_info", version="TLSv1.3") == 1
    if module == "ssh":
        assert value(samples, "probe_failed_due_to_regex") == (0 if error is None else 1)


def test_probe_tls10_only_server(daemon: Daemon, ports: dict[str, int]) -> None:
    """The default minimum (TLS 1.2) refuses it; a module with min_version = "TLS10" says
    which version it speaks, as blackbox's probe_tls_version_info does."""
    why = tls10_possible()
    if why:
        pytest.skip(why)
    target = f"/probe?target=127.0.0.1:{ports['tls10']}"
    _, _, body = daemon.get(f"{target}&module=tls_ca")
    samples = parse_prometheus(body)
    assert value(samples, "probe_success") == 0
    assert value(samples, "probe_failed_due_to", reason="TLS_HANDSHAKE") == 1
    _, _, body = daemon.get(f"{target}&module=tls10")
    samples = parse_prometheus(body)
    if value(samples, "probe_success") != 1:
        pytest.skip("this OpenSSL would not make the TLS 1.0 handshake")
    assert value(samples, "probe_tls_version_info", version="TLSv1") == 1


def test_probe_without_module_is_a_plain_connect(daemon: Daemon, ports: dict[str, int]) -> None:
    for query in ("", "&module=plain"):
        status, _, body = daemon.get(f"/probe?target=127.0.0.1:{ports['expired']}{query}")
        assert status == 200
        samples = parse_prometheus(body)
        assert value(samples, "probe_success") == 1
        assert value(samples, "probe_ssl_earliest_cert_expiry") is None


def test_probe_unknown_module_is_400(daemon: Daemon, ports: dict[str, int]) -> None:
    status, _, body = daemon.get(f"/probe?target=127.0.0.1:{ports['valid']}&module=nope")
    assert status == 400
    assert "unknown module 'nope'" in body and "tls_ca" in body


def test_probe_debug_names_the_module_and_the_stages(daemon: Daemon, ports: dict[str, int]) -> None:
    status, _, body = daemon.get(
        f"/probe?target=127.0.0.1:{ports['expired']}&module=tls_ca&debug=1"
    )
    assert status == 200
    assert "module: tls_ca (tls)" in body
    assert "stages: CERT_EXPIRED" in body


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls = 3", "targets[0].tls: expected true, false or a table of TLS settings"),
        ('tls = { min_version = "SSL3" }', "targets[0].tls.min_version: unknown TLS version"),
        ('tls = { colour = "red" }', "targets[0].tls.colour: unknown key"),
        ('tls = { ca_file = "/nonexistent/ca.pem" }', "targets[0].tls: cannot use /nonexistent"),
        ('tls = { key_file = "/x.key" }', "targets[0].tls: key_file needs cert_file"),
        ('expect = "("', "targets[0].expect: bad regex"),
        ('query_response = [{ expect = "(" }]', "targets[0].query_response[0].expect: bad regex"),
        ('starttls = "ftp"', "targets[0].starttls: unknown protocol 'ftp'"),
        (
            'module = "tsl"',
            'targets[0].module: no [modules.tsl] table (modules: tls); did you mean "tls"?',
        ),
    ],
)
def test_bad_stage_config_is_one_line_exit_2(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[targets]]\naddress = "127.0.0.1:9"\n{text}\n\n[modules.tls]\ntls = true\n'
    )
    done = run_probe("validate", str(config))
    assert done.returncode == 2, done.stdout
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr


@pytest.mark.parametrize("targets", ["", '[[targets]]\naddress = "127.0.0.1:9"\n'])
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[defaults]\ntls = { min_version = "X" }\n', "defaults.tls.min_version: unknown TLS"),
        ('[defaults]\nexpect = "("\n', "defaults.expect: bad regex"),
        ('[defaults]\nmodule = "nope"\n', "defaults.module: no [modules.nope] table"),
        ('[defaults]\nmodule = "m"\n\n[modules.m]\nexpect = "("\n', "modules.m.expect: bad"),
    ],
)
def test_a_bad_default_stage_key_is_named_where_it_was_written(
    tmp_path: Path, text: str, message: str, targets: str
) -> None:
    """Not under the first target that inherits it, and found with no target at all."""
    config = tmp_path / "config.toml"
    config.write_text(text + "\n" + targets)
    done = run_probe("validate", str(config))
    assert done.returncode == 2, done.stdout
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr


def test_defaults_and_module_layers(tmp_path: Path) -> None:
    """[defaults]' stage keys reach every target, a module's override them, a target's own
    override both; `tls = false` turns a default off."""
    from probe.daemon.config import load_config

    config = tmp_path / "config.toml"
    config.write_text(
        '[defaults]\ntls = true\nmodule = "banner"\n\n'
        '[modules.banner]\nexpect = "^220"\n\n'
        '[[targets]]\naddress = "127.0.0.1:1"\n\n'
        '[[targets]]\naddress = "127.0.0.1:2"\ntls = false\n\n'
        '[[targets]]\naddress = "127.0.0.1:3"\nexpect = "^SSH"\n'
    )
    first, second, third = load_config(config).targets
    assert first.stages is not None and first.stages.tls
    assert [s.expect for s in first.stages.steps] == ["^220"]
    assert second.stages is not None and not second.stages.tls
    assert third.stages is not None and [s.expect for s in third.stages.steps] == ["^SSH"]


def test_status_page_shows_tls_version_and_days_to_expiry(daemon: Daemon) -> None:
    def ready() -> dict[str, object] | None:
        status, _, body = daemon.get("/api/targets")
        assert status == 200, body
        rows = {r["name"]: r for g in json.loads(body)["groups"] for r in g["rows"]}
        return rows if rows["valid"]["extra"] else None

    rows = daemon.wait("TLS columns on the status page", ready)
    days = int((EXPIRY - time.time()) // 86400)
    assert rows["valid"]["extra"] == {"TLS": "TLSv1.3", "cert expires in": f"{days} days"}
    assert rows["smtp"]["extra"]["TLS"] == "TLSv1.3"
    assert rows["plain"]["extra"] == {} and rows["expired"]["extra"] == {}
    status, _, html = daemon.get("/")
    assert status == 200
    assert '<th class="extra">TLS</th>' in html and "cert expires in" in html
    assert f"{days} days" in html


def test_reload_reads_the_ca_file_again(tmp_path: Path, srv: Servers, certs: Certs) -> None:
    """The same ca_file path with other contents after SIGHUP: the next handshakes check
    against the new file (a context is never kept across loads)."""
    ca = tmp_path / "ca.pem"
    certs.ca.cert_pem.write_to_path(str(ca))
    port = srv.tls(certs.context())
    log = tmp_path / "log.jsonl"
    text = config_toml(
        log,
        f'[[targets]]\nname = "t"\naddress = "127.0.0.1:{port}"\n'
        f"tls = {{ ca_file = {json.dumps(str(ca))} }}\n",
        interval=0.2,
    )
    d = Daemon.start(tmp_path, text, log)
    try:
        assert d.wait_records("t", 1)[0]["outcome"] == "open"
        certs.other_ca.cert_pem.write_to_path(str(ca))
        d.send(signal.SIGHUP)
        d.wait_event("reload", result="ok")
        d.wait(
            "a record checked against the new CA",
            lambda: any(r["error"] == "CERT_UNTRUSTED" for r in d.records("t")),
        )
    finally:
        d.kill()
