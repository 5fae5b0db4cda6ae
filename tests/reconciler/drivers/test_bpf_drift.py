"""Drift on the real datapath: every object lbctl owns, changed behind its back, shows and is repaired.

For each case of ``tests/reconciler/drift_cases.py`` (map entries of every map
lbctl writes, the tc and XDP attachments, the programs on the hooks and the
pinned ones, VIP addresses): a fresh read (what ``lbctl plan`` does) must show
a change on the records concerned, point reads (the daemon's incremental
verify) must agree with it, applying the plan must leave nothing to change, and
packets must be balanced again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import pytest

from reconciler import maglev
from reconciler.apply import apply_plan, read_live, verify
from reconciler.drivers.bpf import BpfDriver
from reconciler.drivers.netlink import NetlinkDriver
from reconciler.plan import diff
from reconciler.records import Attachment, Backend, EndpointSet, Record, ServiceEntry, ServiceKey, VipAddress
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, CLIENT4, Datapath
from tests.reconciler.drift_cases import CASES, VIP_CASES, Case, Target, break_it

pytestmark = pytest.mark.root

WEIGHTED = ServiceKey("10.97.0.1", "tcp", 80, 80)
MAGLEV = ServiceKey("10.97.0.2", "tcp", 80, 80)
RANGES = (ServiceKey("10.97.0.3", "udp", 1000, 1999), ServiceKey("10.97.0.3", "udp", 3000, 3999))
_sport = itertools.count(20000)


def desired_state() -> dict[str, dict[str, Record]]:
    bes = tuple(Backend(a, 8080, w) for a, w in zip(BACKENDS4, (1, 2, 1), strict=True))
    state: dict[str, dict[str, Record]] = {"service": {}, "endpoints": {}, "attach": {}, "vip": {}}

    def add(key: ServiceKey, selection: str, backends: tuple[Backend, ...],
            allowed: tuple[str, ...] = ()) -> None:
        table = maglev.for_backends([(b.address, b.port, b.weight) for b in backends]) \
            if selection == "maglev" else b""
        state["service"][str(key)] = ServiceEntry(key, f"svc{len(state['service'])}", "default", selection,
                                                  240, 10800, allowed)
        state["endpoints"][str(key)] = EndpointSet(key, backends, table)
        state["vip"][key.vip] = VipAddress(key.vip, 32, "lbctl0")

    add(WEIGHTED, "rr", bes, ("10.98.0.0/16", "fd00:98::/64"))
    add(MAGLEV, "maglev", bes)
    add(RANGES[0], "hash", tuple(Backend(a, 0) for a in BACKENDS4))
    add(RANGES[1], "rr", tuple(Backend(a, 0) for a in BACKENDS4[:2]))
    state["attach"] = {"v0": Attachment("v0", "tc"), "v1": Attachment("v1", "xdp")}
    return state


@pytest.fixture
def box(dp: Datapath) -> Iterator[tuple[Datapath, Target]]:
    target = Target(netns=dp.ns, pin_root=dp.pin_root, weighted=str(WEIGHTED), maglev=str(MAGLEV),
                    ranges=(str(RANGES[0]), str(RANGES[1])), tc_if="v0", xdp_if="v1", vip=WEIGHTED.vip)
    drivers = fresh(dp)
    apply_plan(diff(desired_state(), read_live(drivers)), drivers)
    yield dp, target
    NetlinkDriver(netns=dp.ns).down()


def fresh(dp: Datapath) -> list[BpfDriver | NetlinkDriver]:
    """The drivers a new lbctl command would build."""
    return [BpfDriver(pin_root=dp.pin_root, netns=dp.ns), NetlinkDriver(netns=dp.ns)]


def balanced(dp: Datapath) -> None:
    """New flows to each service reach an endpoint (BPF_PROG_TEST_RUN on the tc program)."""
    for vip, proto, port in ((WEIGHTED.vip, P.TCP, 80), (MAGLEV.vip, P.TCP, 80), (RANGES[0].vip, P.UDP, 1500),
                             (RANGES[1].vip, P.UDP, 3500)):
        r = dp.run("tc", P.Pkt(CLIENT4, vip, proto, next(_sport), port).bytes())
        assert r.retval == 7 and P.parse(r.data).dst in BACKENDS4, (vip, proto, port, r.retval)


def _without_shared_slots(rec: Record | None) -> Record | None:
    """Point reads do not look for shared counter slots (that needs every list)."""
    if isinstance(rec, EndpointSet):
        return replace(rec, faults=tuple(f for f in rec.faults if "shared with another endpoint" not in f))
    return rec


@pytest.mark.parametrize("case", CASES + VIP_CASES, ids=lambda c: c.name)
def test_drift_shows_in_the_plan_and_one_apply_repairs_it(box: tuple[Datapath, Target], case: Case) -> None:
    dp, target = box
    desired = desired_state()
    assert verify(desired, fresh(dp)).empty
    balanced(dp)
    break_it(case, target)

    drivers = fresh(dp)
    live = read_live(drivers)
    plan = diff(desired, live)
    changed = {(c.kind, c.key) for c in plan.changes}
    for where in case.shows:
        assert where(target) in changed, (where(target), [(c.action, c.kind, c.key, c.fields)
                                                          for c in plan.changes])
    bpf = drivers[0]
    assert isinstance(bpf, BpfDriver)
    for kind in ("service", "endpoints"):
        keys = sorted({k for c in plan.changes if c.kind == kind for k in [c.key]})
        assert {k: _without_shared_slots(v) for k, v in bpf.read_keys(kind, keys).items()} == {
            k: _without_shared_slots(live[kind][k]) for k in keys if k in live[kind]}, kind

    apply_plan(plan, drivers)
    left = verify(desired, drivers)
    assert left.empty, [(c.action, c.kind, c.key, c.before) for c in left.changes]
    assert verify(desired, fresh(dp)).empty  # a new process sees it repaired too
    balanced(dp)
