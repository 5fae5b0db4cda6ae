"""IPAM: Services that name a Pool get a VIP from it, and keep it.

Why this exists: a VIP is what clients, DNS and firewalls point at; it must not
move because a file was renamed, documents were reordered or another service
was added.  So allocation is a pure function of (pools, services, previous
allocations); this module does no I/O.  The previous allocations are kept in the
state dir by ``reconciler.ipam_store`` (``allocations.json``, written
atomically).  Rules:

* a literal ``vip`` wins over ``pool`` (no allocation) and occupies its address
  (with its ports) for everyone else;
* ``sharing: shared`` pools give one VIP to several services as long as their
  (protocol, port range) sets do not overlap, packing from the lowest address;
  a service whose ports collide everywhere gets the next free address;
* ``sharing: exclusive`` pools give one VIP per service;
* kept first: an allocation from the store (or, when the store was lost, the
  VIP the live datapath shows for that service name) stays as long as it is
  still in the pool and still fits; then new services are placed in name
  order, so the result never depends on file or document order;
* a service that goes away releases its VIP (it is not written back);
* an exhausted pool is a configuration error naming the pool and the services
  that did not fit; nothing is applied.

Pool addresses are CIDRs (every address, as MetalLB does by default), single
addresses, or ``first-last`` ranges.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from reconciler.config.formats import canonical_ipv4
from reconciler.errors import ConfigError
from reconciler.model import DatapathSpec, PoolSpec, Resource, ServiceSpec

PortSpan = tuple[str, int, int]  # (protocol, first port, last port)


@dataclass(frozen=True, order=True)
class Allocation:
    pool: str
    vip: str


@dataclass(frozen=True)
class IpamResult:
    """``vips``: service name -> allocated VIP; ``allocations`` is what to persist."""

    vips: Mapping[str, str]
    allocations: Mapping[str, Allocation]
    errors: tuple[ConfigError, ...] = ()


class PoolRanges:
    """A pool's addresses as integer ranges, indexable in address order."""

    def __init__(self, addresses: Iterable[str]) -> None:
        ranges: list[tuple[int, int]] = []
        self.version = 4
        for text in addresses:
            text = text.strip()
            if "-" in text:
                first, last = (ipaddress.ip_address(p.strip()) for p in text.split("-", 1))
                lo, hi = int(first), int(last)
            else:
                net = ipaddress.ip_network(text, strict=False)
                lo, hi = int(net.network_address), int(net.broadcast_address)
                first = net.network_address
            self.version = first.version
            if hi >= lo:
                ranges.append((lo, hi))
        self.ranges = sorted(ranges)
        self.size = sum(hi - lo + 1 for lo, hi in self.ranges)

    def nth(self, index: int) -> int:
        for lo, hi in self.ranges:
            span = hi - lo + 1
            if index < span:
                return lo + index
            index -= span
        raise IndexError(index)

    def __contains__(self, ip: int) -> bool:
        return any(lo <= ip <= hi for lo, hi in self.ranges)

    def text(self, ip: int) -> str:
        return str(ipaddress.ip_address(ip) if self.version == 4 else ipaddress.IPv6Address(ip))


def _spans(spec: ServiceSpec) -> tuple[PortSpan, ...]:
    out = []
    for p in spec.ports:
        proto = p.protocol.lower()
        if proto == "icmp":
            out.append((proto, 0, 0))
        else:
            out.append((proto, p.port, p.end_port if p.end_port is not None else p.port))
    return tuple(sorted(out))


def _collide(a: Iterable[PortSpan], b: Iterable[PortSpan]) -> bool:
    b = list(b)
    return any(pa == pb and sa <= eb and sb <= ea for pa, sa, ea in a for pb, sb, eb in b)


class _Occupancy:
    """Which addresses are taken, by which ports, and which are held exclusively."""

    def __init__(self) -> None:
        self.ports: dict[int, list[PortSpan]] = {}
        self.exclusive: set[int] = set()

    def fits(self, ip: int, spans: tuple[PortSpan, ...], exclusive: bool) -> bool:
        if ip in self.exclusive:
            return False
        used = self.ports.get(ip)
        if exclusive:
            return used is None
        return used is None or not _collide(spans, used)

    def take(self, ip: int, spans: tuple[PortSpan, ...], exclusive: bool) -> None:
        self.ports.setdefault(ip, []).extend(spans)
        if exclusive:
            self.exclusive.add(ip)


def _ip_int(text: str) -> int | None:
    n = canonical_ipv4(text)  # the common case, ~20x faster than ipaddress
    if n is not None:
        return n
    try:
        return int(ipaddress.ip_address(text))
    except ValueError:
        return None


