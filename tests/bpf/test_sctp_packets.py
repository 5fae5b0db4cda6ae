"""SCTP through lb_kern.o under BPF_PROG_TEST_RUN, both hooks (issue 14).

An association's packets one by one: the INIT balanced (ports translated, CRC32c
updated), the INIT-ACK reverse-translated with its address parameters rewritten to
the service's other VIPs, the conntrack state after every chunk, a packet to a
secondary VIP mapped to the same endpoint by its verification tag, source NAT
hiding the client's addresses in the INIT, every selection algorithm, and what
malformed packets get.  Every output packet's CRC32c is checked.
"""

from __future__ import annotations

import struct

import pytest

from reconciler import maglev
from reconciler.probes import sctp as S
from reconciler.records import Backend
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, BACKENDS6, CLIENT4, CLIENT6, LB4, VIP4, VIP6, Datapath

TC_OK, TC_REDIRECT = 0, 7
XDP_PASS, XDP_REDIRECT = 2, 4
PASS = {"tc": TC_OK, "xdp": XDP_PASS}
REDIRECT = {"tc": TC_REDIRECT, "xdp": XDP_REDIRECT}

VIP4B, VIP4C = "10.97.0.2", "10.97.0.3"  # secondary VIPs of the multihomed service
CTAG, STAG = 0x11223344, 0x55667788  # the client's and the endpoint's initiate tags

pytestmark = pytest.mark.root


def _frame(src: str, dst: str, sctp: bytes) -> bytes:
    return P.Pkt(src, dst, P.SCTP, payload=sctp).bytes()


def _sctp(frame: bytes) -> bytes:
    """The SCTP packet of an output frame (IPv4, no options)."""
    tot = struct.unpack_from("!H", frame, 16)[0]
    return frame[34 : 14 + tot]


def _multihomed(dp: Datapath, backends: list[Backend], **kw: object) -> None:
    vips = (VIP4, VIP4B, VIP4C)
    for vip in vips:
        dp.service(vip, "sctp", 3868, backends, sctp_peer_vips=tuple(v for v in vips if v != vip),
                   **kw)  # type: ignore[arg-type]


def _run(dp: Datapath, hook: str, frame: bytes, verdict: dict[str, int] = REDIRECT) -> P.Parsed:
    r = dp.run(hook, frame)
    assert r.retval == verdict[hook]
    out = P.parse(r.data)
    assert out.csum_ok, "every SCTP packet leaves with a valid CRC32c"
    dp.last = r.data  # type: ignore[attr-defined]
    return out


def _state(dp: Datapath) -> list[str]:
    return [f.state for f in dp.driver.conntrack()]


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_association_through_the_vip(dp: Datapath, hook: str) -> None:
    _multihomed(dp, [Backend(BACKENDS4[0], 3869)])
    be = BACKENDS4[0]
    live = dp.driver.read()["service"]["sctp/10.97.0.2:3868"]
    assert live.sctp_peer_vips == (VIP4, VIP4C) and not live.faults  # read back as written
    # INIT: balanced, port 3868 -> 3869, CRC32c updated for the port change.
    out = _run(dp, hook, _frame(CLIENT4, VIP4, S.init(5000, 3868, CTAG, 1)))
    assert (out.dst, out.dport, out.sport) == (be, 3869, 5000)
    assert _state(dp) == ["sctp-init"]
    # INIT-ACK listing the endpoint's own addresses (one of them IPv6): the client learns
    # the service's other VIPs, then the VIP itself; the IPv6 address is hidden.
    ack = S.init_ack(3869, 5000, CTAG, STAG, 7, addresses=[be, BACKENDS4[1], BACKENDS4[2], BACKENDS6[0]])
    out = _run(dp, hook, _frame(be, CLIENT4, ack))
    assert (out.src, out.sport, out.dst, out.dport) == (VIP4, 3868, CLIENT4, 5000)
    sent = _sctp(dp.last)  # type: ignore[attr-defined]
    assert S.addresses(sent) == [VIP4B, VIP4C, VIP4]
    assert [t for t, _ in S.chunk_params(sent)][-1] == 0xBFFE  # the IPv6 address: skipped by the peer
    assert _state(dp) == ["sctp-init-ack"]
    steps = [
        (CLIENT4, VIP4, S.COOKIE_ECHO, STAG, "sctp-cookie-echo"),
        (be, CLIENT4, S.COOKIE_ACK, CTAG, "sctp-established"),
        (CLIENT4, VIP4, S.DATA, STAG, "sctp-established"),
        (be, CLIENT4, S.SACK, CTAG, "sctp-established"),
    ]
    for src, dst, ctype, vtag, state in steps:
        sport, dport = (5000, 3868) if src == CLIENT4 else (3869, 5000)
        _run(dp, hook, _frame(src, dst, S.packet(sport, dport, vtag, ctype, b"x" * 12)))
        assert _state(dp) == [state]
    # DATA to a secondary VIP: the same endpoint, the same ports (a path entry, not a new flow).
    out = _run(dp, hook, _frame(CLIENT4, VIP4B, S.packet(5000, 3868, STAG, S.DATA, b"y" * 16)))
    assert (out.dst, out.dport) == (be, 3869)
    # ... but not with another association's tag, nor to a VIP of no service.
    wrong = _frame(CLIENT4, VIP4C, S.packet(5000, 3868, STAG ^ 1, S.DATA, b"z" * 16))
    assert dp.run(hook, wrong).retval == PASS[hook]
    for src, dst, ctype, vtag, state in [
        (CLIENT4, VIP4, S.SHUTDOWN, STAG, "sctp-shutdown"),
        (be, CLIENT4, S.SHUTDOWN_ACK, CTAG, "sctp-shutdown-ack"),
        (CLIENT4, VIP4, S.SHUTDOWN_COMPLETE, STAG, "sctp-shutdown-complete"),
    ]:
        sport, dport = (5000, 3868) if src == CLIENT4 else (3869, 5000)
        _run(dp, hook, _frame(src, dst, S.packet(sport, dport, vtag, ctype, b"\0\0\0\1" if ctype == S.SHUTDOWN
                                                 else b"")))
        assert _state(dp) == [state]


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_abort_closes_and_a_new_init_selects_again(dp: Datapath, hook: str) -> None:
    dp.service(VIP4, "sctp", 3868, [Backend(b, 0) for b in BACKENDS4])
    first = _run(dp, hook, _frame(CLIENT4, VIP4, S.init(5001, 3868, CTAG, 1))).dst
    _run(dp, hook, _frame(CLIENT4, VIP4, S.packet(5001, 3868, STAG, S.ABORT)))
    assert _state(dp) == ["closed"]
    again = _run(dp, hook, _frame(CLIENT4, VIP4, S.init(5001, 3868, CTAG + 1, 1))).dst
    assert again != first and _state(dp) == ["sctp-init"]


