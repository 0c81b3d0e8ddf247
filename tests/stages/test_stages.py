"""The stages after the connect (TLS, send/expect, starttls) against real servers on
loopback: the engine in this process and `probe check` as a user runs it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CONTRACT_KEYS, run_probe
from helpers.stages import FLOOD_BYTES, Certs, Servers, servers, tls10_possible

from probe.engine import Attempt, Engine, EngineOptions
from probe.output.jsonl import record_json
from probe.record import Record
from probe.resolve import literal
from probe.stages.spec import StageSpec, Step, TlsOptions
from probe.syntax import Endpoint

TLS_KEYS = ["tls_ms", "tls_version", "cipher", "cert_not_after", "cert_subject", "cert_issuer"]
EXPECT_KEYS = ["expect_ms", "matched"]
# trustme's certificates are valid until the first second of the year 3000
TRUSTME_NOT_AFTER = "3000-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def srv() -> Iterator[Servers]:
    with servers() as s:
        yield s


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs(tmp_path_factory.mktemp("certs"))


def tls_spec(certs: Certs, **options: object) -> StageSpec:
    return StageSpec(tls=True, tls_options=TlsOptions(ca_file=certs.ca_file, **options))  # type: ignore[arg-type]


async def attempt(port: int, spec: StageSpec | None, timeout: float = 2.0) -> dict[str, object]:
    """One attempt to localhost:PORT on an engine in this loop: its JSON record."""
    return json.loads(record_json(await attempt_record(port, spec, timeout)))  # type: ignore[no-any-return]


async def attempt_record(port: int, spec: StageSpec | None, timeout: float = 2.0) -> Record:
    engine = Engine(EngineOptions(timeout=timeout))
    try:
        endpoint = Endpoint(f"localhost:{port}", "localhost", port)
        return await engine.attempt(Attempt(endpoint, literal("127.0.0.1"), stages=spec))
    finally:
        engine.close()


def connect_core(rec: dict[str, object]) -> None:
    """The connect's own keys stay filled whatever a stage found."""
    assert list(rec)[: len(CONTRACT_KEYS)] == CONTRACT_KEYS
    assert rec["local_address"] == "127.0.0.1"
    assert isinstance(rec["local_port"], int)
    assert isinstance(rec["latency_ms"], float)
    assert rec["rtt_ms"] is not None
    assert rec["syn_retransmits"] == 0


async def test_valid_certificate(srv: Servers, certs: Certs) -> None:
    rec = await attempt(srv.tls(certs.context()), tls_spec(certs))
    connect_core(rec)
    assert rec["outcome"] == "open" and rec["error"] is None
    assert list(rec)[len(CONTRACT_KEYS) :] == TLS_KEYS
    assert rec["tls_version"] == "TLSv1.3"
    assert isinstance(rec["cipher"], str) and rec["cipher"]
    assert rec["cert_not_after"] == TRUSTME_NOT_AFTER
    assert "O=trustme" in str(rec["cert_subject"])
    assert "Testing CA" in str(rec["cert_issuer"])
    assert 0 < float(rec["tls_ms"]) < 2000  # type: ignore[arg-type]


async def test_plain_record_is_unchanged(srv: Servers, certs: Certs) -> None:
    rec = await attempt(srv.tls(certs.context()), None)
    assert list(rec) == CONTRACT_KEYS
    assert rec["outcome"] == "open"


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("expired", "CERT_EXPIRED"),
        ("wrong_name", "HOSTNAME_MISMATCH"),
        ("untrusted", "CERT_UNTRUSTED"),
    ],
)
async def test_certificate_failures(srv: Servers, certs: Certs, kind: str, error: str) -> None:
    rec = await attempt(srv.tls(certs.context(kind)), tls_spec(certs))
    connect_core(rec)
    assert (rec["outcome"], rec["error"]) == ("error", error)
    assert rec["tls_version"] is None


async def test_insecure_skip_verify_still_reports_the_certificate(
    srv: Servers, certs: Certs
) -> None:
    rec = await attempt(
        srv.tls(certs.context("untrusted")), tls_spec(certs, insecure_skip_verify=True)
    )
    assert rec["outcome"] == "open"
    assert rec["cert_not_after"] == TRUSTME_NOT_AFTER
    assert rec["cert_subject"] is not None


async def test_server_name_is_sent_and_checked(srv: Servers, certs: Certs) -> None:
    port = srv.tls(certs.context("wrong_name"))
    rec = await attempt(port, tls_spec(certs, server_name="other.invalid"))
    assert rec["outcome"] == "open"


