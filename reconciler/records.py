"""State records: the common language of desired state, live state and the drivers.

Why this exists: the compiler (``desired.py``) produces these records from the
configuration, each driver's ``read()`` produces the same records from the live
system, and ``plan.diff`` compares the two key by key.  Records use natural keys
(VIP, protocol, port), never kernel-internal ids, so desired and live state can be
compared without knowing how a driver lays out its maps.

A ``State`` maps a record kind to a mapping of key -> record.  The record kinds
and the driver meant to own each (what each real driver owns today is its entry
in ``reconciler.drivers.registry.SPECS``):

==============  ====================  ===========
kind            record                driver
==============  ====================  ===========
``sysctl``      ``KernelSetting``     sysctl
``service``     ``ServiceEntry``      bpf
``endpoints``   ``EndpointSet``       bpf
``firewall``    ``FirewallEntry``     bpf
``attach``      ``Attachment``        bpf
``vip``         ``VipAddress``        netlink
``bgp-global``  ``BgpGlobal``         bgp
``bgp-peer``    ``BgpPeer``           bgp
``announce``    ``Announcement``      bgp
==============  ====================  ===========

``faults`` (service, endpoints, attach, vip, firewall): what a live read found wrong with
the kernel objects behind a record that its other fields cannot show (a lookup
entry that is missing or points elsewhere, bytes that differ from what lbctl
writes, a foreign program on the hook, an address on a link that is down).
Desired records never have faults, so a faulty live record always differs from
the desired one: the plan shows it and apply rewrites the objects behind it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True, slots=True)
class ServiceKey:
    """(VIP, protocol, port range): what the datapath matches a packet on.

    ``vip`` is the canonical text form (``ipaddress`` ``str()``), ``proto`` is
    lower case (``tcp``, ``udp``, ``sctp``, ``icmp``), ``port == port_end`` for a
    single port and both are 0 for ICMP.
    """

    vip: str
    proto: str
    port: int
    port_end: int

    def __str__(self) -> str:
        host = f"[{self.vip}]" if ":" in self.vip else self.vip
        ports = str(self.port) if self.port == self.port_end else f"{self.port}-{self.port_end}"
        return f"{self.proto}/{host}:{ports}"

    @property
    def family(self) -> int:
        return 6 if ":" in self.vip else 4

    @classmethod
    def parse(cls, text: str) -> ServiceKey:
        """Inverse of ``str()``: ``tcp/198.51.100.1:80`` or ``udp/[2001:db8::1]:53-54``."""
        proto, rest = text.split("/", 1)
        host, ports = rest.rsplit(":", 1)
        host = host.strip("[]")
        start, _, end = ports.partition("-")
        return cls(str(ipaddress.ip_address(host)), proto, int(start), int(end or start))


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One datapath service: how packets to ``key`` are balanced."""

    key: ServiceKey
    name: str  # the Service resource that owns it
    mode: str  # default | onearm | fullnat | dsr
    selection: str  # rr | hash | persist | lc | maglev | priority
    session_timeout: int  # idle seconds before a flow is forgotten
    persist_timeout: int  # seconds a source sticks to an endpoint (persist)
    allowed_sources: tuple[str, ...] = ()  # CIDRs, empty = any
    source_address: str = ""  # fullnat: the source endpoints see; "": the box's address towards them
    firewall_mark: int = 0  # balance only packets a firewall mark rule marked so; 0: every packet
    no_endpoints: str = "reject"  # reject | drop: a new flow while no endpoint is up
    sctp_peer_vips: tuple[str, ...] = ()  # SCTP multihoming: the Service's other VIPs, in order
    faults: tuple[str, ...] = ()  # live only: what the read found wrong


@dataclass(frozen=True, slots=True)
class Backend:
    address: str
    port: int  # destination port after translation; 0 keeps the original port
    weight: int = 1


@dataclass(frozen=True, slots=True)
class EndpointSet:
    """The backends of one service, swapped atomically as a whole.

    ``maglev`` is the Maglev lookup table for maglev services: a prime-sized
    sequence of indexes into ``backends``, packed as little-endian u16 (empty
    for other selections).
    """

    key: ServiceKey
    backends: tuple[Backend, ...]
    maglev: bytes = b""
    faults: tuple[str, ...] = ()  # live only: what the read found wrong


@dataclass(frozen=True, slots=True)
class FirewallEntry:
    name: str
    priority: int
    source: str | None
    destination: str | None
    source_ports: tuple[int, int] | None
    destination_ports: tuple[int, int] | None
    protocol: str | None
    in_interface: str | None
    action: str
    mark: int | None = None
    rate_pps: int | None = None
    rate_burst: int | None = None
    faults: tuple[str, ...] = ()  # live only: the rule tables differ from what the rules compile to


@dataclass(frozen=True, slots=True)
class Attachment:
    """The datapath program attached to one interface."""

    ifname: str
    hook: str  # tc | xdp
    faults: tuple[str, ...] = ()  # live only: e.g. another program on the hook


@dataclass(frozen=True, slots=True)
class VipAddress:
    """A VIP made local by a local route through lbctl's interface, so the kernel answers ARP and
    accepts what the datapath passes up (``reconciler.drivers.netlink``)."""

    address: str
    prefixlen: int
    ifname: str
    faults: tuple[str, ...] = ()  # live only: e.g. the interface is down


@dataclass(frozen=True, slots=True)
class BgpGlobal:
    """The box's BGP speaker (one per box, key ``global``)."""

    asn: int
    router_id: str
    listen_port: int
    listen_addresses: tuple[str, ...] = ()  # sorted; empty: all addresses


@dataclass(frozen=True, slots=True)
class BgpPeer:
    address: str
    remote_as: int
    port: int
    hold_time: int
    keepalive: int
    multihop: int
    password: str | None = field(default=None, repr=False)
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Announcement:
    """A VIP announced with next hop self; optional path attributes."""

    prefix: str  # VIP/32 or VIP/128
    next_hop: str = "self"  # always: each peer gets the session's local address
    communities: tuple[str, ...] = ()  # "AS:VALUE", sorted
    local_pref: int | None = None
    med: int | None = None


@dataclass(frozen=True, slots=True)
class KernelSetting:
    """A kernel setting (sysctl) the datapath needs, e.g. forwarding on an attached interface.

    ``name`` is the dotted sysctl(8) name, with ``/`` standing for a ``.``
    inside an interface name (``net.ipv4.conf.eth0/100.forwarding``).
    """

    name: str
    value: str


Record = (ServiceEntry | EndpointSet | FirewallEntry | Attachment | VipAddress | BgpGlobal | BgpPeer
          | Announcement | KernelSetting)

# Record kinds in the order a from-scratch build creates them.
KINDS: tuple[str, ...] = ("sysctl", "attach", "firewall", "endpoints", "service", "vip", "bgp-global",
                          "bgp-peer", "announce")

State = Mapping[str, Mapping[str, Record]]
"""kind -> key -> record.  Keys are ``str(ServiceKey)`` for service and
endpoints, the rule name for firewall, the interface name for attach, the
address for vip and bgp-peer, ``global`` for bgp-global, the prefix for announce,
the sysctl name for sysctl."""


def empty_state() -> dict[str, dict[str, Record]]:
    return {kind: {} for kind in KINDS}
