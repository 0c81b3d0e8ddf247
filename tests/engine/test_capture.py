"""What the wire shows, against what the record says: a packet capture inside a namespace of
our own (root, iproute2, iptables and tcpdump; skipped otherwise). SYNs are dropped on the
way *in* (INPUT), after tcpdump has seen them leave on `lo`, so every SYN sent is in the
capture. The basic retransmit tests are in test_syn_retransmits.py; these add the wire."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    EVERY_OTHER,
    Netns,
    NsServer,
    SynCapture,
    check_in,
    drop_syns,
    need_tools,
    parse_records,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")


def captured(
    ns: Netns, port: int, pcap: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, int, str, int]]]:
    """`probe check ARGS` in the namespace, and the SYNs to `port` a capture saw meanwhile."""
    cap = SynCapture(ns, pcap, port)
    try:
        result = check_in(ns, *args)
        return result, cap.syns()
    finally:
        cap.close()


@pytest.fixture
def capture_ns(netns: Netns, tmp_path: Path) -> Iterator[tuple[Netns, Path]]:
    need_tools(netns, "iptables", "tcpdump")
    yield netns, tmp_path


@pytest.fixture
def first_syn_dropped(capture_ns: tuple[Netns, Path]) -> Iterator[int]:
    """A listener in the namespace whose every other SYN, the first one first, is dropped:
    a connect gets through on its first retransmission. Its port."""
    ns, _ = capture_ns
    server = NsServer(ns, 0)
    (port,) = server.ports
    drop_syns(ns, port, *EVERY_OTHER)
    yield port
    server.close()


def test_both_syns_of_a_retransmitted_attempt_leave_from_the_recorded_port(
    capture_ns: tuple[Netns, Path], first_syn_dropped: int
) -> None:
    ns, tmp = capture_ns
    port = first_syn_dropped
    result, syns = captured(ns, port, tmp / "syn.pcap", f"127.0.0.1:{port}", "-t", "5", "--json")
    assert result.returncode == 0, result.stderr
    (rec,) = parse_records(result.stdout, check=True)
    assert (rec["outcome"], rec["syn_retransmits"], rec["rtt_ms"]) == ("open", 1, None), rec
    # The wire: two SYNs, one 4-tuple, and its source port is the record's local_port.
    assert syns == [("127.0.0.1", rec["local_port"], "127.0.0.1", port)] * 2, syns


def test_a_timeout_counts_every_unanswered_syn_on_the_wire(
    capture_ns: tuple[Netns, Path],
) -> None:
    """Every SYN dropped, 3.5 s to wait: the kernel sent the SYN at 0, 1 and 3 s (the RTO
    doubles from 1 s), so the record says 2 retransmits, and the capture shows 3 SYNs from
    the record's port."""
    ns, tmp = capture_ns
    port = 5002
    drop_syns(ns, port)
    result, syns = captured(
        ns, port, tmp / "timeout.pcap", f"127.0.0.1:{port}", "-t", "3.5", "--json"
    )
    assert result.returncode == 1, result.stderr
    (rec,) = parse_records(result.stdout, check=True)
    assert (rec["outcome"], rec["error"], rec["rtt_ms"]) == ("timeout", "ETIMEDOUT", None), rec
    assert rec["syn_retransmits"] >= 2, rec
    assert len(syns) == rec["syn_retransmits"] + 1, (syns, rec)
    assert set(syns) == {("127.0.0.1", rec["local_port"], "127.0.0.1", port)}, syns


def test_the_human_line_of_a_retransmitted_attempt_says_so(
    capture_ns: tuple[Netns, Path], first_syn_dropped: int
) -> None:
    ns, _ = capture_ns
    port = first_syn_dropped
    result = check_in(ns, f"127.0.0.1:{port}", "-t", "5")
    assert result.returncode == 0, result.stderr
    [line] = [x for x in result.stdout.splitlines() if f":{port}" in x]
    assert re.search(r"\bopen\b.*local 127\.0\.0\.1:\d+ +\d+\.\d\d ms +SYN\u00d72$", line), line
    assert "rtt" not in line  # no sample: nothing to show
