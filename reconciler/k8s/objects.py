"""Kubernetes objects as the importer reads them: plain JSON-like mappings, and what it says about them.

Why this exists: the importer's modules (``annotations``, ``endpoints``, ``importer``)
and its sources (``manifests``, ``cluster``) share these few types and accessors;
objects stay the API server's JSON (``kubectl get -o yaml``), never client models.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

K8sObject = Mapping[str, Any]


@dataclass(frozen=True)
class Objects:
    """What the importer reads: the cluster's objects as plain JSON-like mappings."""

    services: tuple[K8sObject, ...] = ()
    endpoint_slices: tuple[K8sObject, ...] = ()
    nodes: tuple[K8sObject, ...] = ()
    lbctl: tuple[K8sObject, ...] = ()  # lbctl resources kept in the cluster (custom resources)


@dataclass(frozen=True)
class Finding:
    subject: str  # "Service default/web"
    annotation: str | None
    message: str

    def __str__(self) -> str:
        where = f" annotation {self.annotation}" if self.annotation else ""
        return f"{self.subject}{where}: {self.message}"


def meta(obj: K8sObject) -> Mapping[str, Any]:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def spec_of(obj: K8sObject, key: str = "spec") -> Mapping[str, Any]:
    s = obj.get(key)
    return s if isinstance(s, Mapping) else {}


def key_of(obj: K8sObject) -> tuple[str, str]:
    """(namespace, name); "default" for an object without a namespace, as kubectl reads it."""
    m = meta(obj)
    return str(m.get("namespace") or "default"), str(m.get("name") or "")


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def port_number(value: Any) -> int | None:
    """``value`` as a port (1-65535): an integer, or a string of digits; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= 65535 else None


def list_at(obj: Mapping[str, Any], key: str) -> list[Any]:
    """``obj[key]`` when it is a list, else empty (hand-written manifests can hold anything)."""
    value = obj.get(key)
    return value if isinstance(value, list) else []
