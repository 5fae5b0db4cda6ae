"""Kubernetes manifests (``kubectl get ... -o yaml`` output) -> ``objects.Objects``.

Why this exists: the importer works offline too, from the files ``kubectl get
svc,endpointslices,nodes -A -o yaml`` writes (``List`` documents, or one object
per document, JSON included since it is YAML).  Objects of other kinds are
ignored; a file that is not YAML is an ``LbctlError`` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import yaml

from reconciler.errors import LbctlError
from reconciler.k8s.objects import K8sObject, Objects
from reconciler.model import API_VERSION


def _items(doc: Any) -> Iterator[K8sObject]:
    if not isinstance(doc, Mapping):
        return
    kind = doc.get("kind")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield from _items(item)
    elif isinstance(kind, str):
        yield doc


def classify(objs: Iterable[K8sObject], list_kinds: Mapping[str, str] | None = None) -> Objects:
    """Sort objects by kind; ``list_kinds`` gives the kind of items lacking one (API lists)."""
    services, slices, nodes, lbctl = [], [], [], []
    for obj in objs:
        kind, api = obj.get("kind"), str(obj.get("apiVersion") or "")
        if api == API_VERSION:
            lbctl.append(obj)
        elif kind == "Service" and api == "v1":
            services.append(obj)
        elif kind == "EndpointSlice" and api.startswith("discovery.k8s.io/"):
            slices.append(obj)
        elif kind == "Node" and api == "v1":
            nodes.append(obj)
    return Objects(tuple(services), tuple(slices), tuple(nodes), tuple(lbctl))


def parse(name: str, text: str) -> list[K8sObject]:
    """Every object in one file's text (List documents unpacked)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
        raise LbctlError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}",
                         hint="pass the output of kubectl get svc,endpointslices,nodes -A -o yaml") from None
    return [obj for doc in docs for obj in _items(doc)]


def read_files(paths: Iterable[str]) -> Objects:
    objs: list[K8sObject] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise LbctlError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                             hint="pass files written by kubectl get ... -o yaml") from None
        objs.extend(parse(path, text))
    return classify(objs)
