"""Checks across fields and resources that JSON Schema cannot express.

Why this exists: a directory can be valid file by file and still impossible
to run -- two services on one VIP and port, overlapping pools, a pool that
does not exist, a multicast endpoint, more entries than the datapath's maps
hold.  Each check here works on typed resources, reports every problem (never
just the first) at the exact node via ``Resource.where``, and takes its
numbers from ``reconciler.limits`` only.

``check`` is the plain, whole-set version; ``semantic_index`` runs the same
checks incrementally for the watch daemon and is tested against it.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reconciler import limits, maglev
from reconciler.config.formats import FormatProblem, IPAddress, canonical_ipv4, pool_range
from reconciler.errors import ConfigError
from reconciler.maglev import is_prime
from reconciler.model import (
    SECRET_PLACEHOLDER,
    BGPConfigSpec,
    BGPPeerSpec,
    DatapathCapacities,
    DatapathSpec,
    FirewallRuleSpec,
    PoolSpec,
    Resource,
    ServiceSpec,
)

_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")


class Report:
    """Errors found so far, each placed at its resource's node."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def add(self, res: Resource, path: str, message: str, hint: str | None = None) -> None:
        loc = res.where(path)
        self.errors.append(ConfigError(loc.file, loc.line, loc.column, res.kind, res.name, path, message,
                                       hint))


def _at(res: Resource, path: str = "metadata.name") -> str:
    return str(res.where(path))


# What cannot be a VIP or an endpoint, for every field that takes one (vip,
# secondaryVips, endpoints) and for the addresses a Pool may hand out: one table.
# Only what truly cannot be a unicast VIP or backend is refused (issue #8: Python's
# ``is_reserved`` also covers IPv6 blocks that are merely unassigned, such as
# 4000::/3, which RFC 4291 counts as global unicast, and IPv4 240.0.0.0/4, which
# Linux routes as unicast).  Link-local addresses are valid on one link only (and
# IPv6 ones need a zone), so they make no sense as a VIP or a balanced endpoint.
# (network, version, first, last, singular, plural)
_NOT_UNICAST_BLOCKS = tuple(
    (net, net.version, int(net.network_address), int(net.broadcast_address), one, many)
    for text, one, many in (
        ("0.0.0.0/32", "the unspecified address", "the unspecified address"),
        ("127.0.0.0/8", "a loopback address", "loopback addresses"),
        ("169.254.0.0/16", "a link-local address", "link-local addresses"),
        ("224.0.0.0/4", "a multicast address", "multicast addresses"),
        ("255.255.255.255/32", "the broadcast address", "the broadcast address"),
        ("::/128", "the unspecified address", "the unspecified address"),
        ("::1/128", "a loopback address", "the loopback address"),
        ("::ffff:0:0/96", "an IPv4-mapped IPv6 address", "IPv4-mapped addresses"),
        ("fe80::/10", "a link-local address", "link-local addresses"),
        ("ff00::/8", "a multicast address", "multicast addresses"))
    for net in (ipaddress.ip_network(text),))
_HINT_LINK_LOCAL = "link-local addresses work on one link only; use a routable address"


def _unicast_hint(why: str, default: str) -> str:
    return _HINT_LINK_LOCAL if "link-local" in why else default


