"""The /metrics exporter with in-memory telemetry sources: its text, the catalogue, the dashboard."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.logs import EventLog
from reconciler.metrics import Exporter
from reconciler.records import ServiceKey
from reconciler.telemetry import (
    BgpSession,
    DatapathSnapshot,
    EndpointHealth,
    EndpointStats,
    FirewallRuleStats,
    LatencyHistogram,
    ServiceStats,
    Traffic,
)
from reconciler.watch import Daemon, Options
from tests.reconciler.metrics_catalogue import (
    PENDING,
    dashboard_exprs,
    doc_names,
    expr_metrics,
    scrape_names,
)
from tests.reconciler.watch_fakes import ScriptedEngine

WEB = ServiceKey("10.0.0.1", "tcp", 80, 80)
DNS = ServiceKey("fd00::53", "udp", 5300, 5310)


@dataclass
class Datapath:
    snapshot: DatapathSnapshot | None

    def datapath_snapshot(self) -> DatapathSnapshot | None:
        return self.snapshot


@dataclass
class Extras:
    """A firewall, a probe engine and a BGP driver in one: the sources built later."""

    def firewall_stats(self) -> Sequence[FirewallRuleStats]:
        return [FirewallRuleStats("block-telnet", "drop", hits=7, dropped=7),
                FirewallRuleStats("limit-ssh", "rate-limit", hits=20, rate_limited=5, dropped=5)]

    def health_stats(self) -> Sequence[EndpointHealth]:
        return [EndpointHealth(WEB, "10.1.0.1:8080", True, "http",
                               LatencyHistogram(((0.005, 3), (0.05, 4)), 5, 0.3)),
                EndpointHealth(WEB, "10.1.0.2:8080", False, "http")]

    def bgp_sessions(self) -> Sequence[BgpSession]:
        return [BgpSession("192.0.2.1", 65001, "established", prefixes_announced=2)]


class Broken:
    def datapath_snapshot(self) -> DatapathSnapshot:
        raise OSError("map gone")


def snapshot(packets: int = 10) -> DatapathSnapshot:
    return DatapathSnapshot(
        services=(
            ServiceStats(WEB, 'we"b', Traffic(packets, 1500, 9, 900, 2, 1, 1), (
                EndpointStats("10.1.0.1:8080", Traffic(6, 900, new_flows=1, active_flows=1)),
                EndpointStats("10.1.0.2:8080", Traffic(4, 600, new_flows=1)))),
            ServiceStats(DNS, "dns", Traffic(3, 300, 3, 300, 3), (
                EndpointStats("[fd00::1]:53", Traffic(3, 300, 3, 300, 3)),)),
        ),
        conntrack={("tcp", "established"): 1, ("udp", "active"): 3}, conntrack_capacity=1000,
        counters={"packets": 25, "forward": 13, "drop_no_backend": 1}, drops={"no_backend": 1})


def exporter(*sources: object) -> Exporter:
    return Exporter(lambda: sources)


def parsed(text: str) -> dict[str, tuple[str, set[tuple[str, tuple[tuple[str, str], ...], float]]]]:
    return {f.name: (f.type, {(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples})
            for f in text_string_to_metric_families(text)}


def test_the_fast_text_is_what_prometheus_client_writes() -> None:
    ex = exporter(Datapath(snapshot()), Extras())
    ours = ex.render().decode()
    theirs = generate_latest(ex.reference_registry()).decode()
    timing = "lbctl_scrape_duration_seconds"  # measured anew by each scrape
    mine, reference = parsed(ours), parsed(theirs)
    assert mine.pop(timing)[0] == reference.pop(timing)[0] == "gauge"
    assert mine == reference
    assert ours.count("\n") > 100


def test_a_second_scrape_sees_new_counts() -> None:
    dp = Datapath(snapshot(10))
    ex = exporter(dp)
    assert 'vip="10.0.0.1",port="80",protocol="tcp"} 10\n' in ex.render().decode()
    dp.snapshot = snapshot(25)
    text = ex.render().decode()
    web = 'service="we\\"b",vip="10.0.0.1",port="80",protocol="tcp"'
    assert f"lbctl_service_packets_total{{{web}}} 25\n" in text


def test_series_per_service_endpoint_and_aggregates() -> None:
    text = exporter(Datapath(snapshot()), Extras()).render().decode()
    lines = set(text.splitlines())
    dns = 'service="dns",vip="fd00::53",port="5300-5310",protocol="udp"'
    assert f'lbctl_endpoint_packets_total{{{dns},endpoint="[fd00::1]:53"}} 3' in lines
    assert f"lbctl_service_new_flows_total{{{dns}}} 3" in lines
    assert 'lbctl_conntrack_entries{protocol="udp",state="active"} 3' in lines
    assert 'lbctl_drops_total{reason="no_backend"} 1' in lines
    assert 'lbctl_drops_total{reason="rate_limit"} 5' in lines
    assert "loxilb_processed_packets_total 25" in lines  # both directions: 10 + 9 + 3 + 3
    assert "loxilb_fw_drop_packets_total 12" in lines
    assert "loxilb_healthy_endpoints 2" in lines and "loxilb_unhealthy_endpoints 1" in lines
    assert 'lbctl_endpoint_up{service="we\\"b",vip="10.0.0.1",port="80",protocol="tcp",' \
           'endpoint="10.1.0.2:8080",probe="http"} 0' in lines
    assert 'lbctl_bgp_session_state{peer="192.0.2.1",remote_as="65001",state="established"} 1' in lines
    assert "loxilb_active_flow_count_tcp 1" in lines and "loxilb_conntrack_max_entries 1000" in lines


def test_no_datapath_still_declares_every_family() -> None:
    text = exporter().render().decode()
    assert "# TYPE lbctl_service_packets_total counter" in text
    assert "lbctl_service_packets_total{" not in text


def test_a_failing_source_is_counted_and_logged_not_fatal() -> None:
    log = io.StringIO()
    engine = ScriptedEngine()
    engine.telemetry = [Broken(), Extras()]
    daemon = Daemon(Options(directory="/cfg"), engine, EventLog("kv", log))
    text = daemon.render_metrics().decode()
    assert 'lbctl_scrape_errors_total{source="dataplane"} 1' in text
    assert "lbctl_bgp_session_up" in text
    assert "metrics-source-failed" in log.getvalue() and "map gone" in log.getvalue()


def test_the_catalogue_lists_exactly_what_a_scrape_declares() -> None:
    daemon = Daemon(Options(directory="/cfg"), ScriptedEngine(telemetry=[Datapath(snapshot()), Extras()]),
                    EventLog("kv", io.StringIO()))
    names = scrape_names(daemon.render_metrics().decode())
    documented = doc_names()
    assert documented - names == set(), "documented but not scraped"
    assert names - documented == set(), "scraped but not documented"
    assert set(PENDING) <= documented


def test_every_dashboard_query_reads_metrics_a_scrape_declares() -> None:
    daemon = Daemon(Options(directory="/cfg"), ScriptedEngine(telemetry=[Datapath(snapshot()), Extras()]),
                    EventLog("kv", io.StringIO()))
    names = scrape_names(daemon.render_metrics().decode())
    exprs = dashboard_exprs()
    assert exprs
    for expr in exprs:
        used = expr_metrics(expr)
        assert used, expr
        assert used <= names, (expr, used - names)


@pytest.mark.parametrize("name", sorted(PENDING))
def test_pending_families_fill_in_once_their_source_reports(name: str) -> None:
    text = exporter(Datapath(snapshot()), Extras()).render().decode()
    assert any(line.startswith(name) for line in text.splitlines()), name
