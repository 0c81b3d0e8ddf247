"""The only address and port syntax of probe: the CLI, target files, the config and `/probe`
all parse here, one module per concern:

- `chars`: the characters a host may not hold; how a token is echoed in an error;
- `ports`: port lists;
- `addresses`: address sets (CIDR, octet ranges), numbered but never listed;
- `ip`: IPv4, IPv6 and CIDR literal syntax;
- `targets`: `Target` and `Endpoint`, `parse_target`;
- `endpoint`: one `HOST:PORT` (config, `metrics.listen`, `/probe`);
- `tcping`: `HOST PORT` joined into `HOST:PORT`;
- `files`: `@FILE` and stdin, read with a bound per line;
- `sharding`: `--shard I/N` (blake2b mod N) and the interleaved split between workers;
- `sources`: `-s ADDR[:PORT]`;
- `exclusions`: `--exclude`, `--exclude-file`, and the same set as the daemon's allow-list.
"""

from __future__ import annotations

from ..errors import TargetError
from .addresses import AddressSet
from .endpoint import parse_endpoint
from .exclusions import Exclusions, allow_list, parse_exclusions, read_exclusions
from .files import bounded_lines, iter_targets, read_targets
from .ports import ALL_PORTS, PortRanges, count_ports, parse_ports
from .sharding import parse_shard, shard, shard_of
from .sources import Source, parse_source, parse_source_spec
from .targets import Endpoint, Target, expand, parse_target
from .tcping import join_host_port

__all__ = [
    "ALL_PORTS",
    "AddressSet",
    "Endpoint",
    "Exclusions",
    "PortRanges",
    "Source",
    "Target",
    "TargetError",
    "allow_list",
    "bounded_lines",
    "count_ports",
    "expand",
    "iter_targets",
    "join_host_port",
    "parse_endpoint",
    "parse_exclusions",
    "parse_ports",
    "parse_shard",
    "parse_source",
    "parse_source_spec",
    "parse_target",
    "read_exclusions",
    "read_targets",
    "shard",
    "shard_of",
]
