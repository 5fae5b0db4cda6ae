"""Live state -> resources in the input format (``lbctl export``).

Why this exists: adopting a box that already runs (or checking what lbctl
really programmed) needs the live records turned back into the YAML an
operator would write, such that ``validate`` accepts it and ``plan`` against it
is empty.  This module is pure: records in, plain dicts (YAML documents) out.

Records are grouped back into Services by the owning name kept in each
``ServiceEntry``.  When a group cannot be written as one Service (entries of
one name disagree on settings, ports or endpoints), it is split into one
Service per (VIP, protocol, port) named ``NAME-PROTO-PORT`` -- still exact.
Pool-allocated VIPs are exported as literal ``vip`` (the live state does not
know pools; a literal wins over a pool anyway).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.desired import default_maglev_size
from reconciler.model import (
    API_VERSION,
    DEFAULT_OTHER_SESSION_TIMEOUT,
    DEFAULT_PERSIST_TIMEOUT,
    DEFAULT_TCP_SESSION_TIMEOUT,
)
from reconciler.records import (
    Attachment,
    BgpPeer,
    EndpointSet,
    FirewallEntry,
    Record,
    ServiceEntry,
    ServiceKey,
    State,
    VipAddress,
)

Doc = dict[str, Any]

PROTO_NAMES = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmp": "ICMP"}


def _doc(kind: str, name: str, spec: Doc) -> Doc:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def _default_timeout(proto: str) -> int:
    return DEFAULT_TCP_SESSION_TIMEOUT if proto in ("tcp", "sctp") else DEFAULT_OTHER_SESSION_TIMEOUT


def _port_doc(key: ServiceKey, target: int | None) -> Doc:
    port: Doc = {"port": key.port, "protocol": PROTO_NAMES.get(key.proto, key.proto.upper())}
    if key.port_end != key.port:
        port["endPort"] = key.port_end
    if target:
        port["targetPort"] = target
    return port


def _settings(entries: list[ServiceEntry]) -> Doc | None:
    """Common spec fields of ``entries``, or None if they disagree."""
    first = entries[0]
    for e in entries[1:]:
        if (e.mode, e.selection, e.persist_timeout, e.allowed_sources) != (
                first.mode, first.selection, first.persist_timeout, first.allowed_sources):
            return None
    spec: Doc = {}
    if first.mode != "default":
        spec["mode"] = first.mode
    if first.selection != "rr":
        spec["selection"] = first.selection
    if all(e.session_timeout == _default_timeout(e.key.proto) for e in entries):
        pass
    elif len({e.session_timeout for e in entries}) == 1:
        spec["sessionTimeout"] = first.session_timeout
    else:
        return None
    if first.persist_timeout != DEFAULT_PERSIST_TIMEOUT:
        spec["persistTimeout"] = first.persist_timeout
    if first.allowed_sources:
        spec["allowedSources"] = list(first.allowed_sources)
    return spec


def _endpoints(sets: list[EndpointSet]) -> tuple[list[Doc], dict[tuple[str, int, int], int]] | None:
    """Endpoints + per-port targetPort for endpoint sets of one Service, or None."""
    if not sets:
        return [], {}
    people = {(b.address, b.weight) for b in sets[0].backends}
    if len(people) != len(sets[0].backends):
        return None
    port_targets: dict[tuple[str, int, int], int] = {}
    per_endpoint: dict[str, set[int]] = defaultdict(set)
    uniform = True
    for s in sets:
        if {(b.address, b.weight) for b in s.backends} != people or len(s.backends) != len(people):
            return None
        ports = {b.port for b in s.backends}
        for b in s.backends:
            per_endpoint[b.address].add(b.port)
        if len(ports) <= 1:
            port_targets[(s.key.proto, s.key.port, s.key.port_end)] = next(iter(ports), 0)
        else:
            uniform = False
    out: list[Doc] = []
    for b in sets[0].backends:
        ep: Doc = {"address": b.address}
        if b.weight != 1:
            ep["weight"] = b.weight
        out.append(ep)
    if uniform:
        return out, port_targets
    if any(len(p) != 1 for p in per_endpoint.values()):
        return None
    for ep in out:
        (target,) = per_endpoint[ep["address"]]
        if target:
            ep["targetPort"] = target
    return out, {}


def _merged_service(name: str, entries: list[ServiceEntry], endpoints: Mapping[str, Record],
                    announced: set[str]) -> Doc | None:
    spec = _settings(entries)
    if spec is None:
        return None
    by_vip: dict[str, set[tuple[str, int, int]]] = defaultdict(set)
    for e in entries:
        by_vip[e.key.vip].add((e.key.proto, e.key.port, e.key.port_end))
    port_sets = list(by_vip.values())
    if any(p != port_sets[0] for p in port_sets[1:]):
        return None
    sets = []
    for e in entries:
        s = endpoints.get(str(e.key))
        if not isinstance(s, EndpointSet):
            return None
        sets.append(s)
    # The same port on every VIP must have the same backends and table.
    for e, s in zip(entries, sets, strict=True):
        twin = next(x for x in sets if (x.key.proto, x.key.port, x.key.port_end) ==
                    (e.key.proto, e.key.port, e.key.port_end))
        if (s.backends, s.maglev) != (twin.backends, twin.maglev):
            return None
    eps = _endpoints(sets)
    if eps is None:
        return None
    ep_docs, targets = eps
    vips = sorted(by_vip)
    primary = vips[0]
    ports = [_port_doc(ServiceKey(primary, proto, start, end), targets.get((proto, start, end)))
             for proto, start, end in sorted(port_sets[0], key=lambda p: (p[1], p[0]))]
    out: Doc = {"vip": primary}
    if len(vips) > 1:
        out["secondaryVips"] = vips[1:]
    out["ports"] = ports
    out.update(spec)
    tables = {len(s.maglev) // 2 for s in sets if s.maglev}
    if entries[0].selection == "maglev" and tables:
        if len(tables) != 1:
            return None
        (size,) = tables
        if size != default_maglev_size(len(ep_docs)):
            out["maglevTableSize"] = size
    out["endpoints"] = ep_docs
    prefix = f"{primary}/{128 if ':' in primary else 32}"
    if prefix in announced:
        out["bgp"] = True
    return out


def _safe_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63] or "service"


def services(live: State) -> list[Doc]:
    entries: dict[str, list[ServiceEntry]] = defaultdict(list)
    for rec in live.get("service", {}).values():
        if isinstance(rec, ServiceEntry):
            entries[rec.name].append(rec)
    endpoints = live.get("endpoints", {})
    announced = set(live.get("announce", {}))
    docs: list[Doc] = []
    taken = set(entries)
    for name in sorted(entries):
        group = sorted(entries[name], key=lambda e: (e.key.vip, e.key.proto, e.key.port))
        spec = _merged_service(name, group, endpoints, announced)
        if spec is not None:
            docs.append(_doc("Service", name, spec))
            continue
        for e in group:  # split: one exact Service per key
            split = f"{name}-{e.key.proto}-{e.key.port}"
            if split in taken:
                split = _safe_name(f"{split}-{e.key.vip}")
            taken.add(split)
            spec = _merged_service(name, [e], endpoints, announced)
            if spec is None:  # no endpoint set: a service with no endpoints
                spec = {"vip": e.key.vip, "ports": [_port_doc(e.key, None)], **(_settings([e]) or {}),
                        "endpoints": []}
            docs.append(_doc("Service", split, spec))
    return docs


def datapath(live: State, name: str) -> list[Doc]:
    attach = [r for r in live.get("attach", {}).values() if isinstance(r, Attachment)]
    vip_ifs = {r.ifname for r in live.get("vip", {}).values() if isinstance(r, VipAddress)}
    if not attach:
        return []
    ifaces = sorted(attach, key=lambda a: a.ifname)
    spec: Doc = {"interfaces": [{"name": a.ifname, "hook": a.hook} for a in ifaces]}
    if vip_ifs and vip_ifs != {DEFAULT_VIP_INTERFACE}:
        spec["vipInterface"] = sorted(vip_ifs)[0]
    return [_doc("Datapath", name, spec)]


def firewall(live: State) -> list[Doc]:
    docs = []
    for rec in sorted((r for r in live.get("firewall", {}).values() if isinstance(r, FirewallEntry)),
                      key=lambda r: (r.priority, r.name)):
        match: Doc = {}
        for field, value in (("source", rec.source), ("destination", rec.destination),
                             ("inInterface", rec.in_interface)):
            if value is not None:
                match[field] = value
        if rec.protocol:
            match["protocol"] = PROTO_NAMES.get(rec.protocol, rec.protocol.upper())
        if rec.source_ports:
            match["sourcePorts"] = {"from": rec.source_ports[0], "to": rec.source_ports[1]}
        if rec.destination_ports:
            match["destinationPorts"] = {"from": rec.destination_ports[0], "to": rec.destination_ports[1]}
        spec: Doc = {"priority": rec.priority, "match": match, "action": rec.action}
        if rec.mark is not None:
            spec["mark"] = rec.mark
        if rec.rate_pps is not None:
            spec["rateLimit"] = {"packetsPerSecond": rec.rate_pps, "burst": rec.rate_burst or 0}
        docs.append(_doc("FirewallRule", rec.name, spec))
    return docs


def bgp_peers(live: State) -> list[Doc]:
    docs = []
    for rec in sorted((r for r in live.get("bgp-peer", {}).values() if isinstance(r, BgpPeer)),
                      key=lambda r: r.address):
        spec: Doc = {"address": rec.address, "remoteAS": rec.remote_as, "port": rec.port,
                     "holdTime": rec.hold_time, "keepalive": rec.keepalive}
        if rec.multihop:
            spec["multihop"] = rec.multihop
        if rec.password is not None:
            spec["password"] = rec.password
        docs.append(_doc("BGPPeer", _safe_name(f"peer-{rec.address}"), spec))
    return docs


def export_documents(live: State, box_name: str = "box", bgp_config: Doc | None = None) -> list[Doc]:
    """Every live object as an input document: Datapath, firewall, BGP, services.

    BGP peers and ``bgp: true`` need a BGPConfig (local AS, router ID), which
    no state record carries: pass its ``spec`` as ``bgp_config`` to export
    them; without it they are left out (a config with peers but no BGPConfig
    would not validate).
    """
    if bgp_config is None:
        live = {k: v for k, v in live.items() if k not in ("bgp-peer", "announce")}
        bgp: list[Doc] = []
    else:
        bgp = [_doc("BGPConfig", "bgp", dict(bgp_config))] + bgp_peers(live)
    return datapath(live, box_name) + firewall(live) + bgp + services(live)