def _not_unicast(addr: IPAddress) -> str | None:
    """Why ``addr`` cannot be a VIP or endpoint, or ``None`` when it can."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"an IPv4-mapped IPv6 address; write it as {addr.ipv4_mapped}"
    n = int(addr)
    for _, version, lo, hi, one, _ in _NOT_UNICAST_BLOCKS:
        if version == addr.version and lo <= n <= hi:
            return one
    return None


def duplicate_name(res: Resource, first: Resource, report: Report) -> None:
    report.add(res, "metadata.name", f"duplicate {res.kind} name \"{res.name}\" "
               f"(first defined at {_at(first)})", "names must be unique per kind; rename one")


def _names(resources: Sequence[Resource], report: Report) -> None:
    first: dict[tuple[str, str], Resource] = {}
    for res in resources:
        key = (res.kind, res.name)
        if key in first:
            duplicate_name(res, first[key], report)
        else:
            first[key] = res


def singletons(resources: Sequence[Resource], report: Report, broken: set[str]) -> None:
    for kind in ("Datapath", "BGPConfig"):
        found = [r for r in resources if r.kind == kind]
        for extra in found[1:]:
            report.add(extra, "metadata.name", f"only one {kind} is allowed; {kind}/{found[0].name} is "
                       f"already defined at {_at(found[0])}", "merge them into one resource")
    has_bgp = any(r.kind == "BGPConfig" for r in resources) or "BGPConfig" in broken
    if not has_bgp:
        for res in resources:
            if res.kind == "BGPPeer":
                report.add(res, "spec", "a BGPPeer needs a BGPConfig (local AS and router ID)",
                           "add a BGPConfig resource")
            elif isinstance(res.spec, ServiceSpec) and res.spec.bgp:
                report.add(res, "spec.bgp", "bgp: true needs a BGPConfig to announce the VIP",
                           "add a BGPConfig resource or set bgp: false")


def _pool_not_unicast(version: int, first: int, last: int) -> str | None:
    """What a pool span includes that cannot be a VIP, or ``None``."""
    for _, v, lo, hi, _, many in _NOT_UNICAST_BLOCKS:
        if v == version and first <= hi and lo <= last:
            return many
    return None


def check_pools(resources: Sequence[Resource], report: Report) -> dict[str, int | None]:
    """Check pools; return name -> IP version (None when unknown)."""
    families: dict[str, int | None] = {}
    spans: list[tuple[int, int, int, Resource, int, str]] = []  # version, first, last, pool, index, text
    for res in resources:
        spec = res.spec
        if not isinstance(spec, PoolSpec):
            continue
        versions = set()
        for i, text in enumerate(spec.addresses):
            try:
                version, first, last = pool_range(text)
            except FormatProblem:
                continue  # already reported by the schema
            versions.add(version)
            spans.append((version, first, last, res, i, text))
            if what := _pool_not_unicast(version, first, last):
                report.add(res, f"spec.addresses[{i}]", f"{text} includes {what}, which cannot be VIPs",
                           "a pool hands out VIPs: use unicast addresses only")
        want = {"IPv4": 4, "IPv6": 6}.get(spec.family or "")
        if len(versions) > 1:
            report.add(res, "spec.addresses", "mixes IPv4 and IPv6 addresses",
                       "use one pool per address family")
        elif want and versions and versions != {want}:
            report.add(res, "spec.family", f"is {spec.family} but the addresses are IPv{versions.pop()}",
                       "fix family or the addresses")
        families.setdefault(res.name, want or (next(iter(versions)) if len(versions) == 1 else None))
    spans.sort(key=lambda s: (s[0], s[1], s[2]))
    for prev, cur in zip(spans, spans[1:], strict=False):
        if cur[0] == prev[0] and cur[1] <= prev[2]:
            other = prev[3]
            where = "in the same pool" if other is cur[3] else f"of Pool/{other.name}"
            report.add(cur[3], f"spec.addresses[{cur[4]}]",
                       f"{cur[5]} overlaps {prev[5]} {where} ({_at(other, f'spec.addresses[{prev[4]}]')})",
                       "pools must not overlap; shrink or split one of them")
    return families


def _parse(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None  # already reported by the schema


@dataclass(frozen=True)
class _Addr:
    """What the checks need of an address: version, canonical text, why it is not unicast."""

    version: int
    compressed: str
    not_unicast: str | None


_V4_BLOCKS = tuple((lo, hi, one) for _, v, lo, hi, one, _ in _NOT_UNICAST_BLOCKS if v == 4)


def _v4_not_unicast(n: int) -> str | None:
    """``_not_unicast`` of an IPv4 address given as an integer (same answers, no object)."""
    for lo, hi, one in _V4_BLOCKS:
        if lo <= n <= hi:
            return one
    return None


def packed_not_unicast(packed: bytes) -> str | None:
    """Why the packed (4- or 16-byte) address cannot be a VIP or endpoint, or ``None``.

    For drivers that hold addresses as bytes (the netlink driver refuses
    these itself, since the kernel takes some of them as local routes silently).
    """
    if len(packed) == 4:
        return _v4_not_unicast(int.from_bytes(packed, "big"))
    return _not_unicast(ipaddress.IPv6Address(packed))


@functools.lru_cache(maxsize=1 << 17)
def _addr(text: str) -> _Addr | None:
    """Parsed ``text`` (``None`` when invalid); canonical IPv4 skips ``ipaddress``."""
    n = canonical_ipv4(text)
    if n is not None:
        return _Addr(4, text, _v4_not_unicast(n))
    addr = _parse(text)
    if addr is None:
        return None
    return _Addr(addr.version, addr.compressed, _not_unicast(addr))


def check_service(res: Resource, spec: ServiceSpec, pools: dict[str, int | None], report: Report,
             broken: set[str]) -> None:
    if spec.vip is None and spec.pool is None:
        report.add(res, "spec", "needs a vip or a pool", "add vip: ADDRESS or pool: POOL-NAME")
    if spec.pool is not None and spec.pool not in pools and f"Pool/{spec.pool}" not in broken:
        close = difflib.get_close_matches(spec.pool, list(pools), n=1)
        hint = (f"did you mean \"{close[0]}\"?" if close
                else f"define a Pool named \"{spec.pool}\" or fix the name")
        report.add(res, "spec.pool", f"Pool \"{spec.pool}\" does not exist", hint)
    vip = _addr(spec.vip) if spec.vip is not None else None
    if vip is not None and (why := vip.not_unicast):
        report.add(res, "spec.vip", f"VIP {spec.vip} is {why}",
                   _unicast_hint(why, "a VIP must be a unicast address"))
    if vip is not None:  # a VIP already reported as not unicast says nothing about the family
        family = vip.version if vip.not_unicast is None else None
    else:
        family = pools.get(spec.pool) if spec.pool else None

    for i, port in enumerate(spec.ports):
        p = f"spec.ports[{i}]"
        if port.protocol == "ICMP":
            fields = (("port", port.port), ("endPort", port.end_port), ("targetPort", port.target_port))
            for field, value in fields:
                if value:
                    report.add(res, f"{p}.{field}", "ICMP has no ports", f"remove {field}")
        elif port.end_port is not None and port.end_port < port.port:
            report.add(res, f"{p}.endPort", f"port range {port.port}-{port.end_port} ends before it starts",
                       "endPort must be at least port")

    if vip is None and spec.pool is not None:  # literal VIPs: _vip_claims compares the ports
        own: dict[str, list[tuple[int, int, Resource, str]]] = defaultdict(list)
        for i, port in enumerate(spec.ports):
            end = port.end_port if port.end_port is not None and port.end_port >= port.port else port.port
            own[port.protocol].append((port.port, end, res, f"spec.ports[{i}]"))
        for proto, entries in own.items():
            entries.sort(key=lambda e: (e[0], e[1]))
            claim_conflicts(f"the VIP from Pool/{spec.pool}", proto, entries, report)

    if len(spec.endpoints) > limits.MAX_ENDPOINTS_PER_SERVICE:
        report.add(res, "spec.endpoints", f"has {len(spec.endpoints)} endpoints; the datapath holds at most "
                   f"{limits.MAX_ENDPOINTS_PER_SERVICE} per service", "split the service or drop endpoints")
    seen: dict[tuple[str, int | None], int] = {}
    for i, ep in enumerate(spec.endpoints):
        p = f"spec.endpoints[{i}]"
        addr = _addr(ep.address)
        if addr is None:
            continue
        if why := addr.not_unicast:
            report.add(res, f"{p}.address", f"endpoint {ep.address} is {why}",
                       _unicast_hint(why, "endpoints must be unicast addresses of real backends"))
        elif family is not None and addr.version != family and spec.mode != "fullnat":
            report.add(res, f"{p}.address", f"endpoint {ep.address} is IPv{addr.version} but the VIP is "
                       f"IPv{family}; mode {spec.mode} cannot translate between families (NAT64/NAT46 is "
                       "fullnat only)", f"set mode: fullnat or use an IPv{family} endpoint")
        key = (addr.compressed, ep.target_port)
        if key in seen:
            report.add(res, f"{p}.address",
                       f"endpoint {ep.address} is listed twice (also endpoints[{seen[key]}])",
                       "remove the duplicate or raise its weight")
        else:
            seen[key] = i

    if spec.secondary_vips:
        if any(p.protocol != "SCTP" for p in spec.ports):
            report.add(res, "spec.secondaryVips", "secondary VIPs are only for SCTP multihoming",
                       "remove secondaryVips or make every port SCTP")
        if len(spec.secondary_vips) > limits.MAX_SECONDARY_VIPS:
            report.add(res, "spec.secondaryVips", f"has {len(spec.secondary_vips)} entries; at most "
                       f"{limits.MAX_SECONDARY_VIPS} are allowed", "drop the extra addresses")
        claimed = {vip.compressed} if vip is not None else set()
        for i, text in enumerate(spec.secondary_vips):
            sec = _addr(text)
            if sec is None:
                continue
            if why := sec.not_unicast:
                report.add(res, f"spec.secondaryVips[{i}]", f"secondary VIP {text} is {why}",
                           _unicast_hint(why, "a VIP must be a unicast address"))
            elif sec.compressed in claimed:
                report.add(res, f"spec.secondaryVips[{i}]", f"{text} is already a VIP of this service",
                           "remove the duplicate")
            claimed.add(sec.compressed)

    _check_mode(res, spec, family, report)

    if spec.maglev_table_size is not None:
        size = spec.maglev_table_size
        if size > limits.MAGLEV_MAX_TABLE_SIZE or not is_prime(size):
            report.add(res, "spec.maglevTableSize", f"{size} is not a prime of at most "
                       f"{limits.MAGLEV_MAX_TABLE_SIZE}", "use a prime such as 251, 4093 or 65521")
    if spec.probe.timeout >= spec.probe.interval and spec.probe.type != "none":
        report.add(res, "spec.probe.timeout", f"timeout {spec.probe.timeout}s is not shorter than interval "
                   f"{spec.probe.interval}s", "make the timeout shorter than the interval")
    probe = spec.probe
    if probe.type != "https":
        tls = (("caFile", probe.ca_file), ("certFile", probe.cert_file), ("keyFile", probe.key_file))
        for field, tls_path in tls:
            if tls_path is not None:
                report.add(res, f"spec.probe.{field}", f"{field} is only used by https probes, not "
                           f"{probe.type}", "remove it, or set probe.type: https")
    elif probe.key_file is not None and probe.cert_file is None:
        report.add(res, "spec.probe.keyFile", "keyFile without certFile",
                   "add the client certificate as certFile")


def _check_mode(res: Resource, spec: ServiceSpec, family: int | None, report: Report) -> None:
    """What the NAT mode asks of the rest of the spec (dsr: no port translation, hash/maglev)."""
    if spec.mode == "dsr":
        if spec.selection not in ("hash", "maglev"):
            report.add(res, "spec.selection",
                       f"mode dsr needs selection hash or maglev, not {spec.selection}",
                       "the LB sees only the client's side of a DSR flow: set selection: hash or maglev")
        for i, port in enumerate(spec.ports):
            if port.target_port is not None and port.target_port != port.port:
                report.add(res, f"spec.ports[{i}].targetPort",
                           "mode dsr cannot translate ports (the endpoint answers the client directly, "
                           "from the VIP's port)",
                           f"remove targetPort or make it {port.port}")
        for i, ep in enumerate(spec.endpoints):
            if ep.target_port is not None and any(ep.target_port != p.port for p in spec.ports):
                report.add(res, f"spec.endpoints[{i}].targetPort", "mode dsr cannot translate ports",
                           "remove the endpoint's targetPort")
    eps = [a for a in (_addr(ep.address) for ep in spec.endpoints) if a is not None and not a.not_unicast]
    if spec.mode == "fullnat" and family is not None and any(a.version != family for a in eps):
        # The datapath translates TCP and UDP headers between families; nothing else.
        for i, port in enumerate(spec.ports):
            if port.protocol not in ("TCP", "UDP"):
                report.add(res, f"spec.ports[{i}].protocol", f"{port.protocol} cannot be translated between "
                           "IPv4 and IPv6 (the datapath's NAT64/NAT46 carries TCP and UDP)",
                           f"use endpoints of the VIP's family (IPv{family}) for {port.protocol}, "
                           "in a separate Service")
    if spec.source_address is not None:
        src = _addr(spec.source_address)
        if spec.mode != "fullnat":
            report.add(res, "spec.sourceAddress",
                       f"sourceAddress is used by mode fullnat only, not {spec.mode}",
                       "set mode: fullnat or remove sourceAddress")
        elif src is not None and (why := src.not_unicast):
            report.add(res, "spec.sourceAddress", f"source address {spec.source_address} is {why}",
                       "use an address of this box or of a Pool")
        elif src is not None and (other := next((a for a in eps if a.version != src.version), None)):
            report.add(res, "spec.sourceAddress", f"source address {spec.source_address} is IPv{src.version} "
                       f"but endpoint {other.compressed} is IPv{other.version} (endpoints see this source)",
                       f"use an IPv{other.version} address of this box or of a Pool, or endpoints of "
                       f"one family")


Claim = tuple[str, str, int, int, str]  # VIP (canonical), protocol, first port, last port, path


def claims_of(spec: ServiceSpec) -> tuple[Claim, ...]:
    """The (VIP, protocol, port range) entries one service claims."""
    vips = [spec.vip] if spec.vip is not None else []
    vips += spec.secondary_vips
    claimed: set[str] = set()
    out: list[Claim] = []
    for vip_text in vips:
        addr = _addr(vip_text)
        if addr is None or addr.compressed in claimed:
            continue  # a repeated VIP of one service is reported by _service
        claimed.add(addr.compressed)
        for i, port in enumerate(spec.ports):
            end = port.end_port if port.end_port is not None and port.end_port >= port.port else port.port
            out.append((addr.compressed, port.protocol, port.port, end, f"spec.ports[{i}]"))
    return tuple(out)


def _vip_claims(services: Iterable[tuple[Resource, Sequence[Claim]]], report: Report) -> None:
    """Two services must not claim the same VIP, protocol and (overlapping) port."""
    claims: dict[tuple[str, str], list[tuple[int, int, Resource, str]]] = defaultdict(list)
    for res, own in services:
        for vip, proto, start, end, path in own:
            claims[(vip, proto)].append((start, end, res, path))
    for (vip, proto), entries in claims.items():
        if len(entries) < 2:
            continue
        entries.sort(key=lambda e: (e[0], e[1]))
        claim_conflicts(vip, proto, entries, report)


def claim_conflicts(vip: str, proto: str, entries: Sequence[tuple[int, int, Resource, str]],
                    report: Report) -> None:
    """Overlapping port ranges among the claims of one VIP and protocol, sorted by (first, last)."""
    if entries:
        reach = entries[0]
        for cur in entries[1:]:
            if cur[0] <= reach[1]:
                owner = reach[2]
                who = "this service" if owner is cur[2] else f"Service/{owner.name}"
                shown = f"{cur[0]}" if cur[0] == cur[1] else f"{cur[0]}-{cur[1]}"
                ports = "ICMP" if proto == "ICMP" else f"{proto} port {shown}"
                report.add(cur[2], cur[3], f"{ports} on {vip} is already used by {who} "
                           f"({_at(owner, reach[3])})", "use another port or VIP")
            if cur[1] > reach[1]:
                reach = cur


# The capacities a configuration fills, in the order of ``usage_of``: (YAML name under the
# Datapath's spec.capacities, what is counted, where on the Service the error goes, what else helps).
CAPACITIES: tuple[tuple[str, str, str, str], ...] = (
    ("services", "service entries (one per VIP, protocol and port range)", "metadata.name",
     "or remove services, or merge ports into ranges"),
    ("endpoints", "endpoint counters (one per endpoint of every VIP, protocol and port range)",
     "spec.endpoints", "or remove services or endpoints"),
    ("selectionChunks", f"selection table chunks ({limits.SEL_CHUNK} entries each; two tables per VIP, "
     "protocol and port range: the live one and the next)", "spec.endpoints",
     "or use smaller weights or a smaller maglevTableSize"),
)
_CAPACITY_FIELDS = {"services": "services", "endpoints": "endpoints", "selectionChunks": "selection_chunks"}


def datapath_capacities(datapath: Resource | None) -> DatapathCapacities:
    """The capacities a configuration is checked against: its Datapath's, defaults filled in."""
    spec = datapath.spec if datapath is not None else None
    own = spec.capacities if isinstance(spec, DatapathSpec) else DatapathCapacities()
    return own.resolved(limits.box_memory())


