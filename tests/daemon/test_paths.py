"""Address selection and per-series damped state (probe/daemon/paths.py)."""

from __future__ import annotations

import socket

from probe.daemon.paths import Health, Path, path_of, select
from probe.resolve import Address

A4 = Address(socket.AF_INET, "127.0.0.1")
B4 = Address(socket.AF_INET, "127.0.0.2")
A6 = Address(socket.AF_INET6, "::1")
BOTH = (A6, A4, B4)


def test_select_by_family_and_mode() -> None:
    assert select(BOTH, "any", "first") == [A6]
    assert select(BOTH, "ipv4", "first") == [A4]
    assert select(BOTH, "ipv6", "all") == [A6]
    assert select(BOTH, "any", "all") == [A6, A4, B4]
    assert select(BOTH, "ipv4", "all") == [A4, B4]
    assert select((A4,), "ipv6", "all") == []
    assert select((A4, A4), "any", "all") == [A4]


def test_first_mode_is_one_unlabelled_series() -> None:
    assert path_of("web", "first", A6) == Path("web")
    assert path_of("web", "first", A6).labels() == ("web", "", "")
    assert path_of("web", "all", A6).labels() == ("web", "::1", "ipv6")
    assert path_of("web", "all", None) == Path("web")  # did not resolve: the target's series


def test_each_path_has_its_own_damped_state() -> None:
    h = Health()
    v4, v6 = path_of("web", "all", A4), path_of("web", "all", A6)
    assert h.observe(v4, True, 2, 1) is not None
    assert h.observe(v6, True, 2, 1) is not None
    assert h.observe(v6, False, 2, 1) is None  # one failure: damped
    t = h.observe(v6, False, 2, 1)
    assert t is not None and (t.before, t.after) == (True, False)
    assert (h.state(v4), h.state(v6)) == (True, False)


def test_keep_forgets_paths_that_left_the_name() -> None:
    h = Health()
    v4, v6 = path_of("web", "all", A4), path_of("web", "all", A6)
    h.observe(v4, True, 1, 1)
    h.observe(v6, True, 1, 1)
    assert h.keep("web", [v4]) == [v6]
    assert h.paths("web") == [v4]
    assert h.forget("web") == [v4]
    assert h.state(v4) is None


def test_new_thresholds_apply_to_a_running_series() -> None:
    h = Health()
    p = Path("db")
    h.observe(p, True, 3, 1)
    assert h.observe(p, False, 3, 1) is None
    t = h.observe(p, False, 2, 1)  # reloaded with down_after = 2: this is the second failure
    assert t is not None and t.after is False


def test_the_target_is_down_when_any_path_is_down_and_up_when_all_are() -> None:
    h = Health()
    v4, v6 = path_of("web", "all", A4), path_of("web", "all", A6)
    assert h.combined("web") is None
    h.observe(v4, True, 1, 1)
    assert h.combined("web") is True
    h.observe(v6, True, 1, 2)
    assert h.combined("web") is None  # v6 not decided yet
    h.observe(v6, False, 1, 2)
    assert h.combined("web") is False
    h.observe(v6, True, 1, 2)
    h.observe(v6, True, 1, 2)
    assert h.combined("web") is True


async def test_kept_names_know_what_their_lookup_cost() -> None:
    """dns_ms in the daemon: the cost of the lookup whose answer an attempt used."""
    from probe.resolve import KeptNames, Resolver

    stale: list[str] = []
    names = KeptNames(Resolver(ttl=0.0), 60.0, 5.0, lambda host, code: stale.append(host))
    assert names.cost_ms("localhost") == 0.0  # never resolved
    await names.first("localhost", 5.0)
    assert names.get("localhost")
    assert names.cost_ms("localhost") > 0.0
    assert names.cost_ms("127.0.0.1") == 0.0  # a literal needs no lookup
    names.cancel()
    assert not stale
