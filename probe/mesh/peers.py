"""Who the peers are: every A/AAAA record of one name (a Kubernetes headless Service) or a
static list of `HOST:PORT`, resolved again every interval as targets are."""

from __future__ import annotations

from collections.abc import Sequence

from ..address import Address
from ..errors import TargetError
from ..plain import Frozen
from ..resolve import ResolveError, Resolver
from ..syntax import parse_endpoint


class PeerSpec(Frozen):
    """`[mesh] peers`: (host, port) pairs; one pair when it is a single `NAME:PORT`."""

    __slots__ = ("endpoints",)
    endpoints: tuple[tuple[str, int], ...]

    def __init__(self, endpoints: tuple[tuple[str, int], ...]) -> None:
        self._set(locals())

    @classmethod
    def parse(cls, value: str | Sequence[str]) -> PeerSpec:
        """ValueError naming the bad entry."""
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise ValueError("no peers: give NAME:PORT or a list of HOST:PORT")
        out = []
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"expected HOST:PORT strings, got {text!r}")
            try:
                out.append(parse_endpoint(text))
            except TargetError as exc:
                raise ValueError(str(exc)) from None
        return cls(tuple(out))


async def resolve_peers(
    spec: PeerSpec, resolver: Resolver, deadline: float
) -> tuple[list[tuple[Address, int]], list[str]]:
    """Every address of every entry, with its port; and the names that did not resolve
    (their error codes), so the caller can say so instead of shrinking the mesh quietly."""
    found: dict[tuple[str, int], tuple[Address, int]] = {}
    failed: list[str] = []
    for host, port in spec.endpoints:
        try:
            addresses = await resolver.resolve(host, deadline)
        except ResolveError as exc:
            failed.append(f"{host}: {exc.code}")
            continue
        for address in addresses:
            found.setdefault((address.ip, port), (address, port))
    return list(found.values()), failed