def over_capacity(res: Resource, which: int, total: int, datapath: Resource | None,
                  report: Report) -> None:
    """``res`` is the service where the configuration passes capacity ``which`` (``CAPACITIES``)."""
    name, what, path, other = CAPACITIES[which]
    limit = getattr(datapath_capacities(datapath), _CAPACITY_FIELDS[name])
    setting = f"spec.capacities.{name}"
    if datapath is not None:
        where = f"{setting} of Datapath/{datapath.name} ({_at(datapath, setting)})"
    else:
        where = f"{setting} in a Datapath resource"
    report.add(res, path, f"the configuration needs {total:,} {what}; the datapath's capacity is {limit:,} "
               f"({setting}), so an apply would stop half way", f"raise {where}, {other}")


def capacity_limits(caps: DatapathCapacities) -> tuple[int, ...]:
    """``caps`` in the order of ``CAPACITIES``."""
    return tuple(int(getattr(caps, _CAPACITY_FIELDS[name])) for name, *_rest in CAPACITIES)


def capacity_totals(services: Sequence[tuple[Resource, tuple[int, ...]]], datapath: Resource | None,
                    report: Report, totals: Sequence[int] | None = None) -> None:
    """The datapath's capacities across all services (their ``usage_of``): each one passed is
    reported once, at the service where the running total passes it.  ``totals``: the sums,
    when the caller has them."""
    if totals is None:
        totals = [sum(u[i] for _, u in services) for i in range(len(CAPACITIES))]
    for i, limit in enumerate(capacity_limits(datapath_capacities(datapath))):
        if totals[i] <= limit:
            continue
        running = 0
        for res, usage in services:
            running += usage[i]
            if running > limit:
                over_capacity(res, i, totals[i], datapath, report)
                break


