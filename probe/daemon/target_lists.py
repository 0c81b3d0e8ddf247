"""Target lists outside the config file: `targets_file = "PATH"` and `include = ["GLOB", ...]`
(top-level keys), so a fleet's targets need not fit in the config's 1 MiB, and every shard
of a fleet reads the same lists.

A list holds one target a line: an address alone (`HOST:PORT`), or a JSON object with the
keys of a `[[targets]]` table (`{"address": "db:5432", "name": "db", "labels": {...}}`).
Blank lines and lines starting with `#` are skipped. A list is read a line at a time, never
whole, and the caps are per line, not per list: a line is at most MAX_LINE bytes of UTF-8
holding one JSON object (whose keys have the config's own bounds), and a list may be as long
as the fleet, up to MAX_TARGETS targets in all. Only regular files are read (a FIFO or a
device is refused, opened non-blocking so it cannot hang the reader). A relative path or
glob is relative to the config file's directory; a glob's matches are read in sorted order,
at most MAX_FILES of them. The lists are read again at every reload, as the config is.

This module reads and splits; config.py checks each item as it checks a `[[targets]]`
table. Errors name the list file and the line: `targets.list: line 12.interval: ...`.
"""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from ..errors import ConfigError

MAX_LINE: Final = 64 * 1024  # bytes of one line: 32 labels of 1 KiB fit with room to spare
MAX_TARGETS: Final = 1_000_000  # targets in all lists together (and in the config)
MAX_FILES: Final = 4096  # files one config's lists and globs may name
MAX_GLOBS: Final = 64  # entries of `include`

_DECODER: Final = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, slots=True)
class Item:
    """One target line: the file and line it came from, and its keys."""

    file: str
    line: int
    table: dict[str, Any]

    def error(self, key: str | None, problem: str) -> ConfigError:
        where = f"line {self.line}" + (f".{key}" if key else "")
        return ConfigError(self.file, where, problem)


def files(base: Path, targets_file: str | None, include: tuple[str, ...]) -> list[Path]:
    """The lists to read, in order: `targets_file`, then each glob's matches (sorted).
    ConfigError for a `targets_file` that is not there, or too many files."""
    found: list[Path] = []
    if targets_file is not None:
        found.append(base / targets_file)
    for pattern in include:
        matches = sorted(glob.glob(str(base / pattern)))
        if len(found) + len(matches) > MAX_FILES:
            raise ConfigError(
                pattern, None, f"the lists name more than {MAX_FILES} files; merge some"
            )
        found.extend(Path(m) for m in matches if not os.path.isdir(m))
    return found


def open_regular(shown: str) -> int:
    """A descriptor of the regular file at `shown`: a FIFO, device or directory is refused,
    and the open is non-blocking, so a FIFO without a writer cannot hang us."""
    try:
        fd = os.open(shown, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(shown, None, f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # an embedded NUL byte in the path
        raise ConfigError(shown, None, f"cannot read: {exc}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise ConfigError(shown, None, "cannot read: Is a directory")
    raise ConfigError(shown, None, "not a regular file (a FIFO, device or socket)")


def items(path: Path) -> Iterator[Item]:
    """The target lines of one list, a line at a time."""
    shown = str(path)
    with open(open_regular(shown), "rb", buffering=1 << 16, closefd=True) as stream:
        number = 0
        while True:
            try:
                raw = stream.readline(MAX_LINE + 1)
            except OSError as exc:
                raise ConfigError(shown, None, f"cannot read: {exc.strerror or exc}") from None
            if not raw:
                return
            number += 1
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                raise ConfigError(shown, f"line {number}", f"longer than {MAX_LINE} bytes")
            table = _parse_line(raw, shown, number)
            if table is not None:
                yield Item(shown, number, table)


def _parse_line(raw: bytes, shown: str, number: int) -> dict[str, Any] | None:
    text = raw.strip()
    if not text or text.startswith(b"#"):
        return None
    if text.startswith(b"{"):
        try:
            table: dict[str, Any] = _DECODER.decode(text)
        except msgspec.DecodeError as exc:
            problem = str(exc).removeprefix("JSON is malformed: ")
            raise ConfigError(shown, f"line {number}", f"not a JSON object: {problem}") from None
        return table
    try:
        address = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(shown, f"line {number}", "not valid UTF-8") from None
    if len(address.split(maxsplit=1)) > 1:  # str.split: every Unicode space, at C speed
        raise ConfigError(shown, f"line {number}", "one target a line: HOST:PORT, or a JSON object")
    return {"address": address}
