"""Counts as English: `1 target`, `2 targets`."""

from __future__ import annotations


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`n` and the noun, singular for 1 (`nouns`: a plural other than noun + "s")."""
    return f"{n} {noun}" if n == 1 else f"{n} {nouns or noun + 's'}"
