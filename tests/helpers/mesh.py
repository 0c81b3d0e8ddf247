"""`probe serve` in a namespace, and a mesh of daemons in namespaces on a bridge."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from .base import Rec, kill, no_traceback, wait_for
from .daemon import Daemon, ns_get, start_in
from .netns import FAKE_DNS, Netns, need_tools
from .run import probe_cmd


class Responder:
    """`probe serve ARGS` in a subprocess (inside `ns` when given), its JSON lines in a
    file; `endpoints` are what it bound, from its `serving` event."""

    def __init__(self, tmp: Path, *args: str, ns: Netns | None = None) -> None:
        self.out = tmp / f"serve-{uuid.uuid4().hex[:6]}.jsonl"
        self.err = tmp / f"{self.out.stem}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [*(ns.prefix() if ns else ()), *probe_cmd(), "serve", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        serving = wait_for("probe serve to listen", self._serving, 20)
        self.endpoints: list[str] = serving[0]["listen"]

    def _serving(self) -> list[Rec]:
        if self.proc.poll() is not None:
            raise AssertionError(f"probe serve exited: {self.err.read_text()}")
        return self.events("serving")

    def lines(self) -> list[Rec]:
        text = self.out.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def events(self, event: str) -> list[Rec]:
        return [line for line in self.lines() if line.get("event") == event]

    @property
    def port(self) -> int:
        return int(self.endpoints[0].rsplit(":", 1)[1])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                assert self.proc.wait(10) == 0, "probe serve: SIGTERM is exit 0"
            except subprocess.TimeoutExpired:
                kill(self.proc)
                raise AssertionError("probe serve did not stop on SIGTERM") from None
        no_traceback(self.err.read_text())


MESH_NET = "10.78.0"  # private, only inside the namespaces made here
MESH_HUB = f"{MESH_NET}.254"
MESH_PORT, MESH_HTTP = 7070, 9464
MESH_INTERVAL, MESH_TIMEOUT = 3.0, 2.0
MESH_CELL = re.compile(
    r'<td class="(\w+)"><a href="[^"]*" title="([^"]+) → ([^"]+)">(.*?)</a></td>'
)


def mesh_ip(i: int) -> str:
    return f"{MESH_NET}.{i + 1}"


def mesh_name(i: int) -> str:
    return f"n{i:02d}"


MESH_CONFIG = """\
[metrics]
listen = "0.0.0.0:{http}"
probe_allow = ["{net}.0/24"]

[log]
format = "json"
file = "{log}"

[defaults]
timeout = {timeout}

[serve]
name = "{name}"

[mesh]
peers = "mesh.test:{port}"
interval = {interval}
"""


class MeshNet:
    """N namespaces on a bridge (in a hub namespace that also runs the DNS server: every
    node's address under `mesh.test`), each running `probe run` in mesh mode, named n00,
    n01, ...; `row(i)` and `matrix(i)` read node i's /api/mesh and /mesh."""

    def __init__(
        self, tmp: Path, n: int, interval: float = MESH_INTERVAL, timeout: float = MESH_TIMEOUT
    ) -> None:
        self.hub = Netns()
        self.nodes: list[Netns] = []
        self.daemons: list[Daemon] = []
        self.dns: subprocess.Popen[str] | None = None
        self.etc: list[Path] = []
        try:
            self._build(tmp, n, interval, timeout)
        except BaseException:  # a skip or a failed start: leave no namespace or process behind
            self.close()
            raise

    def _build(self, tmp: Path, n: int, interval: float, timeout: float) -> None:
        need_tools(self.hub, "iptables")
        self.hub.run("ip", "link", "add", "br0", "type", "bridge")
        self.hub.run("ip", "addr", "add", f"{MESH_HUB}/24", "dev", "br0")
        self.hub.run("ip", "link", "set", "br0", "up")
        for i in range(n):
            ns = Netns()
            self.nodes.append(ns)
            ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", f"h{i}",
                   "netns", self.hub.name)  # fmt: skip
            ns.run("ip", "addr", "add", f"{mesh_ip(i)}/24", "dev", "eth0")
            ns.run("ip", "link", "set", "eth0", "up")
            self.hub.run("ip", "link", "set", f"h{i}", "master", "br0", "up")
            etc = Path("/etc/netns") / ns.name
            etc.mkdir(parents=True)
            (etc / "resolv.conf").write_text(
                f"nameserver {MESH_HUB}\noptions timeout:2 attempts:2\n"
            )
            self.etc.append(etc)
        records = ",".join(mesh_ip(i) for i in range(n))
        self.dns = self.hub.popen(sys.executable, "-c", FAKE_DNS, str(tmp / "no-hang"), MESH_HUB,
                                  records, stdout=subprocess.PIPE)  # fmt: skip
        assert self.dns.stdout is not None and self.dns.stdout.readline().strip() == "ready"
        for i, ns in enumerate(self.nodes):
            home = tmp / mesh_name(i)
            home.mkdir()
            log = home / "log"
            text = MESH_CONFIG.format(
                http=MESH_HTTP, net=MESH_NET, log=log, timeout=timeout, name=mesh_name(i),
                port=MESH_PORT, interval=interval,
            )  # fmt: skip
            start_in(home, text, log, self.daemons, ns=ns)
        for d in self.daemons:
            d.wait_event("started", timeout=60)

    def row(self, i: int) -> dict[str, Any]:
        status, _, body = ns_get(self.nodes[i], MESH_HTTP, "/api/mesh")
        assert status == 200, body
        row: dict[str, Any] = json.loads(body)
        return row

    def matrix(self, i: int = 0) -> tuple[str, dict[tuple[str, str], tuple[str, str]]]:
        status, ctype, body = ns_get(self.nodes[i], MESH_HTTP, "/mesh", timeout=10)
        assert status == 200 and ctype.startswith("text/html"), body
        cells = {(m[2], m[3]): (m[1], m[4]) for m in MESH_CELL.finditer(body)}
        return body, cells

    def close(self) -> None:
        for d in self.daemons:
            d.kill()
        if self.dns is not None:
            kill(self.dns)
        for etc in self.etc:
            shutil.rmtree(etc, ignore_errors=True)
        for ns in (*self.nodes, self.hub):
            ns.delete()
