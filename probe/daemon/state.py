"""Flap damping: a target's up/down state changes only after a run of agreeing results.

`down_after = N`: N consecutive failed attempts before the state goes down;
`up_after = M`: M consecutive open attempts before it goes up. Gatus counts the same way
(`failure-threshold`, `success-threshold`: an alert fires after N failures in a row and
resolves after M successes in a row), as does Uptime Kuma's retries before DOWN.

The first state too needs its run: a new target is `unknown` until N failures or M
successes in a row decide it. So a target that fails once at start and then answers is
never reported down (the point of damping), and with the defaults (1 and 1) the first
result sets the state at once (no damping). A result that agrees with the
current state resets the opposite run: flapping below the thresholds changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Transition:
    before: bool | None  # None: unknown
    after: bool


@dataclass(slots=True)
class Damper:
    """One series' damped state. Pure: results in, transitions out, no clock, no I/O."""

    down_after: int = 1
    up_after: int = 1
    state: bool | None = None  # None: unknown, not decided yet
    _streak_up: bool | None = None  # direction of the current run of results
    _streak: int = 0  # its length

    def __post_init__(self) -> None:
        if self.down_after < 1 or self.up_after < 1:
            raise ValueError("down_after and up_after are at least 1")

    def observe(self, up: bool) -> Transition | None:
        """Count one result; the transition it completes, if any."""
        if up is self._streak_up:
            self._streak += 1
        else:
            self._streak_up, self._streak = up, 1
        if up is self.state:
            return None
        if self._streak < (self.up_after if up else self.down_after):
            return None
        before, self.state = self.state, up
        return Transition(before, up)

    def retune(self, down_after: int, up_after: int) -> Transition | None:
        """New thresholds (a reload): state and the current run are kept; a run that now
        reaches its lower threshold completes its transition at once."""
        if down_after < 1 or up_after < 1:
            raise ValueError("down_after and up_after are at least 1")
        self.down_after, self.up_after = down_after, up_after
        up = self._streak_up
        if up is None or up is self.state:
            return None
        if self._streak < (up_after if up else down_after):
            return None
        before, self.state = self.state, up
        return Transition(before, up)
