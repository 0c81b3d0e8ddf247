"""probe_allow judged by the one address-set lookup `--exclude` uses (syntax.Exclusions):
prefixes that do not fall on an octet boundary, IPv4-mapped addresses, zone ids."""

from __future__ import annotations

import ipaddress

import pytest

from probe.syntax import allow_list


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        ("127.0.16.0", True),
        ("127.0.31.255", True),
        ("127.0.15.255", False),  # just below the /20
        ("127.0.32.0", False),  # just above it
        ("::ffff:127.0.20.1", True),  # where the packets go: 127.0.20.1
        ("::ffff:127.0.32.1", False),
        ("::1", True),
        ("::1%lo", True),  # a zone id names the interface, not another address
        ("localhost", False),  # a name is judged after it resolves, never as itself
    ],
)
def test_allow_list_is_the_exclusion_lookup(ip: str, inside: bool) -> None:
    networks = (ipaddress.ip_network("127.0.16.0/20"), ipaddress.ip_network("::1/128"))
    assert allow_list(networks).contains(ip) is inside


def test_an_empty_allow_list_allows_nothing() -> None:
    assert not allow_list(()).contains("127.0.0.1")