def _bgp_peers(peers: Sequence[tuple[Resource, BGPPeerSpec]], report: Report) -> None:
    first: dict[str, Resource] = {}
    for res, spec in peers:
        addr = _parse(spec.address)
        if addr is not None:
            if addr.compressed in first:
                other = first[addr.compressed]
                report.add(res, "spec.address", f"peer {spec.address} is already defined by "
                           f"BGPPeer/{other.name} ({_at(other, 'spec.address')})",
                           "keep one BGPPeer per neighbour")
            else:
                first[addr.compressed] = res
        if spec.password == SECRET_PLACEHOLDER:
            report.add(res, "spec.password", "is the placeholder 'lbctl export' writes instead of the secret",
                       "put the session's TCP MD5 password here; export never writes secrets")
        if spec.hold_time in (1, 2):
            report.add(res, "spec.holdTime", f"hold time {spec.hold_time} is not allowed",
                       "use 0 (no keepalives) or at least 3 seconds (RFC 4271)")
        elif spec.hold_time and spec.keepalive >= spec.hold_time:
            report.add(res, "spec.keepalive", f"keepalive {spec.keepalive}s is not shorter than hold time "
                       f"{spec.hold_time}s", "use a keepalive of about a third of the hold time")


def _firewall(rules: Sequence[tuple[Resource, FirewallRuleSpec]], report: Report) -> None:
    # Equal priorities are allowed: such rules are evaluated in name order (fwclass.ordered).
    for n, (res, spec) in enumerate(rules):
        if n == limits.MAX_FIREWALL_RULES:
            report.add(res, "metadata.name", f"more than {limits.MAX_FIREWALL_RULES} firewall rules; "
                       "the datapath cannot hold them", "merge rules with wider CIDRs or port ranges")
        match = spec.match
        if match.source and match.destination and \
                ipaddress.ip_network(match.source, strict=False).version != \
                ipaddress.ip_network(match.destination, strict=False).version:
            report.add(res, "spec.match.destination", f"source {match.source} and destination "
                       f"{match.destination} are of different IP families: the rule could never match",
                       "use two rules, one per family")
        ranges = (("sourcePorts", match.source_ports), ("destinationPorts", match.destination_ports))
        for field, rng in ranges:
            if rng is None:
                continue
            if rng.end < rng.start:
                report.add(res, f"spec.match.{field}.to", f"port range {rng.start}-{rng.end} ends before it "
                           "starts", "to must be at least from")
            if match.protocol not in _PORT_PROTOCOLS:
                report.add(res, f"spec.match.{field}", "port matches need protocol TCP, UDP or SCTP",
                           "add protocol to the match or remove the ports")
        if spec.action == "mark" and spec.mark is None:
            report.add(res, "spec.action", "action mark needs a mark value", "add mark: NUMBER")
        if spec.action != "mark" and spec.mark is not None:
            report.add(res, "spec.mark", f"mark is only used with action mark, not {spec.action}",
                       "remove mark or set action: mark")
        if spec.action == "rateLimit" and spec.rate_limit is None:
            report.add(res, "spec.action", "action rateLimit needs a rateLimit",
                       "add rateLimit: {packetsPerSecond: N, burst: N}")
        if spec.action != "rateLimit" and spec.rate_limit is not None:
            report.add(res, "spec.rateLimit",
                       f"rateLimit is only used with action rateLimit, not {spec.action}",
                       "remove rateLimit or set action: rateLimit")


