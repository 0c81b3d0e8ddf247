"""One `HOST:PORT`: a config target's address, `metrics.listen` and `GET /probe?target=`."""

from __future__ import annotations

from ..errors import TargetError
from .chars import echo
from .ip import check_ipv6, ipv4_segments, is_ipv6
from .ports import parse_port
from .targets import check_host


def parse_endpoint(
    text: str, *, allow_port_zero: bool = False, allow_names: bool = True
) -> tuple[str, int]:
    """One `HOST:PORT` or `[IPV6]:PORT` → (host without brackets, port): a config target's
    `address`, `metrics.listen` (port 0: the kernel picks) and `GET /probe?target=`."""
    lowest = 0 if allow_port_zero else 1
    example = "HOST:PORT or [IPV6]:PORT"
    if text != text.strip():
        raise TargetError(f"leading or trailing space in {echo(text)}")
    if not text:
        raise TargetError(f"empty address: write {example}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(f"missing ']' in {echo(text)}")
        host, rest = text[1:close], text[close + 1 :]
        check_ipv6(host, text)
        if not rest:
            raise TargetError(f"missing port in {echo(text)}: write [{host}]:PORT")
        if not rest.startswith(":"):
            raise TargetError(f"expected ':' after ']' in {echo(text)}")
        port_text = rest[1:]
    elif text.count(":") > 1:
        head, _, tail = text.rpartition(":")
        if is_ipv6(head) and "/" not in head:
            raise TargetError(f'IPv6 addresses need brackets: write "[{head}]:{tail}"')
        if is_ipv6(text):
            raise TargetError(f'IPv6 addresses need brackets and a port: write "[{text}]:PORT"')
        raise TargetError(f"too many ':' in {echo(text)}: write IPv6 addresses as [ADDR]:PORT")
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            raise TargetError(f"missing port in {echo(text)}: write {example}")
        if "/" in host:
            raise TargetError(f"one address expected, not a network: {echo(text)}")
        if check_host(host, text) is not None:
            raise TargetError(f"one address expected, not a range: {echo(text)}")
        if not allow_names and ipv4_segments(host, text, ranges=False) is None:
            raise TargetError(f"an IP address is needed, not the name {echo(host)}")
    if not port_text:
        raise TargetError(f"no port after ':' in {echo(text)}")
    return host, parse_port(port_text, port_text, lowest)


EVERY_ADDRESS = "0.0.0.0"


def parse_listen(text: str) -> tuple[str, int]:
    """A listening endpoint: `HOST:PORT`, `[IPV6]:PORT`, or exporters' `:PORT` (and a bare
    `PORT`) for every IPv4 address; port 0 lets the kernel pick."""
    digits = text.removeprefix(":")
    if digits.isascii() and digits.isdecimal():
        return EVERY_ADDRESS, parse_endpoint(f"{EVERY_ADDRESS}:{digits}", allow_port_zero=True)[1]
    return parse_endpoint(text, allow_port_zero=True)
