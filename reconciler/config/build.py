"""Schema-valid document -> typed ``reconciler.model.Resource``.

Why this exists: one function per kind maps camelCase YAML onto the frozen
dataclasses of ``reconciler.model``.  Only fields present in the YAML are
passed, so every default comes from the model's dataclass defaults -- the one
place defaults live.  The input has passed JSON-Schema validation, so shapes
are trusted here; nothing in this module reports errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from reconciler.config.tree import Loc, LocationMap, RootSource
from reconciler.model import (
    BGPConfigSpec,
    BGPPeerSpec,
    DatapathInterface,
    DatapathSpec,
    Endpoint,
    FirewallMatch,
    FirewallRuleSpec,
    Location,
    Metadata,
    PoolSpec,
    PortRange,
    Probe,
    RateLimit,
    Resource,
    ServicePort,
    ServiceSpec,
    Spec,
)


def _pick(src: Mapping[str, Any], fields: Mapping[str, str], convert: Mapping[str, Callable[[Any], Any]]
          ) -> dict[str, Any]:
    """Keyword arguments for a dataclass: YAML name -> field name, only present keys."""
    out: dict[str, Any] = {}
    for yaml_name, field in fields.items():
        if yaml_name in src:
            value = src[yaml_name]
            fn = convert.get(yaml_name)
            out[field] = fn(value) if fn is not None else value
    return out


def _int(value: Any) -> int:
    return int(value)  # the schema allows 80.0 as an integer; the model wants 80


def _ints(*names: str) -> dict[str, Callable[[Any], Any]]:
    return {n: _int for n in names}


def _port(src: Mapping[str, Any]) -> ServicePort:
    kw = _pick(src, {"port": "port", "protocol": "protocol", "endPort": "end_port",
                     "targetPort": "target_port", "name": "name"}, _ints("port", "endPort", "targetPort"))
    kw.setdefault("port", 0)  # ICMP has no port
    return ServicePort(**kw)


def _endpoint(src: Mapping[str, Any]) -> Endpoint:
    return Endpoint(**_pick(src, {"address": "address", "weight": "weight", "targetPort": "target_port"},
                            _ints("weight", "targetPort")))


def _probe(src: Mapping[str, Any]) -> Probe:
    return Probe(**_pick(src, {"type": "type", "port": "port", "request": "request", "response": "response",
                               "interval": "interval", "timeout": "timeout", "retries": "retries"},
                         _ints("port", "interval", "timeout", "retries")))


def service(spec: Mapping[str, Any]) -> ServiceSpec:
    return ServiceSpec(**_pick(spec, {
        "ports": "ports", "vip": "vip", "pool": "pool", "mode": "mode", "selection": "selection",
        "sessionTimeout": "session_timeout", "persistTimeout": "persist_timeout",
        "maglevTableSize": "maglev_table_size", "endpoints": "endpoints", "allowedSources": "allowed_sources",
        "secondaryVips": "secondary_vips", "bgp": "bgp", "probe": "probe",
    }, {
        "ports": lambda v: tuple(_port(p) for p in v),
        "endpoints": lambda v: tuple(_endpoint(e) for e in v),
        "allowedSources": tuple, "secondaryVips": tuple, "probe": _probe,
        **_ints("sessionTimeout", "persistTimeout", "maglevTableSize"),
    }))


def pool(spec: Mapping[str, Any]) -> PoolSpec:
    return PoolSpec(**_pick(spec, {"addresses": "addresses", "sharing": "sharing", "family": "family"},
                            {"addresses": tuple}))


def bgp_config(spec: Mapping[str, Any]) -> BGPConfigSpec:
    return BGPConfigSpec(**_pick(spec, {"localAS": "local_as", "routerID": "router_id",
                                        "listenPort": "listen_port", "listenAddresses": "listen_addresses"},
                                 {"listenAddresses": tuple, **_ints("localAS", "listenPort")}))


def bgp_peer(spec: Mapping[str, Any]) -> BGPPeerSpec:
    return BGPPeerSpec(**_pick(spec, {"address": "address", "remoteAS": "remote_as", "port": "port",
                                      "holdTime": "hold_time", "keepalive": "keepalive",
                                      "multihop": "multihop", "password": "password"},
                               _ints("remoteAS", "port", "holdTime", "keepalive", "multihop")))


def _range(src: Mapping[str, Any]) -> PortRange:
    start = int(src["from"])
    return PortRange(start, int(src.get("to", start)))


def firewall_rule(spec: Mapping[str, Any]) -> FirewallRuleSpec:
    match = FirewallMatch(**_pick(spec.get("match", {}), {
        "source": "source", "destination": "destination", "sourcePorts": "source_ports",
        "destinationPorts": "destination_ports", "protocol": "protocol", "inInterface": "in_interface",
    }, {"sourcePorts": _range, "destinationPorts": _range}))
    return FirewallRuleSpec(**_pick(spec, {"priority": "priority", "action": "action", "mark": "mark",
                                           "rateLimit": "rate_limit"}, {
        "rateLimit": lambda v: RateLimit(int(v["packetsPerSecond"]), int(v["burst"])),
        **_ints("priority", "mark"),
    }), match=match)


def datapath(spec: Mapping[str, Any]) -> DatapathSpec:
    kw = _pick(spec, {"hook": "hook", "vipInterface": "vip_interface"}, {})
    default_hook = kw.get("hook")
    interfaces = []
    for item in spec["interfaces"]:
        if isinstance(item, str):
            item = {"name": item}
        hook = item.get("hook", default_hook)
        interfaces.append(DatapathInterface(item["name"], hook) if hook else DatapathInterface(item["name"]))
    return DatapathSpec(interfaces=tuple(interfaces), **kw)


BUILDERS: dict[str, Callable[[Mapping[str, Any]], Spec]] = {
    "Service": service, "Pool": pool, "BGPConfig": bgp_config, "BGPPeer": bgp_peer,
    "FirewallRule": firewall_rule, "Datapath": datapath,
}


def resource(kind: str, value: Mapping[str, Any], file: str, root: Loc, source: RootSource | None = None,
             index: int = 0) -> Resource:
    """The typed resource of a schema-valid document.

    ``root`` must hold the document's start; its children are used for
    ``Resource.locations`` unless a ``source`` builds them lazily from ``index``.
    """
    meta = value["metadata"]
    labels = tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items()))
    locations = (LocationMap(file, source=source, index=index) if source is not None
                 else LocationMap(file, root))
    return Resource(kind=kind, metadata=Metadata(meta["name"], labels), spec=BUILDERS[kind](value["spec"]),
                    location=Location(file, root.line, root.column), locations=locations)
