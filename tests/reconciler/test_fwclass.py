"""The firewall's bitmap classification agrees with the linear definition of a match."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler import fwclass
from reconciler.fwclass import Packet, classify, compile_rules, first_match, lockout_warnings
from reconciler.records import FirewallEntry


def rule(name: str, priority: int = 10, action: str = "drop", **kw: object) -> FirewallEntry:
    base: dict[str, object] = dict(source=None, destination=None, source_ports=None, destination_ports=None,
                                   protocol=None, in_interface=None)
    base.update(kw)
    return FirewallEntry(name=name, priority=priority, action=action, **base)  # type: ignore[arg-type]


def pkt(src: str = "10.0.0.1", dst: str = "10.9.0.1", proto: int = 6, sport: int | None = 40000,
        dport: int | None = 80, ifname: str = "eth0") -> Packet:
    return Packet(ipaddress.ip_address(src).version, src, dst, proto, sport, dport, ifname)


def test_priority_then_name_orders_rules() -> None:
    rules = [rule("b", 5), rule("a", 5), rule("c", 1)]
    assert [r.name for r in compile_rules(rules).rules] == ["c", "a", "b"]
    assert classify(compile_rules(rules), pkt()).name == "c"  # type: ignore[union-attr]


def test_allow_hole_in_a_broader_drop() -> None:
    rules = [rule("drop-net", 100, source="10.0.0.0/8"),
             rule("allow-host", 10, "allow", source="10.0.0.7/32", protocol="tcp",
                  destination_ports=(80, 80))]
    t = compile_rules(rules)
    assert classify(t, pkt(src="10.0.0.7")).name == "allow-host"  # type: ignore[union-attr]
    assert classify(t, pkt(src="10.0.0.7", dport=81)).name == "drop-net"  # type: ignore[union-attr]
    assert classify(t, pkt(src="11.0.0.7")) is None
    assert classify(t, pkt(src="fd00::7", dst="fd00::1")) is None
    assert t.fields == {"src", "proto", "dport"}


def test_unused_fields_are_left_out() -> None:
    assert compile_rules([rule("a", source="10.0.0.0/8")]).fields == {"src"}
    assert compile_rules([]).fields == frozenset()
    assert classify(compile_rules([]), pkt()) is None


def test_icmp_matches_icmpv6_too() -> None:
    t = compile_rules([rule("icmp", protocol="icmp")])
    assert classify(t, pkt(src="fd00::1", dst="fd00::2", proto=58, sport=None, dport=None)) is not None
    assert classify(t, pkt(proto=17)) is None


def test_port_rules_never_match_packets_without_ports() -> None:
    t = compile_rules([rule("p", protocol="udp", source_ports=(1, 65535))])
    assert classify(t, pkt(proto=17, sport=None, dport=None)) is None
    assert classify(t, pkt(proto=17, sport=1)) is not None


def test_lockout_warning_only_for_unrestricted_drops() -> None:
    rules = [rule("all", 1), rule("all4", 2, source="0.0.0.0/0"), rule("all6", 3, destination="::/0"),
             rule("ssh-only", 4, protocol="tcp", destination_ports=(22, 22)),
             rule("net", 5, source="10.0.0.0/8"),
             rule("allow", 6, "allow")]
    warned = [w.split()[0] for w in lockout_warnings(rules)]
    assert warned == ["FirewallRule/all", "FirewallRule/all4", "FirewallRule/all6"]


def test_a_rule_on_an_interface_the_datapath_does_not_see_is_warned_about() -> None:
    rules = [rule("on-eth0", 1, in_interface="eth0"), rule("on-eth9", 2, in_interface="eth9"), rule("any", 3)]
    (w,) = fwclass.interface_warnings(rules, ["eth0", "eth1"])
    assert w.startswith("FirewallRule/on-eth9 matches inInterface eth9") and "attached: eth0, eth1" in w
    assert fwclass.interface_warnings(rules[:1], [])[0].endswith("(attached: none)")


_v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@st.composite
def _cidr(draw: st.DrawFn, fam: int) -> str:
    # Few distinct bases so prefixes nest and overlap often.
    base = draw(st.sampled_from(["10.1.2.3", "10.1.200.1", "192.168.7.9"] if fam == 4
                                else ["fd00::1:2:3", "fd00::9:2:3", "2001:db8::1"]))
    plen = draw(st.integers(0, 32 if fam == 4 else 128))
    return str(ipaddress.ip_network(f"{base}/{plen}", strict=False))


@st.composite
def _range(draw: st.DrawFn) -> tuple[int, int]:
    a = draw(st.sampled_from([1, 80, 443, 1024, 8080, 65535]) | st.integers(1, 65535))
    b = draw(st.integers(a, min(65535, a + draw(st.sampled_from([0, 1, 100, 70000])))))
    return (a, b)


@st.composite
def _rule(draw: st.DrawFn, n: int) -> FirewallEntry:
    fam = draw(st.sampled_from([4, 6]))
    proto = draw(st.none() | st.sampled_from(["tcp", "udp", "sctp", "icmp"]))
    ports = proto in ("tcp", "udp", "sctp")
    return rule(f"r{n}", draw(st.integers(0, 20)), draw(st.sampled_from(["allow", "drop", "trap"])),
                source=draw(st.none() | _cidr(fam)), destination=draw(st.none() | _cidr(fam)),
                protocol=proto,
                source_ports=draw(st.none() | _range()) if ports else None,
                destination_ports=draw(st.none() | _range()) if ports else None,
                in_interface=draw(st.none() | st.sampled_from(["eth0", "eth1"])))


@st.composite
def _packet(draw: st.DrawFn) -> Packet:
    fam = draw(st.sampled_from([4, 6]))
    near = st.sampled_from(["10.1.2.3", "10.1.2.4", "10.1.200.1", "192.168.7.9", "10.0.0.1"] if fam == 4
                           else ["fd00::1:2:3", "fd00::1:2:4", "fd00::9:2:3", "2001:db8::1", "::1"])
    addr = near | (_v4 if fam == 4 else _v6)
    proto = draw(st.sampled_from([6, 17, 132, 1 if fam == 4 else 58, 47]))
    port = st.sampled_from([1, 80, 443, 1024, 8080, 65535, 8081]) | st.integers(1, 65535)
    sport, dport = (draw(port), draw(port)) if proto in (6, 17, 132) else (None, None)
    ifname = draw(st.sampled_from(["eth0", "eth1", "lo"]))
    return Packet(fam, draw(addr), draw(addr), proto, sport, dport, ifname)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 12).flatmap(lambda n: st.tuples(*[_rule(i) for i in range(n)])),
       st.lists(_packet(), min_size=1, max_size=8))
def test_classify_agrees_with_a_linear_scan(rules: tuple[FirewallEntry, ...], packets: list[Packet]) -> None:
    t = compile_rules(rules)
    for p in packets:
        assert classify(t, p) == first_match(rules, p)


def test_thousand_rules_fill_sixteen_words() -> None:
    rules = [rule(f"r{i}", i, source=f"10.{i // 250}.{i % 250}.0/24", protocol="tcp",
                  destination_ports=(1000 + i, 1000 + i)) for i in range(1000)]
    t = compile_rules(rules)
    assert t.words == 16 and len(t.port_starts["dport"]) == 1002
    assert classify(t, pkt(src="10.3.7.9", dport=1757)).name == "r757"  # type: ignore[union-attr]
    assert fwclass.PORTS == 65536
