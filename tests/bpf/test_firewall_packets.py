"""Firewall packet tests through BPF_PROG_TEST_RUN, both hooks, IPv4 and IPv6.

Every action (allow, drop, trap, mark, rateLimit), port ranges, protocol,
interface and priority order (ties by name); rules apply to every packet of the
interface, not only to VIPs; an update swaps the whole rule set.
"""

from __future__ import annotations

import struct

import pytest

from reconciler.records import Backend, FirewallEntry
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, BACKENDS6, CLIENT4, CLIENT6, VIP4, VIP6, Datapath

pytestmark = pytest.mark.root

PASS = {"tc": 0, "xdp": 2}
DROP = {"tc": 2, "xdp": 1}
REDIRECT = {"tc": 7, "xdp": 4}
SKB_MARK_OFF = 8  # struct __sk_buff: len, pkt_type, mark
OTHER4, OTHER6 = "10.98.0.77", "fd00:98::77"


def fw(name: str, priority: int, action: str, **kw: object) -> FirewallEntry:
    base: dict[str, object] = dict(source=None, destination=None, source_ports=None,
                                   destination_ports=None, protocol=None, in_interface=None, mark=None,
                                   rate_pps=None, rate_burst=None)
    base.update(kw)
    return FirewallEntry(name=name, priority=priority, action=action, **base)  # type: ignore[arg-type]


def _fam(v6: bool) -> tuple[str, str, str, str, str]:
    """client, other client, VIP, backend, client network."""
    if v6:
        return CLIENT6, OTHER6, VIP6, BACKENDS6[0], "fd00:98::/64"
    return CLIENT4, OTHER4, VIP4, BACKENDS4[0], "10.98.0.0/24"


def _svc(dp: Datapath, v6: bool) -> None:
    _, _, vip, be, _ = _fam(v6)
    dp.service(vip, "tcp", 80, [Backend(be, 8080)])
    dp.service(vip, "udp", 53, [Backend(be, 5353)])
    dp.service(vip, "tcp", 9000, [Backend(be, 0)], port_end=9010)


HOOKS_FAMS = [(h, v6) for h in ("tc", "xdp") for v6 in (False, True)]
IDS = [f"{h}-{'v6' if v6 else 'v4'}" for h, v6 in HOOKS_FAMS]


@pytest.mark.parametrize("hook,v6", HOOKS_FAMS, ids=IDS)
def test_drop_one_client_serve_another(dp: Datapath, hook: str, v6: bool) -> None:
    client, other, vip, _, _ = _fam(v6)
    _svc(dp, v6)
    dp.firewall([fw("block", 10, "drop", source=f"{client}/{128 if v6 else 32}")])
    assert dp.run(hook, P.Pkt(client, vip, P.TCP, 40000, 80).bytes()).retval == DROP[hook]
    assert dp.run(hook, P.Pkt(other, vip, P.TCP, 40000, 80).bytes()).retval == REDIRECT[hook]
    counters = dp.driver.firewall_counters()["block"]
    assert counters["packets"] == 1 and counters["bytes"] > 0 and counters["limited"] == 0


@pytest.mark.parametrize("hook,v6", HOOKS_FAMS, ids=IDS)
def test_allow_of_lower_number_punches_through_broader_drop(dp: Datapath, hook: str, v6: bool) -> None:
    client, other, vip, _, net = _fam(v6)
    _svc(dp, v6)
    dp.firewall([fw("deny-net", 100, "drop", source=net),
                 fw("web-ok", 10, "allow", source=f"{client}/{128 if v6 else 32}", protocol="tcp",
                    destination_ports=(80, 80))])
    assert dp.run(hook, P.Pkt(client, vip, P.TCP, 40000, 80).bytes()).retval == REDIRECT[hook]
    assert dp.run(hook, P.Pkt(client, vip, P.UDP, 40000, 53).bytes()).retval == DROP[hook]
    assert dp.run(hook, P.Pkt(other, vip, P.TCP, 40000, 80).bytes()).retval == DROP[hook]
    # Same rules, priorities swapped: the drop now comes first for everyone.
    dp.firewall([fw("deny-net", 5, "drop", source=net),
                 fw("web-ok", 10, "allow", source=f"{client}/{128 if v6 else 32}", protocol="tcp",
                    destination_ports=(80, 80))])
    assert dp.run(hook, P.Pkt(client, vip, P.TCP, 40001, 80).bytes()).retval == DROP[hook]


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_equal_priorities_go_by_name(dp: Datapath, hook: str) -> None:
    _svc(dp, False)
    dp.firewall([fw("b-drop", 7, "drop"), fw("a-allow", 7, "allow")])
    assert dp.run(hook, P.Pkt(CLIENT4, VIP4, P.TCP, 40000, 80).bytes()).retval == REDIRECT[hook]
    dp.firewall([fw("a-drop", 7, "drop"), fw("b-allow", 7, "allow")])
    assert dp.run(hook, P.Pkt(CLIENT4, VIP4, P.TCP, 40001, 80).bytes()).retval == DROP[hook]


