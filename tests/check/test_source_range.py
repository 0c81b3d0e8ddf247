"""`probe check -s ADDR:LO-HI` end to end: every attempt's local port inside the range,
on the records and on the wire, at -C 200 with 200 attempts really in flight (SYNs dropped
by a firewall inside a namespace of our own), and a range smaller than -C lowering the
concurrency with one line."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from helpers import (
    Netns,
    NsServer,
    SynCapture,
    check_in,
    drop_syns,
    need_tools,
    parse_records,
    ts,
)

LO, HI = 40000, 40299  # the range, inside the namespace: nothing else there holds a port


def test_every_port_inside_the_range_at_concurrency_200(netns: Netns, tmp_path: Path) -> None:
    """5000 listens, 5001-5099 refuse, 6000-6199 drop every SYN (200 attempts held in
    flight at once); a capture of every SYN we send shows no source port outside LO-HI."""
    need_tools(netns, "iptables", "tcpdump")
    server = NsServer(netns, 5000)
    drop_syns(netns, "6000:6199")
    cap = SynCapture(netns, tmp_path / "syns.pcap")
    try:
        result = check_in(
            netns, "127.0.0.1:5000-5099,6000-6199", "-s", f"127.0.0.1:{LO}-{HI}",
            "-C", "200", "-t", "0.5", "--json",
        )  # fmt: skip
        syns = cap.syns()
    finally:
        cap.close()
        server.close()

    assert result.returncode == 1, result.stderr  # the refused and dropped ports
    recs = parse_records(result.stdout, check=True)
    assert len(recs) == 300
    outcomes = Counter((r["port"] == 5000, r["port"] >= 6000, r["outcome"]) for r in recs)
    assert outcomes == Counter(
        {(True, False, "open"): 1, (False, False, "refused"): 99, (False, True, "timeout"): 200}
    ), outcomes
    assert all(r["local_address"] == "127.0.0.1" for r in recs)
    assert all(LO <= r["local_port"] <= HI for r in recs), [r["local_port"] for r in recs]
    # One attempt per port at a time: the 200 held in flight had 200 distinct ports.
    assert len({r["local_port"] for r in recs if r["outcome"] == "timeout"}) == 200
    # Every attempt's SYN is on the wire from the port its record names (the capture keeps
    # every packet: see SynCapture), and no SYN left from outside the range.
    wire = {(sport, dport) for _, sport, _, dport in syns}
    missing = [
        (r["local_port"], r["port"]) for r in recs if (r["local_port"], r["port"]) not in wire
    ]
    assert not missing, (len(syns), missing)
    assert [sport for _, sport, _, _ in syns if not LO <= sport <= HI] == []


def test_a_range_of_four_lowers_concurrency_once_and_keeps_every_outcome(
    netns: Netns,
) -> None:
    need_tools(netns, "iptables")
    server = NsServer(netns, 5000)
    drop_syns(netns, "6000:6009")
    try:
        result = check_in(
            netns, "127.0.0.1:5000-5009,6000-6009", "-s", f"127.0.0.1:{LO}-{LO + 3}",
            "-C", "50", "-t", "0.3", "--json",
        )  # fmt: skip
    finally:
        server.close()
    assert result.returncode == 1, result.stderr
    lowered = [line for line in result.stderr.splitlines() if "lowered" in line]
    assert len(lowered) == 1, result.stderr
    assert "-C 50 lowered to 4" in lowered[0] and f"{LO}-{LO + 3}" in lowered[0], lowered
    recs = parse_records(result.stdout, check=True)
    assert len(recs) == 20
    for rec in recs:
        want = "open" if rec["port"] == 5000 else ("timeout" if rec["port"] >= 6000 else "refused")
        assert rec["outcome"] == want, rec
        assert LO <= rec["local_port"] <= LO + 3, rec
    # Four at a time: never more than four of the 0.3 s timeouts overlap.
    spans = [(ts(r), ts(r) + r["latency_ms"] / 1000) for r in recs if r["outcome"] == "timeout"]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 4, spans