def allocate(resources: Iterable[Resource], previous: Mapping[str, Allocation] | None = None,
             hints: Mapping[str, str] | None = None) -> IpamResult:
    """Allocate VIPs for services naming a pool (pure).

    ``previous``: the persisted allocations; ``hints``: service name -> VIP seen
    live (used only for services the store does not know, e.g. after the state
    dir was lost).
    """
    previous = previous or {}
    hints = hints or {}
    resources = list(resources)
    pools = {r.name: r for r in resources if isinstance(r.spec, PoolSpec)}
    ranges = {name: PoolRanges(r.spec.addresses) for name, r in pools.items()
              if isinstance(r.spec, PoolSpec)}
    services = sorted((r for r in resources if isinstance(r.spec, ServiceSpec)), key=lambda r: r.name)
    occ = _Occupancy()
    errors: list[ConfigError] = []
    wanting: list[tuple[Resource, ServiceSpec, str]] = []

    for res in services:
        spec = res.spec
        assert isinstance(spec, ServiceSpec)
        if spec.vip is not None:  # the literal wins and occupies its address
            ip = _ip_int(spec.vip)
            if ip is not None:
                exclusive = any(ip in rng and pools[n].spec.sharing == "exclusive"  # type: ignore[union-attr]
                                for n, rng in ranges.items())
                occ.take(ip, _spans(spec), exclusive)
        elif spec.pool is not None:
            if spec.pool not in pools:
                loc = res.where("spec.pool")
                errors.append(ConfigError(loc.file, loc.line, loc.column, "Service", res.name, "spec.pool",
                                          f"pool {spec.pool!r} does not exist",
                                          "define a Pool with that name or fix the reference"))
                continue
            wanting.append((res, spec, spec.pool))

    vips: dict[str, str] = {}
    allocs: dict[str, Allocation] = {}
    pending: list[tuple[Resource, ServiceSpec, str]] = []

    def exclusive_pool(pool: str) -> bool:
        spec = pools[pool].spec
        assert isinstance(spec, PoolSpec)
        return spec.sharing == "exclusive"

    # Keep what was allocated before (store first, then live hints), if it still fits.
    for source in ("store", "hint"):
        rest: list[tuple[Resource, ServiceSpec, str]] = []
        for res, spec, pool in (wanting if source == "store" else pending):
            if source == "store":
                prev = previous.get(res.name)
                vip = prev.vip if prev is not None and prev.pool == pool else None
            else:
                vip = hints.get(res.name)
            ip = _ip_int(vip) if vip else None
            spans, excl = _spans(spec), exclusive_pool(pool)
            if ip is not None and ip in ranges[pool] and occ.fits(ip, spans, excl):
                occ.take(ip, spans, excl)
                vips[res.name] = ranges[pool].text(ip)
                allocs[res.name] = Allocation(pool, vips[res.name])
            else:
                rest.append((res, spec, pool))
        pending = rest

    # Place the rest in name order; a cursor per (pool, port set) keeps this linear.
    cursors: dict[tuple[str, tuple[PortSpan, ...] | None], int] = {}
    unplaced: dict[str, list[str]] = {}
    for res, spec, pool in sorted(pending, key=lambda t: t[0].name):
        rng, spans, excl = ranges[pool], _spans(spec), exclusive_pool(pool)
        ckey = (pool, None if excl else spans)
        i = cursors.get(ckey, 0)
        while i < rng.size and not occ.fits(rng.nth(i), spans, excl):
            i += 1
        cursors[ckey] = i
        if i >= rng.size:
            unplaced.setdefault(pool, []).append(res.name)
            continue
        ip = rng.nth(i)
        occ.take(ip, spans, excl)
        vips[res.name] = rng.text(ip)
        allocs[res.name] = Allocation(pool, vips[res.name])

    for pool, names in sorted(unplaced.items()):
        res = pools[pool]
        loc = res.where("spec.addresses")
        size = ranges[pool].size
        addrs = "address" if size == 1 else "addresses"
        noun = "service does" if len(names) == 1 else "services do"
        hint = ("add addresses to the pool, or set sharing: shared" if exclusive_pool(pool)
                else "add addresses to the pool, or give these services ports that do not overlap")
        errors.append(ConfigError(loc.file, loc.line, loc.column, "Pool", pool, "spec.addresses",
                                  f"pool exhausted ({size} {addrs}): {len(names)} {noun} not fit: "
                                  + ", ".join(names), hint))
    return IpamResult(vips=vips, allocations=allocs, errors=tuple(errors))



def source_errors(resources: Iterable[Resource], box: frozenset[str] | None) -> tuple[ConfigError, ...]:
    """A fullnat ``sourceAddress`` (Service or Datapath) that is neither in a Pool nor on the box.

    Endpoints answer that address; one that reaches no box would black-hole every
    flow, so it is refused before anything is applied.  ``box``: the addresses
    assigned on the box (None: not known, so nothing is refused).
    """
    resources = list(resources)
    if box is None:
        return ()
    pools = [PoolRanges(r.spec.addresses) for r in resources if isinstance(r.spec, PoolSpec)]
    errors: list[ConfigError] = []
    for res in resources:
        spec = res.spec
        if isinstance(spec, ServiceSpec) and spec.mode != "fullnat":
            continue
        if not isinstance(spec, (ServiceSpec, DatapathSpec)) or not spec.source_address:
            continue
        addr = ipaddress.ip_address(spec.source_address)
        if str(addr) in box or any(p.version == addr.version and int(addr) in p for p in pools):
            continue
        loc = res.where("spec.sourceAddress")
        errors.append(ConfigError(
            loc.file, loc.line, loc.column, res.kind, res.name, "spec.sourceAddress",
            f"source address {spec.source_address} is neither an address of this box nor in a Pool: "
            "endpoints would answer an address that does not reach the box",
            "assign it to an interface of the box, add it to a Pool, or leave sourceAddress out "
            "(the box's own address towards each endpoint)"))
    return tuple(errors)
