"""`dns_ms` in `probe check`: the lookup's cost on the attempts it served, 0 for literals and
for answers the run already had. Only `localhost` (from /etc/hosts) is resolved outside a
namespace of our own."""

from __future__ import annotations

import subprocess

from helpers import Netns, RecordingListener, closed_port, parse_records, probe_cmd


def check(*args: str, prefix: tuple[str, ...] = ()) -> list[dict[str, object]]:
    result = subprocess.run(
        [*prefix, *probe_cmd(), "check", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode in (0, 1), result.stderr
    return parse_records(result.stdout, check=True)


def test_literals_cost_nothing(listener: RecordingListener) -> None:
    recs = check(f"127.0.0.1:{listener.port}", "-c", "2", "-i", "0.05")
    assert [r["dns_ms"] for r in recs] == [0.0, 0.0]


def test_a_name_carries_its_lookup_once(listener: RecordingListener) -> None:
    closed = closed_port()
    recs = check("-4", f"localhost:{listener.port},{closed}", "-c", "2", "-i", "0.05")
    assert len(recs) == 4
    costs = [r["dns_ms"] for r in recs]
    assert all(isinstance(c, float) and c >= 0 for c in costs)
    first = min(recs, key=lambda r: str(r["timestamp"]))
    assert first["dns_ms"] > 0, recs  # the real lookup
    # every other attempt was served by that same answer: its share is nothing
    assert sorted(costs)[:3] == [0.0, 0.0, 0.0], costs


def test_a_name_that_does_not_resolve_says_what_the_lookup_cost(netns: Netns) -> None:
    """In a namespace with only `lo`: the lookup fails on this machine, nothing leaves it."""
    recs = check("no-such-name.invalid:80", prefix=tuple(netns.prefix()))
    [rec] = recs
    assert rec["error"] in ("EAI_NONAME", "EAI_AGAIN", "EAI_FAIL", "EAI_NODATA"), rec
    assert isinstance(rec["dns_ms"], float) and rec["dns_ms"] > 0
