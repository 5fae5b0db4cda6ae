"""Tests of the desired-state compiler (pure)."""

from __future__ import annotations

import pytest

from reconciler.desired import compile_state, default_maglev_size, kernel_settings
from reconciler.model import Endpoint, ServicePort
from reconciler.records import Attachment, Backend, ServiceKey, VipAddress
from tests.reconciler.fakes import (
    bgp_config,
    bgp_peer,
    datapath,
    fake_table,
    firewall,
    service,
)


def test_one_entry_and_endpoint_set_per_vip_protocol_port() -> None:
    st = compile_state([service("web", ports=[(80, "TCP", 8080), (53, "UDP")],
                                secondary_vips=("198.51.100.11",))])
    assert sorted(st["service"]) == [
        "tcp/198.51.100.10:80", "tcp/198.51.100.11:80", "udp/198.51.100.10:53", "udp/198.51.100.11:53"]
    assert set(st["service"]) == set(st["endpoints"])
    tcp = st["service"]["tcp/198.51.100.10:80"]
    assert tcp.key == ServiceKey("198.51.100.10", "tcp", 80, 80)
    assert (tcp.name, tcp.mode, tcp.selection, tcp.session_timeout) == ("web", "default", "rr", 240)
    assert st["service"]["udp/198.51.100.10:53"].session_timeout == 20
    assert st["endpoints"]["tcp/198.51.100.10:80"].backends == (
        Backend("10.0.1.10", 8080), Backend("10.0.1.11", 8080))
    assert st["endpoints"]["udp/198.51.100.10:53"].backends[0].port == 0
    assert set(st["vip"]) == {"198.51.100.10", "198.51.100.11"}
    assert st["vip"]["198.51.100.10"] == VipAddress("198.51.100.10", 32, "lbctl0")


def test_sctp_entries_list_the_services_other_vips() -> None:
    """The datapath tells an SCTP client of the other VIPs (INIT-ACK) and maps their paths."""
    st = compile_state([service("sig", ports=[(3868, "SCTP")],
                                secondary_vips=("198.51.100.11", "198.51.100.12"))])
    peers = {k: e.sctp_peer_vips for k, e in st["service"].items()}
    assert peers == {
        "sctp/198.51.100.10:3868": ("198.51.100.11", "198.51.100.12"),
        "sctp/198.51.100.11:3868": ("198.51.100.10", "198.51.100.12"),
        "sctp/198.51.100.12:3868": ("198.51.100.10", "198.51.100.11"),
    }
    plain = compile_state([service("web", ports=[(80, "TCP")])])
    assert plain["service"]["tcp/198.51.100.10:80"].sctp_peer_vips == ()


def test_target_port_precedence_and_sorted_backends() -> None:
    st = compile_state([service("web", ports=[ServicePort(80, target_port=8080)],
                                endpoints=[Endpoint("10.0.1.20", 2),
                                           Endpoint("10.0.1.3", target_port=9090)])])
    assert st["endpoints"]["tcp/198.51.100.10:80"].backends == (
        Backend("10.0.1.3", 9090), Backend("10.0.1.20", 8080, 2))


def test_reordering_endpoints_is_not_a_change() -> None:
    a = compile_state([service("web", endpoints=["10.0.0.1", "10.0.0.2"])])
    b = compile_state([service("web", endpoints=["10.0.0.2", "10.0.0.1"])])
    assert a == b


def test_ranges_icmp_ipv6_and_canonical_addresses() -> None:
    st = compile_state([
        service("r", ports=[ServicePort(1000, "UDP", end_port=1010)]),
        service("ping", vip="198.51.100.20", ports=[ServicePort(0, "ICMP")]),
        service("v6", vip="2001:DB8::0:1", endpoints=["2001:db8:1::10"]),
    ])
    assert "udp/198.51.100.10:1000-1010" in st["service"]
    assert "icmp/198.51.100.20:0" in st["service"]
    assert "tcp/[2001:db8::1]:80" in st["service"]
    assert st["vip"]["2001:db8::1"].prefixlen == 128


