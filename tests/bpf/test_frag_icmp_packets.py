"""Packet tests of IP fragments and ICMP/ICMPv6 errors through the datapath (issue 14), both hooks.

Fragments: the first fragment selects the endpoint, later ones follow it with the
same translation, the L4 checksum (first fragment, whole datagram) stays right,
replies are reverse-NATed fragment by fragment, and a later fragment that arrives
before its first is passed to the kernel untouched and counted.  ICMP errors
about a flow are translated in both directions (DNAT and source NAT), every
checksum verified: the outer header, the ICMP one (ICMPv6 with its pseudo
header), the quoted IP header and the quoted L4 checksum.
"""

from __future__ import annotations

import pytest

from reconciler.records import Backend
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, BACKENDS6, CLIENT4, CLIENT6, LB4, LB6, VIP4, VIP6, Datapath

TC_OK, TC_SHOT, TC_REDIRECT = 0, 2, 7
XDP_DROP, XDP_PASS, XDP_REDIRECT = 1, 2, 4
PASS = {"tc": TC_OK, "xdp": XDP_PASS}
REDIRECT = {"tc": TC_REDIRECT, "xdp": XDP_REDIRECT}
ROUTER4, ROUTER6 = "10.96.0.1", "fd00:96::1"  # a router on the way that reports an error

pytestmark = pytest.mark.root

HOOKS = pytest.mark.parametrize("hook", ["tc", "xdp"])
FAMILIES = pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])


def _addrs(v6: bool) -> tuple[str, str, str, str, str]:
    return (CLIENT6, VIP6, BACKENDS6[1], LB6, ROUTER6) if v6 else (CLIENT4, VIP4, BACKENDS4[1], LB4, ROUTER4)


def _ip(frame: bytes) -> bytes:
    return frame[14:]


@HOOKS
@FAMILIES
def test_fragments_follow_the_first(dp: Datapath, hook: str, v6: bool) -> None:
    client, vip, be, _, _ = _addrs(v6)
    dp.service(vip, "udp", 53, [Backend(BACKENDS4[0] if not v6 else BACKENDS6[0], 5353), Backend(be, 5353)])
    payload = bytes(range(256)) * 12  # 3,072 bytes: four fragments
    pkt = P.Pkt(client, vip, P.UDP, 40000, 53, payload=payload)
    frags = P.fragments(pkt.bytes(), 1000)
    assert len(frags) == 4
    outs = []
    for f in frags:
        r = dp.run(hook, f)
        assert r.retval == REDIRECT[hook]
        outs.append(r.data)
    got = [P.parse_fragment(o) for o in outs]
    dst = got[0].dst
    assert dst in (BACKENDS6[:2] if v6 else BACKENDS4[:2])
    assert all((g.src, g.dst, g.ttl, g.ip_csum_ok) == (client, dst, 63, True) for g in got)
    # The datagram the endpoint reassembles: ports of the first fragment translated, checksum valid.
    l4 = P.reassemble(outs)
    assert l4 == pkt.but(dst=dst, dport=5353).l4()
    assert P.l4_csum_ok(client, dst, P.UDP, l4)
    stats = dp.driver.stats()
    assert (stats["frag_first"], stats["frag_follow"], stats["pass_fragment"]) == (1, 3, 0)
    # The endpoint's fragmented reply goes back from the VIP, fragment by fragment.
    reply = P.Pkt(dst, client, P.UDP, 5353, 40000, payload=payload[::-1])
    routs = []
    for f in P.fragments(reply.bytes(), 1000, frag_id=0x77):
        r = dp.run(hook, f, on_v0=True)
        assert r.retval == REDIRECT[hook]
        routs.append(r.data)
    assert all((g.src, g.dst) == (vip, client) for g in map(P.parse_fragment, routs))
    rl4 = P.reassemble(routs)
    assert rl4 == reply.but(src=vip, sport=53).l4() and P.l4_csum_ok(vip, client, P.UDP, rl4)
    # Every fragment counted as a packet of the service (first and later alike).
    svc = dp.driver.counters()[next(iter(dp.driver.counters()))]["service"]
    assert (svc.packets, svc.reply_packets) == (4, 4)
    # TCP: the first fragment's checksum covers the whole segment.
    dp.service(vip, "tcp", 80, [Backend(be, 8080)])
    seg = P.Pkt(client, vip, P.TCP, 40000, 80, flags=P.SYN, payload=b"x" * 2000)
    outs = [dp.run(hook, f).data for f in P.fragments(seg.bytes(), 1200)]
    l4 = P.reassemble(outs)
    assert l4 == seg.but(dst=be, dport=8080).l4() and P.l4_csum_ok(client, be, P.TCP, l4)


