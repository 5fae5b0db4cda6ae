"""Applied configuration + live state -> resources in the input format (``lbctl export``).

Why this exists: adopting a box, or checking into Git what it really runs,
needs YAML that ``validate`` accepts and that ``plan`` finds nothing to change
against.  This module is pure: resources and records in, plain dicts (YAML
documents) and notes out.

Two sources:

* ``from_applied``: the configuration the last verified apply recorded
  (``reconciler.applied``), checked record by record against the live state.
  Each recorded resource whose records all match live is exported exactly as
  applied (pool references, names, probes, labels, ``vipInterface``, BGP and
  firewall resources no driver carries out yet).  Where they differ the live
  state wins: that resource is rebuilt from its live records (keeping what the
  live state cannot show, e.g. labels, probes, port names) and a note says
  why; live records no recorded resource explains are exported from live too.
* ``from_live``: no usable record (a box lbctl never applied, or a lost state
  dir): everything is rebuilt from the live records.  Services are grouped by
  the owning name the datapath keeps; the Datapath gets a DNS-label name made
  from the box's name.  Pools, probes, labels, BGP, firewall rules no driver
  reads and a VIP interface other than the one read cannot be recovered.

Record kinds this module does not know (new drivers' kinds) are ignored.
Secrets are never exported: a BGPPeer password becomes
``model.SECRET_PLACEHOLDER``, which ``validate`` rejects until it is replaced.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.desired import (
    Health,
    TableBuilder,
    canonical_ip,
    compile_state,
    default_maglev_size,
    host_prefixlen,
)
from reconciler.documents import to_document
from reconciler.model import (
    API_VERSION,
    DEFAULT_BGP_PORT,
    DEFAULT_HOOK,
    DEFAULT_OTHER_SESSION_TIMEOUT,
    DEFAULT_PERSIST_TIMEOUT,
    DEFAULT_TCP_SESSION_TIMEOUT,
    SECRET_PLACEHOLDER,
    BGPPeerSpec,
    DatapathSpec,
    Resource,
    ServiceSpec,
)
from reconciler.records import (
    KINDS,
    Announcement,
    Attachment,
    BgpGlobal,
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
_CONTEXT_KINDS = ("Datapath", "BGPConfig")  # resources that shape the records of others
# Record kinds that come from resources export writes.  Kernel settings (``sysctl``)
# follow from the Datapath and the VIPs, so they are never compared or exported.
EXPORTED_KINDS = tuple(k for k in KINDS if k != "sysctl")
_MOST_NOTED = 3  # differences listed per resource


@dataclass(frozen=True)
class Exported:
    """The documents to write, and what the reader must know about them."""

    documents: tuple[Doc, ...]
    notes: tuple[str, ...] = ()  # where the output is not the applied configuration, and why
    secrets: tuple[str, ...] = ()  # "BGPPeer/NAME" whose password was replaced by the placeholder


def _doc(kind: str, name: str, spec: Doc) -> Doc:
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def dns_label(text: str, fallback: str = "box") -> str:
    """``text`` as a valid resource name (a DNS label): ``Web01.Example`` -> ``web01-example``."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].strip("-")
    return label or fallback


def _unique(name: str, taken: set[str]) -> str:
    name = dns_label(name, "service")
    out, n = name, 2
    while out in taken:
        suffix = f"-{n}"
        out = name[:63 - len(suffix)].rstrip("-") + suffix
        n += 1
    taken.add(out)
    return out


# --- services from live records ------------------------------------------------------------


def _default_timeout(proto: str) -> int:
    return DEFAULT_TCP_SESSION_TIMEOUT if proto in ("tcp", "sctp") else DEFAULT_OTHER_SESSION_TIMEOUT


def _port_doc(key: ServiceKey, target: int) -> Doc:
    port: Doc = {} if key.proto == "icmp" else {"port": key.port}
    if key.port_end != key.port:
        port["endPort"] = key.port_end
    port["protocol"] = PROTO_NAMES.get(key.proto, key.proto.upper())
    if target:
        port["targetPort"] = target
    return port


