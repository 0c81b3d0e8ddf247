"""Flap damping (probe/daemon/state.py): pure, so every sequence is checked exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.daemon.state import Damper, Transition


def run(damper: Damper, results: str) -> list[str]:
    """Results as a string of u/d; transitions as 'from>to' strings."""
    out = []
    for ch in results:
        t = damper.observe(ch == "u")
        if t is not None:
            out.append(f"{_name(t.before)}>{_name(t.after)}")
    return out


def _name(up: bool | None) -> str:
    return "unknown" if up is None else ("up" if up else "down")


def test_defaults_flip_on_every_change_like_before_damping() -> None:
    assert run(Damper(), "uuduud") == ["unknown>up", "up>down", "down>up", "up>down"]


def test_down_after_three_needs_three_failures_in_a_row() -> None:
    d = Damper(down_after=3)
    assert run(d, "u") == ["unknown>up"]
    assert run(d, "dd") == []
    assert run(d, "u") == []  # a success breaks the run
    assert run(d, "dd") == []
    assert run(d, "d") == ["up>down"]
    assert d.state is False


def test_up_after_two_needs_two_successes_in_a_row() -> None:
    d = Damper(up_after=2)
    assert run(d, "d") == ["unknown>down"]
    assert run(d, "ududu") == []
    assert run(d, "u") == ["down>up"]


def test_first_state_also_needs_its_run() -> None:
    d = Damper(down_after=3, up_after=2)
    assert run(d, "dd") == []
    assert d.state is None  # still unknown: a failing start is not yet "down"
    assert run(d, "uu") == ["unknown>up"]
    d = Damper(down_after=3, up_after=2)
    assert run(d, "ddd") == ["unknown>down"]


def test_flapping_below_both_thresholds_never_changes_state() -> None:
    d = Damper(down_after=2, up_after=2)
    assert run(d, "uu") == ["unknown>up"]
    assert run(d, "dudududu") == []
    assert d.state is True


def test_retune_keeps_state_and_completes_a_run_that_now_suffices() -> None:
    d = Damper(down_after=5)
    run(d, "uddd")
    assert d.state is True
    assert d.retune(3, 1) == Transition(True, False)
    assert d.state is False
    assert d.retune(2, 2) is None


@pytest.mark.parametrize("bad", [(0, 1), (1, 0)])
def test_thresholds_below_one_are_refused(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        Damper(*bad)


@given(
    st.integers(1, 5),
    st.integers(1, 5),
    st.lists(st.booleans(), max_size=60),
)
def test_a_transition_happens_exactly_when_the_run_reaches_its_threshold(
    down_after: int, up_after: int, results: list[bool]
) -> None:
    d = Damper(down_after, up_after)
    state: bool | None = None
    for i, up in enumerate(results):
        run_len = 0
        for prev in reversed(results[: i + 1]):
            if prev is not up:
                break
            run_len += 1
        need = up_after if up else down_after
        expect = state is not up and run_len >= need
        t = d.observe(up)
        assert (t is not None) == expect
        if t is not None:
            assert t.before is state and t.after is up
            state = up
        assert d.state is state
