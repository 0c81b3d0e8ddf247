"""The daemon's diagnostics: flap damping, every address of a dual-stack name,
dns_ms, and a source port range. `probe run` as a subprocess against real sockets; the
dual-stack name lives in the /etc/hosts of a network namespace of our own."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Daemon, FullQueueListener, Netns, RecordingListener, can_netns, free_port_block

Rec = dict[str, Any]


def config(targets: str, *, listen: str = "127.0.0.1:0", extra: str = "") -> str:
    return (
        '[defaults]\ninterval = 0.1\ntimeout = 0.5\n\n[log]\nformat = "json"\n\n'
        f'[metrics]\nlisten = "{listen}"\n\n{extra}\n{targets}'
    )


def up_lines(text: str, metric: str = "probe_up") -> dict[str, float]:
    """`metric` samples: the text inside {} → value."""
    out = {}
    for m in re.finditer(rf"^{metric}\{{(.*)\}} (\S+)$", text, re.M):
        out[m[1]] = float(m[2])
    return out


@pytest.fixture
def run(tmp_path: Path, daemons: list[Daemon]) -> Iterator[Any]:
    def go(text: str, wrap: list[str] | None = None) -> Daemon:
        d = Daemon.start(tmp_path, text, wrap=wrap)
        daemons.append(d)
        return d

    yield go


# -- flap damping ----------------------------------------------------------------------------


def test_state_changes_only_after_a_run_of_results(run: Any) -> None:
    """down_after = 3, up_after = 2 against a port that refuses, then listens: `unknown`
    lasts three refusals, `up` comes on the second open attempt in a row, and probe_up
    follows the damped state (absent while undecided), not the last attempt."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
    port = sock.getsockname()[1]
    try:
        d = run(config(f'[[targets]]\naddress = "127.0.0.1:{port}"\nname = "flappy"\n'
                       "down_after = 3\nup_after = 2\n"))  # fmt: skip
        d.wait_event("state", name="flappy", to="down")
        _, _, body = d.get("/metrics")
        assert up_lines(body).get('target="flappy"') == 0.0
        sock.listen(64)
        d.wait_event("state", name="flappy", to="up")
    finally:
        sock.close()
    lines = d.lines()
    flappy = [x for x in lines if x.get("name") == "flappy" or x.get("event") == "state"]
    # the record stream between the events: exactly the runs the thresholds ask for
    down_at = next(i for i, x in enumerate(flappy) if x.get("event") == "state")
    before = [x["outcome"] for x in flappy[:down_at]]
    assert before == ["refused"] * 3, before
    state_events = [x for x in flappy if x.get("event") == "state"]
    assert [(e["from"], e["to"]) for e in state_events] == [("unknown", "down"), ("down", "up")]
    up_at = flappy.index(state_events[1])
    after_down = [x["outcome"] for x in flappy[down_at + 1 : up_at]]
    assert after_down[-2:] == ["open", "open"] and "open" not in after_down[:-2], after_down


