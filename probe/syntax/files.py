"""Targets from the command line, files (`@FILE`) and stdin (`-`), read as they are reached.

Every line is read with a bound, so a file of millions of lines or one with no newline at all
never sits in memory; errors name the file and line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO

from ..errors import TargetError
from ..limits import MAX_LINE
from .ports import PortRanges
from .targets import Target, parse_target


def bounded_lines(handle: IO[str], source: str, limit: int = MAX_LINE) -> Iterator[str]:
    """Lines of a text stream, each read with a bound: a line longer than `limit` (or a
    stream with no newline at all, like /dev/zero) is an error, never a MemoryError."""
    number = 0
    while True:
        line = handle.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) > limit and not (len(line) == limit + 1 and line.endswith("\n")):
            raise TargetError(f"{source}, line {number}: line too long (over {limit} bytes)")
        yield line


def read_targets(
    lines: Iterable[str], source: str, default_ports: PortRanges | None
) -> Iterator[Target]:
    """Targets from a file or stdin, one per line; blank lines and `#` comments skipped."""
    for number, line in enumerate(lines, 1):
        if number == 1:
            line = line.removeprefix("\ufeff")  # a BOM, as editors on some systems write
        if len(line) > MAX_LINE + 1:
            raise TargetError(f"{source}, line {number}: line too long (over {MAX_LINE} bytes)")
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            yield parse_target(text, default_ports)
        except TargetError as exc:
            raise TargetError(f"{source}, line {number}: {exc}") from None


def open_file(path: str, what: str = "target") -> IO[str]:
    try:
        return open(path, encoding="utf-8", errors="strict")
    except OSError as exc:
        raise TargetError(f"cannot read {what} file {path!r}: {exc.strerror}") from None


def iter_targets(
    tokens: Iterable[str], default_ports: PortRanges | None, stdin: IO[str] | None = None
) -> Iterator[Target]:
    """Every target of the command line in order, files and stdin read as they are reached."""
    for token in tokens:
        if token == "-":
            yield from _read_stream(stdin or sys.stdin, "<stdin>", default_ports)
        elif token.startswith("@"):
            path = token[1:]
            if not path:
                raise TargetError("missing file name after '@'")
            with open_file(path) as handle:
                yield from _read_stream(handle, path, default_ports)
        else:
            yield parse_target(token, default_ports)


def _read_stream(
    handle: IO[str], source: str, default_ports: PortRanges | None
) -> Iterator[Target]:
    try:
        yield from read_targets(bounded_lines(handle, source), source, default_ports)
    except UnicodeDecodeError:
        raise TargetError(f"{source}: not UTF-8 text") from None