def _settings(entries: Sequence[ServiceEntry]) -> Doc | None:
    """The spec fields ``entries`` share (mode, selection, timeouts, sources); None if they disagree."""
    first = entries[0]
    def shared(e: ServiceEntry) -> tuple[object, ...]:
        return (e.mode, e.selection, e.persist_timeout, e.allowed_sources, e.source_address, e.firewall_mark,
                e.no_endpoints)

    if any(shared(e) != shared(first) for e in entries):
        return None
    spec: Doc = {}
    if first.mode != "default":
        spec["mode"] = first.mode
    if first.selection != "rr":
        spec["selection"] = first.selection
    if not all(e.session_timeout == _default_timeout(e.key.proto) for e in entries):
        if len({e.session_timeout for e in entries}) != 1:
            return None
        spec["sessionTimeout"] = first.session_timeout
    if first.persist_timeout != DEFAULT_PERSIST_TIMEOUT:
        spec["persistTimeout"] = first.persist_timeout
    if first.allowed_sources:
        spec["allowedSources"] = list(first.allowed_sources)
    if first.source_address:
        spec["sourceAddress"] = first.source_address
    if first.firewall_mark:
        spec["firewallMark"] = first.firewall_mark
    if first.no_endpoints != "reject":
        spec["noEndpoints"] = first.no_endpoints
    return spec


def _targets(sets: Sequence[EndpointSet]) -> tuple[list[Doc], list[int]] | None:
    """Endpoints (with any targetPort override) and each set's port targetPort; None if inexpressible.

    Every set must hold the same endpoints (address, weight).  An endpoint whose
    backend port varies between the sets follows the ports' targetPort; one
    with the same port everywhere either follows too or overrides it.
    """
    people = [(b.address, b.weight) for b in sets[0].backends]
    if len(set(people)) != len(people) or len({a for a, _ in people}) != len(people):
        return None
    ports: dict[str, list[int]] = {a: [] for a, _ in people}
    for s in sets:
        if sorted((b.address, b.weight) for b in s.backends) != sorted(people):
            return None
        for b in s.backends:
            ports[b.address].append(b.port)
    if not people:
        return [], [0] * len(sets)
    followers = [p for p in ports.values() if len(set(p)) > 1]
    if followers:
        targets = followers[0]
        if any(p != targets for p in followers):
            return None
    else:  # every endpoint is constant: the most common port (0 if any endpoint needs 0) is the target
        constants = Counter(p[0] for p in ports.values())
        common = 0 if 0 in constants else max(sorted(constants), key=lambda c: constants[c])
        targets = [common] * len(sets)
    out: list[Doc] = []
    for address, weight in people:
        ep: Doc = {"address": address}
        if weight != 1:
            ep["weight"] = weight
        mine = ports[address]
        if mine != targets:
            if len(set(mine)) != 1 or mine[0] == 0:
                return None
            ep["targetPort"] = mine[0]
        out.append(ep)
    return out, targets


