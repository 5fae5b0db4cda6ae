"""Compile validated resources into the desired State.

Why this exists: the datapath, netlink and BGP drivers speak small typed records
(``reconciler.records``) keyed by natural keys; the operator writes Services,
Pools, Datapaths...  This module is the one pure translation between the two,
so the planner can compare desired and live state record by record.  It has no
side effects: VIPs that come from pools are decided by ``reconciler.ipam`` and
passed in.

Rules (each in one place):

* one ``ServiceEntry`` + ``EndpointSet`` per (VIP, protocol, port or range) of
  a Service, for the primary VIP and every secondary VIP; an SCTP entry lists
  the Service's other VIPs (``sctp_peer_vips``: the datapath tells the client
  of them in the INIT-ACK and maps their paths to the same association);
* backend port: the endpoint's ``targetPort`` > the port's ``targetPort`` > 0
  ("keep the incoming port");
* backends are sorted (address, port), so reordering endpoints in YAML is not a
  change; the Maglev table (``selection: maglev``) indexes that sorted order;
* endpoint health is an input (``Health``; missing means healthy; the daemon's
  health probes produce it, ``reconciler.probes``): an unhealthy endpoint stays
  in its service's backends with weight 0 (as a drained one), so no new flow
  goes to it under any selection, the Maglev table spreads its slots over the
  others, and its open flows are left to end by themselves; backup endpoints
  (``backup: true``) keep their weight only while no other endpoint with a
  weight above 0 is healthy; when no endpoint of a service has a weight left the
  datapath refuses the service's new flows (the kernel answers RST / port
  unreachable; counted as ``drop_no_backend``), as for a service without
  endpoints;
* session timeout: explicit, else the per-protocol default
  (``model.session_timeout_for``);
* every VIP becomes a ``VipAddress`` (/32 or /128) on the Datapath's
  ``vipInterface`` (default ``lbctl0``);
* one ``Attachment`` per Datapath interface, one ``FirewallEntry`` per
  FirewallRule;
* the BGP speaker (``bgp-global``, key ``global``), its peers and the
  announcements (the VIPs of services with ``bgp: true``, carrying the
  BGPConfig's communities, local-pref and MED) only when a BGPConfig exists:
  without one there is no speaker to announce them.  A VIP is not announced
  while every Service asking for it has ``withdrawWhenNoEndpoints`` and none
  of its endpoints is healthy (routers then send its traffic elsewhere);
* the kernel settings the datapath needs (``kernel_settings``) for each
  Datapath interface and each address family some VIP uses.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence

from reconciler import maglev
from reconciler.config.formats import canonical_ipv4
from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.model import (
    BGPConfigSpec,
    BGPPeerSpec,
    DatapathSpec,
    Endpoint,
    FirewallRuleSpec,
    Resource,
    ServicePort,
    ServiceSpec,
    session_timeout_for,
)
from reconciler.records import (
    Announcement,
    Attachment,
    Backend,
    BgpGlobal,
    BgpPeer,
    EndpointSet,
    FirewallEntry,
    KernelSetting,
    Record,
    ServiceEntry,
    ServiceKey,
    VipAddress,
    empty_state,
)

MutableState = dict[str, dict[str, Record]]
TableBuilder = Callable[[Sequence[Backend], int], bytes]
Health = Mapping[tuple[str, str], bool]
"""(Service name, endpoint address in ``canonical_ip`` form) -> healthy.  Missing: healthy."""



def default_maglev_size(backends: int) -> int:
    """The Maglev table size for ``backends`` endpoints (``reconciler.maglev.table_size``)."""
    return maglev.table_size(backends)


def maglev_table(backends: Sequence[Backend], size: int) -> bytes:
    """The datapath's Maglev table for ``backends`` (in ``EndpointSet.backends`` order)."""
    return maglev.for_backends([(b.address, b.port, b.weight) for b in backends], size)