@pytest.mark.parametrize("hook,v6", HOOKS_FAMS, ids=IDS)
def test_port_ranges_and_protocol(dp: Datapath, hook: str, v6: bool) -> None:
    client, _, vip, _, _ = _fam(v6)
    _svc(dp, v6)
    dp.firewall([fw("ranges", 1, "drop", protocol="tcp", destination_ports=(9003, 9005),
                    source_ports=(40000, 40100))])
    for dport, sport, want in ((9003, 40000, DROP), (9005, 40100, DROP), (9002, 40000, REDIRECT),
                               (9006, 40000, REDIRECT), (9004, 40101, REDIRECT), (9004, 39999, REDIRECT)):
        got = dp.run(hook, P.Pkt(client, vip, P.TCP, sport, dport).bytes()).retval
        assert got == want[hook], (dport, sport)
    # UDP to the same ports: the protocol does not match.
    assert dp.run(hook, P.Pkt(client, vip, P.UDP, 40000, 53).bytes()).retval == REDIRECT[hook]


@pytest.mark.parametrize("hook,v6", HOOKS_FAMS, ids=IDS)
def test_rules_apply_to_traffic_that_is_not_for_a_vip(dp: Datapath, hook: str, v6: bool) -> None:
    client, _, _, be, _ = _fam(v6)
    dp.firewall([fw("no-ssh", 1, "drop", protocol="tcp", destination_ports=(22, 22))])
    assert dp.run(hook, P.Pkt(client, be, P.TCP, 40000, 22).bytes()).retval == DROP[hook]
    assert dp.run(hook, P.Pkt(client, be, P.TCP, 40000, 23).bytes()).retval == PASS[hook]
    # ICMP (echo and, for IPv6, also neighbour discovery) by protocol.
    dp.firewall([fw("no-ping", 1, "drop", protocol="icmp")])
    ping = P.Pkt(client, be, P.ICMP6 if v6 else P.ICMP, icmp_type=128 if v6 else 8)
    assert dp.run(hook, ping.bytes()).retval == DROP[hook]
    assert dp.run(hook, P.Pkt(client, be, P.UDP, 1, 2).bytes()).retval == PASS[hook]


@pytest.mark.parametrize("hook,v6", HOOKS_FAMS, ids=IDS)
def test_trap_hands_a_vip_packet_to_the_kernel_untouched(dp: Datapath, hook: str, v6: bool) -> None:
    client, _, vip, _, _ = _fam(v6)
    _svc(dp, v6)
    dp.firewall([fw("to-host", 1, "trap", destination=f"{vip}/{128 if v6 else 32}", protocol="tcp",
                    destination_ports=(80, 80))])
    frame = P.Pkt(client, vip, P.TCP, 40000, 80).bytes()
    r = dp.run(hook, frame)
    assert r.retval == PASS[hook] and r.data == frame
    assert dp.run(hook, P.Pkt(client, vip, P.UDP, 40000, 53).bytes()).retval == REDIRECT[hook]


