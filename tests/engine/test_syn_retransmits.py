"""SYN retransmits and an honest RTT, against a real kernel: a namespace of our own whose
firewall drops SYNs (root, iproute2 and iptables; skipped otherwise)."""

from __future__ import annotations

import sys

import pytest
from helpers import EVERY_OTHER, Netns, NsServer, check_in, drop_syns, need_tools, parse_records

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")


def test_one_dropped_syn_is_counted_and_gives_no_rtt(netns: Netns) -> None:
    """The first SYN to the port is dropped, the second (the kernel's retransmit, ~1 s
    later) gets through: open, after about a second, one retransmit, and no RTT (the
    kernel's 1 ms there is its initial value, not a sample)."""
    need_tools(netns, "iptables")
    server = NsServer(netns, 0)
    (port,) = server.ports
    try:
        drop_syns(netns, port, *EVERY_OTHER, chain="OUTPUT")
        result = check_in(netns, f"127.0.0.1:{port}", "-t", "5", "--json")
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    (rec,) = parse_records(result.stdout, check=True)
    assert rec["outcome"] == "open", rec
    assert rec["syn_retransmits"] == 1, rec
    assert rec["rtt_ms"] is None, rec
    assert 900 <= rec["latency_ms"] <= 3000, rec  # the SYN's first RTO is 1 s
    assert rec["dns_ms"] == 0


def test_open_without_a_drop_has_a_sample(netns: Netns) -> None:
    """The same port without the rule: no retransmit, and the RTT is the kernel's sample."""
    server = NsServer(netns, 0)
    (port,) = server.ports
    try:
        result = check_in(netns, f"127.0.0.1:{port}", "-t", "5", "--json")
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    (rec,) = parse_records(result.stdout, check=True)
    assert rec["outcome"] == "open" and rec["syn_retransmits"] == 0, rec
    assert isinstance(rec["rtt_ms"], float) and 0 < rec["rtt_ms"] <= rec["latency_ms"], rec


def test_timeout_says_how_many_syns_went_unanswered(netns: Netns) -> None:
    """Every SYN dropped, 3.5 s to wait: the kernel resent the SYN at least once (at 1 s),
    and the timeout record says so."""
    need_tools(netns, "iptables")
    drop_syns(netns, 5001, chain="OUTPUT")
    result = check_in(netns, "127.0.0.1:5001", "-t", "3.5", "--json")
    assert result.returncode == 1, result.stderr
    (rec,) = parse_records(result.stdout, check=True)
    assert (rec["outcome"], rec["error"]) == ("timeout", "ETIMEDOUT"), rec
    assert rec["syn_retransmits"] >= 1, rec
    assert rec["rtt_ms"] is None
    assert 3400 <= rec["latency_ms"] <= 5500, rec