def test_a_chunk_without_an_association_is_not_balanced(dp: Datapath) -> None:
    dp.service(VIP4, "sctp", 3868, [Backend(BACKENDS4[0], 0)])
    frame = _frame(CLIENT4, VIP4, S.packet(5002, 3868, STAG, S.DATA, b"data"))
    r = dp.run("tc", frame)
    assert r.retval == TC_OK and r.data == frame and dp.driver.conntrack() == []


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_bad_crc_stays_bad(dp: Datapath, hook: str) -> None:
    """The CRC32c is updated, not recomputed: a corrupt packet is not laundered into a valid one."""
    dp.service(VIP4, "sctp", 3868, [Backend(BACKENDS4[0], 4000)])
    good = S.init(5003, 3868, CTAG, 1)
    bad = good[:8] + bytes(a ^ b for a, b in zip(good[8:12], b"\xde\xad\xbe\xef", strict=True)) + good[12:]
    r = dp.run(hook, _frame(CLIENT4, VIP4, bad))
    assert r.retval == REDIRECT[hook]
    sent = _sctp(r.data)
    assert not S.checksum_ok(sent)
    fixed = sent[:8] + bytes(a ^ b for a, b in zip(sent[8:12], b"\xde\xad\xbe\xef", strict=True)) + sent[12:]
    assert S.checksum_ok(fixed) and struct.unpack_from("!H", fixed, 2)[0] == 4000


MALFORMED = [
    ("common-header-only", lambda: S.init(5004, 3868, CTAG, 1)[:12]),
    ("chunk-length-below-4", lambda: S.with_checksum(struct.pack("!HHIIBBH", 5004, 3868, 0, 0, 1, 0, 2))),
    ("init-cut-before-its-tag", lambda: S.init(5004, 3868, CTAG, 1)[:18]),
]