@pytest.mark.parametrize("v6", [False, True])
def test_mark_sets_skb_mark_on_tc_and_traffic_goes_on(dp: Datapath, v6: bool) -> None:
    client, _, vip, _, _ = _fam(v6)
    _svc(dp, v6)
    dp.firewall([fw("tag", 1, "mark", mark=0x2A, protocol="tcp")])
    r = dp.run("tc", P.Pkt(client, vip, P.TCP, 40000, 80).bytes(), ctx_size=192)
    assert r.retval == REDIRECT["tc"]
    assert struct.unpack_from("<I", r.ctx, SKB_MARK_OFF)[0] == 0x2A
    r = dp.run("tc", P.Pkt(client, vip, P.UDP, 40000, 53).bytes(), ctx_size=192)
    assert struct.unpack_from("<I", r.ctx, SKB_MARK_OFF)[0] == 0


@pytest.mark.parametrize("hook,v6", HOOKS_FAMS, ids=IDS)
def test_a_service_requiring_a_mark_balances_only_marked_packets(dp: Datapath, hook: str, v6: bool) -> None:
    client, other, vip, be, _ = _fam(v6)
    dp.service(vip, "tcp", 80, [Backend(be, 8080)], firewall_mark=42)
    host = f"{client}/{128 if v6 else 32}"
    dp.firewall([fw("tag-one", 1, "mark", source=host, mark=42),
                 fw("tag-other", 2, "mark", mark=7)])
    assert dp.run(hook, P.Pkt(client, vip, P.TCP, 40000, 80).bytes()).retval == REDIRECT[hook]
    frame = P.Pkt(other, vip, P.TCP, 40000, 80).bytes()  # marked 7, not 42: the kernel's
    r = dp.run(hook, frame)
    assert r.retval == PASS[hook] and r.data[-len(frame):] == frame
    dp.firewall([])  # no mark at all: not balanced either
    assert dp.run(hook, P.Pkt(client, vip, P.TCP, 40001, 80).bytes()).retval == PASS[hook]
    assert dp.driver.read()["service"][f"tcp/{f'[{vip}]' if v6 else vip}:80"].firewall_mark == 42


@pytest.mark.parametrize("v6", [False, True])
def test_mark_travels_as_xdp_metadata(dp: Datapath, v6: bool) -> None:
    client, _, _, be, _ = _fam(v6)
    dp.firewall([fw("tag", 1, "mark", mark=0x2A)])
    frame = P.Pkt(client, be, P.TCP, 40000, 22).bytes()
    r = dp.run("xdp", frame)
    assert r.retval == PASS["xdp"]
    # BPF_PROG_TEST_RUN returns the frame from data_meta on: 4 bytes of mark first.
    assert r.data == struct.pack("<I", 0x2A) + frame


@pytest.mark.parametrize("hook,v6", HOOKS_FAMS, ids=IDS)
def test_rate_limit_admits_burst_then_the_rate(dp: Datapath, hook: str, v6: bool) -> None:
    client, other, vip, _, _ = _fam(v6)
    _svc(dp, v6)
    dp.firewall([fw("police", 1, "rateLimit", source=f"{client}/{128 if v6 else 32}", rate_pps=1,
                    rate_burst=2)])
    got = [dp.run(hook, P.Pkt(client, vip, P.UDP, 40000 + i, 53).bytes()).retval for i in range(10)]
    assert got == [REDIRECT[hook]] * 3 + [DROP[hook]] * 7  # burst 2 over the one the rate admits
    assert dp.run(hook, P.Pkt(other, vip, P.UDP, 40000, 53).bytes()).retval == REDIRECT[hook]
    c = dp.driver.firewall_counters()["police"]
    assert (c["packets"], c["limited"]) == (10, 7)


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_interface_match(dp: Datapath, hook: str) -> None:
    # BPF_PROG_TEST_RUN runs packets as arriving on the namespace's loopback.
    dp.firewall([fw("on-v0", 1, "drop", in_interface="v0")])
    frame = P.Pkt(CLIENT4, BACKENDS4[0], P.TCP, 40000, 22).bytes()
    assert dp.run(hook, frame).retval == PASS[hook]
    dp.firewall([fw("on-lo", 1, "drop", in_interface="lo")])
    assert dp.run(hook, frame).retval == DROP[hook]


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_rule_set_changes_and_counters_keep_their_rule(dp: Datapath, hook: str) -> None:
    _svc(dp, False)
    rules = [fw(f"r{i:03}", i, "drop", source=f"10.{i}.0.0/16") for i in range(50)]
    dp.firewall(rules + [fw("client", 100, "drop", source=f"{CLIENT4}/32")])
    assert dp.run(hook, P.Pkt(CLIENT4, VIP4, P.TCP, 40000, 80).bytes()).retval == DROP[hook]
    before = dp.driver.firewall_counters()["client"]["packets"]
    # Drop half of the other rules: ranks shift, the client rule keeps its counters.
    dp.firewall(rules[::2] + [fw("client", 100, "drop", source=f"{CLIENT4}/32")])
    assert dp.run(hook, P.Pkt(CLIENT4, VIP4, P.TCP, 40001, 80).bytes()).retval == DROP[hook]
    assert dp.driver.firewall_counters()["client"]["packets"] == before + 1
    assert set(dp.driver.read()["firewall"]) == {r.name for r in rules[::2]} | {"client"}
    dp.firewall([])
    assert dp.run(hook, P.Pkt(CLIENT4, VIP4, P.TCP, 40002, 80).bytes()).retval == REDIRECT[hook]
    assert dp.driver.read()["firewall"] == {}


