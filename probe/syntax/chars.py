"""The characters a host may not hold, and how a token is echoed back in an error."""

from __future__ import annotations

# Never part of a host name or address: they delimit targets, networks, files and comments.
FORBIDDEN_HOST_CHARS = "[]/@#,"

# Longest token echoed back in an error message, so a hostile line cannot flood stderr.
_ECHO = 60


def echo(token: str) -> str:
    shown = token if len(token) <= _ECHO else token[:_ECHO] + "…"
    return repr(shown)


def has_bad_char(host: str) -> bool:
    """A host holding a control character, white space or one of FORBIDDEN_HOST_CHARS."""
    if not host.isprintable():
        return True
    return any(c.isspace() or c in FORBIDDEN_HOST_CHARS for c in host)
