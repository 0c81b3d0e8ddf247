"""The progress line: on standard error only, only when it is a terminal, and never in the
way of standard output. When both are the same terminal the line is erased before any
record is written, so a record never starts after the progress text."""

from __future__ import annotations

import os
import sys
import time

PROGRESS_EVERY = 1.0  # seconds between redraws


def same_terminal() -> bool:
    """Standard output and standard error are one terminal (an interactive shell)."""
    try:
        return os.isatty(1) and os.isatty(2) and os.path.samestat(os.fstat(1), os.fstat(2))
    except OSError:
        return False


class ProgressLine:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.shared = self.enabled and same_terminal()
        self.started = time.monotonic()
        self.last = self.started
        self.drawn = False

    def update(self, attempts: int, opened: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        rate = attempts / (now - self.started)
        noun = "attempt" if attempts == 1 else "attempts"
        sys.stderr.write(f"\r{attempts} {noun}, {opened} open, {rate:.0f}/s\033[K")
        sys.stderr.flush()
        self.drawn = True

    def before_stdout(self) -> None:
        """Called before records go to standard output."""
        if self.shared:
            self.erase()

    def erase(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.drawn = False
