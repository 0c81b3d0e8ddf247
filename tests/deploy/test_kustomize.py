"""The Kubernetes files as operators deploy them: the kustomize base and its overlays,
rendered offline by the real `kubectl kustomize` (or `kustomize build`) from the tree
`probe deploy` ships, and every rendered object checked against the Kubernetes API's own
schemas by kubernetes-validate, or a custom resource against its CRD's schema as vendored
from its project (helpers.crd); strictly, either way: an unknown field is an error."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml  # type: ignore[import-untyped]
from helpers import crd

from probe.deploy import FILES, read

KUSTOMIZATIONS = ["kubernetes", "overlays/five-shards", "overlays/prometheus-operator"]
STANDALONE = [
    name
    for name in FILES
    if name.startswith(("kubernetes/", "overlays/")) and not name.endswith("kustomization.yaml")
]


def write_tree(tmp: Path) -> Path:
    """Every shipped file at its `probe deploy` name under tmp, as the kustomization's
    comment tells operators to write them."""
    for name in FILES:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read(name))
    return tmp


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl, standalone = shutil.which("kubectl"), shutil.which("kustomize")
    if kubectl is not None:
        cmd = [kubectl, "kustomize", str(directory)]
    elif standalone is not None:
        cmd = [standalone, "build", str(directory)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed (Debian: kubernetes-client)")
    env = {**os.environ, "KUBECONFIG": str(directory / "no-kubeconfig")}  # offline
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def validate(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        crd.validate(obj)  # not the API server's own kind: its CRD's schema
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc}") from None


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def shard_env(sts: dict[str, Any]) -> str:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    value: str = next(e["value"] for e in c["env"] if e["name"] == "PROBE_SHARD")
    return value


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_offline_to_valid_objects(name: str, tmp_path: Path) -> None:
    objects = kustomize(write_tree(tmp_path) / name)
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"} <= kinds
    for obj in objects:
        validate(obj)
    sts = one(objects, "StatefulSet")
    assert shard_env(sts) == f"$(POD_INDEX)/{sts['spec']['replicas']}"


@pytest.mark.parametrize("name", STANDALONE)
def test_standalone_file_passes_the_schema(name: str) -> None:
    for obj in yaml.safe_load_all(read(name).decode()):
        if obj:
            validate(obj)


def test_a_schema_error_is_caught() -> None:
    """The validator is strict: a field the API does not know fails, as does a count
    written as a string."""
    (pdb,) = yaml.safe_load_all(read("kubernetes/pdb.yaml").decode())
    pdb["spec"]["maxUnavaliable"] = 1
    with pytest.raises(AssertionError, match="maxUnavaliable"):
        validate(pdb)
    objects = [o for o in yaml.safe_load_all(read("kubernetes/statefulset.yaml").decode()) if o]
    sts = one(objects, "StatefulSet")
    sts["spec"]["replicas"] = "3"
    with pytest.raises(AssertionError, match="replicas"):
        validate(sts)


def test_the_shard_count_is_written_once(tmp_path: Path) -> None:
    """The overlay names the count under `replicas` only; PROBE_SHARD's N follows it, and
    so does an edit of that one number."""
    tree = write_tree(tmp_path)
    overlay = tree / "overlays/five-shards/kustomization.yaml"
    lines = [ln for ln in overlay.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert [ln.strip() for ln in lines if "5" in ln.replace("localhost:5000", "")] == ["count: 5"]
    sts = one(kustomize(overlay.parent), "StatefulSet")
    assert sts["spec"]["replicas"] == 5 and shard_env(sts) == "$(POD_INDEX)/5"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "localhost:5000/probe:0.1.0"
    overlay.write_text(overlay.read_text().replace("count: 5", "count: 7"))
    sts = one(kustomize(overlay.parent), "StatefulSet")
    assert sts["spec"]["replicas"] == 7 and shard_env(sts) == "$(POD_INDEX)/7"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects LABELS."""
    ops = {
        "In": lambda key, values: labels.get(key) in values,
        "NotIn": lambda key, values: labels.get(key) not in values,
        "Exists": lambda key, _: key in labels,
        "DoesNotExist": lambda key, _: key not in labels,
    }
    return selector.get("matchLabels", {}).items() <= labels.items() and all(
        ops[e["operator"]](e["key"], e.get("values", []))
        for e in selector.get("matchExpressions", [])
    )


