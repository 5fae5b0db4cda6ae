"""Firewall rules compiled into the tables the datapath classifies packets with.

Why this exists: a linear scan over 1,000 rules per packet is far too slow for the
datapath, so rules are classified by bitmap intersection (Lakshman and Stiliadis):
every rule gets a bit, its rank in evaluation order (``priority``, then name); for
each match field the tables map a packet's value to the set of rules admitting it;
the first bit of the AND of those sets is the rule that applies.  This module is
the pure half: rules -> sets per field value, plus the same classification in
Python (``classify``) and the linear definition (``first_match``) that tests
compare it with.  ``reconciler/drivers/bpf_firewall.py`` packs the result into the
``lb_fw_*`` maps; the C half is ``bpf/lb_firewall.h``.

Field tables (a rule that does not restrict a field is in every set of it):

* source / destination CIDR: one entry per distinct prefix, holding the rules
  whose CIDR contains that prefix; an LPM lookup of an address finds its longest
  prefix, whose set is exactly the rules containing the address (CIDRs are nested
  or disjoint).  A ``/0`` entry per family holds the rules without that field;
* ports: the boundaries of all ranges cut 0-65535 into intervals, each with its
  set; the datapath maps a port to its interval through a 64K-entry index;
* protocol: one set per (family, protocol number); ICMP is 1 for IPv4 and IPv6;
* ingress interface: one set per named interface, and the wildcard set.

A field no rule restricts is left out (``fields``) and costs the datapath
nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.constants import PROTO_NUMBERS
from reconciler.records import FirewallEntry

WORD_BITS = 64
PORTS = 65536
PROTOCOLS = PROTO_NUMBERS  # ICMP is 1 for both families in the tables

Family = int  # 4 or 6
CidrKey = tuple[str, Family, int, bytes]  # (field "src"|"dst", family, prefix length, 16 address bytes)


def ordered(rules: Iterable[FirewallEntry]) -> list[FirewallEntry]:
    """Rules in evaluation order: lower priority first, ties by name."""
    return sorted(rules, key=lambda r: (r.priority, r.name))


@dataclass(frozen=True)
class Packet:
    """What a rule can match on: the packet as received, before any NAT."""

    family: Family
    src: str
    dst: str
    proto: int  # IPPROTO_*; ICMPv6 is 58 (matched by protocol ICMP)
    sport: int | None  # None: no ports (ICMP, or not the first fragment)
    dport: int | None
    ifname: str


@dataclass(frozen=True)
class Tables:
    """The compiled rule set.  Sets are ints: bit i is ``rules[i]``."""

    rules: tuple[FirewallEntry, ...]  # in rank order
    fields: frozenset[str]  # of "src", "dst", "sport", "dport", "proto", "iface"
    cidrs: Mapping[CidrKey, int]
    protos: Mapping[tuple[Family, int], int]  # absent: the wildcard set ``proto_any``
    proto_any: int
    port_starts: Mapping[str, tuple[int, ...]]  # "sport"/"dport" -> first port of each interval
    port_sets: Mapping[str, tuple[int, ...]]  # set of each interval
    ifaces: Mapping[str, int]  # interface name -> set
    iface_any: int

    @property
    def words(self) -> int:
        return (len(self.rules) + WORD_BITS - 1) // WORD_BITS

    def port_ids(self, field: str) -> list[int]:
        """Interval id of every port 0-65535 of ``field``."""
        starts = self.port_starts[field]
        ids = [0] * PORTS
        for i, lo in enumerate(starts):
            hi = starts[i + 1] if i + 1 < len(starts) else PORTS
            ids[lo:hi] = [i] * (hi - lo)
        return ids


def _family(cidr: str) -> Family:
    return ipaddress.ip_network(cidr, strict=False).version


def _cidr_key(field: str, cidr: str) -> CidrKey:
    net = ipaddress.ip_network(cidr, strict=False)
    return (field, net.version, net.prefixlen, net.network_address.packed.ljust(16, b"\0"))


def _contains(outer: CidrKey, inner: CidrKey) -> bool:
    """Whether prefix ``outer`` contains prefix ``inner`` (same field and family)."""
    if outer[:2] != inner[:2] or outer[2] > inner[2]:
        return False
    plen = outer[2]
    a = int.from_bytes(outer[3], "big")
    b = int.from_bytes(inner[3], "big")
    shift = 128 - plen
    return (a >> shift) == (b >> shift) if plen else True


def _cidr_sets(rules: Sequence[FirewallEntry]) -> tuple[dict[CidrKey, int], frozenset[str]]:
    out: dict[CidrKey, int] = {}
    used: set[str] = set()
    for field, attr in (("src", "source"), ("dst", "destination")):
        prefixes: dict[CidrKey, int] = {}  # the rules with exactly this prefix
        wild = 0
        for i, r in enumerate(rules):
            cidr = getattr(r, attr)
            if cidr is None:
                wild |= 1 << i
            else:
                k = _cidr_key(field, cidr)
                prefixes[k] = prefixes.get(k, 0) | 1 << i
        if not prefixes:
            continue
        used.add(field)
        for fam in (4, 6):
            prefixes.setdefault((field, fam, 0, bytes(16)), 0)
        # A prefix's set: its own rules, the rules of every shorter prefix containing it
        # (found by masking it to each prefix length in use), and the wildcard rules.
        lengths: dict[tuple[str, Family], list[int]] = {}
        for k in prefixes:
            lengths.setdefault(k[:2], []).append(k[2])
        for k, own in prefixes.items():
            s = own | wild
            addr = int.from_bytes(k[3], "big")
            for plen in set(lengths[k[:2]]):
                if plen < k[2]:
                    masked = addr >> (128 - plen) << (128 - plen) if plen else 0
                    s |= prefixes.get((field, k[1], plen, masked.to_bytes(16, "big")), 0)
            if s:
                out[k] = s
    return out, frozenset(used)


def _port_tables(rules: Sequence[FirewallEntry], attr: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    ranges = [(i, getattr(r, attr)) for i, r in enumerate(rules)]
    if all(rng is None for _, rng in ranges):
        return None
    cuts = {0}
    for _, rng in ranges:
        if rng is not None:
            cuts.add(rng[0])
            if rng[1] + 1 < PORTS:
                cuts.add(rng[1] + 1)
    starts = tuple(sorted(cuts))
    enter: dict[int, int] = {}
    leave: dict[int, int] = {}
    for i, rng in ranges:
        if rng is not None:
            enter[rng[0]] = enter.get(rng[0], 0) | 1 << i
            leave[rng[1] + 1] = leave.get(rng[1] + 1, 0) | 1 << i
    cur = sum(1 << i for i, rng in ranges if rng is None)
    sets = []
    for lo in starts:  # a sweep: each cut adds the ranges starting and drops those ending there
        cur = (cur & ~leave.get(lo, 0)) | enter.get(lo, 0)
        sets.append(cur)
    return starts, tuple(sets)


def compile_rules(rules: Iterable[FirewallEntry]) -> Tables:
    """``rules`` (any order) -> the classification tables."""
    ranked = tuple(ordered(rules))
    cidrs, fields = _cidr_sets(ranked)
    used = set(fields)
    proto_any = sum(1 << i for i, r in enumerate(ranked) if r.protocol is None)
    protos: dict[tuple[Family, int], int] = {}
    for i, r in enumerate(ranked):
        if r.protocol is not None:
            used.add("proto")
            num = PROTOCOLS[r.protocol]
            for fam in (4, 6):
                protos[(fam, num)] = protos.get((fam, num), proto_any) | 1 << i
    starts: dict[str, tuple[int, ...]] = {}
    psets: dict[str, tuple[int, ...]] = {}
    for field, attr in (("sport", "source_ports"), ("dport", "destination_ports")):
        t = _port_tables(ranked, attr)
        if t is not None:
            used.add(field)
            starts[field], psets[field] = t
    iface_any = sum(1 << i for i, r in enumerate(ranked) if r.in_interface is None)
    ifaces: dict[str, int] = {}
    for i, r in enumerate(ranked):
        if r.in_interface is not None:
            used.add("iface")
            ifaces[r.in_interface] = ifaces.get(r.in_interface, iface_any) | 1 << i
    return Tables(rules=ranked, fields=frozenset(used), cidrs=cidrs, protos=protos, proto_any=proto_any,
                  port_starts=starts, port_sets=psets, ifaces=ifaces, iface_any=iface_any)


def _lpm(t: Tables, field: str, family: Family, addr: str) -> int | None:
    packed = ipaddress.ip_address(addr).packed.ljust(16, b"\0")
    best: tuple[int, int] | None = None
    for k, s in t.cidrs.items():
        if k[0] == field and k[1] == family and _contains(k, (field, family, 128, packed)):
            if best is None or k[2] > best[0]:
                best = (k[2], s)
    return None if best is None else best[1]


def _port_set(t: Tables, field: str, port: int) -> int:
    starts = t.port_starts[field]
    i = max(n for n, lo in enumerate(starts) if lo <= port)
    return t.port_sets[field][i]


def classify(t: Tables, p: Packet) -> FirewallEntry | None:
    """The rule the datapath applies to ``p``: the same lookups as bpf/lb_firewall.h, in Python."""
    if not t.rules:
        return None
    acc = (1 << len(t.rules)) - 1
    if "proto" in t.fields:
        proto = 1 if p.proto == 58 else p.proto
        acc &= t.protos.get((p.family, proto), t.proto_any)
    for field, port in (("dport", p.dport), ("sport", p.sport)):
        if field in t.fields:
            acc &= _port_set(t, field, port or 0)
    if "iface" in t.fields:
        acc &= t.ifaces.get(p.ifname, t.iface_any)
    for field, addr in (("dst", p.dst), ("src", p.src)):
        if field in t.fields:
            s = _lpm(t, field, p.family, addr)
            acc &= 0 if s is None else s
    if not acc:
        return None
    return t.rules[(acc & -acc).bit_length() - 1]


def matches(r: FirewallEntry, p: Packet) -> bool:
    """Whether rule ``r`` matches packet ``p`` (the definition ``classify`` must agree with)."""
    for cidr, addr in ((r.source, p.src), (r.destination, p.dst)):
        if cidr is not None:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version != p.family or ipaddress.ip_address(addr) not in net:
                return False
    if r.protocol is not None and PROTOCOLS[r.protocol] != (1 if p.proto == 58 else p.proto):
        return False
    for rng, port in ((r.source_ports, p.sport), (r.destination_ports, p.dport)):
        if rng is not None and (port is None or not rng[0] <= port <= rng[1]):
            return False
    return r.in_interface is None or r.in_interface == p.ifname


def first_match(rules: Iterable[FirewallEntry], p: Packet) -> FirewallEntry | None:
    """The first rule in evaluation order matching ``p`` (linear scan)."""
    return next((r for r in ordered(rules) if matches(r, p)), None)


def lockout_warnings(rules: Iterable[FirewallEntry]) -> list[str]:
    """Drop rules that would cut every address off, remote management included."""
    out = []
    for r in ordered(rules):
        if r.action != "drop":
            continue
        nets = [c for c in (r.source, r.destination) if c is not None]
        if any(ipaddress.ip_network(c, strict=False).prefixlen for c in nets):
            continue
        if r.protocol is None and r.source_ports is None and r.destination_ports is None:
            covers = " and ".join(sorted({str(ipaddress.ip_network(c, strict=False)) for c in nets})) \
                or "every address"
            out.append(f"FirewallRule/{r.name} drops all traffic ({covers}, any protocol and port)"
                       + (f" arriving on {r.in_interface}" if r.in_interface else "")
                       + ": it also cuts off remote management of this box unless a rule of lower "
                       "priority allows it")
    return out


def interface_warnings(rules: Iterable[FirewallEntry], attached: Iterable[str]) -> list[str]:
    """Rules matching an ingress interface the datapath is not attached to: they never match."""
    on = set(attached)
    return [f"FirewallRule/{r.name} matches inInterface {r.in_interface}, which the Datapath is not "
            f"attached to: it never matches (attached: {', '.join(sorted(on)) or 'none'})"
            for r in ordered(rules) if r.in_interface is not None and r.in_interface not in on]


def family_of(r: FirewallEntry) -> Family | None:
    """The one IP family a rule can match, or None for both."""
    for c in (r.source, r.destination):
        if c is not None:
            return _family(c)
    return None
