"""Which addresses a Service's traffic goes to: ready EndpointSlice endpoints and ready Nodes (pure).

Why this exists: kube-loxilb's two endpoint models -- node IP + nodePort (all
ready nodes, or with ``externalTrafficPolicy: Local`` only those holding a ready
endpoint) and pod IP + targetPort (``loxilb.io/usepodnetwork``) -- both start
from these views of the EndpointSlices and Nodes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.k8s.objects import K8sObject, key_of, list_at, meta, parse_ip, port_number, spec_of

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

def _ready(ep: Mapping[str, Any]) -> bool:
    cond = ep.get("conditions")
    return not (isinstance(cond, Mapping) and cond.get("ready") is False)  # unset means ready


def family_of(addr_type: Any) -> int | None:
    return {"IPv4": 4, "IPv6": 6}.get(str(addr_type))


def _node_ready(node: K8sObject) -> bool:
    for cond in list_at(spec_of(node, "status"), "conditions"):
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return True  # no conditions recorded (a hand-written manifest): taken as ready


def node_addresses(nodes: Sequence[K8sObject]) -> dict[str, dict[int, str]]:
    """Ready node name -> family -> its first InternalIP of that family (ExternalIP if none)."""
    out: dict[str, dict[int, str]] = {}
    for node in nodes:
        if not _node_ready(node):
            continue
        name = key_of(node)[1]
        by_family: dict[int, str] = {}
        for kind in ("InternalIP", "ExternalIP"):
            for a in list_at(spec_of(node, "status"), "addresses"):
                addr = parse_ip(str(a.get("address"))) if isinstance(a, Mapping) else None
                if addr is not None and a.get("type") == kind:
                    by_family.setdefault(addr.version, addr.compressed)
        out[name] = by_family
    return out


@dataclass(frozen=True)
class SliceView:
    family: int
    ready: tuple[tuple[str, str | None], ...]  # (address, nodeName) of ready endpoints
    ports: tuple[tuple[str, str, int], ...]  # (name, protocol, port)


def index_slices(slices: Sequence[K8sObject]) -> dict[tuple[str, str], list[SliceView]]:
    """(namespace, Service name) -> the views of its EndpointSlices, in input order (one pass)."""
    out: dict[tuple[str, str], list[SliceView]] = {}
    for s in slices:
        labels = meta(s).get("labels")
        service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
        family = family_of(s.get("addressType"))
        if not isinstance(service, str) or family is None:
            continue  # not a Service's slice, or an FQDN slice (no addresses to balance to)
        ready = []
        for ep in list_at(s, "endpoints"):
            if not isinstance(ep, Mapping) or not _ready(ep):
                continue
            for a in list_at(ep, "addresses"):
                ip = parse_ip(str(a))
                if ip is not None and ip.version == family:
                    node = ep.get("nodeName")
                    ready.append((ip.compressed, str(node) if node else None))
        ports = tuple((str(p.get("name") or ""), str(p.get("protocol") or "TCP"), num)
                      for p in list_at(s, "ports")
                      if isinstance(p, Mapping) and (num := port_number(p.get("port"))) is not None)
        out.setdefault((key_of(s)[0], service), []).append(SliceView(family, tuple(ready), ports))
    return out


def addr_key(addr: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(addr)
    return ip.version, int(ip)

