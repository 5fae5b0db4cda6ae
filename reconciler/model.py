"""Typed model of the configuration resources.

Why this exists: every later layer (semantic checks, the desired-state compiler,
export) works on these frozen dataclasses instead of raw YAML dictionaries, so a
field has exactly one name, one type and one default.  Defaults live in exactly
one place: the dataclass defaults below.  ``reconciler/config/build.py`` turns a
schema-valid document into these classes passing only the fields present in the
YAML, so an omitted field always takes the default declared here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.constants import DEFAULT_VIP_INTERFACE

API_VERSION = "lbctl.dev/v1alpha1"

Protocol = Literal["TCP", "UDP", "SCTP", "ICMP"]
Mode = Literal["default", "onearm", "fullnat", "dsr"]
Selection = Literal["rr", "hash", "persist", "lc", "maglev", "priority"]
ProbeType = Literal["tcp", "udp", "sctp", "http", "https", "ping", "none"]
Hook = Literal["tc", "xdp"]
Sharing = Literal["shared", "exclusive"]
Family = Literal["IPv4", "IPv6"]
NoEndpoints = Literal["reject", "drop"]
FirewallAction = Literal["allow", "drop", "trap", "mark", "rateLimit"]

# Defaults, in one place.
DEFAULT_MODE: Mode = "default"
DEFAULT_SELECTION: Selection = "rr"
DEFAULT_HOOK: Hook = "tc"
DEFAULT_TCP_SESSION_TIMEOUT = 240  # seconds idle, TCP and SCTP
DEFAULT_OTHER_SESSION_TIMEOUT = 20  # seconds idle, UDP and ICMP
DEFAULT_PERSIST_TIMEOUT = 10800  # seconds, like Kubernetes sessionAffinity
DEFAULT_PROBE_INTERVAL = 10
DEFAULT_PROBE_TIMEOUT = 2
DEFAULT_PROBE_RETRIES = 3
DEFAULT_PROBE_STATUS = 200
DEFAULT_BGP_PORT = 179
DEFAULT_HOLD_TIME = 90
DEFAULT_KEEPALIVE = 30


@dataclass(frozen=True, slots=True)
class Location:
    """Where a node came from: file, 1-based line and column."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Metadata:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive port range; ``start == end`` for a single port."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: Protocol = "TCP"
    end_port: int | None = None  # inclusive upper bound of a port range
    target_port: int | None = None  # None: same as the incoming port
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    weight: int = 1
    target_port: int | None = None  # overrides the service port's targetPort
    backup: bool = False  # gets new flows only while no non-backup endpoint is healthy


@dataclass(frozen=True, slots=True)
class Probe:
    type: ProbeType = "none"
    port: int | None = None
    request: str | None = None  # HTTP path or UDP payload
    response: str | None = None  # expected response (substring)
    interval: int = DEFAULT_PROBE_INTERVAL
    timeout: int = DEFAULT_PROBE_TIMEOUT
    retries: int = DEFAULT_PROBE_RETRIES
    status: int = DEFAULT_PROBE_STATUS  # http/https: the status code that counts as healthy
    ca_file: str | None = None  # https: CA bundle verifying the endpoint (None: no verification)
    cert_file: str | None = None  # https: client certificate (mutual TLS), PEM
    key_file: str | None = None  # https: its private key (None: in cert_file)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    ports: tuple[ServicePort, ...]
    vip: str | None = None  # literal VIP; wins over pool when both are given
    pool: str | None = None
    mode: Mode = DEFAULT_MODE
    selection: Selection = DEFAULT_SELECTION
    session_timeout: int | None = None  # None: per-protocol default
    persist_timeout: int = DEFAULT_PERSIST_TIMEOUT
    maglev_table_size: int | None = None  # None: sized from the endpoint count
    endpoints: tuple[Endpoint, ...] = ()
    allowed_sources: tuple[str, ...] = ()  # CIDRs; empty means any
    secondary_vips: tuple[str, ...] = ()  # SCTP multihoming, at most 3
    bgp: bool = False  # announce the VIP through BGP
    withdraw_when_no_endpoints: bool = False  # with bgp: withdraw the VIP while no endpoint is healthy
    probe: Probe = field(default_factory=Probe)
    source_address: str | None = None  # fullnat: the source endpoints see (else the Datapath's)
    firewall_mark: int | None = None  # balance only packets a FirewallRule marked with this value
    no_endpoints: NoEndpoints = "reject"  # a new connection while no endpoint is up: refused or dropped


