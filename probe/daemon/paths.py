"""Which addresses of a name the daemon probes, and the series each one is.

Per target, `family` ("ipv4", "ipv6", "any") filters the name's addresses and `addresses`
("first", "all") picks from what is left. With "first" the target is one series
(`probe_up{target="web"}`). With "all" every address is probed on the target's
schedule and is a series of its own, told apart by the `address` and `family` labels
beside `target` in the `probe_path_*` metrics: a broken IPv6 path behind a working IPv4
one shows as `probe_path_up{target="web",family="ipv6"} 0`, and the target's own
`probe_up` goes to 0 (down when any path is down, up when all are).

Labels, not a suffixed `target`, because that is Prometheus practice: `target` keeps
meaning the configured name that `probe_target_info` and every alert join on. Separate
`probe_path_*` families, not `address`/`family` labels on every per-target metric, so a
"first" target's series carry no empty `address`/`family` labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from ..resolve import Address
from .state import Damper, Transition

ALL = "all"


class Path(NamedTuple):
    """One series of a target: its name, and for `addresses = "all"` the address probed.
    (A tuple: hashed and compared in C, several times an attempt.)"""

    name: str
    address: str = ""  # "" for a target probed at its first address only
    family: str = ""  # "ipv4" | "ipv6" | ""

    def labels(self) -> tuple[str, str, str]:
        """(target, address, family) label values."""
        return self.name, self.address, self.family


def select(addresses: Sequence[Address], family: str, mode: str) -> list[Address]:
    """The addresses to probe, in the resolver's order; [] when none is of the family."""
    chosen = [a for a in addresses if family in ("any", a.family_name)]
    return chosen[:1] if mode != ALL else list(dict.fromkeys(chosen))


def path_of(name: str, mode: str, address: Address | None) -> Path:
    if mode != ALL or address is None:
        return Path(name)
    return Path(name, address.ip, address.family_name)


class Health:
    """The damped up/down state of every series, by target name."""

    def __init__(self) -> None:
        self._by_name: dict[str, dict[Path, Damper]] = {}

    def observe(self, path: Path, up: bool, down_after: int, up_after: int) -> Transition | None:
        dampers = self._by_name.setdefault(path.name, {})
        damper = dampers.get(path)
        if damper is None:
            damper = dampers[path] = Damper(down_after, up_after)
        elif damper.down_after != down_after or damper.up_after != up_after:
            damper.retune(down_after, up_after)  # a reload changed them: the next result counts
        return damper.observe(up)

    def seed(self, path: Path, up: bool, down_after: int, up_after: int) -> None:
        """A state known from before a restart: the next results confirm or change it."""
        self._by_name.setdefault(path.name, {})[path] = Damper(down_after, up_after, up)

    def state(self, path: Path) -> bool | None:
        damper = self._by_name.get(path.name, {}).get(path)
        return None if damper is None else damper.state

    def combined(self, name: str) -> bool | None:
        """The target's state over its paths: down when any is down, up when all are up,
        unknown otherwise. With one path (addresses = "first") simply that path's."""
        dampers = self._by_name.get(name)
        if not dampers:
            return None
        if len(dampers) == 1:
            for damper in dampers.values():
                return damper.state
        states = [d.state for d in dampers.values()]
        if False in states:
            return False
        if states and None not in states:
            return True
        return None

    def paths(self, name: str) -> list[Path]:
        return list(self._by_name.get(name, ()))

    def keep(self, name: str, live: Sequence[Path]) -> list[Path]:
        """Forget the series of `name` not in `live` (an address left the name, or the
        target changed mode); the forgotten ones are returned, for the metrics."""
        dampers = self._by_name.get(name)
        if not dampers:
            return []
        if len(dampers) == 1 and len(live) == 1 and live[0] in dampers:
            return []  # the common case, every attempt: one path, the same as before
        wanted = set(live)
        gone = [p for p in dampers if p not in wanted]
        for path in gone:
            del dampers[path]
        return gone

    def forget(self, name: str) -> list[Path]:
        return list(self._by_name.pop(name, {}))