async def test_cert_file_and_key_file_make_the_client_certificate(
    srv: Servers, certs: Certs, tmp_path: Path
) -> None:
    """A server that requires a client certificate from its CA greets the client that shows
    one (cert_file, key_file) by the certificate's name; without them nothing is greeted."""
    client = certs.ca.issue_cert("probe-client.test")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    ctx = certs.context()
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(certs.ca_file)

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(pair[0] for pair in writer.get_extra_info("peercert")["subject"])
        writer.write(f"HELLO {subject.get('organizationalUnitName', '')}\r\n".encode())
        await writer.drain()
        await reader.read()
        writer.close()

    port = srv.start(greet, ctx)
    steps = (Step(expect="^HELLO"),)
    spec = tls_spec(certs, cert_file=str(cert_file), key_file=str(key_file))
    rec = await attempt(port, StageSpec(tls=True, tls_options=spec.tls_options, steps=steps))
    assert rec["outcome"] == "open", rec
    assert str(rec["matched"]).startswith("HELLO Testing cert"), rec  # trustme's client name
    # Without one, TLS 1.3's client finishes its handshake before the server refuses it:
    # the refusal arrives as the read's failure.
    no_client = StageSpec(tls=True, tls_options=tls_spec(certs).tls_options, steps=steps)
    rec = await attempt(port, no_client)
    assert rec["outcome"] == "error" and rec["matched"] is None, rec
    assert rec["error"] in ("TLS_HANDSHAKE", "EXPECT_MISMATCH"), rec


async def test_tls10_only_server(srv: Servers, certs: Certs) -> None:
    why = tls10_possible()
    if why:
        pytest.skip(why)
    port = srv.tls(certs.context("tls10"))
    rec = await attempt(port, tls_spec(certs))  # TLS 1.2 at least by default, as Go's
    assert (rec["outcome"], rec["error"]) == ("error", "TLS_HANDSHAKE")
    rec = await attempt(port, tls_spec(certs, min_version="TLSv1"))
    if rec["outcome"] != "open":
        pytest.skip(f"this OpenSSL would not make the TLS 1.0 handshake: {rec['error']}")
    assert rec["tls_version"] == "TLSv1"


async def test_silent_server_costs_the_deadline(srv: Servers, certs: Certs) -> None:
    rec = await attempt(srv.silent(), tls_spec(certs), timeout=0.5)
    connect_core(rec)
    assert (rec["outcome"], rec["error"]) == ("error", "TLS_HANDSHAKE")
    assert 400 <= float(rec["tls_ms"]) < 5000  # type: ignore[arg-type]
    rec = await attempt(srv.silent(), StageSpec(steps=(Step(expect="^220"),)), timeout=0.5)
    assert (rec["outcome"], rec["error"]) == ("error", "EXPECT_TIMEOUT")
    assert list(rec)[len(CONTRACT_KEYS) :] == EXPECT_KEYS


async def test_reset_mid_handshake(srv: Servers, certs: Certs) -> None:
    rec = await attempt(srv.reset(), tls_spec(certs))
    connect_core(rec)
    assert (rec["outcome"], rec["error"]) == ("error", "TLS_HANDSHAKE")
    rec = await attempt(
        srv.reset(), StageSpec(steps=(Step(send=b"HELLO\r\n"), Step(expect="^220")))
    )
    assert (rec["outcome"], rec["error"]) == ("error", "EXPECT_MISMATCH")


async def test_banner_expect(srv: Servers) -> None:
    port = srv.banner(b"SSH-2.0-test_server\r\n")
    rec = await attempt(port, StageSpec(steps=(Step(expect=r"^SSH-2\.0"),)))
    connect_core(rec)
    assert rec["outcome"] == "open"
    assert rec["matched"] == "SSH-2.0-test_server"
    rec = await attempt(port, StageSpec(steps=(Step(expect=r"^220"),)), timeout=0.5)
    assert (rec["outcome"], rec["error"]) == ("error", "EXPECT_TIMEOUT")
    closing = srv.banner(b"SSH-2.0-test_server\r\n", close=True)
    rec = await attempt(closing, StageSpec(steps=(Step(expect=r"^220"),)))
    assert (rec["outcome"], rec["error"]) == ("error", "EXPECT_MISMATCH")
    assert rec["matched"] is None


async def test_send_then_expect_with_escapes(srv: Servers) -> None:
    port = srv.echo()
    rec = await attempt(port, StageSpec(steps=(Step(send=b"PING 1\r\n"), Step(expect="^PING 1$"))))
    assert rec["outcome"] == "open"
    assert rec["matched"] == "PING 1"