@dataclass(frozen=True, slots=True)
class PoolSpec:
    addresses: tuple[str, ...]  # CIDRs or "first-last" ranges
    sharing: Sharing = "shared"
    family: Family | None = None  # None: taken from the addresses


@dataclass(frozen=True, slots=True)
class BGPConfigSpec:
    local_as: int
    router_id: str
    listen_port: int = DEFAULT_BGP_PORT
    listen_addresses: tuple[str, ...] = ()
    communities: tuple[str, ...] = ()  # "AS:VALUE" on every announced VIP
    local_pref: int | None = None  # LOCAL_PREF of every announced VIP (iBGP peers)
    med: int | None = None  # MULTI_EXIT_DISC of every announced VIP


@dataclass(frozen=True, slots=True)
class BGPPeerSpec:
    address: str
    remote_as: int
    port: int = DEFAULT_BGP_PORT
    hold_time: int = DEFAULT_HOLD_TIME
    keepalive: int = DEFAULT_KEEPALIVE
    multihop: int = 0  # eBGP multihop TTL; 0 means directly connected
    password: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class FirewallMatch:
    source: str | None = None  # CIDR
    destination: str | None = None  # CIDR
    source_ports: PortRange | None = None
    destination_ports: PortRange | None = None
    protocol: Protocol | None = None
    in_interface: str | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    packets_per_second: int
    burst: int


@dataclass(frozen=True, slots=True)
class FirewallRuleSpec:
    priority: int
    match: FirewallMatch
    action: FirewallAction
    mark: int | None = None  # with action "mark"
    rate_limit: RateLimit | None = None  # with action "rateLimit"


@dataclass(frozen=True, slots=True)
class DatapathInterface:
    name: str
    hook: Hook = DEFAULT_HOOK


# Capacities of the datapath (the sizes of its maps), when the Datapath does not set them.
DEFAULT_SERVICE_CAPACITY = 65536  # service entries: (VIP, protocol, port range)
DEFAULT_ENDPOINT_CAPACITY = 131072  # endpoint counter slots: one per endpoint of every entry
DEFAULT_SELECTION_CHUNK_CAPACITY = 262144  # selection table chunks of 512 indexes (both slots)
DEFAULT_PERSIST_CAPACITY = 65536  # source affinities of persist services
# Conntrack is sized to the box: one concurrent flow per 16 KiB of memory (a flow's two
# entries take about 370 bytes of kernel memory, so ~2% of it), in steps of 65,536 flows,
# at least 65,536 and at most 16,777,216 (24 GB: 1,507,328 flows).
CONNTRACK_MEMORY_PER_FLOW = 16384
CONNTRACK_FLOW_STEP = 65536
MAX_CONNTRACK_FLOWS = 16777216


def default_conntrack_flows(memory_bytes: int) -> int:
    """Concurrent flows conntrack holds by default on a box with ``memory_bytes`` of memory."""
    flows = memory_bytes // CONNTRACK_MEMORY_PER_FLOW // CONNTRACK_FLOW_STEP * CONNTRACK_FLOW_STEP
    return max(CONNTRACK_FLOW_STEP, min(MAX_CONNTRACK_FLOWS, flows))


@dataclass(frozen=True, slots=True)
class DatapathCapacities:
    """The datapath's capacities; ``None``: the default (``resolved`` fills them in)."""

    services: int | None = None
    endpoints: int | None = None
    selection_chunks: int | None = None
    conntrack_flows: int | None = None
    persist_entries: int | None = None

    def resolved(self, memory_bytes: int) -> DatapathCapacities:
        """Every capacity set: this box's defaults (``memory_bytes``) where none was given."""
        return DatapathCapacities(
            services=self.services or DEFAULT_SERVICE_CAPACITY,
            endpoints=self.endpoints or DEFAULT_ENDPOINT_CAPACITY,
            selection_chunks=self.selection_chunks or DEFAULT_SELECTION_CHUNK_CAPACITY,
            conntrack_flows=self.conntrack_flows or default_conntrack_flows(memory_bytes),
            persist_entries=self.persist_entries or DEFAULT_PERSIST_CAPACITY)


@dataclass(frozen=True, slots=True)
class DatapathSpec:
    interfaces: tuple[DatapathInterface, ...]
    hook: Hook = DEFAULT_HOOK  # default for interfaces that do not name one
    vip_interface: str = DEFAULT_VIP_INTERFACE
    source_address: str | None = None  # fullnat services without their own sourceAddress
    capacities: DatapathCapacities = DatapathCapacities()


