"""Custom resources checked as the API server checks them once their CRD is installed.

kubernetes-validate carries the API server's own schemas, not a CRD's, so the CRDs the
shipped files need are vendored, byte for byte, in tests/deploy/schemas/ (their source,
version and licence are noted there). A CRD's OpenAPI v3 schema is applied by jsonschema
with the server's strict field validation (`kubectl apply`'s default): a field the schema
does not declare is an error rather than silently pruned, since an object that loses a
misspelt field still applies and then scrapes the wrong thing. `metadata` is ObjectMeta,
checked by kubernetes-validate.

The translation refuses any schema keyword it does not know how to apply (a CEL rule, a
date format), so a refreshed CRD cannot bring a check that would silently go unapplied.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import yaml  # type: ignore[import-untyped,unused-ignore]

from .base import ROOT

SCHEMAS = ROOT / "tests" / "deploy" / "schemas"

# What jsonschema's draft 4 enforces the way the API server does (the CRD schema language
# is draft 4 shaped: exclusiveMinimum is a boolean there too).
ENFORCED = {
    "type", "properties", "required", "items", "enum", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems",
    "minProperties", "maxProperties", "multipleOf", "uniqueItems", "additionalProperties",
    "anyOf", "allOf", "oneOf", "not",
}  # fmt: skip
# Annotations and merge strategies, which constrain no value; int-or-string is also stated
# by the anyOf beside it.
INERT = {
    "description", "default", "example", "title", "x-kubernetes-map-type",
    "x-kubernetes-int-or-string",
}  # fmt: skip
# Formats the API server does not check either.
UNCHECKED_FORMATS = {"int32", "int64", "float", "double"}
LIST_MAP_KEYS = "x-kubernetes-list-map-keys"


def _list_map_keys(
    validator: Any, keys: list[str], instance: Any, schema: dict[str, Any]
) -> Iterator[Any]:
    """A list of type map holds at most one item per value of its keys."""
    if not validator.is_type(instance, "array"):
        return
    seen = set()
    for item in instance:
        values = [item.get(k) for k in keys] if isinstance(item, dict) else [item]
        if repr(values) in seen:
            entry = dict(zip(keys, values, strict=False))
            yield jsonschema.ValidationError(f"duplicate entry {entry}")
        seen.add(repr(values))


# Draft 4, plus the list-map uniqueness the server checks
Validator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, {LIST_MAP_KEYS: _list_map_keys}
)


def _strict(node: dict[str, Any], where: str) -> dict[str, Any]:
    """NODE as a JSON schema that rejects what the server's strict validation rejects."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "format":
            if value not in UNCHECKED_FORMATS:
                raise NotImplementedError(f"{where}: format {value!r} is not applied")
        elif key == "x-kubernetes-list-type":
            if value == "set":
                out["uniqueItems"] = True
            elif value == "map":  # keyed by x-kubernetes-list-map-keys, applied below
                out[LIST_MAP_KEYS] = node[LIST_MAP_KEYS]
            elif value != "atomic":
                raise NotImplementedError(f"{where}: list type {value!r} is not applied")
        elif key == LIST_MAP_KEYS:
            if node.get("x-kubernetes-list-type") != "map":
                raise NotImplementedError(f"{where}: {key} outside a map list")
        elif key == "pattern":
            # Go's RE2 lets flags follow the anchor (^(?i)...); Python wants them first.
            # Any other difference fails check_schema's compile, not a match.
            out[key] = re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", value)
        elif key == "properties":
            out[key] = {k: _strict(v, f"{where}.{k}") for k, v in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and value is not True):
            out[key] = value if isinstance(value, bool) else _strict(value, f"{where}[]")
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [_strict(v, where) for v in value]
        elif key in ENFORCED:
            out[key] = value
        elif key not in INERT:
            raise NotImplementedError(f"{where}: schema keyword {key!r} is not applied")
    if node.get("type") == "object" and "additionalProperties" not in node:
        out["additionalProperties"] = False  # strict: an undeclared field is an error
    return out


def load(path: Path) -> dict[tuple[str, str], Any]:
    """(apiVersion, kind) -> a validator, for each served version of the CRD at PATH."""
    crd = yaml.safe_load(path.read_text())
    assert crd["kind"] == "CustomResourceDefinition", path
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    validators = {}
    for version in crd["spec"]["versions"]:
        if not version["served"]:
            continue
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        # a shipped object carries no status (the operator writes it), so the status
        # subtree's schema is never applied; ObjectMeta is checked on its own.
        schema["properties"].pop("status", None)
        strict = _strict(schema, kind)
        strict["properties"]["metadata"] = {"type": "object"}
        Validator.check_schema(strict)
        validators[(f"{group}/{version['name']}", kind)] = Validator(strict)
    return validators


@cache
def vendored() -> dict[tuple[str, str], Any]:
    """Every vendored CRD's validators."""
    out: dict[tuple[str, str], Any] = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        out.update(load(path))
    return out


def validate(obj: dict[str, Any]) -> None:
    """AssertionError naming the object and the first offending field unless OBJ passes
    its vendored CRD's schema; no vendored CRD for its kind is an error too."""
    name = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    validator = vendored().get((obj.get("apiVersion"), obj.get("kind")))
    assert validator is not None, f"{name}: no CRD schema for {obj.get('apiVersion')}"
    assert "status" not in obj, f"{name}: a shipped object carries no status"
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        raise AssertionError(f"{name}: {error.json_path}: {error.message}")
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    try:  # a ConfigMap with metadata only: ObjectMeta's schema, strictly
        kubernetes_validate.validate(meta, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{name}: {exc.json_path}: {exc.message}") from None