def canonical_ip(text: str) -> str:
    """``ipaddress`` text form, so keys from config and from the kernel compare equal.

    Fast path: dotted-quad IPv4 without leading zeros (what validated config and
    the kernel give) is already canonical (``canonical_ipv4`` checks it in C).
    """
    if canonical_ipv4(text) is not None:
        return text
    return _canonical_slow(text)


@functools.lru_cache(maxsize=4096)
def _canonical_slow(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _ip_sort_key(text: str) -> bytes:
    """Numeric order of canonical addresses (IPv4 before IPv6)."""
    if ":" in text:
        return b"\x06" + socket.inet_pton(socket.AF_INET6, text)
    return b"\x04" + socket.inet_pton(socket.AF_INET, text)


def service_vips(res: Resource, allocated: Mapping[str, str]) -> tuple[str, ...]:
    """Primary VIP (literal ``vip`` wins over the pool) then the secondary VIPs."""
    spec = res.spec
    assert isinstance(spec, ServiceSpec)
    primary = spec.vip if spec.vip is not None else allocated.get(res.name)
    if primary is None:
        return ()
    out = [canonical_ip(primary)]
    for extra in spec.secondary_vips:
        ip = canonical_ip(extra)
        if ip not in out:
            out.append(ip)
    return tuple(out)


def _port_key(vip: str, port: ServicePort) -> ServiceKey:
    proto = port.protocol.lower()
    if proto == "icmp":
        return ServiceKey(vip, proto, 0, 0)
    end = port.end_port if port.end_port is not None else port.port
    return ServiceKey(vip, proto, port.port, end)


def _backends(endpoints: Sequence[Endpoint], port: ServicePort) -> tuple[Backend, ...]:
    default = port.target_port if port.target_port is not None else 0
    # Deduplicated and sorted as plain tuples (hashing a dataclass calls Python code per item).
    out = {
        (canonical_ip(ep.address), ep.target_port if ep.target_port is not None else default, ep.weight)
        for ep in endpoints
    }
    return tuple(Backend(a, p, w) for a, p, w in sorted(out, key=lambda t: (_ip_sort_key(t[0]), t[1], t[2])))


def healthy_endpoints(res: Resource, health: Health) -> tuple[Endpoint, ...]:
    """The endpoints of Service ``res`` that take new flows.

    Those ``health`` does not mark unhealthy; of them the backups (``backup:
    true``, HAProxy's meaning) only while no non-backup endpoint with a weight
    above 0 is healthy.
    """
    spec = res.spec
    assert isinstance(spec, ServiceSpec)
    eps = spec.endpoints
    if health:
        eps = tuple(ep for ep in eps if health.get((res.name, canonical_ip(ep.address)), True))
    primaries = tuple(ep for ep in eps if not ep.backup)
    if any(ep.weight > 0 for ep in primaries):
        return primaries
    return tuple(ep for ep in eps if ep.backup)


def source_address(spec: ServiceSpec, datapath: DatapathSpec | None, vip: str) -> str:
    """The source a fullnat service's endpoints see ("": the box's own address towards each).

    The Service's own is validated to be of its endpoints' family; the Datapath's
    serves the services whose endpoints (or, without endpoints, VIP) are all of its family."""
    if spec.mode != "fullnat":
        return ""
    if spec.source_address:
        return str(ipaddress.ip_address(spec.source_address))
    text = datapath.source_address if datapath else None
    if not text:
        return ""
    addr = ipaddress.ip_address(text)
    families = {ipaddress.ip_address(ep.address).version for ep in spec.endpoints}
    return str(addr) if families <= {addr.version} and (families or addr.version == ipaddress.ip_address(
        vip).version) else ""


def _compile_service(res: Resource, vips: tuple[str, ...], state: MutableState,
                     table_builder: TableBuilder, health: Health, datapath: DatapathSpec | None) -> None:
    spec = res.spec
    assert isinstance(spec, ServiceSpec)
    services, endpoints = state["service"], state["endpoints"]
    eligible = healthy_endpoints(res, health)
    # Endpoints out of selection (down, or backups on standby) stay in the list with weight
    # 0: no new flow picks them, while their open flows, counters and connection counts stay.
    eps = spec.endpoints if len(eligible) == len(spec.endpoints) else tuple(
        ep if ep in eligible else dataclasses.replace(ep, weight=0) for ep in spec.endpoints)
    for port in spec.ports:
        backends = _backends(eps, port)
        table = b""
        if spec.selection == "maglev" and backends:
            size = spec.maglev_table_size or default_maglev_size(len(backends))
            table = table_builder(backends, size)
        timeout = session_timeout_for(spec, port.protocol)
        for vip in vips:
            key = _port_key(vip, port)
            k = str(key)
            services[k] = ServiceEntry(
                key=key, name=res.name, mode=spec.mode, selection=spec.selection,
                session_timeout=timeout, persist_timeout=spec.persist_timeout,
                allowed_sources=tuple(sorted(str(ipaddress.ip_network(c, strict=False))
                                             for c in spec.allowed_sources)),
                source_address=source_address(spec, datapath, vip),
                firewall_mark=spec.firewall_mark or 0, no_endpoints=spec.no_endpoints,
                sctp_peer_vips=tuple(v for v in vips if v != vip) if port.protocol == "SCTP" else (),
            )
            endpoints[k] = EndpointSet(key=key, backends=backends, maglev=table)


def _firewall(res: Resource) -> FirewallEntry:
    spec = res.spec
    assert isinstance(spec, FirewallRuleSpec)
    m = spec.match

    def net(c: str | None) -> str | None:
        return None if c is None else str(ipaddress.ip_network(c, strict=False))

    return FirewallEntry(
        name=res.name, priority=spec.priority, source=net(m.source), destination=net(m.destination),
        source_ports=(m.source_ports.start, m.source_ports.end) if m.source_ports else None,
        destination_ports=((m.destination_ports.start, m.destination_ports.end)
                           if m.destination_ports else None),
        protocol=m.protocol.lower() if m.protocol else None, in_interface=m.in_interface,
        action=spec.action, mark=spec.mark,
        rate_pps=spec.rate_limit.packets_per_second if spec.rate_limit else None,
        rate_burst=spec.rate_limit.burst if spec.rate_limit else None,
    )


def _peer(spec: BGPPeerSpec) -> BgpPeer:
    return BgpPeer(address=canonical_ip(spec.address), remote_as=spec.remote_as, port=spec.port,
                   hold_time=spec.hold_time, keepalive=spec.keepalive, multihop=spec.multihop,
                   password=spec.password, description=spec.description)


def _bgp_global(spec: BGPConfigSpec) -> BgpGlobal:
    return BgpGlobal(asn=spec.local_as, router_id=spec.router_id, listen_port=spec.listen_port,
                     listen_addresses=tuple(sorted({canonical_ip(a) for a in spec.listen_addresses})))


def _announcement(prefix: str, bgp: BGPConfigSpec) -> Announcement:
    return Announcement(prefix, communities=tuple(sorted(set(bgp.communities))), local_pref=bgp.local_pref,
                        med=bgp.med)


def kernel_settings(interfaces: Iterable[str], families: Iterable[int]) -> list[KernelSetting]:
    """The sysctls the datapath needs on ``interfaces`` for the VIP ``families`` (4, 6).

    A fresh box has forwarding off, and then ``bpf_fib_lookup`` answers
    "forwarding disabled" for every packet the datapath would redirect (it
    checks the *ingress* interface's forwarding flag), so ``lbctl apply``
    verified and no traffic flowed (issue #8; DESIGN pitfalls 11, 19, 21):

    * IPv4: ``net.ipv4.conf.IF.forwarding=1`` on each attached interface (the
      flag ``bpf_fib_lookup`` and the kernel's own forwarding both check; the
      global ``ip_forward`` is left alone), and ``rp_filter=0`` on each
      interface and on ``all`` (the effective value is the maximum of the two):
      a reply handed to the kernel's slow path after reverse NAT carries the VIP,
      a local address, as its source, which any reverse-path filter drops.
    * IPv6: ``net.ipv6.conf.all.forwarding=1`` (the kernel's ``ip6_forward``
      checks only ``all``) and ``net.ipv6.conf.IF.forwarding=1`` (what
      ``bpf_fib_lookup`` checks).  IPv6 forwarding makes the kernel ignore router
      advertisements on those interfaces, so it is set only when an IPv6 VIP
      exists.

    Names use sysctl(8)'s ``/`` for a ``.`` inside an interface name.
    """
    names = [i.replace(".", "/") for i in interfaces]
    fams = set(families)
    out: list[KernelSetting] = []
    if 4 in fams and names:
        out.append(KernelSetting("net.ipv4.conf.all.rp_filter", "0"))
        for n in names:
            out.append(KernelSetting(f"net.ipv4.conf.{n}.forwarding", "1"))
            out.append(KernelSetting(f"net.ipv4.conf.{n}.rp_filter", "0"))
    if 6 in fams and names:
        out.append(KernelSetting("net.ipv6.conf.all.forwarding", "1"))
        out.extend(KernelSetting(f"net.ipv6.conf.{n}.forwarding", "1") for n in names)
    return out


def host_prefixlen(ip: str) -> int:
    return 128 if ":" in ip else 32


def compile_state(resources: Iterable[Resource], allocated: Mapping[str, str] | None = None, *,
                  table_builder: TableBuilder | None = None, health: Health | None = None) -> MutableState:
    """Desired State of validated ``resources``.

    ``allocated`` maps a Service name to the VIP IPAM gave it (services with a
    literal ``vip`` need no entry).  ``table_builder`` replaces
    ``maglev_table`` (tests).  ``health``: which endpoints are unhealthy (left
    out of the backends; None: all healthy).  A Service without any VIP (its
    pool was exhausted: IPAM reported that) is skipped.
    """
    allocated = allocated or {}
    health = health or {}
    state = empty_state()
    build = table_builder or maglev_table
    resources = list(resources)
    datapath = next((r.spec for r in resources if isinstance(r.spec, DatapathSpec)), None)
    vip_if = datapath.vip_interface if datapath else DEFAULT_VIP_INTERFACE
    bgp = next((r.spec for r in resources if isinstance(r.spec, BGPConfigSpec)), None)
    has_bgp = bgp is not None

    announce: dict[str, bool] = {}  # prefix -> some Service wants it announced now
    for res in resources:
        spec = res.spec
        if isinstance(spec, ServiceSpec):
            vips = service_vips(res, allocated)
            if not vips:
                continue
            _compile_service(res, vips, state, build, health, datapath)
            for vip in vips:
                state["vip"][vip] = VipAddress(vip, host_prefixlen(vip), vip_if)
                if spec.bgp and bgp is not None:
                    prefix = f"{vip}/{host_prefixlen(vip)}"
                    wanted = not spec.withdraw_when_no_endpoints or bool(healthy_endpoints(res, health))
                    announce[prefix] = announce.get(prefix, False) or wanted
        elif isinstance(spec, DatapathSpec):
            for iface in spec.interfaces:
                state["attach"][iface.name] = Attachment(iface.name, iface.hook)
        elif isinstance(spec, FirewallRuleSpec):
            state["firewall"][res.name] = _firewall(res)
        elif isinstance(spec, BGPConfigSpec):
            state["bgp-global"]["global"] = _bgp_global(spec)
        elif isinstance(spec, BGPPeerSpec) and has_bgp:
            peer = _peer(spec)
            state["bgp-peer"][peer.address] = peer
    if bgp is not None:
        for prefix, wanted in announce.items():
            if wanted:
                state["announce"][prefix] = _announcement(prefix, bgp)
    if datapath is not None:
        families = {6 if ":" in vip else 4 for vip in state["vip"]}
        for setting in kernel_settings((i.name for i in datapath.interfaces), families):
            state["sysctl"][setting.name] = setting
    return state
