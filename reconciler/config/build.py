"""Schema-valid document -> typed ``reconciler.model.Resource``.

Why this exists: one function per kind maps camelCase YAML onto the frozen
dataclasses of ``reconciler.model``.  Only fields present in the YAML are
passed, so every default comes from the model's dataclass defaults -- the one
place defaults live.  The input has passed JSON-Schema validation, so shapes
are trusted here; nothing in this module reports errors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.config.tree import Loc, LocationMap, RootSource
from reconciler.model import (
    YAML_NAMES,
    BGPConfigSpec,
    BGPPeerSpec,
    DatapathCapacities,
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


@functools.cache
def _names(cls: type, *skip: str) -> dict[str, str]:
    """YAML name -> field name of ``cls`` (``model.YAML_NAMES``), without the fields in ``skip``."""
    return {yaml_name: field for field, yaml_name in YAML_NAMES[cls].items() if field not in skip}


def _int(value: Any) -> int:
    return int(value)  # the schema allows 80.0 as an integer; the model wants 80


def _ints(*names: str) -> dict[str, Callable[[Any], Any]]:
    return {n: _int for n in names}


def _port(src: Mapping[str, Any]) -> ServicePort:
    kw = _pick(src, _names(ServicePort), _ints("port", "endPort", "targetPort"))
    kw.setdefault("port", 0)  # ICMP has no port
    return ServicePort(**kw)


def _endpoint(src: Mapping[str, Any]) -> Endpoint:
    return Endpoint(**_pick(src, _names(Endpoint), _ints("weight", "targetPort")))


def _probe(src: Mapping[str, Any]) -> Probe:
    return Probe(**_pick(src, _names(Probe), _ints("port", "interval", "timeout", "retries", "status")))


def service(spec: Mapping[str, Any]) -> ServiceSpec:
    return ServiceSpec(**_pick(spec, _names(ServiceSpec), {
        "ports": lambda v: tuple(_port(p) for p in v),
        "endpoints": lambda v: tuple(_endpoint(e) for e in v),
        "allowedSources": tuple, "secondaryVips": tuple, "probe": _probe,
        **_ints("sessionTimeout", "persistTimeout", "maglevTableSize"),
    }))


def pool(spec: Mapping[str, Any]) -> PoolSpec:
    return PoolSpec(**_pick(spec, _names(PoolSpec), {"addresses": tuple}))


def bgp_config(spec: Mapping[str, Any]) -> BGPConfigSpec:
    return BGPConfigSpec(**_pick(spec, _names(BGPConfigSpec),
                                 {"listenAddresses": tuple, "communities": tuple,
                                  **_ints("localAS", "listenPort", "localPref", "med")}))


def bgp_peer(spec: Mapping[str, Any]) -> BGPPeerSpec:
    return BGPPeerSpec(**_pick(spec, _names(BGPPeerSpec),
                               _ints("remoteAS", "port", "holdTime", "keepalive", "multihop")))


def _range(src: Mapping[str, Any]) -> PortRange:
    start = int(src["from"])
    return PortRange(start, int(src.get("to", start)))  # the YAML names: model.YAML_NAMES[PortRange]


def firewall_rule(spec: Mapping[str, Any]) -> FirewallRuleSpec:
    match = FirewallMatch(**_pick(spec.get("match", {}), _names(FirewallMatch),
                                  {"sourcePorts": _range, "destinationPorts": _range}))
    return FirewallRuleSpec(**_pick(spec, _names(FirewallRuleSpec, "match"), {
        "rateLimit": lambda v: RateLimit(int(v["packetsPerSecond"]), int(v["burst"])),
        **_ints("priority", "mark"),
    }), match=match)


def datapath(spec: Mapping[str, Any]) -> DatapathSpec:
    kw = _pick(spec, _names(DatapathSpec, "interfaces"), {
        "capacities": lambda v: DatapathCapacities(**_pick(v, _names(DatapathCapacities), _ints(
            "services", "endpoints", "selectionChunks", "conntrackFlows", "persistEntries")))})
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
