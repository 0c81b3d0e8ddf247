"""docs/metrics.md's metric names are checked in test_metrics.py, test_daemon.py,
test_diagnostics.py, test_prometheus.py and tests/faults/test_hostile.py; the ones no other
test names are checked here: `probe_path_attempts_total`, `probe_path_connect_latency_seconds`,
`python_gc_*`, the RTT histogram's buckets, `probe_syn_retransmits_total` from a real resent
SYN, `/healthz` 503 while draining, and `process_*` (that they describe the daemon's own
process). (`probe_ip_protocol` 0 for a name that did not resolve: tests/faults/test_hostile.py.)
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

import pytest
from helpers import (
    Daemon,
    FullQueueListener,
    Netns,
    NsServer,
    RecordingListener,
    closed_port,
    config_toml,
    draining,
    logging_one_target,
    metrics_of,
    need_tools,
    ns_get,
    parse_prometheus,
    record,
    start_in,
    target_toml,
    value,
)


def test_path_series_of_a_name_with_addresses_all(
    tmp_path: Path, daemons: list[Daemon], listener: RecordingListener
) -> None:
    try:
        resolved = {str(info[4][0]) for info in socket.getaddrinfo("localhost", None)}
    except socket.gaierror:
        pytest.skip("localhost does not resolve here")
    if "127.0.0.1" not in resolved:
        pytest.skip(f"localhost is {sorted(resolved)} here")
    log = tmp_path / "probe.log"
    target = target_toml("all", f"localhost:{listener.port}", addresses="all", histograms=True)
    d = start_in(tmp_path, config_toml(log, target), log, daemons)
    d.wait_event("state", name="all", address="127.0.0.1", to="up")
    s = metrics_of(d.get)
    v4 = {"target": "all", "address": "127.0.0.1", "family": "ipv4"}
    assert (value(s, "probe_path_attempts_total", outcome="open", **v4) or 0) >= 1
    assert value(s, "probe_path_attempts_total", outcome="refused", **v4) in (None, 0.0)
    count = value(s, "probe_path_connect_latency_seconds_count", **v4)
    assert count is not None and count >= 1
    assert value(s, "probe_path_connect_latency_seconds_bucket", le="+Inf", **v4) == count
    assert value(s, "probe_path_up", **v4) == 1.0
    assert d.stop() == 0


def test_healthz_and_probe_say_503_while_the_daemon_drains(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    d = draining(tmp_path, daemons, full_queue)  # SIGTERM sent, one attempt still in flight
    status, _, body = d.get("/healthz")
    assert status == 503, body
    status, _, body = d.get(f"/probe?target=127.0.0.1:{closed_port()}")
    assert status == 503 and "shutting down" in body, (status, body)
    assert d.proc.wait(timeout=5) == 0


def _started_at(pid: int) -> float:
    """When `pid` started, from /proc (the kernel's own clock ticks since boot)."""
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    return boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")


def test_process_metrics_describe_the_daemon(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "probe.log"
    d = logging_one_target(tmp_path, log, daemons)
    time.sleep(1.5)  # a render started now, in a child, would say "started just now"
    s = metrics_of(d.get)
    started = value(s, "process_start_time_seconds")
    assert started is not None
    assert abs(started - _started_at(d.proc.pid)) < 1.0, (started, _started_at(d.proc.pid))
    assert d.stop() == 0


def test_a_resent_syn_counts_in_the_daemons_metrics(
    netns: Netns, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Every other SYN to the port is dropped (the first of each attempt): each attempt
    opens after the kernel's resend, so probe_syn_retransmits_total sums them, and the RTT
    histogram, which takes real samples only, has none of them (Karn's rule)."""
    need_tools(netns, "iptables")
    server = NsServer(netns, 0)
    try:
        (port,) = server.ports
        netns.run(
            "iptables", "-A", "OUTPUT", "-o", "lo", "-p", "tcp", "--syn",
            "--dport", str(port),
            "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0",
            "-j", "DROP",
        )  # fmt: skip
        log = tmp_path / "probe.log"
        target = target_toml("resent", f"127.0.0.1:{port}", timeout=3.0, histograms=True)
        d = start_in(tmp_path, config_toml(log, target, interval=4.0), log, daemons, netns)
        before = d.wait_records("resent", 1, timeout=20)
        mport = int(d.events("listening")[0]["address"].rpartition(":")[2])
        s = metrics_of(lambda path: ns_get(netns, mport, path))
        recs = d.records("resent")  # the page counted `before`, and maybe one more
    finally:
        server.close()
    assert all(r["outcome"] == "open" and r["syn_retransmits"] == 1 for r in recs), recs
    sent_again = value(s, "probe_syn_retransmits_total", target="resent")
    assert sent_again is not None
    assert len(before) <= sent_again <= sum(r["syn_retransmits"] for r in recs), (sent_again, recs)
    assert (value(s, "probe_connect_latency_seconds_count", target="resent") or 0) >= 1
    assert value(s, "probe_tcp_rtt_seconds_count", target="resent") in (None, 0.0)
    d.kill()


def test_rtt_histogram_has_the_latency_buckets_and_gc_series_are_there() -> None:
    from probe.daemon.metrics import Metrics

    m = Metrics(lambda: 0.0)
    s = parse_prometheus(m.exposition().decode())
    assert any(name.startswith("python_gc_") for name, _ in s)

    class Target:
        def __init__(self) -> None:
            self.name = "a"
            self.labels: dict[str, str] = {}
            self.histograms = True

    m.set_targets([Target()])
    m.observe("a", record("open", None, 0.5, 0.04))  # a histogram's series start at a sample
    text = m.exposition().decode()

    def bounds(metric: str) -> list[str]:
        return re.findall(rf'^{metric}_bucket\{{.*le="([^"]+)".*\}}', text, re.M)

    assert bounds("probe_tcp_rtt_seconds")
    assert bounds("probe_tcp_rtt_seconds") == bounds("probe_connect_latency_seconds")
