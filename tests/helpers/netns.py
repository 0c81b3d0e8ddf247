"""Network namespaces (root and iproute2 needed; skipped otherwise): servers inside them,
their firewall rules and port ranges, veth pairs, a DNS server of the test's own."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .base import T, kill, no_traceback, wait_for
from .run import probe_cmd


def can_netns() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's ip"
    return None


class Netns:
    """A throwaway network namespace with only `lo`, up. Everything in it is ours."""

    def __init__(self) -> None:
        self.name = f"probetest-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run("ip", "link", "set", "lo", "up")

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *cmd: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *cmd], check=True, text=True, capture_output=True, **kw
        )

    def popen(self, *cmd: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([*self.prefix(), *cmd], text=True, **kw)

    @contextlib.contextmanager
    def etc(self, name: str, text: str) -> Iterator[None]:
        """/etc/NAME inside the namespace is `text` while the block runs (`ip netns exec`
        bind-mounts /etc/netns/NS/NAME over it): a resolver or a hosts file of our own."""
        parent = Path("/etc/netns")
        created_parent = not parent.exists()
        own = parent / self.name
        own.mkdir(parents=True, exist_ok=True)
        try:
            (own / name).write_text(text)
            yield
        finally:
            shutil.rmtree(own, ignore_errors=True)
            if created_parent:
                with contextlib.suppress(OSError):  # another test's namespace files are there
                    parent.rmdir()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


NS_SERVER = """
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    socks.append(s)
def serve(s):
    while True:
        conn, _ = s.accept()
        conn.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
sys.stdin.read()
"""


class NsServer:
    """Listeners inside a namespace that accept and close, until closed. Port 0: the
    kernel picks one; `ports` holds what was bound, in order."""

    def __init__(self, ns: Netns, *ports: int) -> None:
        self.proc = ns.popen(
            sys.executable,
            "-c",
            NS_SERVER,
            *map(str, ports),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.ports = [int(p) for p in self.proc.stdout.readline().split()]
        assert len(self.ports) == len(ports), "the namespace server did not start"

    def close(self) -> None:
        kill(self.proc)


def need_tools(ns: Netns, *tools: str) -> None:
    """Skip unless every tool is installed and each firewall among them (iptables,
    ip6tables) works inside the namespace."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} on this machine")
    for tool in ("iptables", "ip6tables"):
        if tool not in tools:
            continue
        try:
            ns.run(tool, "-L", "INPUT", "-n")
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"{tool} does not work here: {exc.stderr.strip()}")


def drop_syns(ns: Netns, ports: int | str, *match: str, chain: str = "INPUT") -> None:
    """Drop the SYNs to `ports` (5001 or "6000:6199") on the namespace's `lo`: on the way in
    (INPUT, after a capture on `lo` has seen them leave) or on the way out (OUTPUT)."""
    way = "-i" if chain == "INPUT" else "-o"
    ns.run(
        "iptables", "-A", chain, way, "lo", "-p", "tcp", "--syn", "--dport", str(ports),
        *match, "-j", "DROP",
    )  # fmt: skip


# every 2nd SYN, starting with the first: each connect gets through on its first resend
EVERY_OTHER = ("-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0")