def _datapath(res: Resource, spec: DatapathSpec, report: Report) -> None:
    if len(spec.interfaces) > limits.MAX_INTERFACES:
        report.add(res, "spec.interfaces", f"has {len(spec.interfaces)} interfaces; at most "
                   f"{limits.MAX_INTERFACES} are supported", "attach to fewer interfaces")
    seen: dict[str, int] = {}
    for i, iface in enumerate(spec.interfaces):
        if iface.name in seen:
            report.add(res, f"spec.interfaces[{i}]", f"interface {iface.name} is listed twice "
                       f"(also interfaces[{seen[iface.name]}])", "list each interface once")
        else:
            seen[iface.name] = i
    src = _addr(spec.source_address) if spec.source_address is not None else None
    if src is not None and (why := src.not_unicast):
        report.add(res, "spec.sourceAddress", f"source address {spec.source_address} is {why}",
                   "use an address of this box or of a Pool")


def entries_of(spec: ServiceSpec) -> int:
    """Service map entries one service needs."""
    return len(spec.ports) * (1 + len(spec.secondary_vips))


def counters_of(spec: ServiceSpec) -> int:
    """Endpoint counter slots one service needs: one per endpoint of each of its entries."""
    return entries_of(spec) * len(spec.endpoints)


def selection_chunks_of(spec: ServiceSpec) -> int:
    """Selection table chunks one service may hold at once: per entry, its table in both slots
    (the live one and the one the next change writes).  A weighted table is at most
    sum(weights)/gcd (scaled to ``WEIGHTED_TABLE_MAX``, one slot at least per endpoint);
    health and backups only take endpoints out, which never makes it longer."""
    if not spec.endpoints:
        return 0
    if spec.selection == "maglev":
        length = spec.maglev_table_size or maglev.table_size(len(spec.endpoints))
    else:
        weights = [e.weight for e in spec.endpoints if e.weight > 0]
        g = math.gcd(*weights) if weights else 1
        length = min(sum(weights) // g, limits.WEIGHTED_TABLE_MAX + len(weights))
    return entries_of(spec) * 2 * -(-length // limits.SEL_CHUNK)


def usage_of(spec: ServiceSpec) -> tuple[int, int, int]:
    """What one service takes of each capacity of ``CAPACITIES``."""
    return entries_of(spec), counters_of(spec), selection_chunks_of(spec)


def _bgp_config(res: Resource, spec: BGPConfigSpec, report: Report) -> None:
    for i, text in enumerate(spec.communities):
        if any(int(part) > 65535 for part in text.split(":")):
            report.add(res, f"spec.communities[{i}]", f'"{text}" is out of range: each part is 0-65535',
                       "write a community as AS:VALUE, e.g. 65001:100")


def check_others(others: Sequence[Resource], report: Report) -> None:
    """The checks of the kinds that come in small numbers (everything but Service)."""
    _bgp_peers([(r, r.spec) for r in others if isinstance(r.spec, BGPPeerSpec)], report)
    for res in others:
        if isinstance(res.spec, BGPConfigSpec):
            _bgp_config(res, res.spec, report)
    _firewall([(r, r.spec) for r in others if isinstance(r.spec, FirewallRuleSpec)], report)
    for res in others:
        if isinstance(res.spec, DatapathSpec):
            _datapath(res, res.spec, report)


def check(resources: Sequence[Resource], broken: Iterable[str] = ()) -> list[ConfigError]:
    """Every semantic problem of a set of schema-valid resources.

    ``broken`` names documents that failed earlier stages, as ``Kind`` and
    ``Kind/name``: references to them are not reported again as missing.
    This is the reference: ``semantic_index.check_groups`` gives the same
    errors incrementally.
    """
    report = Report()
    gone = set(broken)
    _names(resources, report)
    singletons(resources, report, gone)
    pools = check_pools(resources, report)
    services = [(r, r.spec) for r in resources if isinstance(r.spec, ServiceSpec)]
    for res, spec in services:
        check_service(res, spec, pools, report, gone)
    _vip_claims([(res, claims_of(spec)) for res, spec in services], report)
    datapath = next((r for r in resources if isinstance(r.spec, DatapathSpec)), None)
    capacity_totals([(res, usage_of(spec)) for res, spec in services], datapath, report)
    check_others([r for r in resources if not isinstance(r.spec, ServiceSpec)], report)
    return report.errors