async def test_ten_megabytes_without_a_newline(srv: Servers) -> None:
    """The byte limit holds: the expect gives up after 64 KiB, long before the deadline
    and the 10 MB, and says so."""
    port = srv.flood()
    t0 = time.monotonic()
    rec = await attempt(port, StageSpec(steps=(Step(expect="^never"),)), timeout=30)
    assert (rec["outcome"], rec["error"]) == ("error", "EXPECT_MISMATCH")
    assert time.monotonic() - t0 < 20  # well inside the 30 s deadline on a loaded machine
    assert FLOOD_BYTES > 64 * 1024


async def test_starttls_smtp(srv: Servers, certs: Certs) -> None:
    spec = StageSpec(tls_options=TlsOptions(ca_file=certs.ca_file), starttls="smtp")
    rec = await attempt(srv.smtp(certs.context()), spec)
    connect_core(rec)
    assert rec["outcome"] == "open", rec
    assert rec["tls_version"] == "TLSv1.3"
    assert rec["matched"] == "220 go ahead"
    assert list(rec)[len(CONTRACT_KEYS) :] == TLS_KEYS + EXPECT_KEYS
    rec = await attempt(srv.smtp(certs.context("expired")), spec)
    assert (rec["outcome"], rec["error"]) == ("error", "CERT_EXPIRED")
    # STARTTLS refused (502): a mismatch at once, the refusal as the matched line
    rec = await attempt(srv.smtp(certs.context(), offer=False), spec, timeout=30)
    assert (rec["outcome"], rec["error"]) == ("error", "EXPECT_MISMATCH")
    assert rec["matched"] == "502 no"
    assert float(rec["expect_ms"]) < 20_000  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["imap", "pop3", "xmpp"])
async def test_starttls_other_protocols(srv: Servers, certs: Certs, protocol: str) -> None:
    spec = StageSpec(tls_options=TlsOptions(ca_file=certs.ca_file), starttls=protocol)
    rec = await attempt(srv.starttls(protocol, certs.context()), spec)
    assert rec["outcome"] == "open", rec
    assert rec["tls_version"] == "TLSv1.3"
    assert rec["cert_not_after"] == TRUSTME_NOT_AFTER
    rec = await attempt(srv.starttls(protocol, certs.context("wrong_name")), spec)
    assert (rec["outcome"], rec["error"]) == ("error", "HOSTNAME_MISMATCH")


async def test_stalled_stages_hold_nothing_else(srv: Servers, certs: Certs) -> None:
    """A handshake that stalls and a 10 MB banner, beside plain connects on one engine: the
    plain attempts' records all arrive while the stalled ones still wait for their
    deadline, and each stalled one ends at its own deadline, as an error of its stage."""
    engine = Engine(EngineOptions(timeout=3.0))
    order: list[str] = []

    async def one(name: str, port: int, spec: StageSpec | None) -> Record:
        endpoint = Endpoint(f"localhost:{port}", "localhost", port)
        record = await engine.attempt(Attempt(endpoint, literal("127.0.0.1"), stages=spec))
        order.append(name)
        return record

    plain = srv.banner(b"")
    try:
        stalled = [
            one("stall", srv.silent(), tls_spec(certs)),
            one("flood", srv.flood(), StageSpec(steps=(Step(expect="^never"),))),
            one("slow", srv.silent(), StageSpec(steps=(Step(expect="^never"),))),
        ]
        plains = [one("plain", plain, None) for _ in range(50)]
        records = await asyncio.gather(*stalled, *plains)
    finally:
        engine.close()
    assert order.index("stall") > order.index("plain") + 48  # every plain one came first
    assert order.index("slow") > 50
    stall, flood, slow = records[:3]
    assert (stall.error, flood.error, slow.error) == (
        "TLS_HANDSHAKE",
        "EXPECT_MISMATCH",
        "EXPECT_TIMEOUT",
    )
    assert all(r.outcome == "open" for r in records[3:])
    assert stall.stages is not None and stall.stages.tls_ms is not None
    assert 2500 <= stall.stages.tls_ms < 10_000


# -- probe check ---------------------------------------------------------------------------


def check_json(port: int, *flags: str, timeout: str = "2") -> tuple[int, dict[str, object]]:
    done = run_probe("check", f"localhost:{port}", "--json", "-t", timeout, *flags)
    assert done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return done.returncode, json.loads(lines[0])