def test_live_read_gives_back_the_records(dp: Datapath) -> None:
    rules = [fw("a", 3, "rateLimit", source="10.0.0.0/8", destination="10.97.0.1/32", protocol="udp",
                source_ports=(1, 1000), destination_ports=(53, 53), in_interface="v0", rate_pps=100,
                rate_burst=20),
             fw("b", 1, "mark", source="fd00::/8", protocol="icmp", mark=7),
             fw("c", 2, "trap")]
    dp.firewall(rules)
    assert dp.driver.read()["firewall"] == {r.name: r for r in rules}


@pytest.mark.parametrize("damage", ["trie-delete", "trie-corrupt", "port-corrupt", "conf-fields"])
def test_damaged_tables_show_as_faults_and_one_apply_repairs_them(dp: Datapath, damage: str) -> None:
    from reconciler.plan import diff

    _svc(dp, False)
    rules = [fw("block", 10, "drop", source=f"{CLIENT4}/32", protocol="tcp", destination_ports=(80, 80)),
             fw("other", 20, "drop", source="10.55.0.0/16")]
    dp.firewall(rules)
    frame = P.Pkt(CLIENT4, VIP4, P.TCP, 40000, 80).bytes()
    assert dp.run("tc", frame).retval == DROP["tc"]
    drv = dp.driver
    conf = drv.map("lb_fw_conf").lookup_raw(struct.pack("<I", 0))
    assert conf is not None
    active = conf[0] & 1
    trie = drv.map("lb_fw_cidr")
    mine = [k for k in trie.keys_raw() if k[4] == active and k[7:11] == bytes(map(int, CLIENT4.split(".")))]
    assert mine
    if damage == "trie-delete":
        trie.delete_raw(mine[0])
    elif damage == "trie-corrupt":
        trie.update_raw(mine[0], bytes(len(trie.lookup_raw(mine[0]) or b"")))
    elif damage == "port-corrupt":
        port = drv.map("lb_fw_port")
        k = struct.pack("<I", ((active * 2 + 1) << 11) + 80 // 32)
        port.update_raw(k, bytes(64))
    else:  # a slot that claims no field is in use: every packet matches the first rule
        off = 8 + 16 * active + 4  # lb_fw_conf.slot[active].fields
        drv.map("lb_fw_conf").update_raw(struct.pack("<I", 0), conf[:off] + bytes(4) + conf[off + 4:])
    live = drv.read()["firewall"]
    assert all(r.faults for r in live.values()), live
    plan = diff({"firewall": {r.name: r for r in rules}}, {"firewall": live})
    assert {c.key for c in plan.changes} == {"block", "other"}
    drv.apply(list(plan.changes))
    assert not any(r.faults for r in drv.read()["firewall"].values())
    assert dp.run("tc", frame).retval == DROP["tc"]
    assert dp.run("tc", P.Pkt(OTHER4, VIP4, P.TCP, 40000, 80).bytes()).retval == REDIRECT["tc"]
