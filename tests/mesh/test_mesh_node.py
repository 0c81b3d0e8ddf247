"""The mesh's parts in one event loop on loopback: real responders, a real engine, the
node's rounds and rows, and the matrix drawn from them (names escaped)."""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import pytest

from probe.engine import Engine, EngineOptions
from probe.mesh.node import MeshNode
from probe.mesh.page import Rows, cell_class, render_matrix, render_pair
from probe.mesh.peers import PeerSpec
from probe.record import Record
from probe.serve.limits import ServeLimits
from probe.serve.server import Server


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))


async def responders(*names: str) -> tuple[list[Server], list[int]]:
    servers, ports = [], []
    for name in names:
        server = Server(name, ServeLimits(), Log().info)
        [bound] = await server.start([("127.0.0.1", 0)])
        servers.append(server)
        ports.append(int(bound.rsplit(":", 1)[1]))
    return servers, ports


async def until(what: str, check: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_node_names_its_peers_by_their_answers_and_skips_itself() -> None:
    servers, ports = await responders("me", "b", "c<script>")
    engine = Engine(EngineOptions(timeout=1.0))
    written: list[Record] = []
    peers = PeerSpec.parse([f"127.0.0.1:{p}" for p in ports])
    node = MeshNode("me", engine, written.append, Log(), peers, interval=0.3, timeout=1.0)
    node.start()
    try:
        await until("two peers with 3 attempts each", lambda: len(node.pairs) == 2 and all(
            len(p.window) >= 3 for p in node.pairs.values()))  # fmt: skip
        row = node.row()
    finally:
        node.stop()
        engine.close()
        for s in servers:
            s.close()
    assert row["node"] == "me"
    assert sorted(row["peers"]) == ["b", "c<script>"]
    assert node.selves == {("127.0.0.1", ports[0])}  # answered as "me": never probed again
    for pair in row["peers"].values():
        assert pair["state"] == "up" and pair["loss"] == 0
        assert pair["translated"] == 0 and pair["port_kept"] == 1
        assert pair["median_ms"] is not None and pair["p99_ms"] >= pair["median_ms"]
        assert all(a["seen_as"] == a["local"] for a in pair["recent"])
    names = {r.extra["name"] for r in written if r.extra}
    assert names <= {"b", "c<script>", f"127.0.0.1:{ports[1]}", f"127.0.0.1:{ports[2]}"}
    assert all(r.stages is not None and r.stages.reflected for r in written)


async def test_a_peer_that_stops_answering_goes_down_with_its_error() -> None:
    servers, ports = await responders("b")
    engine = Engine(EngineOptions(timeout=1.0))
    node = MeshNode("a", engine, lambda r: None, Log(), PeerSpec.parse(
        [f"127.0.0.1:{ports[0]}"]), interval=0.2, timeout=1.0)  # fmt: skip
    node.start()
    try:
        await until("b up", lambda: node.row()["peers"].get("b", {}).get("state") == "up")
        servers[0].close()
        await until("b down", lambda: node.row()["peers"]["b"]["state"] == "down")
    finally:
        node.stop()
        engine.close()
    pair = node.row()["peers"]["b"]
    assert pair["error"] == "ECONNREFUSED"
    assert 0 < pair["loss"] < 1


def _row(node: str, peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"node": node, "peers": peers}


def _pair(**kw: Any) -> dict[str, Any]:
    base = {"state": "up", "loss": 0.0, "median_ms": 0.4, "p99_ms": 0.9, "translated": 0.0,
            "syn_retransmits": 0, "error": None, "recent": []}  # fmt: skip
    return {**base, **kw}


def test_matrix_marks_exactly_the_broken_pair_and_escapes_names() -> None:
    evil = '<img src=x onerror="alert(1)">'
    rows = Rows(
        {
            "a": _row("a", {"b": _pair(), evil: _pair()}),
            "b": _row("b", {"a": _pair(state="down", error="ETIMEDOUT", loss=0.5), evil: _pair()}),
            evil: _row(evil, {"a": _pair(syn_retransmits=3), "b": _pair()}),
        },
        {"127.0.0.9:9464": "TimeoutError"},
        0.0,
    )
    page = render_matrix(rows, "a")
    assert evil not in page and html.escape(evil) in page
    assert "<script" not in page and "style=" not in page
    cells = re.findall(r'<td class="(\w+)">', page)
    assert cells.count("down") == 1 and cells.count("warn") == 1 and cells.count("self") == 3
    assert "ETIMEDOUT" in page and "TimeoutError" in page
    detail = render_pair("b", "a", rows.rows["b"]["peers"]["a"])
    assert "ETIMEDOUT" in detail


@pytest.mark.parametrize(
    "pair, css",
    [
        (_pair(), "up"),
        (_pair(loss=0.1), "warn"),
        (_pair(syn_retransmits=1), "warn"),
        (_pair(state="down"), "down"),
        (_pair(state=None), "none"),
    ],
)
def test_cell_class(pair: dict[str, Any], css: str) -> None:
    assert cell_class(pair) == css


async def test_two_peers_answering_with_one_name_both_stay_in_the_row() -> None:
    servers, ports = await responders("twin", "twin")
    engine = Engine(EngineOptions(timeout=1.0))
    peers = PeerSpec.parse([f"127.0.0.1:{p}" for p in ports])
    node = MeshNode("a", engine, lambda r: None, Log(), peers, interval=0.2, timeout=1.0)
    node.start()
    try:
        await until("two named pairs", lambda: len(node.row()["peers"]) == 2 and all(
            p["state"] == "up" for p in node.row()["peers"].values()))  # fmt: skip
        names = sorted(node.row()["peers"])
    finally:
        node.stop()
        engine.close()
        for s in servers:
            s.close()
    assert names == ["twin", f"twin (127.0.0.1:{max(ports)})"]  # the later endpoint marked


async def test_a_peer_gone_from_the_answer_leaves_the_row() -> None:
    servers, ports = await responders("b", "c")
    engine = Engine(EngineOptions(timeout=1.0))
    node = MeshNode("a", engine, lambda r: None, Log(), PeerSpec.parse(
        [f"127.0.0.1:{p}" for p in ports]), interval=0.2, timeout=1.0)  # fmt: skip
    node.start()
    try:
        await until("b and c", lambda: sorted(node.row()["peers"]) == ["b", "c"])
        node.configure(PeerSpec.parse([f"127.0.0.1:{ports[0]}"]), 0.2, 1.0)
        await until("c gone", lambda: sorted(node.row()["peers"]) == ["b"])
    finally:
        node.stop()
        engine.close()
        for s in servers:
            s.close()


async def test_the_page_fetches_rows_again_once_its_cache_is_old() -> None:
    """A peer whose HTTP port is closed is listed as missing, and a later view (past the
    cache) makes a new round of fetches, not the old round's answer again."""
    import ipaddress
    import socket

    from probe.mesh.page import MeshPage
    from probe.mesh.stats import Pair

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    engine = Engine(EngineOptions(timeout=1.0))
    node = MeshNode("a", engine, lambda r: None, Log(), PeerSpec.parse(["127.0.0.1:1"]),
                    interval=10.0, timeout=1.0)  # fmt: skip
    node.pairs[("127.0.0.2", 7070)] = Pair("127.0.0.2", 7070)
    allow = [ipaddress.ip_network("127.0.0.0/8")]
    page = MeshPage(node, lambda: closed, lambda: allow)
    try:
        first = await page.rows()
        assert list(first.rows) == ["a"]
        assert list(first.missing) == [f"127.0.0.2:{closed}"]
        assert await page.rows() is first  # cached
        first.at -= 60
        second = await page.rows()
        assert second is not first and list(second.missing) == [f"127.0.0.2:{closed}"]
        outside = MeshPage(node, lambda: closed, lambda: [ipaddress.ip_network("::1/128")])
        rows = await outside.rows()
        assert rows.missing == {f"127.0.0.2:{closed}": "outside [metrics] probe_allow"}
        await outside.close()
    finally:
        await page.close()
        engine.close()


async def test_the_page_judges_a_mapped_peer_address_as_its_ipv4_address() -> None:
    """A peer seen as `::ffff:127.0.0.2` is 127.0.0.2, as /probe's allow check judges it:
    inside a probe_allow of 127.0.0.0/8 (its row is fetched: the closed port refuses), and
    outside one of ::1/128."""
    import ipaddress
    import socket

    from probe.mesh.page import MeshPage
    from probe.mesh.stats import Pair

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    engine = Engine(EngineOptions(timeout=1.0))
    node = MeshNode("a", engine, lambda r: None, Log(), PeerSpec.parse(["127.0.0.1:1"]),
                    interval=10.0, timeout=1.0)  # fmt: skip
    node.pairs[("::ffff:127.0.0.2", 7070)] = Pair("::ffff:127.0.0.2", 7070)
    where = f"127.0.0.2:{closed}"
    inside = MeshPage(node, lambda: closed, lambda: [ipaddress.ip_network("127.0.0.0/8")])
    outside = MeshPage(node, lambda: closed, lambda: [ipaddress.ip_network("::1/128")])
    try:
        fetched = (await inside.rows()).missing
        assert list(fetched) == [where] and "probe_allow" not in fetched[where], fetched
        assert (await outside.rows()).missing == {where: "outside [metrics] probe_allow"}
    finally:
        await inside.close()
        await outside.close()
        engine.close()


def test_a_row_naming_thousands_of_peers_does_not_make_the_page_unbounded() -> None:
    flood = {f"ghost{i:05d}": _pair() for i in range(5000)}
    rows = Rows({"a": _row("a", {"b": _pair()}), "b": _row("b", flood)}, {}, 0.0)
    page = render_matrix(rows, "a")
    assert len(page) < 5_000_000
    assert ">a</th>" in page and ">b</th>" in page  # the rows' own nodes are kept
    assert "more names in the rows are not drawn" in page


async def test_ipv6_peers() -> None:
    from helpers import has_ipv6_loopback

    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    server = Server("six", ServeLimits(), Log().info)
    [bound] = await server.start([("::1", 0)])
    engine = Engine(EngineOptions(timeout=1.0))
    node = MeshNode("a", engine, lambda r: None, Log(), PeerSpec.parse([bound]), 0.2, 1.0)
    node.start()
    try:
        await until("six up", lambda: node.row()["peers"].get("six", {}).get("state") == "up")
    finally:
        node.stop()
        engine.close()
        server.close()
    pair = node.row()["peers"]["six"]
    assert pair["address"] == "::1" and pair["translated"] == 0
    assert pair["recent"][0]["seen_as"] == pair["recent"][0]["local"]
    assert pair["recent"][0]["local"].startswith("[::1]:")
