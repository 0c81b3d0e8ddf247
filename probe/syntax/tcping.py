"""tcping's habit, `probe check HOST PORT`: a bare number after a host is its port."""

from __future__ import annotations

from ..errors import TargetError
from .chars import echo


def _is_bare_host(token: str) -> bool:
    """A host token with no port written (so a number after it can be its port)."""
    if token in ("", "-") or token.startswith("@") or token.startswith("-"):
        return False
    if token.isascii() and token.isdecimal():
        return False
    if token.startswith("["):
        return "]:" not in token and not token.rstrip("]").endswith(":")
    return token.count(":") != 1


def join_host_port(
    tokens: list[str], have_default_ports: bool, ports_text: str | None = None
) -> list[str]:
    """`HOST PORT` (tcping's habit) → `HOST:PORT`. A bare number is never an address: one
    that cannot be a port of the host before it is refused with a hint."""
    out: list[str] = []
    joinable = False  # the last token of `out` is a host without a port
    for token in tokens:
        if not (token.isascii() and token.isdecimal()):
            out.append(token)
            joinable = _is_bare_host(token)
            continue
        if not joinable:
            previous = out[-1] if out else ""
            if previous.count(":") == 1 or previous.startswith("["):
                hint = f"did you mean {previous},{token}?"  # another port of that target
            elif len(token) <= 5 and 1 <= int(token) <= 65535:
                hint = f"did you mean HOST:{token}?"
            else:
                hint = "an IPv4 address is four decimal octets, like 127.0.0.1"
            raise TargetError(f"{echo(token)} is not a target (a number is not an address): {hint}")
        host = out[-1]
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        if have_default_ports:
            more = f"-p {ports_text},{token} or " if ports_text else ""
            raise TargetError(
                f"{echo(token)} after {echo(host)} is not a target while -p gives the ports: "
                f"did you mean {more}{shown}:{token}?"
            )
        if len(token) > 5 or not 1 <= int(token) <= 65535:
            raise TargetError(
                f"{echo(token)} is not a port (1-65535) nor a target: did you mean {shown}:PORT?"
            )
        out[-1] = f"{shown}:{int(token)}"
        joinable = False
    return out