@pytest.mark.parametrize("name,build", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_is_passed_untouched(dp: Datapath, name: str, build: object) -> None:
    dp.service(VIP4, "sctp", 3868, [Backend(BACKENDS4[0], 4000)])
    frame = _frame(CLIENT4, VIP4, build())  # type: ignore[operator]
    r = dp.run("tc", frame)
    assert r.retval == TC_OK and r.data == frame and dp.driver.conntrack() == []


def test_init_ack_with_params_past_the_packet_is_cut_short_safely(dp: Datapath) -> None:
    """A parameter list longer than the packet: the walk stops; what it rewrote is consistent."""
    _multihomed(dp, [Backend(BACKENDS4[0], 0)])
    _run(dp, "tc", _frame(CLIENT4, VIP4, S.init(5005, 3868, CTAG, 1)))
    ack = S.init_ack(3868, 5005, CTAG, STAG, 7, addresses=[BACKENDS4[0]])
    longer = struct.unpack_from("!H", ack, 14)[0] + 400  # the chunk claims more than the packet holds
    ack = ack[:14] + struct.pack("!H", longer) + ack[16:]
    ack = S.with_checksum(ack)
    _run(dp, "tc", _frame(BACKENDS4[0], CLIENT4, ack))
    assert S.addresses(_sctp(dp.last)) == [VIP4B]  # type: ignore[attr-defined]


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_onearm_hides_the_clients_addresses_in_the_init(dp: Datapath, hook: str) -> None:
    dp.service(VIP4, "sctp", 3868, [Backend(BACKENDS4[0], 0)], mode="onearm")
    out = _run(dp, hook, _frame(CLIENT4, VIP4, S.init(5006, 3868, CTAG, 1, addresses=[CLIENT4, "10.98.0.6"])))
    assert out.src == LB4 and out.dst == BACKENDS4[0]
    assert S.addresses(_sctp(dp.last)) == [LB4, LB4]  # type: ignore[attr-defined]
    # The endpoint's INIT-ACK goes back to the client's own address and port.
    back = _run(dp, hook, _frame(BACKENDS4[0], LB4, S.init_ack(3868, out.sport, CTAG, STAG, 9)))
    assert (back.src, back.sport, back.dst, back.dport) == (VIP4, 3868, CLIENT4, 5006)


@pytest.mark.parametrize("selection", ["rr", "hash", "persist", "lc", "maglev", "priority"])
def test_every_selection_balances_associations(dp: Datapath, selection: str) -> None:
    bes = [Backend(b, 0) for b in BACKENDS4]
    table = b""
    if selection == "maglev":
        table = maglev.for_backends([(b.address, b.port, b.weight) for b in bes])
    dp.service(VIP4, "sctp", 3868, bes, selection=selection, maglev_table=table)
    got: dict[str, int] = {}
    for i in range(12):
        out = _run(dp, "tc", _frame(CLIENT4, VIP4, S.init(6000 + i, 3868, CTAG + i, 1)))
        got[out.dst] = got.get(out.dst, 0) + 1
        # The association's next packet follows it.
        again = _run(dp, "tc", _frame(CLIENT4, VIP4, S.packet(6000 + i, 3868, STAG, S.COOKIE_ECHO, b"c" * 8)))
        assert again.dst == out.dst
    assert sum(got.values()) == 12 and set(got) <= set(BACKENDS4)
    if selection in ("rr", "priority"):
        assert got == {b: 4 for b in BACKENDS4}


@pytest.mark.parametrize("hook", ["tc", "xdp"])
@pytest.mark.parametrize("listed", [0, 1])
def test_init_ack_grows_to_tell_every_vip(dp: Datapath, hook: str, listed: int) -> None:
    """An endpoint that names fewer addresses than the service has other VIPs (a single-homed
    one names none): the INIT-ACK gets the missing ones appended, lengths and CRC32c fixed."""
    _multihomed(dp, [Backend(BACKENDS4[0], 0)])
    _run(dp, hook, _frame(CLIENT4, VIP4, S.init(5007, 3868, CTAG, 1)))
    ack = S.init_ack(3868, 5007, CTAG, STAG, 7, cookie=b"odd", addresses=[BACKENDS4[0]][:listed])
    out = _run(dp, hook, _frame(BACKENDS4[0], CLIENT4, ack))
    assert (out.src, out.dst) == (VIP4, CLIENT4)
    sent = _sctp(dp.last)  # type: ignore[attr-defined]
    assert S.addresses(sent) == [VIP4B, VIP4C]
    assert len(sent) == len(ack) + 8 * (2 - listed)
    assert 12 + struct.unpack_from("!H", sent, 14)[0] == len(sent)  # the chunk ends the packet
    assert S.chunk_params(sent)[0] == (S.PARAM_COOKIE, b"odd")  # the cookie is untouched


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_ipv6_association_and_its_secondary_vip(dp: Datapath, hook: str) -> None:
    vips = (VIP6, "fd00:97::2")
    for vip in vips:
        peers = tuple(v for v in vips if v != vip)
        dp.service(vip, "sctp", 3868, [Backend(BACKENDS6[0], 3869)], sctp_peer_vips=peers)
    out = _run(dp, hook, _frame(CLIENT6, VIP6, S.init(5008, 3868, CTAG, 1)))
    assert (out.dst, out.dport) == (BACKENDS6[0], 3869)
    ack = S.init_ack(3869, 5008, CTAG, STAG, 7, addresses=[BACKENDS6[0], BACKENDS4[0]])
    out = _run(dp, hook, _frame(BACKENDS6[0], CLIENT6, ack))
    assert (out.src, out.sport) == (VIP6, 3868)
    plen = struct.unpack_from("!H", dp.last, 18)[0]  # type: ignore[attr-defined]
    sent = dp.last[54 : 54 + plen]  # type: ignore[attr-defined]
    assert S.addresses(sent) == [vips[1]] and [t for t, _ in S.chunk_params(sent)][-1] == 0xBFFE
    out = _run(dp, hook, _frame(CLIENT6, vips[1], S.packet(5008, 3868, STAG, S.DATA, b"d" * 20)))
    assert (out.dst, out.dport) == (BACKENDS6[0], 3869)