def test_pool_vip_and_literal_wins() -> None:
    st = compile_state([service("a", vip=None, pool="p"), service("b", vip="198.51.100.5", pool="p"),
                        service("c", vip=None, pool="p")],
                       {"a": "203.0.113.1", "b": "203.0.113.9"})
    assert {k.split("/")[1] for k in st["service"]} == {"203.0.113.1:80", "198.51.100.5:80"}


def test_maglev_table_uses_builder_and_default_size() -> None:
    from reconciler import maglev

    st = compile_state([service("m", selection="maglev")], table_builder=fake_table)
    table = st["endpoints"]["tcp/198.51.100.10:80"].maglev
    assert len(table) == 2 * default_maglev_size(2) == 2 * maglev.table_size(2)
    st = compile_state([service("m", selection="maglev", maglev_table_size=997)], table_builder=fake_table)
    assert len(st["endpoints"]["tcp/198.51.100.10:80"].maglev) == 2 * 997
    assert compile_state([service("r")], table_builder=fake_table)["endpoints"][
        "tcp/198.51.100.10:80"].maglev == b""


@pytest.mark.parametrize("n", [1, 3, 256, 10_000])
def test_default_maglev_size_is_a_prime_covering_the_endpoints(n: int) -> None:
    from reconciler import maglev

    size = default_maglev_size(n)
    assert maglev.is_prime(size) and min(n, 65521) <= size <= 65521


def test_datapath_firewall_bgp() -> None:
    res = [datapath("eth0", "eth1", hook="xdp", vip_interface="vips0"), firewall("deny", 10, "192.0.2.0/24"),
           service("web", bgp=True), service("quiet", vip="198.51.100.11"), bgp_peer("up", "192.0.2.254")]
    st = compile_state(res)
    assert st["attach"] == {"eth0": Attachment("eth0", "xdp"), "eth1": Attachment("eth1", "xdp")}
    assert st["vip"]["198.51.100.10"].ifname == "vips0"
    assert st["firewall"]["deny"].source == "192.0.2.0/24"
    assert st["announce"] == {} and st["bgp-peer"] == {}  # no BGPConfig: nothing to announce with
    st = compile_state(res + [bgp_config()])
    assert list(st["announce"]) == ["198.51.100.10/32"]
    assert list(st["bgp-peer"]) == ["192.0.2.254"]


def test_bgp_speaker_attributes_and_withdraw_when_no_endpoints() -> None:
    from dataclasses import replace

    from reconciler.records import Announcement, BgpGlobal

    cfg = bgp_config()
    cfg = replace(cfg, spec=replace(cfg.spec, communities=("65001:200", "65001:100"), med=10,  # type: ignore[arg-type]
                                    listen_addresses=("192.0.2.1",)))
    keep = service("keep", vip="198.51.100.1", bgp=True)
    drop = service("drop", vip="198.51.100.2", bgp=True, withdraw_when_no_endpoints=True)
    st = compile_state([cfg, keep, drop])
    assert st["bgp-global"] == {"global": BgpGlobal(65001, "192.0.2.1", 179, ("192.0.2.1",))}
    assert st["announce"]["198.51.100.1/32"] == Announcement("198.51.100.1/32", "self",
                                                             ("65001:100", "65001:200"), None, 10)
    assert set(st["announce"]) == {"198.51.100.1/32", "198.51.100.2/32"}
    down = {(name, ep): False for name in ("keep", "drop") for ep in ("10.0.1.10", "10.0.1.11")}
    st = compile_state([cfg, keep, drop], health=down)
    assert set(st["announce"]) == {"198.51.100.1/32"}  # only the one that asked is withdrawn
    # A VIP shared with a Service that keeps announcing stays announced.
    other = service("other", vip="198.51.100.2", ports=[443], bgp=True)
    assert "198.51.100.2/32" in compile_state([cfg, keep, drop, other], health=down)["announce"]