def test_check_csv_has_the_stage_columns(srv: Servers, certs: Certs) -> None:
    """With stages, CSV has every stage key as a column (the JSON record's names and values;
    empty where a stage did not run); without, the plain columns only."""
    port = srv.tls(certs.context())
    flags = ("--tls", "--tls-ca-file", certs.ca_file)
    _, rec = check_json(port, *flags)
    done = run_probe("check", f"localhost:{port}", "--format", "csv", *flags)
    assert done.returncode == 0, done.stderr
    (row,) = csv.DictReader(io.StringIO(done.stdout))
    assert list(row) == [*rec, "expect_ms", "matched", "seen_as", "translated", "seen_by"]
    for key in TLS_KEYS[1:]:
        assert row[key] == str(rec[key]), key
    assert row["matched"] == row["seen_as"] == ""
    plain = run_probe("check", f"localhost:{port}", "--format", "csv")
    assert plain.stdout.splitlines()[0].split(",") == CONTRACT_KEYS


def test_check_tls_prints_version_cipher_and_days_to_expiry(srv: Servers, certs: Certs) -> None:
    port = srv.tls(certs.context())
    done = run_probe("check", f"localhost:{port}", "--tls", "--tls-ca-file", certs.ca_file)
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[0]
    days = (time.mktime((3000, 1, 1, 0, 0, 0, 0, 0, 0)) - time.time()) / 86400
    assert "TLSv1.3" in line and "TLS_AES" in line
    assert f"expires in {days:.0f} days" in line or f"expires in {days - 1:.0f} days" in line


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("valid", None),
        ("expired", "CERT_EXPIRED"),
        ("wrong_name", "HOSTNAME_MISMATCH"),
        ("untrusted", "CERT_UNTRUSTED"),
        ("silent", "TLS_HANDSHAKE"),
    ],
)
def test_check_tls_against_each_server(
    srv: Servers, certs: Certs, kind: str, error: str | None
) -> None:
    port = srv.silent() if kind == "silent" else srv.tls(certs.context(kind))
    code, rec = check_json(port, "--tls", "--tls-ca-file", certs.ca_file, timeout="1")
    connect_core(rec)
    assert rec["error"] == error
    assert code == (0 if error is None else 1)
    assert list(rec)[len(CONTRACT_KEYS) :] == TLS_KEYS


def test_check_tls10_and_min_version(srv: Servers, certs: Certs) -> None:
    why = tls10_possible()
    if why:
        pytest.skip(why)
    port = srv.tls(certs.context("tls10"))
    _, rec = check_json(port, "--tls", "--tls-ca-file", certs.ca_file)
    assert rec["error"] == "TLS_HANDSHAKE"
    code, rec = check_json(
        port, "--tls", "--tls-ca-file", certs.ca_file, "--tls-min-version", "TLS10"
    )
    if code != 0:
        pytest.skip(f"this OpenSSL would not make the TLS 1.0 handshake: {rec['error']}")
    assert rec["tls_version"] == "TLSv1"


def test_check_starttls_send_expect_and_flood(srv: Servers, certs: Certs) -> None:
    code, rec = check_json(
        srv.smtp(certs.context()), "--starttls", "smtp", "--tls-ca-file", certs.ca_file
    )
    assert code == 0 and rec["tls_version"] == "TLSv1.3" and rec["matched"] == "220 go ahead"
    code, rec = check_json(srv.echo(), "--send", r"HELLO\x21\r\n", "--expect", "^HELLO!$")
    assert code == 0 and rec["matched"] == "HELLO!"
    code, rec = check_json(srv.flood(), "--expect", "^never", timeout="20")
    assert code == 1 and rec["error"] == "EXPECT_MISMATCH"
    assert float(rec["expect_ms"]) < 15_000  # type: ignore[arg-type]
    code, rec = check_json(srv.silent(), "--expect", "^220", timeout="0.5")
    assert code == 1 and rec["error"] == "EXPECT_TIMEOUT"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls", "--tls-min-version", "SSL3"], "--tls-min-version: unknown TLS version 'SSL3'"),
        (["--expect", "("], "--expect: bad regex '('"),
        (["--tls", "--tls-ca-file", "/nonexistent/ca.pem"], "cannot use /nonexistent/ca.pem"),
        (["--tls-insecure"], "need --tls or --starttls"),
        (["--starttls", "ftp"], "invalid choice: 'ftp'"),
    ],
)
def test_check_bad_stage_flags_are_one_line_exit_2(flags: list[str], message: str) -> None:
    done = run_probe("check", "127.0.0.1:9", *flags)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr, done.stderr
