"""Honest idle timeouts in the datapath (issue 14): no mid-stream segment is balanced, each
entry keeps its sender's sequence numbers, and ``lb_ct_expire`` ends an idle flow whole."""

from __future__ import annotations

import time

import pytest

from reconciler.drivers import _libbpf as B
from reconciler.idle import IdleEntry, resets_for
from reconciler.records import Backend
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, BACKENDS6, CLIENT4, CLIENT6, VIP4, VIP6, Datapath

PASS = {"tc": 0, "xdp": 2}
REDIRECT = {"tc": 7, "xdp": 4}
PSH = 0x08

pytestmark = pytest.mark.root


def _conns(dp: Datapath) -> int:
    return sum(int(v) for _, v in dp.driver.map("lb_be_conns").items())


def _age(dp: Datapath) -> None:
    """Move every entry's last-seen time back past its timeout (the datapath's clock is CLOCK_MONOTONIC)."""
    flows = dp.driver.map("lb_ct")
    for key, ct in list(flows.items()):
        ct.seen_ns = (int(ct.seen_ns) - (int(ct.timeout) + 1) * 1_000_000_000) % 2**64
        flows.update(key, ct)


@pytest.mark.parametrize("hook", ["tc", "xdp"])
@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_a_segment_other_than_an_opening_syn_of_no_flow_is_never_balanced(dp: Datapath, hook: str,
                                                                           v6: bool) -> None:
    client, vip, be = (CLIENT6, VIP6, BACKENDS6[0]) if v6 else (CLIENT4, VIP4, BACKENDS4[0])
    dp.service(vip, "tcp", 80, [Backend(be, 8080)], selection="lc")
    cases = (P.ACK, P.ACK | PSH, P.FIN | P.ACK, P.RST, P.RST | P.ACK, P.SYN | P.ACK, 0)
    for i, flags in enumerate(cases):
        pkt = P.Pkt(client, vip, P.TCP, 41000 + i, 80, flags=flags)
        assert dp.run(hook, pkt.bytes()).retval == PASS[hook], f"flags {flags:#x}"
    assert dp.driver.conntrack() == []
    assert dp.driver.stats()["pass_no_flow"] == len(cases)
    assert dp.driver.stats()["new_flow"] == 0
    assert _conns(dp) == 0
    # an opening SYN (ECN bits allowed) is balanced
    syn = P.Pkt(client, vip, P.TCP, 42000, 80, flags=P.SYN | 0xC0)
    assert dp.run(hook, syn.bytes()).retval == REDIRECT[hook]
    assert _conns(dp) == 1


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_a_stale_tcp_entry_is_no_flow(dp: Datapath, hook: str) -> None:
    dp.service(VIP4, "tcp", 80, [Backend(BACKENDS4[0], 8080)], selection="lc", timeout=30)
    dp.service(VIP4, "udp", 53, [Backend(BACKENDS4[1], 5353)], timeout=30)
    syn = P.Pkt(CLIENT4, VIP4, P.TCP, 43000, 80)
    assert dp.run(hook, syn.bytes()).retval == REDIRECT[hook]
    assert dp.run(hook, syn.but(flags=P.ACK).bytes()).retval == REDIRECT[hook]
    udp = P.Pkt(CLIENT4, VIP4, P.UDP, 43000, 53)
    assert dp.run(hook, udp.bytes()).retval == REDIRECT[hook]
    _age(dp)
    assert dp.run(hook, syn.but(flags=P.ACK | PSH).bytes()).retval == PASS[hook]
    assert dp.driver.stats()["pass_no_flow"] == 1
    assert _conns(dp) == 1, "the stale TCP flow gave its connection back; the UDP one is live again"
    assert dp.run(hook, udp.bytes()).retval == REDIRECT[hook], "a datagram may start a new flow"


