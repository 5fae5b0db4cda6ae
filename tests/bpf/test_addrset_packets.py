"""The early exit for packets that are nothing of ours (bpf/lb_addrset.h), both hooks.

A packet neither to a VIP nor from an endpoint skips conntrack and the service
lookups once the driver has armed the address set.  These tests plant a conntrack
entry for such a packet: with the set armed the packet goes to the kernel
untouched (the entry is never looked at); with the set unarmed the same packet
is translated, so the early exit is what made the difference.  Every other
packet test runs with the set armed by the driver, so their IPv4 and IPv6
services show that the driver's hash (bpf_addrset.bit) and the datapath's agree.
"""

from __future__ import annotations

import socket
import struct

import pytest

from reconciler.drivers import bpf_addrset
from reconciler.records import Backend
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, CLIENT4, VIP4, Datapath

TC_OK, TC_REDIRECT = 0, 7
XDP_PASS, XDP_REDIRECT = 2, 4
PASS = {"tc": TC_OK, "xdp": XDP_PASS}
REDIRECT = {"tc": TC_REDIRECT, "xdp": XDP_REDIRECT}
STRANGER = "10.99.0.77"  # on the backends' link, but no endpoint of any service

pytestmark = pytest.mark.root


def _key(src: str, dst: str, sport: int, dport: int, proto: int) -> bytes:
    """lb_ct_key bytes of an IPv4 tuple."""
    return (socket.inet_aton(src) + bytes(12) + socket.inet_aton(dst) + bytes(12)
            + struct.pack("!HH", sport, dport) + bytes([proto, 4, 0, 0]))


def _has(dp: Datapath, addr: str) -> bool:
    m = dp.driver.map("lb_addrset")
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    raw = socket.inet_pton(fam, addr).ljust(16, b"\0")
    h = bpf_addrset.bit(raw)
    word = m.lookup_raw(struct.pack("<I", h >> 6))
    return word is not None and bool((int.from_bytes(word, "little") >> (h & 63)) & 1)


def _set_armed(dp: Datapath, on: bool) -> None:
    m = dp.driver.map("lb_addrset")
    m.update_raw(struct.pack("<I", bpf_addrset.shape().armed), struct.pack("<Q", int(on)))


def test_an_apply_arms_the_set_with_every_vip_and_endpoint(dp: Datapath) -> None:
    dp.service(VIP4, "tcp", 80, [Backend(b, 8080) for b in BACKENDS4])
    dp.service("fd00:97::1", "sctp", 38412, [Backend("fd00:99::10", 0)],
               sctp_peer_vips=("fd00:97::2", "fd00:97::3"))
    assert bpf_addrset.armed(dp.driver.map("lb_addrset"))
    for a in (VIP4, *BACKENDS4, "fd00:97::1", "fd00:97::2", "fd00:97::3", "fd00:99::10"):
        assert _has(dp, a), a
    assert not _has(dp, STRANGER)  # (the set is nearly empty: no collision to expect)


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_a_packet_of_no_vip_and_no_endpoint_skips_conntrack(dp: Datapath, hook: str) -> None:
    dp.service(VIP4, "tcp", 80, [Backend(BACKENDS4[0], 8080)])
    syn = P.Pkt(CLIENT4, VIP4, P.TCP, 41000, 80, flags=P.SYN).bytes()
    assert dp.run(hook, syn).retval == REDIRECT[hook]
    # The flow's reply entry, planted again under a source that is no endpoint.
    ct = dp.driver.map("lb_ct")
    entry = ct.lookup_raw(_key(BACKENDS4[0], CLIENT4, 8080, 41000, P.TCP))
    assert entry is not None
    ct.update_raw(_key(STRANGER, CLIENT4, 8080, 41000, P.TCP), entry)
    stray = P.Pkt(STRANGER, CLIENT4, P.TCP, 8080, 41000, flags=P.ACK).bytes()
    r = dp.run(hook, stray)
    assert r.retval == PASS[hook]
    assert r.data == stray  # untouched: the planted entry was never looked at
    # Unarmed, the same packet takes the full path and the planted entry translates it.
    _set_armed(dp, False)
    r = dp.run(hook, stray)
    assert r.retval == REDIRECT[hook]
    assert P.parse(r.data).src == VIP4
    # The endpoint's own replies are never skipped.
    _set_armed(dp, True)
    reply = P.Pkt(BACKENDS4[0], CLIENT4, P.TCP, 8080, 41000, flags=P.ACK).bytes()
    assert dp.run(hook, reply).retval == REDIRECT[hook]


def test_an_unarmed_set_is_armed_whole_by_the_next_apply(dp: Datapath) -> None:
    """Maps from before the set (a migrated datapath) get every address of the maps, not just
    the next apply's."""
    dp.service(VIP4, "tcp", 80, [Backend(BACKENDS4[0], 8080)])
    m = dp.driver.map("lb_addrset")
    m.update_batch_raw([(struct.pack("<I", w), bytes(8)) for w in range(bpf_addrset.shape().words + 1)])
    assert not bpf_addrset.armed(m) and not _has(dp, VIP4)
    dp.service("10.97.0.9", "udp", 53, [Backend(BACKENDS4[1], 53)])
    assert bpf_addrset.armed(m)
    for a in (VIP4, BACKENDS4[0], "10.97.0.9", BACKENDS4[1]):
        assert _has(dp, a), a
    syn = P.Pkt(CLIENT4, VIP4, P.TCP, 41001, 80, flags=P.SYN).bytes()
    assert dp.run("tc", syn).retval == TC_REDIRECT