def test_shared_vip_is_one_address() -> None:
    st = compile_state([service("a", ports=[80]), service("b", ports=[443])])
    assert list(st["vip"]) == ["198.51.100.10"] and len(st["service"]) == 2


def test_real_maglev_table_is_deterministic_and_indexes_sorted_backends() -> None:
    from reconciler import maglev

    st = compile_state([service("m", selection="maglev", endpoints=["10.0.0.3", "10.0.0.1", "10.0.0.2"])])
    es = st["endpoints"]["tcp/198.51.100.10:80"]
    table = maglev.unpack(es.maglev)
    assert len(table) == default_maglev_size(3) and set(table) == {0, 1, 2}
    again = compile_state([service("m", selection="maglev", endpoints=["10.0.0.1", "10.0.0.2", "10.0.0.3"])])
    assert again == st


def test_kernel_settings_follow_interfaces_and_vip_families() -> None:
    v4 = compile_state([datapath("eth0", "eth0.100"), service("web", vip="198.51.100.10")])["sysctl"]
    assert sorted(v4) == ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth0.forwarding",
                          "net.ipv4.conf.eth0.rp_filter", "net.ipv4.conf.eth0/100.forwarding",
                          "net.ipv4.conf.eth0/100.rp_filter"]
    assert {s.value for n, s in v4.items() if n.endswith("forwarding")} == {"1"}
    assert {s.value for n, s in v4.items() if n.endswith("rp_filter")} == {"0"}
    dual = compile_state([datapath("eth0"), service("web", vip="198.51.100.10"),
                          service("v6", vip="2001:db8::1", endpoints=["2001:db8:1::1"])])["sysctl"]
    assert {"net.ipv6.conf.all.forwarding", "net.ipv6.conf.eth0.forwarding"} <= set(dual)
    # no VIP, or no interface: the box needs nothing
    assert compile_state([datapath("eth0")])["sysctl"] == {}
    assert compile_state([service("web", vip="198.51.100.10")])["sysctl"] == {}
    assert kernel_settings([], [4, 6]) == []


def test_endpoint_health_is_an_input_and_unhealthy_endpoints_get_weight_0() -> None:
    web = service("web", selection="maglev", endpoints=["10.0.1.10", "10.0.1.11", "10.0.1.12"])
    api = service("api", vip="198.51.100.20", endpoints=["10.0.1.10"])
    healthy = compile_state([web, api], table_builder=fake_table)
    assert compile_state([web, api], table_builder=fake_table, health={}) == healthy  # default: all healthy
    # Keyed by (Service name, canonical address); the same address elsewhere is unaffected.
    st = compile_state([web, api], table_builder=fake_table,
                       health={("web", "10.0.1.11"): False, ("web", "10.0.1.10"): True,
                               ("gone", "10.0.1.12"): False})
    eps = st["endpoints"]["tcp/198.51.100.10:80"]
    # Still listed (its open flows stay), with weight 0: no new flow picks it.
    assert [(b.address, b.weight) for b in eps.backends] == [
        ("10.0.1.10", 1), ("10.0.1.11", 0), ("10.0.1.12", 1)]
    assert eps.maglev == fake_table(eps.backends, len(eps.maglev) // 2)  # spread over the healthy two
    assert st["endpoints"]["tcp/198.51.100.20:80"] == healthy["endpoints"]["tcp/198.51.100.20:80"]
    assert st["service"] == healthy["service"] and st["vip"] == healthy["vip"]
    # None healthy: the service stays (its VIP answers) with no endpoint taking new flows.
    v6 = service("v6", vip="2001:db8::1", endpoints=["2001:DB8:1::10"])
    none = compile_state([v6], health={("v6", "2001:db8:1::10"): False})
    key = "tcp/[2001:db8::1]:80"
    assert [b.weight for b in none["endpoints"][key].backends] == [0] and key in none["service"]
