"""The daemon's ``/metrics``: the metric catalogue, read from its sources at scrape time.

Why this exists: operators scrape lbctl like any exporter, and dashboards built
for loxilb should keep working.  ``prometheus_client`` holds the daemon's own
metrics (reconciles, drift, config validity) and is the data model of the
datapath's: ``DatapathCollector`` is a custom collector that asks the
``telemetry`` sources (the datapath, and the firewall, health probes and BGP
once they exist) at each scrape.  ``docs/metrics.md`` is the catalogue; a test
keeps it, the dashboard and a real scrape equal.

``prometheus_client``'s text writer costs ~7 us per sample (measured on the
2-CPU development VM), and 10,000 services x 10 endpoints are ~510,000
samples, so ``render`` writes the collector's families itself, keeping each
service's lines while the datapath source hands back the same (unchanged)
``ServiceStats``; a test checks that its text parses to exactly what
``generate_latest`` gives for the same collector.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import is_
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from reconciler import __version__
from reconciler.records import KINDS, ServiceKey
from reconciler.telemetry import (
    BGP_STATES,
    BgpSession,
    BgpSource,
    DatapathSnapshot,
    DatapathSource,
    EndpointHealth,
    FirewallRuleStats,
    FirewallSource,
    HealthSource,
    ServiceStats,
)

# The classic text format both writers produce (prometheus_client >= 0.20 names a newer one "latest").
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Reconcile durations in seconds: from a one-key incremental change (~ms) to a
# cold 10k-service apply (seconds).
DEFAULT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                      2.5, 5.0, 10.0, 30.0)
RESULTS = ("ok", "failed", "invalid", "unchanged")
MODES = ("full", "incremental")
ACTIONS = ("create", "update", "delete")


class DaemonMetrics:
    """The reconcile loop's own metrics (prometheus_client objects on a private registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        self.duration = Histogram("lbctl_reconcile_duration_seconds",
                                  "Time to load, plan, apply and verify, by type (full|incremental).",
                                  ["type"], buckets=DEFAULT_BUCKETS, registry=r)
        self.results = Counter("lbctl_reconcile_total", "Reconciles and deliveries by result "
                               "(ok, failed, invalid, unchanged).", ["result"], registry=r)
        self.valid = Gauge("lbctl_config_valid", "1 when the directory's latest content is valid.",
                           registry=r)
        self.ready = Gauge("lbctl_ready", "1 once a reconcile has verified.", registry=r)
        self.repairs = Counter("lbctl_drift_repairs_total", "Live changes made by resyncs to undo drift, "
                               "by record kind (service, endpoints, attach, vip, ...).", ["kind"], registry=r)
        self.changes = Counter("lbctl_changes_applied_total", "Plan changes applied, by action.", ["action"],
                               registry=r)
        self.idle_expired = Counter("lbctl_idle_flows_expired_total", "Conntrack flows the idle sweeper "
                                    "ended (idle past their timeout).", registry=r)
        self.idle_resets = Counter("lbctl_idle_resets_total", "TCP resets the idle sweeper sent for ended "
                                   "established flows, by direction (client, endpoint).", ["to"], registry=r)
        self.nexthop_bumps = Counter("lbctl_nexthop_invalidations_total", "Times a route or neighbour "
                                     "change of the box made the datapath forget its cached next hops.",
                                     registry=r)
        self.resources = Gauge("lbctl_resources", "Resources in the applied configuration.", registry=r)
        self.records = Gauge("lbctl_desired_records", "Desired-state records by kind.", ["kind"], registry=r)
        self.last_success = Gauge("lbctl_last_reconcile_success_timestamp_seconds",
                                  "Unix time of the last verified reconcile.", registry=r)
        self.applied = Info("lbctl_applied_config", "The configuration last applied and verified: its Git "
                            "revision (empty outside a Git checkout) and content digest.", registry=r)
        Info("lbctl_build", "The running lbctl.", registry=r).info({"version": __version__})
        self.applied.info({"revision": "", "digest": ""})
        for m in MODES:
            self.duration.labels(type=m)
        for res in RESULTS:
            self.results.labels(result=res)
        for a in ACTIONS:
            self.changes.labels(action=a)
        for k in KINDS:
            self.repairs.labels(kind=k)
        for to in ("client", "endpoint"):
            self.idle_resets.labels(to=to)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if absent), e.g. ``value("lbctl_reconcile_total", result="ok")``."""
        got = self.registry.get_sample_value(name, labels)
        return 0.0 if got is None else got


# --- the datapath collector ------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    name: str  # as it appears in the text (counters with their _total)
    kind: str  # counter, gauge, histogram
    help: str
    labels: tuple[str, ...] = ()


SVC = ("service", "vip", "port", "protocol")
EP = SVC + ("endpoint",)


def _f(name: str, kind: str, help_text: str, labels: tuple[str, ...] = ()) -> Family:
    return Family(name, kind, help_text, labels)


# Every family the collector emits, in order (docs/metrics.md lists the same).
F = {f.name: f for f in (
    _f("lbctl_service_packets_total", "counter", "Client-to-VIP packets the datapath balanced, per service.",
       SVC),
    _f("lbctl_service_bytes_total", "counter", "Client-to-VIP bytes the datapath balanced, per service.",
       SVC),
    _f("lbctl_service_reply_packets_total", "counter", "Endpoint-to-client packets, per service.", SVC),
    _f("lbctl_service_reply_bytes_total", "counter", "Endpoint-to-client bytes, per service.", SVC),
    _f("lbctl_service_new_flows_total", "counter", "Flows the datapath started, per service.", SVC),
    _f("lbctl_service_drops_total", "counter", "Packets to the service the datapath dropped "
       "(no endpoint, source not allowed).", SVC),
    _f("lbctl_service_active_flows", "gauge", "Live flows (conntrack entries not idle past their timeout), "
       "per service.", SVC),
    _f("lbctl_endpoint_packets_total", "counter", "Client-to-endpoint packets, per endpoint.", EP),
    _f("lbctl_endpoint_bytes_total", "counter", "Client-to-endpoint bytes, per endpoint.", EP),
    _f("lbctl_endpoint_new_flows_total", "counter", "Flows sent to the endpoint.", EP),
    _f("lbctl_endpoint_active_flows", "gauge", "Live flows on the endpoint.", EP),
    _f("lbctl_endpoint_up", "gauge", "1 when the endpoint's health probe passes, 0 when it fails "
       "(only probed endpoints).", EP + ("probe",)),
    _f("lbctl_endpoint_probe_duration_seconds", "histogram", "Health probe latency per endpoint.",
       EP + ("probe",)),
    _f("lbctl_datapath_packets_total", "counter", "Packets the datapath saw, by what it did with them "
       "(forward, reply, pass_*, drop_*, ...).", ("outcome",)),
    _f("lbctl_drops_total", "counter", "Packets dropped, by reason (datapath: no_backend, source; "
       "firewall: firewall, rate_limit).", ("reason",)),
    _f("lbctl_conntrack_entries", "gauge", "Conntrack flows (forward entries) by protocol and state, "
       "idle ones included until the datapath replaces them.", ("protocol", "state")),
    _f("lbctl_firewall_rule_hits_total", "counter", "Packets each firewall rule matched.",
       ("rule", "action")),
    _f("lbctl_firewall_rule_rate_limited_total", "counter",
       "Packets each firewall rule's rate limit dropped.", ("rule",)),
    _f("lbctl_bgp_session_up", "gauge", "1 when the BGP session with the peer is established.",
       ("peer", "remote_as")),
    _f("lbctl_bgp_session_state", "gauge", "1 for the BGP session's current state, 0 for the others.",
       ("peer", "remote_as", "state")),
    _f("lbctl_bgp_announced_prefixes", "gauge", "Prefixes announced to the peer.", ("peer",)),
    _f("lbctl_bgp_received_prefixes", "gauge", "Prefixes received from the peer.", ("peer",)),
    _f("lbctl_scrape_duration_seconds", "gauge", "Time this scrape spent reading the sources.", ()),
    _f("lbctl_scrape_errors_total", "counter", "Scrapes where a source failed (its series are missing).",
       ("source",)),
    # loxilb's names for the same facts, so loxilb dashboards keep working.
    _f("loxilb_active_conntrack_entries", "gauge", "Live flows through the load balancer.", ()),
    _f("loxilb_conntrack_max_entries", "gauge", "Capacity of the datapath's conntrack table.", ()),
    _f("loxilb_active_flow_count_tcp", "gauge", "Live TCP flows.", ()),
    _f("loxilb_active_flow_count_udp", "gauge", "Live UDP flows.", ()),
    _f("loxilb_active_flow_count_sctp", "gauge", "Live SCTP flows.", ()),
    _f("loxilb_lb_rules", "gauge", "Load-balancing rules (service ports) in the datapath.", ()),
    _f("loxilb_requests_total", "counter", "New flows over all services.", ()),
    _f("loxilb_service_requests_total", "counter", "New flows per service name.", ("service",)),
    _f("loxilb_errors_total", "counter", "Packets dropped over all services.", ()),
    _f("loxilb_service_errors_total", "counter", "Packets dropped per service name.", ("service",)),
    _f("loxilb_healthy_endpoints", "gauge", "Endpoints in the datapath not reported down by a probe.", ()),
    _f("loxilb_unhealthy_endpoints", "gauge", "Endpoints whose health probe fails.", ()),
    _f("loxilb_fw_drop_packets_total", "counter", "Packets dropped by firewall rules.", ()),
    _f("loxilb_fw_rule_drop_packets_total", "counter", "Packets dropped per firewall rule.", ("fw_rule",)),
    _f("loxilb_firewall_rules", "gauge", "Firewall rules in the datapath.", ()),
    _f("loxilb_processed_packets_total", "counter", "Packets balanced, both directions.", ()),
    _f("loxilb_processed_bytes_total", "counter", "Bytes balanced, both directions.", ()),
    _f("loxilb_processed_tcp_packets_total", "counter", "TCP packets balanced, both directions.", ()),
    _f("loxilb_processed_tcp_bytes_total", "counter", "TCP bytes balanced, both directions.", ()),
    _f("loxilb_processed_udp_packets_total", "counter", "UDP packets balanced, both directions.", ()),
    _f("loxilb_processed_udp_bytes_total", "counter", "UDP bytes balanced, both directions.", ()),
    _f("loxilb_processed_sctp_packets_total", "counter", "SCTP packets balanced, both directions.", ()),
    _f("loxilb_processed_sctp_bytes_total", "counter", "SCTP bytes balanced, both directions.", ()),
    _f("loxilb_service_traffic_packets_total", "counter", "Packets per service name, both directions.",
       ("service",)),
    _f("loxilb_service_traffic_bytes_total", "counter", "Bytes per service name, both directions.",
       ("service",)),
)}

# The families each service yields (one line per service, or per endpoint), in this order.
PER_SERVICE = ("lbctl_service_packets_total", "lbctl_service_bytes_total",
               "lbctl_service_reply_packets_total", "lbctl_service_reply_bytes_total",
               "lbctl_service_new_flows_total", "lbctl_service_drops_total", "lbctl_service_active_flows")
PER_ENDPOINT = ("lbctl_endpoint_packets_total", "lbctl_endpoint_bytes_total",
                "lbctl_endpoint_new_flows_total", "lbctl_endpoint_active_flows")
PER_NAME = ("loxilb_service_traffic_packets_total", "loxilb_service_traffic_bytes_total",
            "loxilb_service_requests_total", "loxilb_service_errors_total")

Labels = tuple[str, ...]
Series = list[tuple[Labels, float]]
# A histogram series: labels, cumulative buckets (bound, count), count, sum.
HistSeries = list[tuple[Labels, Sequence[tuple[float, int]], int, float]]


@dataclass(frozen=True)
class Samples:
    """One scrape's values (what both writers render): ``services`` yield the PER_SERVICE and
    PER_ENDPOINT families (``service_series``), ``names`` the PER_NAME ones, ``series`` the rest."""

    series: dict[str, Series]
    histograms: dict[str, HistSeries]
    services: tuple[ServiceStats, ...] = ()
    names: tuple[tuple[str, tuple[int, int, int, int]], ...] = ()  # name, (packets, bytes, flows, drops)


def service_series(svc: ServiceStats) -> list[list[tuple[Labels, int]]]:
    """A service's samples, one list per family of PER_SERVICE + PER_ENDPOINT."""
    k, t = svc.key, svc.traffic
    labels: Labels = (svc.name, k.vip, svc.port_label, k.proto)
    out: list[list[tuple[Labels, int]]] = [[(labels, v)] for v in t[:7]] + [[], [], [], []]
    p, b, nf, a = out[7], out[8], out[9], out[10]
    for ep in svc.endpoints:
        el = labels + (ep.endpoint,)
        et = ep.traffic
        p.append((el, et.packets))
        b.append((el, et.bytes))
        nf.append((el, et.new_flows))
        a.append((el, et.active_flows))
    return out