@HOOKS
@FAMILIES
def test_later_fragment_before_the_first_goes_to_the_kernel(dp: Datapath, hook: str, v6: bool) -> None:
    client, vip, be, _, _ = _addrs(v6)
    dp.service(vip, "udp", 53, [Backend(be, 5353)])
    frags = P.fragments(P.Pkt(client, vip, P.UDP, 40000, 53, payload=b"y" * 2500).bytes(), 1000)
    r = dp.run(hook, frags[2])
    assert r.retval == PASS[hook] and r.data == frags[2]
    assert dp.driver.conntrack() == [], "a later fragment never starts a flow"
    assert dp.driver.stats()["pass_fragment"] == 1
    # The first fragment then selects; the later ones (the early one again too) follow.
    for f in (frags[0], frags[1], frags[2]):
        r = dp.run(hook, f)
        assert r.retval == REDIRECT[hook] and P.parse_fragment(r.data).dst == be
    # A later fragment of another datagram (another id) is not this one's.
    other = P.fragments(P.Pkt(client, vip, P.UDP, 40000, 53, payload=b"y" * 2500).bytes(), 1000, frag_id=5)
    r = dp.run(hook, other[1])
    assert r.retval == PASS[hook] and r.data == other[1]
    # Fragments of a datagram to no service: every one to the kernel, no flow.
    frags = P.fragments(P.Pkt(client, vip[:-1] + "9", P.UDP, 40000, 53, payload=b"z" * 2500).bytes(), 1000)
    for f in frags:
        r = dp.run(hook, f)
        assert r.retval == PASS[hook] and r.data == f
    assert len(dp.driver.conntrack()) == 1, "only the one flow"


# --- ICMP errors ---

MODE_PORTS = {"default": 80, "onearm": 81}  # one service per mode on the same VIP


def _flow(dp: Datapath, hook: str, v6: bool, mode: str, cport: int) -> tuple[P.Pkt, P.Pkt]:
    """A TCP flow through the VIP; returns (the client's packet, the packet the endpoint got)."""
    client, vip, be, _, _ = _addrs(v6)
    pkt = P.Pkt(client, vip, P.TCP, cport, MODE_PORTS[mode], flags=P.SYN, payload=b"q" * 64)
    r = dp.run(hook, pkt.bytes())
    assert r.retval == REDIRECT[hook]
    out = P.parse(r.data)
    assert out.csum_ok
    return pkt, pkt.but(src=out.src, sport=out.sport, dst=out.dst, dport=out.dport, ttl=63)


@HOOKS
@FAMILIES
def test_icmp_errors_are_translated_both_ways(dp: Datapath, hook: str, v6: bool) -> None:
    """Fragmentation needed / packet too big, DNAT and source NAT (onearm), in both directions."""
    client, vip, be, _, router = _addrs(v6)
    for mode, port in MODE_PORTS.items():
        dp.service(vip, "tcp", port, [Backend(be, 8080)], mode=mode)
    n = 0
    for mode in MODE_PORTS:
        for origin in ("router", "endpoint"):
            # Towards the client: about a packet the endpoint was sent; the client gets it
            # quoting its own packet (to the VIP), from the router as it was, or from the VIP
            # when the endpoint itself reported it.
            n += 1
            sent, seen = _flow(dp, hook, v6, mode, 41000 + n)
            err = P.icmp_error(router if origin == "router" else be, seen.src, _ip(seen.bytes()))
            r = dp.run(hook, err, on_v0=True)
            assert r.retval == REDIRECT[hook], (mode, origin)
            out = P.parse_icmp_error(r.data)
            assert out.csum_ok, "outer and ICMP checksums"
            assert (out.src, out.dst, out.ttl) == (router if origin == "router" else vip, client, 63)
            # The quoted packet: addresses, ports, the IP and the TCP checksum.
            assert out.quoted == _ip(sent.but(ttl=63).bytes()), (mode, origin)
        # Towards the endpoint: an error about a reply (from a router on the client's side,
        # to the VIP) reaches the endpoint quoting the reply as the endpoint sent it.
        n += 1
        sent, seen = _flow(dp, hook, v6, mode, 41000 + n)
        reply = P.Pkt(be, seen.src, P.TCP, 8080, seen.sport, flags=P.SYN | P.ACK, payload=b"r" * 64)
        r = dp.run(hook, reply.bytes(), on_v0=True)
        assert r.retval == REDIRECT[hook]
        delivered = reply.but(src=vip, sport=sent.dport, dst=client, dport=sent.sport, ttl=63)
        assert P.parse(r.data).csum_ok and r.data[14:] == _ip(delivered.bytes())
        r = dp.run(hook, P.icmp_error(router, vip, _ip(delivered.bytes())))
        assert r.retval == REDIRECT[hook], mode
        out = P.parse_icmp_error(r.data)
        assert out.csum_ok and (out.src, out.dst) == (router, be)
        assert out.quoted == _ip(reply.but(ttl=63).bytes()), mode
    assert dp.driver.stats()["icmp_error"] == 6


