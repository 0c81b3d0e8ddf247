"""The tests' one harness, split by subject; every name below is importable from `helpers`
itself (`from helpers import Daemon, wait_for`), as the tests do.

- `base`: waiting on a condition with a deadline, killing a process, the checkout's root;
- `records`: records parsed and checked against the contract, or made by hand;
- `run`: the console script in a subprocess (`probe_cmd`, `run_probe`);
- `web`: HTTP GETs against the daemon;
- `sockets`: listeners that record their peers, closed ports, full accept queues, sockets
  by inode;
- `netns`: network namespaces, servers and firewall rules in them, veth pairs, a DNS server;
- `prometheus`: Prometheus text parsed into samples;
- `daemon`: `probe run` in a subprocess (`Daemon`), its config builders, floods of requests;
- `mesh`: `probe serve` in a namespace (`Responder`), a mesh of daemons on a bridge;
- `check`: `probe check` for the tests of tests/check/: runs, records, one-line errors;
- `chromium`: headless Chromium for the page tests, writing nothing in the user's home;
- `stages`, imported on its own (`from helpers.stages import servers`): TLS, STARTTLS and
  expect servers for the stage tests.
"""

from __future__ import annotations

from .base import (
    ROOT,
    Rec,
    T,
    kill,
    no_traceback,
    run_queue_wait,
    wait_for,
)
from .check import (
    LAG_LINE,
    MS,
    RTT,
    RUN_TIMEOUT,
    Lines,
    compact_ports,
    free_port,
    one_line_error,
    probe,
    probe_env,
    records,
    until_signal,
    without_lag,
)
from .chromium import (
    find_chromium,
    home_of,
    start_chromium,
)
from .daemon import (
    INTERVAL,
    LAUNCH,
    Daemon,
    config_toml,
    draining,
    flood,
    logging_one_target,
    ns_get,
    start_in,
    target_toml,
)
from .mesh import (
    MESH_CELL,
    MESH_CONFIG,
    MESH_HTTP,
    MESH_HUB,
    MESH_INTERVAL,
    MESH_NET,
    MESH_PORT,
    MESH_TIMEOUT,
    MeshNet,
    Responder,
    mesh_ip,
    mesh_name,
)
from .netns import (
    CLONE_NEWNET,
    EVERY_OTHER,
    FAKE_DNS,
    NS_SERVER,
    PORT_HOLDER,
    DnsNetns,
    Netns,
    NsServer,
    can_netns,
    check_in,
    drop_syns,
    firewall,
    free_port_block,
    hold_ports,
    in_netns,
    need_tools,
    port_range,
    veth,
)
from .prometheus import (
    Samples,
    metrics_of,
    parse_prometheus,
    skipped_total,
    unlabelled,
    value,
    with_label,
)
from .records import (
    CONTRACT_KEYS,
    KEYS,
    OUTCOMES,
    TIMESTAMP,
    assert_local_endpoint,
    check_record,
    make_record,
    parse_records,
    read_lines,
    record,
    ts,
)
from .run import (
    check_reading_stdin,
    pipe_into_head,
    probe_cmd,
    run_probe,
)
from .sockets import (
    FullQueueListener,
    RecordingListener,
    SocketSampler,
    closed_port,
    has_ipv6_loopback,
    socket_inodes,
    tcp_by_inode,
)
from .web import (
    http_fetch,
    http_get,
)

__all__ = [
    "CLONE_NEWNET",
    "CONTRACT_KEYS",
    "EVERY_OTHER",
    "FAKE_DNS",
    "INTERVAL",
    "KEYS",
    "LAG_LINE",
    "LAUNCH",
    "MESH_CELL",
    "MESH_CONFIG",
    "MESH_HTTP",
    "MESH_HUB",
    "MESH_INTERVAL",
    "MESH_NET",
    "MESH_PORT",
    "MESH_TIMEOUT",
    "MS",
    "NS_SERVER",
    "OUTCOMES",
    "PORT_HOLDER",
    "ROOT",
    "RTT",
    "RUN_TIMEOUT",
    "TIMESTAMP",
    "Daemon",
    "DnsNetns",
    "FullQueueListener",
    "Lines",
    "MeshNet",
    "Netns",
    "NsServer",
    "Rec",
    "RecordingListener",
    "Responder",
    "Samples",
    "SocketSampler",
    "T",
    "assert_local_endpoint",
    "can_netns",
    "check_in",
    "check_reading_stdin",
    "check_record",
    "closed_port",
    "compact_ports",
    "config_toml",
    "draining",
    "drop_syns",
    "find_chromium",
    "firewall",
    "flood",
    "free_port",
    "free_port_block",
    "has_ipv6_loopback",
    "hold_ports",
    "home_of",
    "http_fetch",
    "http_get",
    "in_netns",
    "kill",
    "logging_one_target",
    "make_record",
    "mesh_ip",
    "mesh_name",
    "metrics_of",
    "need_tools",
    "no_traceback",
    "ns_get",
    "one_line_error",
    "parse_prometheus",
    "parse_records",
    "pipe_into_head",
    "port_range",
    "probe",
    "probe_cmd",
    "probe_env",
    "read_lines",
    "record",
    "records",
    "run_probe",
    "run_queue_wait",
    "skipped_total",
    "socket_inodes",
    "start_chromium",
    "start_in",
    "target_toml",
    "tcp_by_inode",
    "ts",
    "unlabelled",
    "until_signal",
    "value",
    "veth",
    "wait_for",
    "with_label",
    "without_lag",
]
