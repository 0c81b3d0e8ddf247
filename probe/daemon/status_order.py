"""Which targets a status page shows, and in which order, without looking at every target.

The page lists targets down first, then unknown, then up, in config order within each, and
counts them: with 10,000 targets a pass over all of them in Python for every build would be
the page's main cost to the daemon's loop. Here every target's state is one byte in a bytearray
in config order, kept current from the history's log of state changes (`History.moved`: only
the targets that changed are touched). Counting is `bytes.count`, picking the n-th target in
a state is `itertools.compress` over a translated mask: C loops over 10,000 bytes, tens of
microseconds, and no Python object per target. A pass over the targets happens only when the
target list changes (a reload) or for a label filter or grouping not asked for before, and it
yields to the loop every CHUNK targets.
"""

from __future__ import annotations

import asyncio
import operator
from array import array
from collections.abc import Sequence
from itertools import compress, islice

from .config import ResolvedTarget
from .history import History

DOWN, UNKNOWN, UP = 0, 1, 2  # the page's order: the ones that need a look first
CHUNK = 1000  # targets looked at between two yields to the loop (~0.3 ms)
SELECTIONS = 64  # label filters and groupings kept at once
_MASKS = [bytes(int(i == code) for i in range(256)) for code in range(3)]

Selection = list[tuple[str, "array[int] | None"]]  # (group, config positions; None: all)


def code(up: bool | None) -> int:
    return UNKNOWN if up is None else (UP if up else DOWN)


def _same(a: Sequence[object], b: Sequence[object]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


class Order:
    """The targets in config order and each one's state, for picking a page's rows."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.targets: list[ResolvedTarget] = []
        self.offered: list[str] = []  # label filters the config has, KEY:VALUE (capped)
        self._states = bytearray()
        self._first: dict[str, int] = {}  # name → position (ints and strs: not GC-tracked)
        self._more: dict[str, list[int]] = {}  # the rare name that appears twice
        self._seen = 0  # history.moves when the states were last brought up to date
        self._selections: dict[tuple[tuple[tuple[str, str], ...], str], Selection] = {}
        self._lock = asyncio.Lock()

    async def sync(self, targets: list[ResolvedTarget], offered_max: int) -> None:
        """Take the target list (cheap when it is the same objects as last time) and bring
        every state up to date."""
        async with self._lock:
            if not _same(targets, self.targets):
                await self._reindex(targets, offered_max)
            self._catch_up()

    async def _reindex(self, targets: list[ResolvedTarget], offered_max: int) -> None:
        self._seen = self.history.moves  # changes from here on are caught up on after
        histories = self.history.targets
        states = bytearray(len(targets))
        first: dict[str, int] = {}
        more: dict[str, list[int]] = {}
        offered: set[tuple[str, str]] = set()
        for n, target in enumerate(targets):
            if n % CHUNK == CHUNK - 1:
                await asyncio.sleep(0)
            name = target.name
            if first.setdefault(name, n) != n:
                more.setdefault(name, []).append(n)
            history = histories.get(name)
            states[n] = code(None if history is None else history.state)
            if target.labels and len(offered) < offered_max:
                offered.update(target.labels.items())
        self.targets, self._states, self._first, self._more = targets, states, first, more
        self.offered = sorted(f"{k}:{v}" for k, v in offered)
        self._selections.clear()

    def _catch_up(self) -> None:
        history = self.history
        behind = history.moves - self._seen
        self._seen = history.moves
        if behind == 0:
            return
        if behind > len(history.moved):  # the log went round: look at every target
            names: object = self._first
        else:
            names = set(islice(reversed(history.moved), behind))
        histories, states, first, more = history.targets, self._states, self._first, self._more
        for name in names:  # type: ignore[attr-defined]
            n = first.get(name)
            if n is None:
                continue
            h = histories.get(name)
            states[n] = c = code(None if h is None else h.state)
            for m in more.get(name, ()):
                states[m] = c

    def find(self, name: str) -> ResolvedTarget | None:
        """The target of that name, as of the last `sync`."""
        n = self._first.get(name)
        return None if n is None else self.targets[n]

    async def selection(self, labels: tuple[tuple[str, str], ...], group: str) -> Selection:
        """The groups (sorted by value, "(none)" last) and the positions each holds, after
        the label filter. Made by a pass over the targets the first time it is asked for
        after a reindex, then kept."""
        key = (labels, group)
        kept = self._selections.get(key)
        if kept is not None:
            return kept
        if not labels and not group:
            made: Selection = [("", None)]
        else:
            targets = self.targets
            by_group: dict[str, array[int]] = {}
            for n, target in enumerate(targets):
                if n % CHUNK == CHUNK - 1:
                    await asyncio.sleep(0)
                tl = target.labels
                if labels and any(tl.get(k) != v for k, v in labels):
                    continue
                g = tl.get(group, "") if group else ""
                positions = by_group.get(g)
                if positions is None:
                    positions = by_group[g] = array("i")
                positions.append(n)
            if targets is not self.targets:
                return await self.selection(labels, group)  # reindexed meanwhile: again
            order = sorted(by_group, key=lambda g: (g == "" and bool(group), g))
            made = [(g, by_group[g]) for g in order]
        if len(self._selections) >= SELECTIONS:
            self._selections.clear()  # crafted query strings cannot grow it without bound
        self._selections[key] = made
        return made

    def pick(
        self, selection: Selection, skip: int, room: int
    ) -> tuple[list[int], list[tuple[str, list[int]]]]:
        """Counts by state ([down, unknown, up]) over the selection, and the positions of
        the `room` rows after the first `skip`, by group: down first, config order within."""
        states = self._states
        counts = [0, 0, 0]
        subs: list[tuple[str, Sequence[int], bytes | bytearray, tuple[int, int, int]]] = []
        for group, positions in selection:
            if positions is None:
                sub: bytes | bytearray = states
                where: Sequence[int] = range(len(states))
            else:
                sub, where = bytes(map(states.__getitem__, positions)), positions
            c = (sub.count(DOWN), sub.count(UNKNOWN), sub.count(UP))
            for s in (DOWN, UNKNOWN, UP):
                counts[s] += c[s]
            subs.append((group, where, sub, c))
        picked: list[tuple[str, list[int]]] = []
        for group, where, sub, c in subs:
            for s in (DOWN, UNKNOWN, UP):
                if room <= 0:
                    return counts, picked
                if skip >= c[s]:
                    skip -= c[s]
                    continue
                take = min(room, c[s] - skip)
                chosen = list(islice(compress(where, sub.translate(_MASKS[s])), skip, skip + take))
                skip, room = 0, room - take
                if picked and picked[-1][0] == group:
                    picked[-1][1].extend(chosen)
                else:
                    picked.append((group, chosen))
        return counts, picked