@HOOKS
@FAMILIES
def test_other_icmp_errors_udp_and_no_flow(dp: Datapath, hook: str, v6: bool) -> None:
    client, vip, be, _, router = _addrs(v6)
    dp.service(vip, "udp", 53, [Backend(be, 5353)])
    kinds = {"unreachable": (1, 4) if v6 else (3, 3), "time-exceeded": (3, 0) if v6 else (11, 0),
             "parameter-problem": (4, 0) if v6 else (12, 0)}
    for n, (type_, code) in enumerate(kinds.values()):
        pkt = P.Pkt(client, vip, P.UDP, 40000 + n, 53, payload=b"u" * 40)
        seen = pkt.but(dst=be, dport=5353, ttl=63)
        assert dp.run(hook, pkt.bytes()).retval == REDIRECT[hook]
        # Quote only the first 8 bytes of UDP, as RFC 792 routers do: the UDP checksum is among them.
        quoted = _ip(seen.bytes())[: (40 if v6 else 20) + 8]
        r = dp.run(hook, P.icmp_error(router, client, quoted, type_=type_, code=code), on_v0=True)
        assert r.retval == REDIRECT[hook], type_
        out = P.parse_icmp_error(r.data)
        assert out.csum_ok and out.type == type_ and out.dst == client
        assert out.quoted == _ip(pkt.but(ttl=63).bytes())[: len(quoted)]
    # An error about no flow of ours goes to the kernel untouched.
    err = P.icmp_error(router, client, _ip(P.Pkt(client, be, P.TCP, 41000, 8080).bytes()))
    r = dp.run(hook, err, on_v0=True)
    assert r.retval == PASS[hook] and r.data == err


# --- the datapath's own redirect over the egress MTU (tc) ---

@FAMILIES
def test_over_the_egress_mtu_the_sender_gets_frag_needed(dp: Datapath, v6: bool) -> None:
    """Both directions: the client (about its packet to the VIP) and the endpoint (about its reply)."""
    from tests.bpf.harness import sh

    client, vip, be, _, _ = _addrs(v6)
    dp.service(vip, "tcp", 80, [Backend(be, 8080)])
    syn = P.Pkt(client, vip, P.TCP, 41000, 80, flags=P.SYN, frag=0x4000)
    assert dp.run("tc", syn.bytes()).retval == TC_REDIRECT  # small: forwarded
    sh("ip", "-n", dp.ns, "link", "set", "v0", "mtu", "1400")
    reply = P.Pkt(be, client, P.TCP, 8080, 41000, flags=P.ACK, payload=b"b" * 1400, frag=0x4000)
    cases = [(syn.but(flags=P.ACK, payload=b"b" * 1400), False, vip), (reply, True, client)]
    for n, (big, on_v0, src) in enumerate(cases, 1):
        frame = big.bytes()
        r = dp.run("tc", frame, on_v0=on_v0)
        assert r.retval == TC_REDIRECT
        out = P.parse_icmp_error(r.data)
        assert out.csum_ok and (out.src, out.dst) == (src, big.src)
        assert out.type == (2 if v6 else 3)
        mtu = int.from_bytes(r.data[14 + (40 if v6 else 20) + (4 if v6 else 6):][: 4 if v6 else 2], "big")
        assert mtu == 1400
        assert out.quoted == frame[14:][: 48 if v6 else 28], "the sender's own packet, as it sent it"
        assert r.data[:12] == frame[6:12] + frame[:6], "back to where it came from"
        assert dp.driver.stats()["too_big"] == n
        if not v6:  # without DF the kernel fragments it: left to it, translated
            r = dp.run("tc", big.but(frag=0).bytes(), on_v0=on_v0)
            out2 = P.parse(r.data)
            assert r.retval == TC_OK and out2.csum_ok
            assert (out2.dst == be) if not on_v0 else (out2.src == vip)
