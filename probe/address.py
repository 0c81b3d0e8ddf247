"""An address as probe connects to it, and IP literals read without a resolver. Apart from
`resolve` (asyncio, threads) so that the native core's path starts without them."""

from __future__ import annotations

import ipaddress

# The C module's constants (plain ints, equal to socket's enums): `socket` itself builds its
# enums from every constant at import, ~4 ms of a literal check's start-up (issue 13).
from _socket import AF_INET, AF_INET6

from .plain import Frozen


class Address(Frozen):
    """An IP address and its family, hashable."""

    __slots__ = ("family", "ip")
    family: int  # AF_INET | AF_INET6
    ip: str

    def __init__(self, family: int, ip: str) -> None:
        self._set(locals())

    @property
    def family_name(self) -> str:
        return "ipv6" if self.family == AF_INET6 else "ipv4"

    def sockaddr(self, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
        if self.family == AF_INET6:
            return (self.ip, port, 0, 0)
        return (self.ip, port)


class ResolveError(Exception):
    """The name did not resolve; `code` is the resolver's name for why (EAI_NONAME, …)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def literal(host: str, family: int = 0) -> Address | None:
    """An IP literal without asking the resolver; raises ResolveError on a family mismatch."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    fam = AF_INET6 if ip.version == 6 else AF_INET
    if family and family != fam:
        raise ResolveError("EAI_ADDRFAMILY")
    return Address(fam, str(ip))