def _escape(value: str) -> str:
    if "\\" not in value and "\n" not in value and '"' not in value:
        return value
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class _Totals:
    services: tuple[ServiceStats, ...]
    named: tuple[tuple[str, tuple[int, int, int, int]], ...]  # name, (packets, bytes, flows, drops)
    by_proto: dict[str, tuple[int, ...]]  # protocol -> (packets, bytes, active flows)
    active: int
    endpoints: int


class DatapathCollector:
    """A prometheus_client collector over the telemetry sources, read at each scrape.

    ``sources`` returns the objects to ask now (drivers, the probe engine, the BGP
    driver); each is used for every source protocol of ``telemetry`` it implements.
    """

    def __init__(self, sources: Callable[[], Iterable[object]],
                 on_error: Callable[[str, Exception], None] | None = None) -> None:
        self._sources = sources
        self._on_error = on_error
        self._errors: dict[str, int] = {}
        self._text: dict[int, tuple[ServiceStats, list[bytes]]] = {}  # id(service) -> its lines
        self._last_totals: _Totals | None = None
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its series change with the box

    # -- gathering --

    def _ask(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - a failing source must not fail the scrape
            self._errors[what] = self._errors.get(what, 0) + 1
            if self._on_error is not None:
                self._on_error(what, exc)
            return None

    def samples(self) -> Samples:
        started = time.perf_counter()
        sources = list(self._sources())
        snaps = [s for s in (self._ask("dataplane", d.datapath_snapshot)
                             for d in sources if isinstance(d, DatapathSource)) if s is not None]
        rules: list[FirewallRuleStats] = []
        for fw in (s for s in sources if isinstance(s, FirewallSource)):
            rules.extend(self._ask("firewall", fw.firewall_stats) or ())
        health: list[EndpointHealth] = []
        for h in (s for s in sources if isinstance(s, HealthSource)):
            health.extend(self._ask("health", h.health_stats) or ())
        sessions: list[BgpSession] = []
        for b in (s for s in sources if isinstance(s, BgpSource)):
            sessions.extend(self._ask("bgp", b.bgp_sessions) or ())
        out: dict[str, Series] = {name: [] for name, f in F.items() if f.kind != "histogram"}
        hist: dict[str, HistSeries] = {name: [] for name, f in F.items() if f.kind == "histogram"}
        names: dict[ServiceKey, str] = {}
        services = tuple(svc for snap in snaps for svc in snap.services)
        totals = self._totals(services)
        for snap in snaps:
            self._datapath(snap, health, out, totals)
            if health:
                names.update((svc.key, svc.name) for svc in snap.services)
        self._health(health, names, out, hist)
        self._firewall(rules, out)
        self._bgp(sessions, out)
        out["lbctl_scrape_duration_seconds"].append(((), time.perf_counter() - started))
        for what in ("dataplane", "firewall", "health", "bgp"):
            out["lbctl_scrape_errors_total"].append(((what,), self._errors.get(what, 0)))
        return Samples(out, hist, services, totals.named)

    def _totals(self, services: tuple[ServiceStats, ...]) -> _Totals:
        """Sums over all services (kept while the source hands back the very same services)."""
        last = self._last_totals
        if (last is not None and len(last.services) == len(services)
                and all(map(is_, last.services, services))):
            return last
        by_name: dict[str, list[int]] = {}
        by_proto: dict[str, list[int]] = {}
        active = endpoints = 0
        for svc in services:
            t = svc.traffic
            packets, nbytes = t[0] + t[2], t[1] + t[3]
            n = by_name.get(svc.name)
            if n is None:
                by_name[svc.name] = [packets, nbytes, t[4], t[5]]
            else:
                n[0] += packets
                n[1] += nbytes
                n[2] += t[4]
                n[3] += t[5]
            p = by_proto.get(svc.key.proto)
            if p is None:
                by_proto[svc.key.proto] = [packets, nbytes, t[6]]
            else:
                p[0] += packets
                p[1] += nbytes
                p[2] += t[6]
            active += t[6]
            endpoints += len(svc.endpoints)
        named = tuple((name, (v[0], v[1], v[2], v[3])) for name, v in sorted(by_name.items()))
        self._last_totals = _Totals(services, named, {k: tuple(v) for k, v in by_proto.items()}, active,
                                    endpoints)
        return self._last_totals

    @staticmethod
    def _datapath(snap: DatapathSnapshot, health: Sequence[EndpointHealth], out: dict[str, Series],
                  totals: _Totals) -> None:
        """The families over all services (the per-service ones come from ``service_series``)."""
        for outcome, v in sorted(snap.counters.items()):
            out["lbctl_datapath_packets_total"].append(((outcome,), v))
        for reason, v in sorted(snap.drops.items()):
            out["lbctl_drops_total"].append(((reason,), v))
        for (proto, state), v in sorted(snap.conntrack.items()):
            out["lbctl_conntrack_entries"].append(((proto, state), v))
        down = sum(1 for h in health if not h.healthy)
        named = totals.named
        out["loxilb_active_conntrack_entries"].append(((), totals.active))
        out["loxilb_conntrack_max_entries"].append(((), snap.conntrack_capacity))
        for proto in ("tcp", "udp", "sctp"):
            pp = totals.by_proto.get(proto, (0, 0, 0))
            out[f"loxilb_active_flow_count_{proto}"].append(((), pp[2]))
            out[f"loxilb_processed_{proto}_packets_total"].append(((), pp[0]))
            out[f"loxilb_processed_{proto}_bytes_total"].append(((), pp[1]))
        out["loxilb_lb_rules"].append(((), len(snap.services)))
        out["loxilb_requests_total"].append(((), sum(v[2] for _, v in named)))
        out["loxilb_errors_total"].append(((), sum(v[3] for _, v in named)))
        out["loxilb_processed_packets_total"].append(((), sum(v[0] for _, v in named)))
        out["loxilb_processed_bytes_total"].append(((), sum(v[1] for _, v in named)))
        out["loxilb_healthy_endpoints"].append(((), max(0, totals.endpoints - down)))
        out["loxilb_unhealthy_endpoints"].append(((), down))

    @staticmethod
    def _health(health: Sequence[EndpointHealth], names: Mapping[ServiceKey, str], out: dict[str, Series],
                hist: dict[str, HistSeries]) -> None:
        for h in health:
            k = h.service_key
            port = str(k.port) if k.port == k.port_end else f"{k.port}-{k.port_end}"
            labels = (names.get(k, ""), k.vip, port, k.proto, h.endpoint, h.probe)
            out["lbctl_endpoint_up"].append((labels, 1 if h.healthy else 0))
            if h.latency is not None:
                hist["lbctl_endpoint_probe_duration_seconds"].append(
                    (labels, h.latency.buckets, h.latency.count, h.latency.sum))

    @staticmethod
    def _firewall(rules: Sequence[FirewallRuleStats], out: dict[str, Series]) -> None:
        dropped = 0
        for r in rules:
            out["lbctl_firewall_rule_hits_total"].append(((r.rule, r.action), r.hits))
            out["lbctl_firewall_rule_rate_limited_total"].append(((r.rule,), r.rate_limited))
            out["loxilb_fw_rule_drop_packets_total"].append(((r.rule,), r.dropped))
            dropped += r.dropped
        out["loxilb_fw_drop_packets_total"].append(((), dropped))
        out["loxilb_firewall_rules"].append(((), len(rules)))
        if rules:
            out["lbctl_drops_total"].append((("firewall",), dropped - sum(r.rate_limited for r in rules)))
            out["lbctl_drops_total"].append((("rate_limit",), sum(r.rate_limited for r in rules)))

    @staticmethod
    def _bgp(sessions: Sequence[BgpSession], out: dict[str, Series]) -> None:
        for s in sessions:
            asn = str(s.remote_as)
            out["lbctl_bgp_session_up"].append(((s.peer, asn), 1 if s.state == "established" else 0))
            for state in BGP_STATES:
                out["lbctl_bgp_session_state"].append(((s.peer, asn, state), 1 if s.state == state else 0))
            out["lbctl_bgp_announced_prefixes"].append(((s.peer,), s.prefixes_announced))
            out["lbctl_bgp_received_prefixes"].append(((s.peer,), s.prefixes_received))

    # -- prometheus_client's collector interface --

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            got = self.samples()
        for name, fam in F.items():
            base = name[: -len("_total")] if fam.kind == "counter" else name
            if fam.kind == "histogram":
                h = HistogramMetricFamily(base, fam.help, labels=list(fam.labels))
                for labels, buckets, count, total in got.histograms[name]:
                    cumulative = [(_number(b), c) for b, c in buckets] + [("+Inf", count)]
                    h.add_metric(list(labels), cumulative, total)
                yield h
                continue
            m: CounterMetricFamily | GaugeMetricFamily
            if fam.kind == "counter":
                m = CounterMetricFamily(base, fam.help, labels=list(fam.labels))
            else:
                m = GaugeMetricFamily(base, fam.help, labels=list(fam.labels))
            if name in PER_SERVICE or name in PER_ENDPOINT:
                i = (PER_SERVICE + PER_ENDPOINT).index(name)
                for svc in got.services:
                    for labels, n in service_series(svc)[i]:
                        m.add_metric(list(labels), n)
            elif name in PER_NAME:
                i = PER_NAME.index(name)
                for sname, values in got.names:
                    m.add_metric([sname], values[i])
            for labels, value in got.series[name]:
                m.add_metric(list(labels), value)
            yield m

    # -- the fast writer --

    def _labels(self, names: tuple[str, ...], values: Labels) -> str:
        return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)) + "}"

    def _service_text(self, svc: ServiceStats) -> tuple[ServiceStats, list[bytes]]:
        """A service's lines, one chunk per family of PER_SERVICE + PER_ENDPOINT (kept per object:
        the datapath source hands back the same object while nothing of the service changed)."""
        got = self._text.get(id(svc))
        if got is not None and got[0] is svc:
            return got
        k, t = svc.key, svc.traffic
        base = (f'service="{_escape(svc.name)}",vip="{k.vip}",port="{svc.port_label}",'
                f'protocol="{k.proto}"')
        chunks = [f"{name}{{{base}}} {v}\n".encode() for name, v in zip(PER_SERVICE, t, strict=False)]
        eps = [(f'{base},endpoint="{_escape(ep.endpoint)}"}} ', ep.traffic) for ep in svc.endpoints]
        for i, name in enumerate(PER_ENDPOINT):
            field = (0, 1, 4, 6)[i]  # packets, bytes, new_flows, active_flows of Traffic
            chunks.append("".join([f"{name}{{{lt}{et[field]}\n" for lt, et in eps]).encode())
        return svc, chunks

    def render(self, head: bytes = b"") -> bytes:
        """The collector's families in the text format (what ``generate_latest`` gives, faster)."""
        return b"".join(self.render_parts(head))

    def render_parts(self, head: bytes = b"") -> list[bytes]:
        """``render``'s text as pieces, after ``head``: the HTTP handler sends them without
        joining ~57 MB at 10,000 x 10 into one buffer."""
        with self._lock:
            got = self.samples()
            text: dict[int, tuple[ServiceStats, list[bytes]]] = {}
            per_svc = []
            for svc in got.services:
                entry = self._service_text(svc)
                text[id(svc)] = entry
                per_svc.append(entry[1])
            self._text = text
            named = [(f'{{service="{_escape(n)}"}} ', v) for n, v in got.names]
            order = PER_SERVICE + PER_ENDPOINT
            columns = list(zip(*per_svc, strict=True)) if per_svc else [()] * len(order)
            parts: list[bytes] = [head]
            for name, fam in F.items():
                parts.append(f"# HELP {name} {_escape(fam.help)}\n# TYPE {name} {fam.kind}\n".encode())
                if name in order:
                    parts.extend(columns[order.index(name)])
                elif name in PER_NAME:
                    i = PER_NAME.index(name)
                    parts.append("".join([f"{name}{lt}{v[i]}\n" for lt, v in named]).encode())
                if fam.kind == "histogram":
                    for labels, buckets, count, total in got.histograms[name]:
                        lt = self._labels(fam.labels, labels)[:-1]
                        for bound, c in buckets:
                            parts.append(f'{name}_bucket{lt},le="{_number(bound)}"}} {c}\n'.encode())
                        parts.append(f'{name}_bucket{lt},le="+Inf"}} {count}\n'.encode())
                        parts.append(f"{name}_count{lt}}} {count}\n".encode())
                        parts.append(f"{name}_sum{lt}}} {_number(total)}\n".encode())
                    continue
                parts.append("".join([f"{name}{self._labels(fam.labels, labels) if labels else ''} "
                                      f"{_number(v)}\n" for labels, v in got.series[name]]).encode())
            return parts


class Exporter:
    """What ``/metrics`` serves: the daemon's metrics and the datapath collector's."""

    def __init__(self, sources: Callable[[], Iterable[object]],
                 on_error: Callable[[str, Exception], None] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.daemon = DaemonMetrics(self.registry)
        self.collector = DatapathCollector(sources, on_error)

    def render(self) -> bytes:
        return b"".join(self.render_parts())

    def render_parts(self) -> list[bytes]:
        return self.collector.render_parts(head=generate_latest(self.registry))

    def reference_registry(self) -> CollectorRegistry:
        """A registry holding the daemon's metrics and the collector, for ``generate_latest``
        (tests compare it with ``render``)."""
        r = CollectorRegistry()
        r.register(_Both(self))
        return r


class _Both:
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        yield from self.exporter.registry.collect()
        yield from self.exporter.collector.collect()