# The YAML (camelCase) name of every model field, per class: the one table both
# directions use (``config/build.py`` reads YAML into the model, ``documents.py``
# writes the model back as YAML).
YAML_NAMES: Mapping[type, Mapping[str, str]] = {
    ServicePort: {"port": "port", "protocol": "protocol", "end_port": "endPort",
                  "target_port": "targetPort", "name": "name"},
    Endpoint: {"address": "address", "weight": "weight", "target_port": "targetPort", "backup": "backup"},
    Probe: {"type": "type", "port": "port", "request": "request", "response": "response",
            "interval": "interval", "timeout": "timeout", "retries": "retries", "status": "status",
            "ca_file": "caFile", "cert_file": "certFile", "key_file": "keyFile"},
    ServiceSpec: {"ports": "ports", "vip": "vip", "pool": "pool", "mode": "mode", "selection": "selection",
                  "session_timeout": "sessionTimeout", "persist_timeout": "persistTimeout",
                  "maglev_table_size": "maglevTableSize", "endpoints": "endpoints",
                  "allowed_sources": "allowedSources", "secondary_vips": "secondaryVips", "bgp": "bgp",
                  "withdraw_when_no_endpoints": "withdrawWhenNoEndpoints", "probe": "probe",
                  "source_address": "sourceAddress",
                  "firewall_mark": "firewallMark", "no_endpoints": "noEndpoints"},
    PoolSpec: {"addresses": "addresses", "sharing": "sharing", "family": "family"},
    BGPConfigSpec: {"local_as": "localAS", "router_id": "routerID", "listen_port": "listenPort",
                    "listen_addresses": "listenAddresses", "communities": "communities",
                    "local_pref": "localPref", "med": "med"},
    BGPPeerSpec: {"address": "address", "remote_as": "remoteAS", "port": "port", "hold_time": "holdTime",
                  "keepalive": "keepalive", "multihop": "multihop", "password": "password",
                  "description": "description"},
    PortRange: {"start": "from", "end": "to"},
    FirewallMatch: {"source": "source", "destination": "destination", "source_ports": "sourcePorts",
                    "destination_ports": "destinationPorts", "protocol": "protocol",
                    "in_interface": "inInterface"},
    RateLimit: {"packets_per_second": "packetsPerSecond", "burst": "burst"},
    FirewallRuleSpec: {"priority": "priority", "match": "match", "action": "action", "mark": "mark",
                       "rate_limit": "rateLimit"},
    DatapathInterface: {"name": "name", "hook": "hook"},
    DatapathSpec: {"interfaces": "interfaces", "hook": "hook", "vip_interface": "vipInterface",
                   "source_address": "sourceAddress", "capacities": "capacities"},
    DatapathCapacities: {"services": "services", "endpoints": "endpoints",
                         "selection_chunks": "selectionChunks", "conntrack_flows": "conntrackFlows",
                         "persist_entries": "persistEntries"},
}

# What ``lbctl export`` writes instead of a secret (a BGP session's TCP MD5
# password); ``validate`` rejects it, so an export is never applied with it.
SECRET_PLACEHOLDER = "REPLACE-ME: lbctl export does not write secrets"

Spec = ServiceSpec | PoolSpec | BGPConfigSpec | BGPPeerSpec | FirewallRuleSpec | DatapathSpec

KINDS: tuple[str, ...] = ("Service", "Pool", "BGPConfig", "BGPPeer", "FirewallRule", "Datapath")


@dataclass(frozen=True, slots=True)
class Resource:
    """One validated document: envelope plus typed spec."""

    kind: str
    metadata: Metadata
    spec: Spec
    location: Location  # where the document starts
    # spec path ("spec.endpoints[2].address") -> location, for semantic errors
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        return self.metadata.name

    def where(self, path: str) -> Location:
        """Best location for a spec path: the path itself or its nearest parent."""
        while path:
            loc = self.locations.get(path)
            if loc is not None:
                return loc
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.location


def session_timeout_for(spec: ServiceSpec, protocol: Protocol) -> int:
    """Idle timeout of a flow: explicit value, or the per-protocol default."""
    if spec.session_timeout is not None:
        return spec.session_timeout
    if protocol in ("TCP", "SCTP"):
        return DEFAULT_TCP_SESSION_TIMEOUT
    return DEFAULT_OTHER_SESSION_TIMEOUT


JSON = Any  # a parsed, schema-validated YAML value
