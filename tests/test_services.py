"""Service names are ports wherever a port is accepted (`-p ssh,http`, `HOST:https`, the
config, `/probe`), from the system's services database. The names here are the test's own:
a namespace's /etc/services (bind-mounted by `ip netns exec`) maps them to its listeners."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    Daemon,
    Netns,
    NsServer,
    config_toml,
    ns_get,
    parse_prometheus,
    probe_cmd,
    run_probe,
    start_in,
    target_toml,
    value,
)


class Services:
    def __init__(self, ns: Netns, ports: list[int]) -> None:
        self.ns, self.ports = ns, ports

    def probe(self, *args: str) -> tuple[int, list[dict[str, object]], str]:
        proc = subprocess.run(
            [*self.ns.prefix(), *probe_cmd(), *args],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        return proc.returncode, records, proc.stderr + proc.stdout


@pytest.fixture
def services(netns: Netns) -> Iterator[Services]:
    server = NsServer(netns, 0, 0)
    a, b = server.ports
    with netns.etc("services", f"probe-one\t{a}/tcp\nprobetwo\t{b}/tcp\t\tprobe-2\n"):
        yield Services(netns, [a, b])
    server.close()


def test_check_takes_service_names_in_p_and_after_the_host(services: Services) -> None:
    a, b = services.ports
    code, recs, err = services.probe("check", "127.0.0.1", "-p", "probe-one,probe-2", "--json")
    assert code == 0, err
    assert sorted((r["port"], r["outcome"]) for r in recs) == sorted([(a, "open"), (b, "open")])
    code, (rec,), err = services.probe("check", "127.0.0.1:probetwo", "--json")
    assert (code, rec["port"], rec["outcome"], rec["target"]) == (
        0,
        b,
        "open",
        f"127.0.0.1:{b}",
    ), err


def test_the_config_and_probe_take_service_names(
    services: Services, tmp_path: Path, daemons: list[Daemon]
) -> None:
    a, _ = services.ports
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("named", "127.0.0.1:probe-one"))
    (tmp_path / "c.toml").write_text(text)
    code, _, out = services.probe("validate", str(tmp_path / "c.toml"))
    assert code == 0, out
    d = start_in(tmp_path, text, log, daemons, services.ns)
    (rec, *_) = d.wait_records("named", 1)
    assert (rec["port"], rec["outcome"]) == (a, "open"), rec
    port = int(d.wait("listening", lambda: d.events("listening"))[0]["address"].rpartition(":")[2])
    query = urllib.parse.quote("127.0.0.1:probetwo")
    status, _, body = ns_get(services.ns, port, f"/probe?target={query}")
    assert status == 200, body
    assert value(parse_prometheus(body), "probe_success") == 1.0, body


def test_the_system_database_names_well_known_ports() -> None:
    """`ssh` is 22 by the machine's own /etc/services: the record's port says so, whatever
    answers there."""
    proc = run_probe("check", "127.0.0.1:ssh,https", "--json", "-t", "0.5")
    ports = sorted(json.loads(line)["port"] for line in proc.stdout.splitlines())
    assert ports == [22, 443], proc


def test_an_unknown_service_name_is_a_usage_error() -> None:
    proc = run_probe("check", "127.0.0.1", "-p", "nosuchservice")
    assert proc.returncode == 2
    assert "no TCP service 'nosuchservice'" in proc.stderr and proc.stderr.count("\n") == 1
