"""Every error type probe raises on purpose, the exit codes, and the one stderr writer.

A leaf module (it imports nothing of ours), so any module can raise these without an
import loop. Faults are raised as types where they are found; the command line turns them
into one line and an exit code at one edge (`cli.main`).
"""

from __future__ import annotations

import sys
from typing import Final, NoReturn

EXIT_OK: Final = 0
EXIT_NO_OPEN: Final = 1  # `probe check`: some target had no open attempt
EXIT_FAILED: Final = 1  # `probe run`: the daemon stopped on a fault (an unwritable log)
EXIT_USAGE: Final = 2  # bad usage or bad input
EXIT_PIPE: Final = 141  # standard output's reader went away (128 + SIGPIPE)
EXIT_SIGNAL_BASE: Final = 128  # 130 for SIGINT, 143 for SIGTERM


class ProbeError(Exception):
    """Base of the errors that end a command with one line on stderr and `exit_code`."""

    exit_code: int = EXIT_USAGE


class UsageError(ProbeError):
    """Bad usage or input: printed as one line, exit 2."""


class TargetError(UsageError, ValueError):
    """Bad target or port text; `str()` is one line naming the token (and file:line)."""


class ConfigError(UsageError):
    """A config file that cannot be used. The key path is data (`key`), not text to parse
    back; `str()` is the whole user message: `{path}: {key}: {problem}`."""

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"{path}: {key}" if key else path
        super().__init__(one_line(f"{where}: {problem}"))


class SinkError(ProbeError):
    """Records could not be written; `str()` names the destination and the reason."""


class SinkClosed(SinkError):
    """The reader went away (`| head -1`): stop quietly, exit 141."""

    exit_code = EXIT_PIPE


class LocalShortage(ProbeError):
    """The machine stayed out of descriptors or ports with nothing of ours left to free."""


def one_line(text: str) -> str:
    """Escape anything that could break a one-line message or a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def report(message: str, prefix: str = "error") -> None:
    """The one writer of `probe: error: ...` lines: escaped, one line, flushed."""
    head = f"probe: {prefix}: " if prefix else "probe: "
    sys.stderr.write(f"{head}{one_line(message)}\n")
    sys.stderr.flush()


def fail(message: str) -> NoReturn:
    report(message)
    raise SystemExit(EXIT_USAGE)
