"""The next-hop cache (bpf/lb_nexthop.h) through BPF_PROG_TEST_RUN, both hooks.

An established flow forwards by the next hop cached in its conntrack entry; these
tests change a route or a neighbour under a flow and check that the flow follows
after one bump of the generation (the driver bumps it on every apply, a daemon on
route and neighbour changes), in both directions.  The packets before the bump
show the cache is really used (they still go the old way); the cache's age bound
(2 s) is far above the milliseconds between those runs.
"""

from __future__ import annotations

import pytest

from reconciler.records import Backend
from tests.bpf import packets as P
from tests.bpf.harness import CLIENT4, GW4, GW_MAC, ROUTED4, VIP4, Datapath, sh

TC_OK, TC_REDIRECT = 0, 7
XDP_PASS, XDP_REDIRECT = 2, 4
PASS = {"tc": TC_OK, "xdp": XDP_PASS}
REDIRECT = {"tc": TC_REDIRECT, "xdp": XDP_REDIRECT}
GW2 = "10.99.0.253"
GW2_MAC = bytes.fromhex("02000000cc01")

pytestmark = pytest.mark.root


def _flow(dp: Datapath, hook: str) -> tuple[bytes, bytes]:
    """A service whose endpoint is behind GW4, and one established flow: (forward, reply) frames."""
    sh("ip", "-n", dp.ns, "neigh", "add", GW2, "lladdr", GW2_MAC.hex(":"), "dev", "v0", "nud", "permanent")
    dp.service(VIP4, "tcp", 80, [Backend(ROUTED4, 8080)])
    fwd = P.Pkt(CLIENT4, VIP4, P.TCP, 41000, 80, flags=P.ACK).bytes()
    reply = P.Pkt(ROUTED4, CLIENT4, P.TCP, 8080, 41000, flags=P.ACK).bytes()
    syn = P.Pkt(CLIENT4, VIP4, P.TCP, 41000, 80, flags=P.SYN).bytes()  # only an opening SYN creates a flow
    for frame in (syn, reply, fwd, reply):  # create, then fill both directions' caches
        assert dp.run(hook, frame).retval == REDIRECT[hook]
    return fwd, reply


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_a_flow_follows_a_route_change_within_one_generation_bump(dp: Datapath, hook: str) -> None:
    fwd, reply = _flow(dp, hook)
    if hook == "xdp":
        assert dp.run(hook, fwd).data[:6] == GW_MAC
    # The routes of both directions go away: the cached hops still carry the flow ...
    sh("ip", "-n", dp.ns, "route", "replace", "blackhole", "10.96.0.0/24")
    sh("ip", "-n", dp.ns, "route", "replace", "blackhole", "10.98.0.0/24")
    assert dp.run(hook, fwd).retval == REDIRECT[hook]
    assert dp.run(hook, reply).retval == REDIRECT[hook]
    # ... until the generation moves: then both directions see the new routes.
    dp.driver.bump_nexthop_generation()
    assert dp.run(hook, fwd).retval == PASS[hook]
    assert dp.run(hook, reply).retval == PASS[hook]
    # Routes back, by another gateway: no hop is cached after a failed lookup, so no bump is needed.
    sh("ip", "-n", dp.ns, "route", "replace", "10.96.0.0/24", "via", GW2)
    sh("ip", "-n", dp.ns, "route", "replace", "10.98.0.0/24", "via", GW2)
    for frame in (fwd, reply):
        r = dp.run(hook, frame)
        assert r.retval == REDIRECT[hook]
        if hook == "xdp":
            assert r.data[:6] == GW2_MAC
            assert P.parse(r.data).csum_ok


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_an_apply_bumps_the_generation(dp: Datapath, hook: str) -> None:
    fwd, _ = _flow(dp, hook)
    sh("ip", "-n", dp.ns, "route", "replace", "10.96.0.0/24", "via", GW2)
    dp.service("10.97.0.77", "tcp", 80, [Backend(ROUTED4, 8080)])  # any apply
    r = dp.run(hook, fwd)
    assert r.retval == REDIRECT[hook]
    if hook == "xdp":
        assert r.data[:6] == GW2_MAC


def test_a_flow_follows_a_neighbour_mac_change_within_one_generation_bump(dp: Datapath) -> None:
    """XDP writes the cached MACs itself (tc's bpf_redirect_neigh resolves the neighbour after
    the program, so it follows a MAC change without a bump)."""
    fwd, reply = _flow(dp, "xdp")
    new_mac = bytes.fromhex("02000000dd01")
    sh("ip", "-n", dp.ns, "neigh", "replace", GW4, "lladdr", new_mac.hex(":"), "dev", "v0",
       "nud", "permanent")
    assert dp.run("xdp", fwd).data[:6] == GW_MAC  # cached
    dp.driver.bump_nexthop_generation()
    for frame in (fwd, reply):
        r = dp.run("xdp", frame)
        assert r.retval == XDP_REDIRECT and r.data[:6] == new_mac and P.parse(r.data).csum_ok
