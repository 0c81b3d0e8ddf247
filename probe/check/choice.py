"""Which core runs a plan: the native one when it implements every option the plan uses,
the Python engine otherwise, and why (`-v` says it).

An allow-list: a field of the plan, its output or its engine options counts as used when it
is away from its default, and the plan reaches the native core only when every used field
is one the native runner declares below (or, for engine options, `native.IMPLEMENTS`). A
field added later is refused until the native core implements it and says so here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..engine import EngineOptions, native
from ..plain import Frozen
from .plan import Output, Plan

# Whether the native runner takes a field's value (the object holding it: for its other fields).
Accept = Callable[[Any, Any], bool]
_ANY: Accept = lambda value, holder: True  # noqa: E731

# The Plan and Output fields the native runner implements, with the values it takes.
NATIVE_PLAN: dict[str, Accept] = {
    "tokens": _ANY,  # addresses, names, ranges, files, standard input: `native_feed`
    "default_ports": _ANY,
    "count": lambda count, _: count == 1,  # repeats (-c N, -c 0) stay with the Python engine
    "interval": _ANY,  # between repeats only
    "family": _ANY,
    "workers": _ANY,
    "rate_epoch": _ANY,  # the grid --rate keeps (engine options say whether it is used)
    "endpoints": _ANY,  # a count for the summary, not an option
    "concurrency_given": _ANY,  # for the -C lowered message
    "blocking_input": _ANY,
    "exclude": _ANY,
    "shard": _ANY,
    "options": _ANY,  # judged field by field below
    "output": _ANY,
}
NATIVE_OUTPUT: dict[str, Accept] = {
    "format": _ANY,  # human (rendered from the core's records), json, csv
    "open_only": _ANY,
    "list_mode": _ANY,
    "target_width": _ANY,
    "histogram": _ANY,  # buckets of repeats only
    "json_file": _ANY,
    "verbose": _ANY,
}

# How a user names a field (in the -v line); otherwise `--` and the field's name.
FLAGS = {
    "count": "-c",
    "json_file": "-o",
    "open_only": "--open",
    "source_ports": "-s ADDR:LO-HI",
    "lag_limit_ms": "--lag-limit",
    "concurrency": "-C",
    "stages": "a stage after the connect (--tls, --send, --expect, --starttls, --reflect)",
}


class Choice(Frozen):
    """The core that runs a plan, and every reason the native one does not."""

    __slots__ = ("core", "reasons")
    core: str  # "native" or "python"
    reasons: tuple[str, ...]

    def __init__(self, core: str, reasons: tuple[str, ...]) -> None:
        self._set(locals())

    def line(self) -> str:
        if not self.reasons:
            return f"core: {self.core}"
        return f"core: {self.core} (not native: {'; '.join(self.reasons)})"


def choose(plan: Plan) -> Choice:
    """The native core when it is built and implements every option used; the Python
    engine otherwise."""
    if native.UNAVAILABLE is not None:
        return Choice("python", (native.UNAVAILABLE,))
    reasons = tuple(refused(plan))
    return Choice("python", reasons) if reasons else Choice("native", ())


def refused(plan: Plan) -> Iterator[str]:
    """Each option the plan uses that the native core does not implement, as a user names it."""
    yield from _refused(plan, Plan, NATIVE_PLAN)
    yield from _refused(plan.output, Output, NATIVE_OUTPUT)
    implemented = dict.fromkeys(native.IMPLEMENTS, _ANY)
    yield from _refused(plan.options, EngineOptions, implemented)


def _refused(obj: Frozen, cls: type[Frozen], allowed: dict[str, Accept]) -> Iterator[str]:
    defaults = _defaults(cls)
    for name in cls.__slots__:
        value = getattr(obj, name)
        accept = allowed.get(name)
        if accept is not None:
            if not accept(value, obj):
                yield _named(name, value)
        elif name not in defaults or value != defaults[name]:
            yield _named(name, value)


def _named(name: str, value: Any) -> str:
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    if isinstance(value, bool) or not isinstance(value, int | float | str) or name == "json_file":
        return flag
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _defaults(cls: type[Frozen]) -> dict[str, Any]:
    """The defaults of a class's `__init__` parameters (without `inspect`: start-up)."""
    init = cls.__init__
    code = init.__code__
    names = code.co_varnames[1 : code.co_argcount]
    values = init.__defaults__ or ()
    found = dict(zip(names[len(names) - len(values) :], values, strict=True))
    found.update(init.__kwdefaults__ or {})
    return found
