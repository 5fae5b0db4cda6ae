"""``lbctl schema --crd``: the CRDs are structural and accept every lbctl document.

The structural-schema rules checked here are the API server's
(apiextensions.k8s.io/v1): a non-empty ``type`` on every node (unless
``x-kubernetes-preserve-unknown-fields`` or ``x-kubernetes-int-or-string``), only
OpenAPI v3 keywords the API server accepts (no ``$ref``, ``const``, ``if``...),
``additionalProperties`` never beside ``properties``, ``metadata`` restricting
nothing but its type.  Then every document of the export round-trip
configuration (every kind, every field) validates against its CRD's schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler.cli import main
from reconciler.k8s import crd
from reconciler.model import KINDS
from tests.reconciler.export_cases import EVERYTHING

# JSONSchemaProps fields (k8s.io/apiextensions-apiserver, v1) a CRD schema may use.
ALLOWED = {
    "description", "type", "format", "title", "default", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "multipleOf", "enum", "maxProperties", "minProperties", "required", "items", "allOf", "oneOf", "anyOf",
    "not", "properties", "additionalProperties", "patternProperties", "dependencies", "example",
    "externalDocs", "nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def structural_problems(node: Mapping[str, Any], path: str = "") -> list[str]:
    out = [f"{path}: keyword {k} is not allowed in a CRD schema" for k in node if k not in ALLOWED]
    preserve = (node.get("x-kubernetes-preserve-unknown-fields") is True
                or node.get("x-kubernetes-int-or-string"))
    if node.get("type") not in TYPES and not preserve:
        out.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: additionalProperties beside properties")
    for junctor in ("allOf", "anyOf", "oneOf", "not"):
        if junctor in node:
            out.append(f"{path}: {junctor} (the generator keeps none)")
    for name, sub in (node.get("properties") or {}).items():
        out += structural_problems(sub, f"{path}.{name}")
    if isinstance(node.get("items"), Mapping):
        out += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), Mapping):
        out += structural_problems(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_crd_is_structural(kind: str) -> None:
    doc = crd.crd(kind)
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1"
    assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.lbctl.dev"
    (version,) = doc["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []
    assert schema["properties"]["metadata"] == {"type": "object"}


def test_every_document_validates_against_its_crd() -> None:
    docs = [d for d in yaml.safe_load_all(EVERYTHING) if d]
    assert {d["kind"] for d in docs} == set(KINDS)
    for d in docs:
        schema = crd.crd(d["kind"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.Draft4Validator(schema).validate(d)


def test_crd_rejects_a_wrong_type() -> None:
    schema = crd.crd("Service")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    bad = {"apiVersion": "lbctl.dev/v1alpha1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": "eighty"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(bad)


def test_schema_crd_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--crd"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["spec"]["names"]["kind"] for d in docs] == list(KINDS)
    assert main(["schema", "--crd", "pool"]) == 0
    (one,) = yaml.safe_load_all(capsys.readouterr().out)
    assert one == crd.crd("Pool")