def test_probe_up_is_absent_until_the_first_run_completes(run: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        d = run(config(f'[[targets]]\naddress = "127.0.0.1:{port}"\nname = "slow"\n'
                       "down_after = 1000\n"))  # fmt: skip
        d.wait_records("slow", 3)
        _, _, body = d.get("/metrics")
    assert 'probe_attempts_total{outcome="refused",target="slow"}' in body or re.search(
        r"probe_attempts_total\{[^}]*refused[^}]*\} [1-9]", body
    )
    assert 'target="slow"' not in "".join(up_lines(body))
    assert not d.events("state")


# -- dual-stack names ----------------------------------------------------------------------

DUAL_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    socks = {}
    v4 = socket.socket(); v4.bind(("127.0.0.1", 0)); v4.listen(256)
    port = v4.getsockname()[1]
    v6 = socket.socket(socket.AF_INET6)
    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    v6.bind(("::1", port)); v6.listen(256)
    def serve(s):
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            conn.close()
    for s in (v4, v6):
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print(port, flush=True)
    for line in sys.stdin:
        if line.strip() == "close6":
            v6.close()
            print("closed", flush=True)
    """
)


BIND6 = "import socket; socket.socket(socket.AF_INET6).bind(('::1', 0))"


@pytest.fixture
def dual(tmp_path: Path) -> Iterator[tuple[Netns, subprocess.Popen[str], int]]:
    """A namespace whose /etc/hosts says dual.test is 127.0.0.1 and ::1 (`ip netns exec`
    bind-mounts /etc/netns/NAME/hosts over /etc/hosts), with a listener on both."""
    reason = can_netns()
    if reason:
        pytest.skip(reason)
    ns = Netns()
    hosts = "127.0.0.1 localhost\n127.0.0.1 dual.test\n::1 dual.test\n"
    try:
        with ns.etc("hosts", hosts):
            probe6 = subprocess.run(
                [*ns.prefix(), sys.executable, "-c", BIND6],
                capture_output=True,
            )  # fmt: skip
            if probe6.returncode:
                pytest.skip("no IPv6 loopback in a namespace here")
            server = ns.popen(
                sys.executable, "-c", DUAL_SERVER, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert server.stdout is not None
            port = int(server.stdout.readline())
            yield ns, server, port
            server.kill()
            server.wait()
    finally:
        ns.delete()


def ns_metrics(ns: Netns, port: int) -> str:
    code = (
        "import urllib.request, sys;"
        "o = urllib.request.build_opener(urllib.request.ProxyHandler({}));"
        f"sys.stdout.write(o.open('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())"
    )
    return ns.run(sys.executable, "-c", code).stdout


def test_every_address_of_a_dual_stack_name_is_its_own_series(
    run: Any, dual: tuple[Netns, subprocess.Popen[str], int]
) -> None:
    ns, server, port = dual
    d = run(
        config(
            f'[[targets]]\naddress = "dual.test:{port}"\nname = "dual"\naddresses = "all"\n'
            f'[[targets]]\naddress = "dual.test:{port}"\nname = "dual6"\nfamily = "ipv6"\n'
            f'[[targets]]\naddress = "dual.test:{port}"\nname = "dual-first"\n'
        ),
        wrap=ns.prefix(),
    )
    d.wait_event("state", name="dual", address="::1", to="up")
    d.wait_event("state", name="dual", address="127.0.0.1", to="up")
    recs = d.records("dual")
    assert {(r["address"], r["family"], r["outcome"]) for r in recs} >= {
        ("127.0.0.1", "ipv4", "open"),
        ("::1", "ipv6", "open"),
    }
    # the other two targets' first records may still be on their way (their own phases)
    assert {r["address"] for r in d.wait_records("dual6", 1)} == {"::1"}
    assert len({r["address"] for r in d.wait_records("dual-first", 1)}) == 1
    # the name's lookup cost is on the records (the first lookup is > 0)
    assert all(isinstance(r["dns_ms"], float) and r["dns_ms"] >= 0 for r in recs)
    assert any(r["dns_ms"] > 0 for r in recs)
    mport = d.port
    body = ns_metrics(ns, mport)
    paths = up_lines(body, "probe_path_up")
    assert paths == {
        'address="127.0.0.1",family="ipv4",target="dual"': 1.0,
        'address="::1",family="ipv6",target="dual"': 1.0,
    }, paths
    assert up_lines(body)['target="dual"'] == 1.0

    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("close6\n")
    server.stdin.flush()
    assert server.stdout.readline().strip() == "closed"
    d.wait_event("state", name="dual", address="::1", to="down")
    d.wait_event("state", name="dual6", to="down")
    body = ns_metrics(ns, mport)
    assert up_lines(body, "probe_path_up") == {
        'address="127.0.0.1",family="ipv4",target="dual"': 1.0,
        'address="::1",family="ipv6",target="dual"': 0.0,
    }
    assert up_lines(body)['target="dual"'] == 0.0  # one broken path: the target is down
    assert not [
        e for e in d.events("state") if e.get("address") == "127.0.0.1" and e["to"] == "down"
    ]
    v4_after = [r for r in d.records("dual") if r["family"] == "ipv4"][-3:]
    assert {r["outcome"] for r in v4_after} == {"open"}


# -- source port range ------------------------------------------------------------------------


def test_a_source_range_confines_ports_and_lowers_concurrency_once(
    run: Any, tmp_path: Path
) -> None:
    listener = RecordingListener()
    full = FullQueueListener()
    lo = free_port_block(4, 21000)
    try:
        targets = "".join(
            f'[[targets]]\naddress = "{addr}"\nname = "t{i}"\n'
            for i, addr in enumerate([listener.target, f"127.0.0.1:{full.port}"] * 3)
        )
        d = run(
            config(
                targets, extra=f'[engine]\nconcurrency = 50\nsource = "127.0.0.1:{lo}-{lo + 3}"\n'
            )
        )
        ev = d.wait_event("source_range")
        for i in range(6):
            d.wait_records(f"t{i}", 2)
    finally:
        listener.close()
        full.close()
    assert (ev["ports"], ev["concurrency"], ev["requested"]) == (4, 4, 50)
    assert len(d.events("source_range")) == 1
    recs = d.records()
    assert {r["local_port"] for r in recs} <= set(range(lo, lo + 4)), recs
    assert {r["outcome"] for r in recs if r["port"] == listener.port} == {"open"}
    assert {r["outcome"] for r in recs if r["port"] == full.port} == {"timeout"}
    assert d.stop() == 0


RELOAD_INTO_A_FULL_LOG = """
import asyncio, os, sys
from probe.daemon.app import Daemon
from probe.daemon.config import load_config
from probe.output.writer import RecordWriter, open_stream

async def main(path):
    writer = RecordWriter(open_stream(os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)))
    daemon = Daemon(path, load_config(path), writer)
    writer.msg(b"x" * 65500)  # buffered: the next event overflows the 64 KiB buffer
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("concurrency = 4", "concurrency = 50"))
    daemon._reload()  # what SIGHUP runs: its source_range event is the write that fails
    print(daemon.exit_code, daemon.fatal)

asyncio.run(main(sys.argv[1]))
"""


def test_a_reload_whose_source_range_event_meets_a_full_log_stops_the_daemon(
    tmp_path: Path,
) -> None:
    """A reload that raises the concurrency past a source range writes `source_range`; when
    that write is the one that finds the log full, the daemon stops as for any broken log
    (exit 1, naming the log), not with a traceback from the signal's callback."""
    lo = free_port_block(4, 21000)
    path = tmp_path / "probe.toml"
    path.write_text(
        config(
            '[[targets]]\naddress = "127.0.0.1:9"\n',
            extra=f'[engine]\nconcurrency = 4\nsource = "127.0.0.1:{lo}-{lo + 3}"\n',
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", RELOAD_INTO_A_FULL_LOG, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert (
        done.stdout.strip() == "1 cannot write records to standard output: No space left on device"
    )