def check_in(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    """`probe check ARGS` inside the namespace; no traceback on stderr, whatever the exit."""
    result = subprocess.run(
        [*ns.prefix(), *probe_cmd(), "check", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    no_traceback(result.stderr)
    return result


def free_port_block(n: int, start: int) -> int:
    """The first of `n` consecutive loopback ports, from `start` up, free right now."""
    for lo in range(start, 30000, n):
        socks = []
        try:
            for p in range(lo, lo + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return lo
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port block")


# A DNS server for the namespace's loopback: names under .test are 127.0.0.1 (TTL 0) while
# the control file is absent; names starting with "hang", and every name while the control
# file exists, get no answer at all — a dead DNS server, as the resolver sees one. Optional
# arguments: the address to listen on, and the A records (comma-separated) of every name.
FAKE_DNS = r"""
import os, socket, struct, sys
hang = sys.argv[1]
bind = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
records = (sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1").split(",")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind, 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    if os.path.exists(hang) or len(data) < 17:
        continue
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1 : i + 1 + data[i]])
        i += 1 + data[i]
    qtype = struct.unpack("!H", data[i + 1 : i + 3])[0]
    question = data[12 : i + 5]
    name = b".".join(labels).decode("ascii", "replace").lower()
    if name.startswith("hang"):  # never answered; the test may wait until it was asked
        with open(hang + ".asked", "a") as asked:
            asked.write(name + "\n")
        continue
    known = name.endswith(".test")
    answers = []
    if known and qtype == 1:
        answers = [b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton(a)
                   for a in records]
    answer = b"".join(answers)
    flags = 0x8180 | (0 if known else 3)
    qid = struct.unpack("!H", data[:2])[0]
    head = struct.pack("!HHHHHH", qid, flags, 1, len(answers), 0, 0)
    s.sendto(head + question + answer, peer)
"""


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(ns: Netns, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` on a thread that joined the namespace: the sockets it makes live there."""
    out: dict[str, Any] = {}

    def run() -> None:
        fd = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # handed back to the caller
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]  # type: ignore[no-any-return]


class DnsNetns:
    """A namespace whose resolver asks our DNS server on its loopback."""

    def __init__(self, ns: Netns, tmp: Path) -> None:
        self.ns = ns
        self.hang_file = tmp / "dns-hangs"
        self.etc = Path("/etc/netns") / ns.name
        self.etc.mkdir(parents=True)
        # One try, 30 s: a lookup of a dead server hangs far longer than any test waits.
        (self.etc / "resolv.conf").write_text(
            "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n"
        )
        self.server = ns.popen(
            sys.executable, "-c", FAKE_DNS, str(self.hang_file), stdout=subprocess.PIPE
        )
        assert self.server.stdout is not None
        assert self.server.stdout.readline().strip() == "ready"

    def hang(self) -> None:
        """From now on the DNS server answers nothing."""
        self.hang_file.touch()

    def asked(self) -> set[str]:
        """The names starting with "hang" (never answered) that lookups have asked for."""
        try:
            return set(Path(f"{self.hang_file}.asked").read_text().split())
        except FileNotFoundError:
            return set()

    def close(self) -> None:
        self.server.kill()
        self.server.wait(5)
        shutil.rmtree(self.etc, ignore_errors=True)


def firewall(ns: Netns, *rule: str, tool: str = "iptables") -> None:
    """One rule on the namespace's loopback, outgoing direction."""
    ns.run(tool, "-A", "OUTPUT", "-o", "lo", "-p", "tcp", *rule)


def port_range(ns: Netns, lo: int, hi: int) -> None:
    ns.run("sysctl", "-w", f"net.ipv4.ip_local_port_range={lo} {hi}")


PORT_HOLDER = """
import socket, sys
held = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    held.append(s)
print("held", flush=True)
sys.stdin.readline()
for s in held:
    s.close()
print("released", flush=True)
sys.stdin.read()
"""


def hold_ports(ns: Netns, lo: int, hi: int) -> subprocess.Popen[str]:
    """The namespace's ephemeral range narrowed to LO-HI and every port of it bound by
    another process (PORT_HOLDER), until a line on its stdin releases them."""
    port_range(ns, lo, hi)
    holder = ns.popen(
        sys.executable,
        "-c",
        PORT_HOLDER,
        *map(str, range(lo, hi + 1)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def veth(a: Netns, a_addr: str, b: Netns, b_addr: str) -> tuple[str, str]:
    """A veth pair between two namespaces, each end up with its address (`10.9.0.1/24`,
    private, inside namespaces the test made); the two interface names."""
    tag = uuid.uuid4().hex[:6]
    a_if, b_if = f"va{tag}", f"vb{tag}"
    a.run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    a.run("ip", "addr", "add", a_addr, "dev", a_if)
    b.run("ip", "addr", "add", b_addr, "dev", b_if)
    a.run("ip", "link", "set", a_if, "up")
    b.run("ip", "link", "set", b_if, "up")
    return a_if, b_if


# "12:00:00.000000 IP 127.0.0.1.43282 > 127.0.0.1.5001: Flags [S], seq ..."
SYN_LINE = re.compile(r"IP6? (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[S\],")
# A SYN's headers (link, IPv6, TCP with options) fit in 128 bytes. tcpdump's default snap
# length makes each slot of its ring buffer as large as loopback's 64 KiB MTU: 2 MiB then
# holds 32 packets, and a burst of hundreds sent while tcpdump waits for a core is lost.
SNAPLEN = 128
CAPTURE_BUFFER_KIB = 16384  # the ring: ~60,000 SYNs at this snap length
MARK = 9  # discard: a closed port in a namespace of our own, never a probe's target


class SynCapture:
    """tcpdump on a namespace's `lo`, into a file: the SYNs (without ACK) sent to `port` (or
    all of them). Our own SYNs to MARK, each from a source port of its own, say how far the
    file has got: tcpdump writes packets in order, so once one is in the file everything sent
    before it is too (no fixed wait for the last packets to arrive)."""

    def __init__(self, ns: Netns, path: Path, port: int | None = None) -> None:
        self.ns, self.path, self.knocks = ns, path, 0
        match = "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"
        if port is not None:
            match += f" and (dst port {port} or dst port {MARK})"
        self.proc = ns.popen(
            "tcpdump", "-i", "lo", "-nn", "-U", "--immediate-mode", "-s", str(SNAPLEN),
            "-B", str(CAPTURE_BUFFER_KIB), "-w", str(path), match,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on lo" once the capture is armed
        assert "listening on" in line, line
        self.written()  # and writing

    def _lines(self, whole: bool = False) -> list[tuple[str, int, str, int]]:
        """The SYNs in the file (while it is written, its last packet may be cut short)."""
        out = subprocess.run(["tcpdump", "-r", str(self.path), "-nn"], capture_output=True,
                             text=True, check=whole).stdout  # fmt: skip
        found = []
        for line in out.splitlines():
            m = SYN_LINE.search(line)
            assert m or not whole, line
            if m:
                found.append((m[1], int(m[2]), m[3], int(m[4])))
        return found

    def written(self) -> None:
        """Until everything sent so far is in the file: a SYN of ours to MARK seen there (sent
        again each second: a burst before it may have overrun the capture's buffer)."""
        self.knocks += 1
        sport = 30000 + self.knocks  # below the ephemeral ports: nothing else sends from it

        def knock() -> None:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", sport))
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", MARK))  # refused: the SYN is all that is sent

        sent = [0.0]

        def seen() -> bool:
            if time.monotonic() - sent[0] >= 1.0:
                in_netns(self.ns, knock)
                sent[0] = time.monotonic()
            return any(sp == sport and dp == MARK for _, sp, _, dp in self._lines())

        wait_for("the capture to write a SYN of ours", seen, timeout=15, step=0.05)

    def syns(self) -> list[tuple[str, int, str, int]]:
        """Stop once the file holds every SYN sent so far: (src, sport, dst, dport) of each,
        in order, ours to MARK left out."""
        self.written()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(5)
        assert self.proc.stderr is not None
        report = self.proc.stderr.read()  # its counts, at exit
        dropped = re.search(r"(\d+) packets? dropped by kernel", report)
        assert dropped is not None and dropped[1] == "0", f"the capture lost packets: {report}"
        return [syn for syn in self._lines(whole=True) if syn[3] != MARK]

    def close(self) -> None:
        kill(self.proc)
