"""Reflect through a real NAT: a client namespace, a router namespace that masquerades with
`--random-fully`, a server namespace running `probe serve`. What the far side saw must be
what the router's conntrack holds as the reply tuple of each connection."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import KEYS, Netns, Responder, can_netns, check_in, need_tools, parse_records, veth

REFLECTED = KEYS | {"seen_as", "translated", "seen_by"}
PORT = 7070
ATTEMPTS = 40
# Private addresses, only inside the namespaces made here.
CLIENT, ROUTER_IN, ROUTER_OUT, SERVER = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2"
_ENTRY = re.compile(
    r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) .*?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)"
)


class Path3:
    def __init__(self) -> None:
        self.client, self.router, self.server = Netns(), Netns(), Netns()
        need_tools(self.router, "iptables", "conntrack")
        _, self.router_in = veth(self.client, f"{CLIENT}/24", self.router, f"{ROUTER_IN}/24")
        self.router_out, _ = veth(self.router, f"{ROUTER_OUT}/24", self.server, f"{SERVER}/24")
        self.client.run("ip", "route", "add", "default", "via", ROUTER_IN)
        self.server.run("ip", "route", "add", "default", "via", ROUTER_OUT)
        self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def masquerade(self) -> None:
        self.router.run(
            "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", self.router_out,
            "-j", "MASQUERADE", "--random-fully",
        )  # fmt: skip

    def close(self) -> None:
        for ns in (self.client, self.router, self.server):
            ns.delete()


@pytest.fixture
def path3() -> Iterator[Path3]:
    reason = can_netns()
    if reason:
        pytest.skip(reason)
    p = Path3()
    yield p
    p.close()


def reflect_through(path3: Path3, tmp: Path) -> tuple[list[dict[str, object]], Responder]:
    responder = Responder(tmp, f"{SERVER}:{PORT}", "--name", "far", ns=path3.server)
    try:
        result = check_in(
            path3.client, f"{SERVER}:{PORT}", "--reflect", "--json",
            "-c", str(ATTEMPTS), "-i", "0.01", "-t", "5",
        )  # fmt: skip
    finally:
        responder.close()
    assert result.returncode == 0, result.stderr
    records = parse_records(result.stdout, REFLECTED, check=True)
    assert len(records) == ATTEMPTS
    return records, responder


def test_seen_as_is_the_reply_tuple_conntrack_holds(path3: Path3, tmp_path: Path) -> None:
    path3.masquerade()
    records, responder = reflect_through(path3, tmp_path)
    table = path3.router.run("conntrack", "-L", "-p", "tcp", "--dport", str(PORT)).stdout
    reply: dict[int, str] = {}  # the client's port -> where the server's replies go
    for line in table.splitlines():
        m = _ENTRY.search(line)
        if m and m[1] == CLIENT and m[2] == SERVER:
            reply[int(m[3])] = f"{m[6]}:{m[8]}"
    peers = {a["peer"] for a in responder.events("accept")}
    for rec in records:
        assert rec["outcome"] == "open", rec
        assert rec["local_address"] == CLIENT
        assert rec["seen_as"] == reply[int(str(rec["local_port"]))], (rec, table)
        assert str(rec["seen_as"]).startswith(f"{ROUTER_OUT}:")
        assert rec["translated"] is True
        assert rec["seen_as"] in peers  # the server's accept record says the same
    # --random-fully: the ports are not kept (a few may match by chance, not most)
    kept = sum(str(r["seen_as"]).endswith(f":{r['local_port']}") for r in records)
    assert kept <= ATTEMPTS // 4


def test_without_nat_nothing_is_translated(path3: Path3, tmp_path: Path) -> None:
    records, _ = reflect_through(path3, tmp_path)
    for rec in records:
        assert rec["outcome"] == "open", rec
        assert rec["seen_as"] == f"{CLIENT}:{rec['local_port']}"
        assert rec["translated"] is False