def test_each_kind_of_probe_pod_is_selected_by_what_it_needs() -> None:
    """Across the shipped files: the budget holds the shards only, the NetworkPolicy fences
    shards and vantage points but not the mesh's pods (their peers must reach them, which
    it would forbid), and the PodMonitor scrapes all three."""
    pods = {}
    for name in ("statefulset.yaml", "daemonset.yaml", "mesh.yaml"):
        for obj in yaml.safe_load_all(read(f"kubernetes/{name}").decode()):
            if obj and "template" in obj.get("spec", {}):
                labels = obj["spec"]["template"]["metadata"]["labels"]
                pods[labels["probe-role"]] = labels
    assert set(pods) == {"shard", "vantage", "mesh"}
    (pdb,) = yaml.safe_load_all(read("kubernetes/pdb.yaml").decode())
    (policy,) = yaml.safe_load_all(read("kubernetes/networkpolicy.yaml").decode())
    (monitor,) = yaml.safe_load_all(read("overlays/prometheus-operator/podmonitor.yaml").decode())
    for role, labels in pods.items():
        assert selects(pdb["spec"]["selector"], labels) == (role == "shard"), role
        assert selects(policy["spec"]["podSelector"], labels) == (role != "mesh"), role
        assert selects(monitor["spec"]["selector"], labels), role


