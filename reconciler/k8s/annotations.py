"""kube-loxilb's ``loxilb.io/*`` Service annotations, read into lbctl Service fields (pure).

Why this exists: each annotation has its own syntax, defaults and conflicts with
others (and with the Service's spec); reading them in one place keeps the
importer's main line short.  Every value lbctl cannot honour is a ``Finding``
naming the Service and the annotation, and the field keeps its default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.k8s.endpoints import family_of
from reconciler.k8s.objects import Finding, list_at, parse_ip, spec_of
from reconciler.model import Mode, Probe, ProbeType, Selection

PREFIX = "loxilb.io/"
MAX_SECONDARY = 3
MAX_TEXT = 1024

MODES: dict[str, Mode] = {"default": "default", "onearm": "onearm", "fullnat": "fullnat", "dsr": "dsr"}
SELECTIONS: dict[str, Selection] = {
    "rr": "rr", "roundrobin": "rr", "hash": "hash", "persist": "persist", "lc": "lc",
    "leastconnection": "lc", "maglev": "maglev", "priority": "priority",
}
PROBES: dict[str, ProbeType] = {
    "tcp": "tcp", "udp": "udp", "sctp": "sctp", "http": "http", "https": "https",
    "ping": "ping", "icmp": "ping", "none": "none",
}
_YES = {"yes", "true", "on", "1"}
_NO = {"no", "false", "off", "0"}
# Annotations read below; any other loxilb.io/* annotation is reported as unknown.
KNOWN = frozenset({
    "lbmode", "poolSelect", "poolSelectSecondary", "secondaryIPs", "staticIP", "liveness",
    "probetype", "probeport", "probereq", "proberesp", "probetimeout", "proberetries",
    "epselect", "timeout", "usepodnetwork", "ipam", "multus-nets",
})


@dataclass
class Annotations:
    """The loxilb.io/* annotations of one Service and the warnings about them."""

    subject: str
    values: dict[str, str]
    warnings: list[Finding] = field(default_factory=list)

    def warn(self, key: str | None, message: str) -> None:
        self.warnings.append(Finding(self.subject, PREFIX + key if key else None, message))

    def get(self, key: str) -> str | None:
        v = self.values.get(key)
        return v.strip().strip("\"“”'") if v is not None else None

    def flag(self, key: str) -> bool | None:
        v = self.get(key)
        if v is None:
            return None
        if v.lower() in _YES:
            return True
        if v.lower() in _NO:
            return False
        self.warn(key, f"value {v!r} is not yes or no; ignored")
        return None

    def integer(self, key: str, low: int, high: int) -> int | None:
        v = self.get(key)
        if v is None:
            return None
        try:
            n = int(v)
        except ValueError:
            self.warn(key, f"value {v!r} is not a number; ignored")
            return None
        if not low <= n <= high:
            self.warn(key, f"value {n} is outside {low}-{high}; ignored")
            return None
        return n

    def choice(self, key: str, table: Mapping[str, Any]) -> Any:
        v = self.get(key)
        if v is None:
            return None
        found = table.get(v.lower())
        if found is None:
            self.warn(key, f"value {v!r} is not one of {', '.join(sorted(set(table)))}; ignored")
        return found


def family(ann: Annotations, spec: Mapping[str, Any], vip: str | None) -> tuple[int, int]:
    """(VIP family, endpoint family) from staticIP, loxilb.io/ipam, spec.ipFamilies."""
    ipam = ann.get("ipam")
    wanted: tuple[int, int] | None = None
    if ipam is not None:
        wanted = {"ipv4": (4, 4), "ipv6": (6, 6), "ipv6to4": (6, 4)}.get(ipam.lower())
        if wanted is None:
            ann.warn("ipam", f"value {ipam!r} is not one of ipv4, ipv6, ipv6to4; ignored")
    if vip is not None:
        version = ipaddress.ip_address(vip).version
        if wanted is not None and wanted[0] != version:
            ann.warn("ipam", f"{ipam} contradicts the IPv{version} VIP {vip}; the VIP's family is used")
            wanted = None
        return wanted or (version, version)
    if wanted is not None:
        return wanted
    families = list_at(spec, "ipFamilies")
    first = family_of(families[0]) if families else None
    return (first, first) if first else (4, 4)


def vip(ann: Annotations, spec: Mapping[str, Any]) -> str | None:
    static = ann.get("staticIP")
    if static is not None:
        ip = parse_ip(static)
        if ip is not None:
            return ip.compressed
        ann.warn("staticIP", f"{static!r} is not an IP address; the VIP comes from the pool instead")
    legacy = spec.get("loadBalancerIP")
    if legacy:
        ip = parse_ip(str(legacy))
        if ip is not None:
            return ip.compressed
    return None


def probe(ann: Annotations, protocols: Sequence[str]) -> Probe:
    liveness = ann.flag("liveness")
    ptype: ProbeType | None = ann.choice("probetype", PROBES)
    if ptype is None and liveness:
        # kube-loxilb probes with the service's own protocol when only liveness is asked for
        ptype = PROBES.get(protocols[0].lower(), "tcp") if protocols else "tcp"
    if ptype is not None and ptype != "none" and liveness is False:
        ann.warn("liveness", f"\"no\" contradicts loxilb.io/probetype {ptype}; the probe is kept")
    details = {k: ann.get(k) for k in ("probeport", "probereq", "proberesp", "probetimeout", "proberetries")}
    if ptype is None or ptype == "none":
        for key, value in details.items():
            if value is not None:
                ann.warn(key, "has no effect without loxilb.io/liveness or loxilb.io/probetype; ignored")
        return Probe(type="none") if ptype == "none" else Probe()
    kw: dict[str, Any] = {"type": ptype}
    port = ann.integer("probeport", 1, 65535)
    if port is not None:
        if ptype == "ping":
            ann.warn("probeport", "a ping probe has no port; ignored")
        else:
            kw["port"] = port
    for key, target in (("probereq", "request"), ("proberesp", "response")):
        text = ann.get(key)
        if text is None:
            continue
        if ptype == "ping":
            ann.warn(key, "a ping probe sends no request; ignored")
        elif len(text) > MAX_TEXT:
            ann.warn(key, f"is longer than {MAX_TEXT} characters; cut to {MAX_TEXT}")
            kw[target] = text[:MAX_TEXT]
        else:
            kw[target] = text
    # loxilb's probetimeout is the probing period: lbctl's interval (the answer timeout,
    # default 2 s, must stay shorter than it).
    period = ann.integer("probetimeout", 1, 3600)
    if period is not None:
        if period <= Probe().timeout:
            ann.warn("probetimeout", f"{period}s leaves no room for the {Probe().timeout}s answer timeout; "
                                     f"{Probe().timeout + 1}s is used")
            period = Probe().timeout + 1
        kw["interval"] = period
    retries = ann.integer("proberetries", 1, 100)
    if retries is not None:
        kw["retries"] = retries
    return Probe(**kw)


def selection(ann: Annotations, spec: Mapping[str, Any]) -> tuple[Selection | None, int | None]:
    sel: Selection | None = ann.choice("epselect", SELECTIONS)
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = None
    if affinity:
        cfg = spec_of(spec, "sessionAffinityConfig").get("clientIP")
        t = cfg.get("timeoutSeconds") if isinstance(cfg, Mapping) else None
        timeout = int(t) if isinstance(t, int) and 1 <= t <= 604800 else None
        if sel is None:
            sel = "persist"
        elif sel != "persist":
            ann.warn("epselect", f"{sel} contradicts spec.sessionAffinity ClientIP; {sel} is used")
            timeout = None
    return sel, timeout


def secondary(ann: Annotations, protocols: Sequence[str], family: int) -> tuple[str, ...]:
    text = ann.get("secondaryIPs")
    if ann.get("poolSelectSecondary") is not None:
        ann.warn("poolSelectSecondary", "ignored: loxilb.io/secondaryIPs takes precedence" if text is not None
                 else "lbctl has no secondary pools; name the addresses with loxilb.io/secondaryIPs; ignored")
    if text is None:
        return ()
    if any(p != "SCTP" for p in protocols):
        ann.warn("secondaryIPs", "secondary VIPs are for SCTP multihoming and the Service has other "
                                 "protocols; ignored")
        return ()
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        ip = parse_ip(part)
        if ip is None or ip.version != family:
            ann.warn("secondaryIPs", f"{part!r} is not an IPv{family} address; left out")
        elif ip.compressed not in out:
            out.append(ip.compressed)
    if len(out) > MAX_SECONDARY:
        ann.warn("secondaryIPs", f"has {len(out)} addresses; the first {MAX_SECONDARY} are used")
        out = out[:MAX_SECONDARY]
    return tuple(out)


def sources(ann: Annotations, spec: Mapping[str, Any], family: int) -> tuple[str, ...]:
    out = []
    for text in list_at(spec, "loadBalancerSourceRanges"):
        try:
            net = ipaddress.ip_network(str(text).strip(), strict=False)
        except ValueError:
            ann.warn(None, f"spec.loadBalancerSourceRanges: {text!r} is not a CIDR; left out")
            continue
        if net.version == family:
            out.append(net.with_prefixlen)
    return tuple(sorted(set(out), key=lambda n: (ipaddress.ip_network(n).version, n)))