def _handshake(dp: Datapath, client: str, vip: str, be: str, sport: int) -> None:
    """SYN (seq 100), SYN-ACK (seq 5000), then 5 bytes of data from the client and an older retransmission."""
    assert dp.run("tc", P.Pkt(client, vip, P.TCP, sport, 80, seq=100, payload=b"").bytes()).retval == 7
    synack = P.Pkt(be, client, P.TCP, 8080, sport, flags=P.SYN | P.ACK, seq=5000, ack=101, payload=b"")
    assert dp.run("tc", synack.bytes(), on_v0=True).retval in (0, 7)
    data = P.Pkt(client, vip, P.TCP, sport, 80, flags=P.ACK | PSH, seq=101, ack=5001, payload=b"hello")
    assert dp.run("tc", data.bytes()).retval == 7
    assert dp.run("tc", data.but(seq=99, payload=b"x").bytes()).retval == 7  # older: never moves back


def _entries(dp: Datapath) -> dict[str, tuple[int, int, int]]:
    out = {}
    for _, ct in dp.driver.map("lb_ct").items():
        out["fwd" if int(ct.dir) == 0 else "reply"] = (int(ct.seq_known), int(ct.seq_next), int(ct.ack_seq))
    return out


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_each_entry_keeps_its_senders_sequence_numbers(dp: Datapath, v6: bool) -> None:
    client, vip, be = (CLIENT6, VIP6, BACKENDS6[0]) if v6 else (CLIENT4, VIP4, BACKENDS4[0])
    dp.service(vip, "tcp", 80, [Backend(be, 8080)])
    _handshake(dp, client, vip, be, 45000)
    seq, ack = B.const("LB_CT_SEQ_NEXT"), B.const("LB_CT_SEQ_ACK")
    assert _entries(dp) == {"fwd": (seq | ack, 106, 5001), "reply": (seq | ack, 5001, 101)}


def _all_entries(dp: Datapath) -> list[IdleEntry]:
    """Every entry, as idle_entries would list it far in the future."""
    return dp.driver.idle_entries(time.monotonic_ns() + 10**15)


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_lb_ct_expire_ends_an_idle_flow_whole(dp: Datapath, v6: bool) -> None:
    client, vip, be = (CLIENT6, VIP6, BACKENDS6[0]) if v6 else (CLIENT4, VIP4, BACKENDS4[0])
    dp.service(vip, "tcp", 80, [Backend(be, 8080)], selection="lc", timeout=30)
    _handshake(dp, client, vip, be, 45000)
    assert dp.driver.idle_entries(time.monotonic_ns()) == []
    fwd_key = next(e.key for e in _all_entries(dp) if e.forward)
    assert dp.driver.expire(fwd_key) is None, "a live flow is kept"
    assert len(dp.driver.conntrack()) == 1
    _age(dp)
    idle = dp.driver.idle_entries(time.monotonic_ns())
    assert sorted(e.forward for e in idle) == [False, True]
    flow = dp.driver.expire(fwd_key)
    assert flow is not None and flow.state == "established" and not flow.dsr
    resets = resets_for(flow)
    assert [(r.to, r.src, r.sport, r.dst, r.dport, r.seq) for r in resets] == [
        ("client", vip, 80, client, 45000, 5001),
        ("endpoint", client, 45000, be, 8080, 106),
    ]
    assert len(dp.driver.map("lb_ct").keys_raw()) == 0, "both directions removed"
    assert _conns(dp) == 0
    assert dp.driver.stats()["ct_expired"] == 1
    assert dp.driver.expire(fwd_key) is None, "gone"


def test_lb_ct_expire_udp_flow_gets_no_reset(dp: Datapath) -> None:
    dp.service(VIP4, "udp", 53, [Backend(BACKENDS4[1], 5353)], selection="lc", timeout=30)
    assert dp.run("tc", P.Pkt(CLIENT4, VIP4, P.UDP, 46000, 53).bytes()).retval == 7
    _age(dp)
    idle = dp.driver.idle_entries(time.monotonic_ns())
    flows = [dp.driver.expire(e.key) for e in sorted(idle, key=lambda e: not e.forward)]
    assert flows[0] is not None and flows[0].proto == P.UDP and resets_for(flows[0]) == []
    assert flows[1:] == [None], "the reply entry went with its flow"
    assert _conns(dp) == 0