def test_budget_policy_and_monitor_select_the_probe_pods(tmp_path: Path) -> None:
    objects = kustomize(write_tree(tmp_path) / "overlays/prometheus-operator")
    sts = one(objects, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    ports = {p["name"] for p in c["ports"]}
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    policy = one(objects, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"], pod_labels)
    (rule,) = policy["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} <= ports
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # probes must reach anywhere
    monitor = one(objects, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    assert {"instance", "node"} <= targets  # what the alerts keep
    # the job is the pods' label value, as the plain scrape's job_name and the alerts say
    (scrape,) = yaml.safe_load_all(read("kubernetes/prometheus-scrape.yaml").decode())
    (job,) = yaml.safe_load(scrape["data"]["prometheus.yml"])["scrape_configs"]
    assert pod_labels[monitor["spec"]["jobLabel"]] == job["job_name"] == "probe"
    assert 'up{job="probe"}' in read("alerts.yml").decode()


def _endpoint(pm: dict[str, Any]) -> dict[str, Any]:
    endpoint: dict[str, Any] = pm["spec"]["podMetricsEndpoints"][0]
    return endpoint


# (mutation of the shipped PodMonitor, what the error names)
MUTATIONS: dict[str, tuple[Any, str]] = {
    "unknown field": (lambda pm: _endpoint(pm).update(scrapeInterval="15s"), "scrapeInterval"),
    "wrong type": (lambda pm: _endpoint(pm).update(interval=15), "15 is not of type 'string'"),
    "pattern": (lambda pm: _endpoint(pm).update(interval="15 s"), "does not match"),
    "enum": (lambda pm: _endpoint(pm)["relabelings"][0].update(action="rename"), "'rename'"),
    "required": (lambda pm: pm["spec"].pop("selector"), "'selector' is a required"),
    "int or string": (lambda pm: _endpoint(pm).update(targetPort=[9464]), "any of"),
    "set": (
        lambda pm: pm["spec"].update(scrapeProtocols=["PrometheusProto"] * 2),
        "non-unique",
    ),
    "metadata": (lambda pm: pm["metadata"].update(label={"app": "probe"}), "'label'"),
    "version": (lambda pm: pm.update(apiVersion="monitoring.coreos.com/v2"), "no CRD schema"),
    "status": (lambda pm: pm.update(status={}), "no status"),
}


def _rule(pr: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = pr["spec"]["groups"][0]["rules"][0]
    return rule


RULE_MUTATIONS: dict[str, tuple[Any, str]] = {
    "unknown field": (lambda pr: _rule(pr).update(keepFiringFor="2m"), "keepFiringFor"),
    "pattern": (lambda pr: _rule(pr).update({"for": "5 minutes"}), "does not match"),
    "min length": (lambda pr: _rule(pr).update(keep_firing_for=""), "non-empty"),
    "label type": (lambda pr: _rule(pr)["labels"].update(severity=1), "not of type 'string'"),
    "required": (lambda pr: _rule(pr).pop("expr"), "'expr' is a required"),
    "list map": (
        lambda pr: pr["spec"]["groups"].append(dict(pr["spec"]["groups"][0])),
        "duplicate entry {'name': 'probe-targets'}",
    ),
}


@pytest.mark.parametrize(
    ("name", "mutation"),
    [("podmonitor.yaml", m) for m in MUTATIONS]
    + [("prometheusrule.yaml", m) for m in RULE_MUTATIONS],
)
def test_a_custom_resource_error_is_caught(name: str, mutation: str) -> None:
    """The PodMonitor and the PrometheusRule are held to prometheus-operator's CRDs as the
    API server holds them: each of these mutations of the shipped one is refused, naming
    what is wrong."""
    (obj,) = yaml.safe_load_all(read(f"overlays/prometheus-operator/{name}").decode())
    validate(obj)
    mutate, match = (MUTATIONS if name == "podmonitor.yaml" else RULE_MUTATIONS)[mutation]
    mutate(obj)
    with pytest.raises(AssertionError, match=re.escape(match)):
        validate(obj)


def test_the_prometheus_rule_is_alerts_yml(tmp_path: Path) -> None:
    """The operator's Prometheus evaluates the same rules as a plain one: the rendered
    PrometheusRule's groups are alerts.yml's (which promtool checks and tests)."""
    objects = kustomize(write_tree(tmp_path) / "overlays/prometheus-operator")
    rule = one(objects, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(read("alerts.yml"))["groups"], (
        "prometheusrule.yaml's spec.groups must be alerts.yml's groups block, indented by two"
    )
    # one Prometheus selects both: the same labels
    assert rule["metadata"]["labels"] == one(objects, "PodMonitor")["metadata"]["labels"]


def test_a_crd_check_that_cannot_be_applied_is_refused(tmp_path: Path) -> None:
    """A CRD whose schema holds a rule jsonschema cannot apply (here a CEL rule) fails to
    load, rather than passing every object unchecked."""
    path = crd.SCHEMAS / "monitoring.coreos.com_podmonitors.yaml"
    doc = yaml.safe_load(path.read_text())
    spec = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    crd.load(path)
    spec["x-kubernetes-validations"] = [{"rule": "has(self.selector)"}]
    (tmp_path / "crd.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(NotImplementedError, match="x-kubernetes-validations"):
        crd.load(tmp_path / "crd.yaml")


def test_the_vendored_crds_are_the_upstream_files() -> None:
    """Each vendored CRD is byte for byte the release file its README row names (sha256),
    so a schema cannot be loosened here to let an object pass; every file has a row."""
    readme = (crd.SCHEMAS / "README.md").read_text()
    rows = re.findall(
        r"^\| `([^`]+\.yaml)` \|[^|]*\| v([\d.]+) \| [0-9a-f]{40} \| ([0-9a-f]{64}) \|$",
        readme,
        re.M,
    )
    assert {name for name, _, _ in rows} == {p.name for p in crd.SCHEMAS.glob("*.yaml")}
    for name, version, sha in rows:
        data = (crd.SCHEMAS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, name
        annotations = yaml.safe_load(data)["metadata"]["annotations"]
        assert annotations["operator.prometheus.io/version"] == version, name
