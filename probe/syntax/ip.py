"""IP literal syntax: IPv4 as four dotted decimal octets (or octet ranges), IPv6, and CIDRs.

An IPv4 literal is four dotted decimal octets and nothing else: inet_aton's forms
(`2130706433`, `127.1`, `0x7f.0.0.1`, `0177.0.0.1`) are refused, never handed to a resolver
that would quietly turn them into some other address.
"""

from __future__ import annotations

import ipaddress

from ..address import UnknownZone, zone_index
from ..errors import TargetError
from .addresses import AddressSet, Segments
from .chars import echo, has_bad_char

# IPv6 networks larger than this are refused: a /64 is already 2**64 addresses.
MAX_IPV6_HOST_BITS = 64


def cidr_set(address: str, prefix_text: str, token: str) -> AddressSet:
    if not (prefix_text.isascii() and prefix_text.isdecimal()) or len(prefix_text) > 3:
        raise TargetError(f"bad prefix length {echo(prefix_text)} in {echo(token)}")
    prefix = int(prefix_text)
    if ":" in address:
        check_ipv6(address, token)
        if "%" in address:
            raise TargetError(f"a network cannot carry a zone id: {echo(token)}")
        if prefix > 128:
            raise TargetError(f"prefix length /{prefix} out of range 0-128 in {echo(token)}")
        if 128 - prefix > MAX_IPV6_HOST_BITS:
            raise TargetError(
                f"IPv6 network {echo(token)} is too large: the largest is a /"
                f"{128 - MAX_IPV6_HOST_BITS}"
            )
        net6 = ipaddress.IPv6Network(f"{address}/{prefix}", strict=False)
        return AddressSet(6, ((int(net6.network_address), int(net6.broadcast_address)),))
    octets = ipv4_segments(address, token, ranges=False)
    if octets is None:
        raise TargetError(f"a network needs an IP address before '/': {echo(token)}")
    if prefix > 32:
        raise TargetError(f"prefix length /{prefix} out of range 0-32 in {echo(token)}")
    segments: list[tuple[int, int]] = []
    for i, (value, _) in enumerate(octets):
        keep = min(8, max(0, prefix - 8 * i))  # network bits in this octet
        host_mask = (1 << (8 - keep)) - 1
        segments.append((value & ~host_mask & 0xFF, (value & ~host_mask & 0xFF) | host_mask))
    return AddressSet(4, tuple(segments))


def _is_numeric_label(label: str) -> bool:
    if not label.isascii():
        return False
    if label[:2].lower() == "0x":
        return True  # hexadecimal, as inet_aton would take it
    return any(c.isdigit() for c in label) and all(c.isdigit() or c == "-" for c in label)


def ipv4_segments(host: str, token: str, *, ranges: bool) -> Segments | None:
    """Four octets (or octet ranges) if `host` is an IPv4 attempt, None if it is a name.

    The rule: a host whose last label is numeric is meant as an IPv4 address, and an IPv4
    address is four dotted decimal octets 0-255 without leading zeros."""
    labels = host.removesuffix(".").split(".")
    if not _is_numeric_label(labels[-1]):
        return None
    hint = "an IPv4 address is four decimal octets 0-255, like 127.0.0.1"
    if len(labels) != 4 or host.endswith("."):
        raise TargetError(f"bad IPv4 address {echo(host)}: {hint}")
    segments: list[tuple[int, int]] = []
    for label in labels:
        lo_s, dash, hi_s = label.partition("-")
        if dash and not ranges:
            raise TargetError(f"bad IPv4 address {echo(host)}: an octet range is not one address")
        lo = _octet(lo_s, host, hint)
        hi = _octet(hi_s, host, hint) if dash else lo
        if hi < lo:
            raise TargetError(f"octet range {echo(label)} runs backwards in {echo(host)}")
        segments.append((lo, hi))
    return tuple(segments)


def _octet(text: str, host: str, hint: str) -> int:
    if not (text.isascii() and text.isdecimal()):
        if text[:2].lower() == "0x":
            raise TargetError(f"bad IPv4 address {echo(host)}: hexadecimal octets are refused")
        raise TargetError(f"bad IPv4 address {echo(host)}: {hint}")
    if len(text) > 1 and text[0] == "0":
        raise TargetError(
            f"bad IPv4 address {echo(host)}: octet {echo(text)} has a leading zero "
            "(octal forms are refused)"
        )
    if len(text) > 3 or int(text) > 255:
        raise TargetError(f"bad IPv4 address {echo(host)}: octet {echo(text)} is over 255")
    return int(text)


def cidr_of(text: str, token: str) -> AddressSet:
    """`ADDR/N` → every address of that network."""
    address, _, prefix = text.partition("/")
    if not address:
        raise TargetError(f"missing address before '/' in {echo(token)}")
    if has_bad_char(address):
        raise TargetError(f"bad character in host {echo(address)}")
    return cidr_set(address, prefix, token)


def check_ipv6(host: str, token: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise TargetError(f"bad IPv6 address {echo(host)} in {echo(token)}") from None
    # ipaddress takes anything after '%' as a zone id; a zone is an interface name.
    if has_bad_char(host):
        raise TargetError(f"bad character in host {echo(host)}")
    _, percent, zone = host.partition("%")
    if percent:
        try:
            zone_index(zone)
        except UnknownZone:
            raise TargetError(
                f"unknown interface {echo(zone)} in {echo(token)}: a zone id names a network "
                "interface of this machine (ip link) or its index"
            ) from None


def is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
