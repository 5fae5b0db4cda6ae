"""The route listener (reconciler/drivers/route_events.py) in a namespace of the test's own.

A route or neighbour change in the box's namespace reaches ``on_change`` (on the
listener's thread) with no apply; the daemon's engine then bumps the datapath's
next-hop generation, and an established flow follows the new route.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reconciler.drivers.netns import in_netns
from reconciler.drivers.route_events import RouteEvents
from reconciler.records import Backend
from reconciler.watch_engine import ReconcileEngine
from tests.bpf import packets as P
from tests.bpf.harness import CLIENT4, ROUTED4, VIP4, Datapath, sh

pytestmark = pytest.mark.root

WAIT_S = 10  # an upper bound for the notification, never a measured time
TC_OK, TC_REDIRECT = 0, 7


def listener(ns: str, seen: threading.Event) -> RouteEvents:
    events = RouteEvents(seen.set, namespace=lambda: in_netns(ns))
    events.start()
    return events


def test_route_and_neighbour_changes_are_reported_and_the_thread_stops(dp: Datapath) -> None:
    seen = threading.Event()
    events = listener(dp.ns, seen)
    try:
        sh("ip", "-n", dp.ns, "route", "replace", "blackhole", "10.123.0.0/24")
        assert seen.wait(WAIT_S), "a route change was not reported"
        seen.clear()
        sh("ip", "-n", dp.ns, "neigh", "replace", "10.99.0.77", "lladdr", "02:00:00:00:77:01", "dev", "v0",
           "nud", "permanent")
        assert seen.wait(WAIT_S), "a neighbour change was not reported"
        assert events.changes >= 2
    finally:
        events.stop()
    assert not [t for t in threading.enumerate() if t.name == "lbctl-route-events"]


def test_an_established_flow_follows_a_route_change_without_an_apply(dp: Datapath, tmp_path: Path) -> None:
    """What ``lbctl watch`` does: the listener wakes the loop, the engine bumps the generation."""
    dp.service(VIP4, "tcp", 80, [Backend(ROUTED4, 8080)])
    syn = P.Pkt(CLIENT4, VIP4, P.TCP, 42000, 80, flags=P.SYN).bytes()
    fwd = P.Pkt(CLIENT4, VIP4, P.TCP, 42000, 80, flags=P.ACK).bytes()
    for frame in (syn, fwd):
        assert dp.run("tc", frame).retval == TC_REDIRECT
    engine = ReconcileEngine(tmp_path / "conf", tmp_path / "state", [dp.driver])
    engine.drivers.select([])  # what a reconcile does first: a fixed set's drivers are always active
    seen = threading.Event()
    events = listener(dp.ns, seen)
    try:
        sh("ip", "-n", dp.ns, "route", "replace", "blackhole", "10.96.0.0/24")  # the endpoint's route
        assert dp.run("tc", fwd).retval == TC_REDIRECT  # the cached hop still carries it
        assert seen.wait(WAIT_S)
        assert engine.nexthops_changed() == 1
        assert dp.run("tc", fwd).retval == TC_OK  # looked up again: no route, the kernel's
    finally:
        events.stop()