def _service_spec(entries: Sequence[ServiceEntry], endpoints: Mapping[str, Record],
                  announced: set[str] | None) -> Doc | None:
    """One Service spec for ``entries`` (one name), or None when they cannot be one Service."""
    spec = _settings(entries)
    if spec is None:
        return None
    by_vip: dict[str, list[ServiceEntry]] = defaultdict(list)
    for e in entries:
        by_vip[e.key.vip].append(e)
    vips = sorted(by_vip)
    spans = [sorted((e.key.proto, e.key.port, e.key.port_end) for e in by_vip[v]) for v in vips]
    if any(s != spans[0] for s in spans) or len(set(spans[0])) != len(spans[0]):
        return None
    if len(vips) > 1 and (len(vips) > 4 or any(p != "sctp" for p, _, _ in spans[0])):
        return None  # only SCTP services have secondary VIPs (at most 3)
    sets: dict[ServiceKey, EndpointSet] = {}
    for e in entries:
        s = endpoints.get(str(e.key))
        if not isinstance(s, EndpointSet):
            return None
        sets[e.key] = s
    primary = sorted(by_vip[vips[0]], key=lambda e: (e.key.port, e.key.proto))
    for vip in vips[1:]:  # every VIP balances each port the same way
        for e in primary:
            twin = sets[replace(e.key, vip=vip)]
            if (twin.backends, twin.maglev) != (sets[e.key].backends, sets[e.key].maglev):
                return None
    found = _targets([sets[e.key] for e in primary])
    if found is None:
        return None
    eps, targets = found
    out: Doc = {"vip": vips[0]}
    if len(vips) > 1:
        out["secondaryVips"] = vips[1:]
    out["ports"] = [_port_doc(e.key, t) for e, t in zip(primary, targets, strict=True)]
    out.update(spec)
    if primary[0].selection == "maglev":
        sizes = {len(sets[e.key].maglev) // 2 for e in primary if sets[e.key].maglev}
        if len(sizes) > 1:
            return None
        if sizes and sizes != {default_maglev_size(len(eps))}:
            out["maglevTableSize"] = sizes.pop()
    out["endpoints"] = eps
    if announced is not None and all(f"{v}/{host_prefixlen(v)}" in announced for v in vips):
        out["bgp"] = True
    return out


def _service_docs(name: str, entries: Sequence[ServiceEntry], endpoints: Mapping[str, Record],
                  announced: set[str] | None, taken: set[str], notes: list[str]) -> list[Doc]:
    """``entries`` of one name as one Service, or (when impossible, with a note) one Service per key."""
    spec = _service_spec(entries, endpoints, announced)
    if spec is not None:
        taken.add(name)
        return [_doc("Service", name, spec)]
    notes.append(f"Service/{name}: its live records cannot be written as one Service (ports or VIPs differ "
                 f"in endpoints or settings); exported as {len(entries)} Services, one per port, which an "
                 "apply of this export renames")
    docs = []
    for e in sorted(entries, key=lambda e: (e.key.vip, e.key.proto, e.key.port)):
        part = _service_spec([e], endpoints, announced)
        if part is None:  # no endpoint set: a service without endpoints
            part = {"vip": e.key.vip, "ports": [_port_doc(e.key, 0)], **(_settings([e]) or {}),
                    "endpoints": []}
        docs.append(_doc("Service", _unique(f"{name}-{e.key.proto}-{e.key.port}", taken), part))
    return docs


def _entries_by_name(live: State) -> dict[str, list[ServiceEntry]]:
    out: dict[str, list[ServiceEntry]] = defaultdict(list)
    for rec in live.get("service", {}).values():
        if isinstance(rec, ServiceEntry):
            out[rec.name].append(rec)
    return out


def _announced(live: State) -> set[str] | None:
    """Announced prefixes, or None when no driver reads announcements (then they are unknown)."""
    return set(live["announce"]) if "announce" in live else None


# --- other kinds from live records ---------------------------------------------------------


def _interfaces(attachments: Iterable[Attachment], hook: str, order: Sequence[str] = ()) -> list[Any]:
    rank = {name: i for i, name in enumerate(order)}
    ordered = sorted(attachments, key=lambda a: (rank.get(a.ifname, len(rank)), a.ifname))
    return [a.ifname if a.hook == hook else {"name": a.ifname, "hook": a.hook} for a in ordered]


def _live_attachments(live: State) -> list[Attachment]:
    return [r for r in live.get("attach", {}).values() if isinstance(r, Attachment)]


def _firewall_doc(rec: FirewallEntry) -> Doc:
    match: Doc = {}
    for field, value in (("source", rec.source), ("destination", rec.destination)):
        if value is not None:
            match[field] = value
    if rec.source_ports:
        match["sourcePorts"] = {"from": rec.source_ports[0], "to": rec.source_ports[1]}
    if rec.destination_ports:
        match["destinationPorts"] = {"from": rec.destination_ports[0], "to": rec.destination_ports[1]}
    if rec.protocol:
        match["protocol"] = PROTO_NAMES.get(rec.protocol, rec.protocol.upper())
    if rec.in_interface is not None:
        match["inInterface"] = rec.in_interface
    spec: Doc = {"priority": rec.priority, "match": match, "action": rec.action}
    if rec.mark is not None:
        spec["mark"] = rec.mark
    if rec.rate_pps is not None:
        spec["rateLimit"] = {"packetsPerSecond": rec.rate_pps, "burst": rec.rate_burst or 0}
    return _doc("FirewallRule", rec.name, spec)


def _peer_spec(rec: BgpPeer) -> Doc:
    spec: Doc = {"address": rec.address, "remoteAS": rec.remote_as, "port": rec.port,
                 "holdTime": rec.hold_time, "keepalive": rec.keepalive}
    if rec.multihop:
        spec["multihop"] = rec.multihop
    if rec.password is not None:
        spec["password"] = SECRET_PLACEHOLDER
    if rec.description is not None:
        spec["description"] = rec.description
    return spec


def _bgp_config_doc(res: Resource, rec: BgpGlobal) -> Doc:
    """The recorded BGPConfig with the speaker's settings as gobgpd runs them."""
    doc = to_document(res)
    spec = doc["spec"]
    spec.update({"localAS": rec.asn, "routerID": rec.router_id, "listenPort": rec.listen_port})
    spec.pop("listenAddresses", None)
    if rec.listen_addresses:
        spec["listenAddresses"] = list(rec.listen_addresses)
    return doc


# --- live only -----------------------------------------------------------------------------


def from_live(live: State, box_name: str, vip_interface: str = DEFAULT_VIP_INTERFACE) -> Exported:
    """Everything the live records show, as documents (no applied-configuration record)."""
    docs: list[Doc] = []
    notes: list[str] = []
    attach = _live_attachments(live)
    if attach:
        spec: Doc = {"interfaces": _interfaces(attach, DEFAULT_HOOK)}
        if vip_interface != DEFAULT_VIP_INTERFACE:
            spec["vipInterface"] = vip_interface
        docs.append(_doc("Datapath", dns_label(box_name), spec))
    docs += [_firewall_doc(r) for r in sorted(
        (r for r in live.get("firewall", {}).values() if isinstance(r, FirewallEntry)),
        key=lambda r: (r.priority, r.name))]
    endpoints = live.get("endpoints", {})
    by_name = _entries_by_name(live)
    taken: set[str] = set(by_name)
    speaker = live.get("bgp-global", {}).get("global")
    announced = _announced(live) if isinstance(speaker, BgpGlobal) else None
    for name in sorted(by_name):
        docs += _service_docs(name, by_name[name], endpoints, announced, taken, notes)
    used = {e.key.vip for group in by_name.values() for e in group}
    missing = sorted(used - set(live.get("vip", {}))) if "vip" in live else []
    if missing:
        notes.append(f"{len(missing)} service VIP(s) (e.g. {missing[0]}) are not on {vip_interface}: if "
                     "lbctl put them on another interface, export again with --vip-interface IF, or an "
                     f"apply of this export adds them to {vip_interface}")
    notes += [f"VIP address {v} on {r.ifname} is used by no service: not exported (an apply removes it)"
              for v, r in sorted(live.get("vip", {}).items()) if isinstance(r, VipAddress) and v not in used]
    secrets: list[str] = []
    if isinstance(speaker, BgpGlobal):
        docs += _live_bgp(speaker, live, secrets)
        if live.get("announce"):
            communities = {tuple(a.communities) for a in live["announce"].values()
                           if isinstance(a, Announcement)}
            if len(communities) > 1:
                notes.append("announcements carry different communities: the BGPConfig gets the first VIP's")
    elif live.get("bgp-peer") or live.get("announce"):
        notes.append("BGP peers and announcements are not exported without a running BGP speaker "
                     "(it holds the AS and router ID they need)")
    return Exported(tuple(docs), tuple(notes), tuple(secrets))


def _live_bgp(speaker: BgpGlobal, live: State, secrets: list[str]) -> list[Doc]:
    """BGPConfig (named ``bgp``) and one BGPPeer per live peer (named after its address)."""
    spec: Doc = {"localAS": speaker.asn, "routerID": speaker.router_id}
    if speaker.listen_port != DEFAULT_BGP_PORT:
        spec["listenPort"] = speaker.listen_port
    if speaker.listen_addresses:
        spec["listenAddresses"] = list(speaker.listen_addresses)
    first = next((a for _, a in sorted(live.get("announce", {}).items())
                  if isinstance(a, Announcement)), None)
    if first is not None:
        if first.communities:
            spec["communities"] = list(first.communities)
        if first.local_pref is not None:
            spec["localPref"] = first.local_pref
        if first.med is not None:
            spec["med"] = first.med
    docs = [_doc("BGPConfig", "bgp", spec)]
    for addr, peer in sorted(live.get("bgp-peer", {}).items()):
        if isinstance(peer, BgpPeer):
            name = dns_label(f"peer-{addr}", "peer")
            docs.append(_doc("BGPPeer", name, _peer_spec(peer)))
            if peer.password is not None:
                secrets.append(f"BGPPeer/{name}")
    return docs


# --- from the applied configuration --------------------------------------------------------


def _comparable(kind: str, rec: Record | None) -> Record | None:
    if kind == "bgp-peer" and isinstance(rec, BgpPeer) and rec.password is not None:
        return replace(rec, password=SECRET_PLACEHOLDER)  # the record never holds the secret
    return rec


def _parts(resources: Sequence[Resource], vips: Mapping[str, str], table_builder: TableBuilder | None,
           health: Health | None = None) -> list[dict[str, dict[str, Record]]]:
    """The records each resource contributes (compiled with the Datapath and BGPConfig it depends on)."""
    context = [r for r in resources if r.kind in _CONTEXT_KINDS]
    whole = compile_state(context, vips, table_builder=table_builder, health=health)
    out = []
    for res in resources:
        if res.kind in _CONTEXT_KINDS:
            base = compile_state([r for r in context if r is not res], vips, table_builder=table_builder,
                                 health=health)
            mine = whole
        else:
            base = whole
            mine = compile_state([*context, res], vips, table_builder=table_builder, health=health)
        out.append({kind: {k: v for k, v in recs.items() if base.get(kind, {}).get(k) != v}
                    for kind, recs in mine.items()})
    return out


def _carry(res: Resource, doc: Doc, vips: Mapping[str, str], announced: set[str] | None) -> Doc:
    """A live-rebuilt Service doc plus what its recorded resource says and live cannot show."""
    spec = res.spec
    assert isinstance(spec, ServiceSpec)
    recorded = to_document(res)
    if res.metadata.labels:
        doc["metadata"]["labels"] = recorded["metadata"]["labels"]
    live_spec = doc["spec"]
    if spec.pool is not None and spec.vip is None and live_spec.get("vip") == vips.get(res.name) \
            and "secondaryVips" not in live_spec:
        live_spec = {"pool": spec.pool, **{k: v for k, v in live_spec.items() if k != "vip"}}
    names = {(p.protocol, p.port, p.end_port or p.port): p.name for p in spec.ports if p.name}
    for port in live_spec["ports"]:
        name = names.get((port["protocol"], port.get("port", 0), port.get("endPort", port.get("port", 0))))
        if name:
            port["name"] = name
    if announced is None and spec.bgp:
        live_spec["bgp"] = True
    if "probe" in recorded["spec"]:
        live_spec["probe"] = recorded["spec"]["probe"]
    doc["spec"] = live_spec
    return doc


def _reasons(found: Sequence[str]) -> str:
    shown = "; ".join(found[:_MOST_NOTED])
    return shown + (f"; and {len(found) - _MOST_NOTED} more" if len(found) > _MOST_NOTED else "")


def _live_owner(kind: str, rec: Record, live: State) -> tuple[str, str] | None:
    """(kind, name) of the resource a live record belongs to, as far as the record tells."""
    if kind in ("service", "endpoints"):
        entry = live.get("service", {}).get(str(getattr(rec, "key", "")))
        return ("Service", entry.name) if isinstance(entry, ServiceEntry) else None
    if kind == "attach":
        return ("Datapath", "")
    if kind == "firewall" and isinstance(rec, FirewallEntry):
        return ("FirewallRule", rec.name)
    return None


def from_applied(resources: Sequence[Resource], live: State, vips: Mapping[str, str], *,
                 table_builder: TableBuilder | None = None, health: Health | None = None) -> Exported:
    """The applied configuration ``resources``, checked against ``live`` (live wins where they differ).

    ``vips``: the pool VIP of each pool Service, as IPAM gives it (store, then live hints).
    Only record kinds present in ``live`` (the kinds the box's drivers read) are compared.
    ``table_builder`` replaces the Maglev table builder (tests).  ``health``: the endpoint
    health the live state was compiled with (endpoints down or backups on standby are not
    live, yet they are configuration).
    """
    owned = [k for k in EXPORTED_KINDS if k in live]
    differs: dict[int, list[str]] = defaultdict(list)
    claimed: dict[str, set[str]] = defaultdict(set)
    for i, part in enumerate(_parts(resources, vips, table_builder, health)):
        for kind in owned:
            for key, rec in part.get(kind, {}).items():
                claimed[kind].add(key)
                now = live[kind].get(key)
                if _comparable(kind, now) != rec:
                    differs[i].append(f"{kind} {key} " + ("is not live" if now is None else "differs"))

    # Live records no recorded resource accounts for.
    index = {(r.kind, r.name): i for i, r in enumerate(resources)}
    datapath = next((i for i, r in enumerate(resources) if r.kind == "Datapath"), None)
    extra: set[tuple[str, str]] = set()
    unexplained: list[tuple[str, str]] = []
    for kind in owned:
        for key, rec in sorted(live[kind].items()):
            if key in claimed[kind]:
                continue
            owner = _live_owner(kind, rec, live)
            at = datapath if owner is not None and owner[0] == "Datapath" else index.get(owner or ("", ""))
            if at is not None:
                differs[at].append(f"{kind} {key} is live but not in the applied configuration")
            elif owner is not None:
                extra.add(owner)
            else:
                unexplained.append((kind, key))
    live_entries = _entries_by_name(live)
    extra_vips = {e.key.vip for kind, name in extra if kind == "Service" for e in live_entries[name]}
    notes = [f"{kind} {key}: live but in no resource of the applied configuration; not exported "
             "(an apply of this export removes it)" for kind, key in unexplained
             if not (kind == "vip" and key in extra_vips)]

    announced = _announced(live)
    endpoints = live.get("endpoints", {})
    taken = {r.name for r in resources if r.kind == "Service"} | {n for k, n in extra if k == "Service"}
    docs: list[Doc] = []
    secrets: list[str] = []
    for i, res in enumerate(resources):
        if isinstance(res.spec, BGPPeerSpec) and res.spec.password is not None:
            secrets.append(f"BGPPeer/{res.name}")
        if i not in differs:
            docs.append(to_document(res))
            continue
        why = _reasons(differs[i])
        if isinstance(res.spec, ServiceSpec):
            entries = live_entries.get(res.name)
            if not entries:
                notes.append(f"Service/{res.name}: applied but not live; left out ({why})")
                continue
            rebuilt = _service_docs(res.name, entries, endpoints, announced, taken, notes)
            docs += [_carry(res, d, vips, announced) for d in rebuilt]
            notes.append(f"Service/{res.name}: exported from the live state, which differs from the applied "
                         f"configuration ({why})")
        elif isinstance(res.spec, DatapathSpec):
            attach = _live_attachments(live)
            if not attach:
                notes.append(f"Datapath/{res.name}: attached to no interface live; left out ({why})")
                continue
            doc = to_document(res)
            doc["spec"]["interfaces"] = _interfaces(attach, res.spec.hook,
                                                    [i.name for i in res.spec.interfaces])
            docs.append(doc)
            notes.append(f"Datapath/{res.name}: interfaces taken from the live state ({why})")
        elif isinstance(rule := live.get("firewall", {}).get(res.name), FirewallEntry) \
                and res.kind == "FirewallRule":
            docs.append(_firewall_doc(rule))
            notes.append(f"FirewallRule/{res.name}: exported from the live state ({why})")
        elif res.kind == "BGPConfig" and isinstance(speaker := live.get("bgp-global", {}).get("global"),
                                                    BgpGlobal):
            docs.append(_bgp_config_doc(res, speaker))
            notes.append(f"BGPConfig/{res.name}: speaker settings taken from the live state ({why})")
        elif res.kind == "BGPConfig":
            docs.append(to_document(res))  # the peers need it; the next apply starts the speaker
            notes.append(f"BGPConfig/{res.name}: exported as applied, though no BGP speaker runs ({why})")
        elif isinstance(res.spec, BGPPeerSpec) and isinstance(
                peer := live.get("bgp-peer", {}).get(canonical_ip(res.spec.address)), BgpPeer):
            docs.append(_doc("BGPPeer", res.name, _peer_spec(peer)))
            notes.append(f"BGPPeer/{res.name}: exported from the live state ({why})")
        else:
            notes.append(f"{res.kind}/{res.name}: not live; left out ({why})")

    for kind, name in sorted(extra):
        what = "live but not in the applied configuration; exported from the live state"
        if kind == "Datapath":
            docs.insert(0, _doc("Datapath", "box", {"interfaces": _interfaces(_live_attachments(live),
                                                                               DEFAULT_HOOK)}))
            notes.append(f"Datapath/box: {what}")
        elif kind == "Service":
            docs += _service_docs(name, live_entries[name], endpoints, announced, taken, notes)
            notes.append(f"Service/{name}: {what}")
        elif kind == "FirewallRule" and isinstance(rule := live["firewall"].get(name), FirewallEntry):
            docs.append(_firewall_doc(rule))
            notes.append(f"FirewallRule/{name}: {what}")
    return Exported(tuple(docs), tuple(notes), tuple(secrets))
