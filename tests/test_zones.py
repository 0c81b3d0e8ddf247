"""Zone ids: a link-local address with `%IFACE` or `%INDEX` connects on that interface, in
`probe check`, the daemon's schedule and `/probe`; an interface this machine does not have
is a usage error naming it. The addresses live on a veth pair in a namespace of the test's
own (link-local needs an interface other than `lo`)."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    Daemon,
    Netns,
    config_toml,
    has_ipv6_loopback,
    in_netns,
    ns_get,
    parse_prometheus,
    probe_cmd,
    run_probe,
    start_in,
    target_toml,
    value,
)

LINK_LOCAL = "fe80::a"


class LinkLocal:
    def __init__(self, ns: Netns, port: int, index: int) -> None:
        self.ns, self.port, self.index = ns, port, index

    def check(self, *args: str) -> tuple[int, list[dict[str, object]], str]:
        return check_in_ns(self.ns, *args)


def check_in_ns(ns: Netns, *args: str) -> tuple[int, list[dict[str, object]], str]:
    """`probe check ARGS` inside the namespace: exit code, JSON records, stderr."""
    proc = subprocess.run(
        [*ns.prefix(), *probe_cmd(), "check", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, records, proc.stderr


@pytest.fixture
def link_local(netns: Netns) -> Iterator[LinkLocal]:
    """A veth pair v0/v1 in the namespace, fe80::a on v0, a listener on [fe80::a%v0]."""
    netns.run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    for dev in ("v0", "v1"):
        netns.run("ip", "link", "set", dev, "up")
    netns.run("ip", "-6", "addr", "add", f"{LINK_LOCAL}/64", "dev", "v0", "nodad")
    index = int(netns.run("cat", "/sys/class/net/v0/ifindex").stdout)

    def listen() -> socket.socket:
        sock = socket.socket(socket.AF_INET6)
        sock.bind((LINK_LOCAL, 0, 0, index))
        sock.listen(64)
        return sock

    sock = in_netns(netns, listen)
    yield LinkLocal(netns, sock.getsockname()[1], index)
    sock.close()


@pytest.mark.parametrize("zone", ["v0", "index"])
def test_check_connects_on_the_zones_interface(link_local: LinkLocal, zone: str) -> None:
    z = str(link_local.index) if zone == "index" else zone
    code, (rec,), err = link_local.check(f"[{LINK_LOCAL}%{z}]:{link_local.port}", "--json")
    assert (code, rec["outcome"], rec["error"]) == (0, "open", None), err
    assert rec["address"] == f"{LINK_LOCAL}%{z}"


def test_without_a_zone_the_link_local_address_fails(link_local: LinkLocal) -> None:
    """The control: the kernel needs the interface, so the zone is what made it open."""
    code, (rec,), _ = link_local.check(f"[{LINK_LOCAL}]:{link_local.port}", "--json")
    assert (code, rec["outcome"]) == (1, "error")


@pytest.mark.parametrize("zone", ["nosuch", "99999"])
def test_an_unknown_interface_is_a_usage_error_naming_it(zone: str, tmp_path: Path) -> None:
    proc = run_probe("check", f"[fe80::1%{zone}]:7000")
    assert proc.returncode == 2, proc
    assert f"unknown interface '{zone}'" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    config = tmp_path / "c.toml"
    config.write_text(config_toml(None, target_toml("ll", f"[fe80::1%{zone}]:7000")))
    proc = run_probe("validate", str(config))
    assert proc.returncode == 2 and f"unknown interface '{zone}'" in proc.stderr, proc


def test_the_daemon_and_probe_connect_on_the_zone(
    link_local: LinkLocal, tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    target = f"[{LINK_LOCAL}%v0]:{link_local.port}"
    text = config_toml(
        log, target_toml("ll", target), extra='probe_allow = ["fe80::/10", "127.0.0.0/8"]'
    )
    d = start_in(tmp_path, text, log, daemons, link_local.ns)
    (rec, *_) = d.wait_records("ll", 1)
    assert (rec["outcome"], rec["address"]) == ("open", f"{LINK_LOCAL}%v0"), rec
    port = int(d.wait("listening", lambda: d.events("listening"))[0]["address"].rpartition(":")[2])
    query = urllib.parse.quote(f"[{LINK_LOCAL}%{link_local.index}]:{link_local.port}")
    status, _, body = ns_get(link_local.ns, port, f"/probe?target={query}")
    assert status == 200, body
    assert value(parse_prometheus(body), "probe_success") == 1.0, body


def test_a_loopback_zone_is_judged_as_its_address(
    tmp_path: Path, daemons: list[Daemon], netns: Netns
) -> None:
    """`[::1%lo]`: inside the default probe_allow (::1/128), and it connects."""
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")

    def listen() -> socket.socket:
        sock = socket.socket(socket.AF_INET6)
        sock.bind(("::1", 0))
        sock.listen(64)
        return sock

    sock = in_netns(netns, listen)
    try:
        port = sock.getsockname()[1]
        code, (rec,), err = check_in_ns(netns, f"[::1%lo]:{port}", "--json")
        assert (code, rec["outcome"]) == (0, "open"), err
        log = tmp_path / "probe.log"
        d = start_in(tmp_path, config_toml(log, ""), log, daemons, netns)
        http = int(
            d.wait("listening", lambda: d.events("listening"))[0]["address"].rpartition(":")[2]
        )
        query = urllib.parse.quote(f"[::1%lo]:{port}")
        status, _, body = ns_get(netns, http, f"/probe?target={query}")
        assert status == 200, body
        assert value(parse_prometheus(body), "probe_success") == 1.0, body
    finally:
        sock.close()
