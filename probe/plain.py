"""Plain data classes for the `probe check` path, without the `dataclasses` module.

Importing `dataclasses` (it brings `inspect`, `ast`, `dis`) and having it generate each
class's methods cost ~10 ms and ~0.7 ms a class at start-up here: a quarter of
`probe check`'s whole start-up budget (≤ 60 ms). A class names its fields in `__slots__`
and writes a short `__init__`; from these bases it gets what the dataclasses gave it:
equality and `repr` from the fields, and for `Frozen` read-only fields, a hash and
`replace`. The daemon's and the asyncio engine's classes stay dataclasses: their paths
import far more than this anyway.
"""

from __future__ import annotations

from typing import Any, NoReturn, Self


class FrozenError(AttributeError):
    """A field of a frozen object was assigned (dataclasses' FrozenInstanceError)."""


class Plain:
    """Mutable: equality and `repr` from the fields; unhashable (defining `__eq__` without
    `__hash__` makes it so, as for a dataclass with eq)."""

    __slots__: tuple[str, ...] = ()

    def _set(self, fields: dict[str, Any]) -> None:
        """Each field from `fields` (`__init__` passes its `locals()`: a parameter per field)."""
        for name in self.__slots__:
            object.__setattr__(self, name, fields[name])

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Plain)
        return self._values() == other._values()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Frozen(Plain):
    """Read-only once `__init__` has set the fields with `_set`; hashable."""

    __slots__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise FrozenError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise FrozenError(f"cannot delete field {name!r}")

    def __hash__(self) -> int:
        return hash(self._values())

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (dataclasses.replace)."""
        fields = dict(zip(self.__slots__, self._values(), strict=True))
        fields.update(changes)
        return type(self)(**fields)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its class and fields (the default would assign them one by one)."""
        return _restore, (type(self), self._values())


def _restore(cls: type[Frozen], values: tuple[Any, ...]) -> Frozen:
    obj = cls.__new__(cls)
    obj._set(dict(zip(cls.__slots__, values, strict=True)))
    return obj
