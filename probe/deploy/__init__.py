"""Deployment files shipped inside the package, so an installed `probe` can print them.

`probe deploy` lists them and `probe deploy NAME` writes one to standard output, byte for
byte: no checkout is needed to install a unit file, a container file, alert rules or a
dashboard. The files are package data, read through importlib.resources (a wheel, a zip or
a checkout alike); only the names listed here can be read, so NAME never walks the tree.
"""

from __future__ import annotations

import os
import sys
from importlib.resources import files

from ..errors import EXIT_OK, EXIT_PIPE, SinkError, UsageError

# NAME -> one line about it, in the order `probe deploy` lists them.
FILES: dict[str, str] = {
    "probe.service": "systemd unit: sandboxed, dynamic user, SIGHUP on reload",
    "logrotate": "logrotate snippet for the unit's record log (rename, then SIGHUP)",
    "Containerfile": "container image: slim Python, non-root, probe run as entrypoint",
    "prometheus.yml": "Prometheus scrape config: the /metrics job and the /probe job",
    "alerts.yml": "Prometheus alert rules: down, failure ratio, latency SLO burn, reloads",
    "alerts_test.yml": "unit tests of alerts.yml for promtool test rules",
    "dashboard.json": "Grafana dashboard: up, failures by reason, latency, RTT, the daemons",
    "kubernetes/statefulset.yaml": "Kubernetes: N sharded daemons (PROBE_SHARD from the ordinal)",
    "kubernetes/daemonset.yaml": "Kubernetes: a daemon on every node, vantage points",
    "kubernetes/job-sweep.yaml": "Kubernetes: an Indexed Job, a one-shot sweep in N shards",
    "kubernetes/prometheus-scrape.yaml": "Kubernetes: Prometheus pod discovery for app=probe",
    "kubernetes/pdb.yaml": "Kubernetes: PodDisruptionBudget, one shard down at a time",
    "kubernetes/networkpolicy.yaml": "Kubernetes: NetworkPolicy, only Prometheus reaches the pods",
    "kubernetes/kustomization.yaml": "kustomize base: the StatefulSet, its budget and policy",
    "overlays/five-shards/kustomization.yaml": "kustomize overlay: the shard count once, image",
    "overlays/prometheus-operator/kustomization.yaml": "kustomize overlay: base + monitor, rules",
    "overlays/prometheus-operator/podmonitor.yaml": "prometheus-operator PodMonitor for app=probe",
    "overlays/prometheus-operator/prometheusrule.yaml": "alerts.yml as a PrometheusRule",
    "kubernetes/mesh.yaml": "Kubernetes: the mesh, a DaemonSet and headless Service (/mesh)",
}


def read(name: str) -> bytes:
    """The shipped file NAME, as bytes; UsageError naming the valid names otherwise."""
    if name not in FILES:
        raise UsageError(f"no deploy file {name!r}; valid names: {', '.join(FILES)}")
    resource = files(__name__)
    for part in name.split("/"):
        resource = resource / part
    return resource.read_bytes()


def listing() -> str:
    width = max(len(name) for name in FILES)
    return "".join(f"{name:<{width}}  {about}\n" for name, about in FILES.items())


def command(name: str | None) -> int:
    """`probe deploy [NAME]`: bytes to standard output, through no text layer."""
    data = listing().encode() if name is None else read(name)
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): quietly, as `probe check` does. Standard output
        # now points nowhere, so the interpreter's own flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except OSError as exc:
        raise SinkError(f"cannot write to standard output: {exc.strerror or exc}") from None
    return EXIT_OK
