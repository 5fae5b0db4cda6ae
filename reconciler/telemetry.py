"""What operators observe, as plain data, and the sources that supply it.

Why this exists: the exporter (``metrics.py``), ``lbctl top`` and ``lbctl get``
show the same facts, and several parts of lbctl supply them: the datapath
(counters, conntrack), the firewall, the health-probe engine and BGP.  Each is a
small source protocol here, in the pure core: a driver or an engine implements
it and returns these frozen records; callers find sources with ``isinstance``.
A part that is not built yet simply has no source, and its series are empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from reconciler.records import ServiceKey


class Traffic(NamedTuple):
    """Counters of a service or an endpoint, summed over CPUs; ``active_flows`` from conntrack.

    Named tuples rather than frozen dataclasses: a scrape at 10,000 x 10 makes
    110,000 of these, and a tuple is built several times faster.
    """

    packets: int = 0  # client -> VIP (forward) packets
    bytes: int = 0
    reply_packets: int = 0  # backend -> client packets
    reply_bytes: int = 0
    new_flows: int = 0
    drops: int = 0
    active_flows: int = 0  # forward conntrack entries not yet idle past their timeout


class EndpointStats(NamedTuple):
    endpoint: str  # "10.0.0.1:8080", "[2001:db8::1]:80": the port the packets go to
    traffic: Traffic


class ServiceStats(NamedTuple):
    key: ServiceKey
    name: str  # the Service resource's name ("" if the datapath does not know it)
    traffic: Traffic
    endpoints: tuple[EndpointStats, ...] = ()

    @property
    def port_label(self) -> str:
        k = self.key
        return str(k.port) if k.port == k.port_end else f"{k.port}-{k.port_end}"


@dataclass(frozen=True)
class DatapathSnapshot:
    """Everything the datapath counts, read at one moment (one batch read per map)."""

    services: tuple[ServiceStats, ...] = ()
    conntrack: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (protocol, state) -> entries
    conntrack_capacity: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)  # the global per-packet counters, by name
    drops: Mapping[str, int] = field(default_factory=dict)  # dropped packets by reason


@runtime_checkable
class DatapathSource(Protocol):
    def datapath_snapshot(self) -> DatapathSnapshot | None:
        """The datapath's counters now; None when no datapath is loaded."""
        ...


# --- sources built by other parts (firewall, health probes, BGP) ---------------------------------

@dataclass(frozen=True)
class FirewallRuleStats:
    rule: str  # FirewallRule name
    action: str  # allow, drop, mark, rate-limit ...
    hits: int  # packets the rule matched
    rate_limited: int = 0  # packets the rule's rate limit dropped
    dropped: int = 0  # packets the rule dropped (action drop, plus rate_limited)


@runtime_checkable
class FirewallSource(Protocol):
    def firewall_stats(self) -> Sequence[FirewallRuleStats]: ...


@dataclass(frozen=True)
class LatencyHistogram:
    """Cumulative probe latencies: ``buckets`` are (upper bound in seconds, count <= bound)."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


@dataclass(frozen=True)
class EndpointHealth:
    service_key: ServiceKey
    endpoint: str  # as ``EndpointStats.endpoint``
    healthy: bool
    probe: str  # tcp, udp, http, https, ping ...
    latency: LatencyHistogram | None = None


@runtime_checkable
class HealthSource(Protocol):
    def health_stats(self) -> Sequence[EndpointHealth]: ...


@dataclass(frozen=True)
class BgpSession:
    peer: str  # address
    remote_as: int
    state: str  # idle, connect, active, opensent, openconfirm, established
    prefixes_announced: int = 0
    prefixes_received: int = 0


@runtime_checkable
class BgpSource(Protocol):
    def bgp_sessions(self) -> Sequence[BgpSession]: ...


BGP_STATES = ("idle", "connect", "active", "opensent", "openconfirm", "established")

