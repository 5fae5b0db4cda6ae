"""CustomResourceDefinitions generated from lbctl's JSON Schemas (``lbctl schema --crd``).

Why this exists: the same resources can live in a cluster (and be read back by
``lbctl import k8s``) when the API server knows them.  The schemas in
``reconciler/schemas/`` stay the one source of truth; this turns each into an
``apiextensions.k8s.io/v1`` CRD whose ``openAPIV3Schema`` is *structural*:
``$ref``s inlined, a ``type`` on every node, ``const`` as a one-value ``enum``,
and what OpenAPI v3 / structural schemas cannot say dropped (``if``/``else``,
``propertyNames``, ``additionalProperties: false`` beside ``properties`` -- the
API server prunes unknown fields instead -- and lbctl's own formats, which its
loader checks).  A node that is one of several shapes (``anyOf``: a Datapath
interface is a name or an object) keeps its fields as they are
(``x-kubernetes-preserve-unknown-fields``); lbctl's loader validates it fully.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.config import schemas
from reconciler.model import API_VERSION, KINDS

GROUP, VERSION = API_VERSION.split("/")
_DROP = {"$schema", "$id", "$defs", "if", "then", "else", "propertyNames", "format", "const", "title"}


def plural(kind: str) -> str:
    return kind.lower() + "s"


def _type_of(values: list[Any]) -> str | None:
    kinds = {"string" if isinstance(v, str) else "boolean" if isinstance(v, bool)
             else "integer" if isinstance(v, int) else "number" if isinstance(v, float) else "?"
             for v in values}
    return kinds.pop() if len(kinds) == 1 and "?" not in kinds else None


def structural(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """``node`` with ``$ref``s (into ``defs``) inlined and made structural."""
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        if "description" in node:
            target["description"] = node["description"]
        return structural(target, defs)
    if any(k in node for k in ("anyOf", "oneOf", "allOf")):
        out: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
        if "description" in node:
            out["description"] = node["description"]
        return out
    out = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, Mapping) and "properties" not in node:
                out[key] = structural(value, defs)
        else:
            out[key] = value
    if "const" in node:
        out["enum"] = [node["const"]]
    if "type" not in out:
        guessed = _type_of(out.get("enum", []))
        if guessed is not None:
            out["type"] = guessed
        else:  # nothing says what it is: keep whatever comes (the loader checks it)
            out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one lbctl kind (cluster-scoped, like lbctl's names)."""
    schema = schemas.schema(kind)
    defs = schema.get("$defs", {})
    spec = structural(schema["properties"]["spec"], defs)
    root = {
        "type": "object",
        "description": schema.get("description", ""),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "lbctl.dev/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": spec,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural(kind)}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "lbctl"}},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural(kind),
                      "singular": kind.lower(), "categories": ["lbctl"]},
            "versions": [{"name": VERSION, "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": root}}],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]
