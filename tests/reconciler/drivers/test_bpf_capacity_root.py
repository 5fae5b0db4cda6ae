"""Issue 19: the datapath's capacities are the Datapath's settings, on the real datapath.

Over a capacity, ``validate``, ``plan`` and ``apply`` refuse before anything is touched; a
capacity change re-creates the maps live (a TCP stream through the VIP goes on); lowering one
below what is in use is refused; conntrack holds a million flows by default on this box.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import pytest

from reconciler.apply import read_live
from reconciler.drivers import _libbpf as B
from reconciler.drivers.bpf import BpfDriver
from reconciler.drivers.bpf_capacity import CAPACITY_MAPS, map_sizes
from reconciler.drivers.bpf_pins import default_capacities
from reconciler.errors import LbctlError
from reconciler.limits import box_memory
from reconciler.model import DatapathCapacities, default_conntrack_flows
from reconciler.plan import diff
from reconciler.records import Backend
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, CLIENT4, VIP4, Datapath
from tests.reconciler.drivers.test_bpf_migrate_root import Stream, changes
from tests.reconciler.test_reconcile_root import Box, box, service_yaml  # noqa: F401 (the fixture)
from tests.testbed import Testbed

pytestmark = pytest.mark.root
REDIRECT = {"tc": 7, "xdp": 4}  # TC_ACT_REDIRECT, XDP_REDIRECT
PASS = {"tc": 0, "xdp": 2}  # TC_ACT_OK, XDP_PASS

SMALL = DatapathCapacities(services=1024, endpoints=2048, selection_chunks=4096, conntrack_flows=65536,
                           persist_entries=1024)


def datapath_yaml(**caps: int) -> str:
    body = "".join(f"\n    {k}: {v}" for k, v in caps.items())
    return ("apiVersion: lbctl.dev/v1alpha1\nkind: Datapath\nmetadata: {name: box}\n"
            f"spec:\n  interfaces: [eth0]\n  capacities:{body}\n")


def pins_of(root: Path | str) -> list[tuple[str, int, int]]:
    """(name, inode, max_entries) of every map pin: what a refused change must leave alone."""
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name in B.MAPS:
            fd = B.obj_get(path)
            try:
                out.append((name, os.stat(path).st_ino, B.map_info(fd)[3]))
            finally:
                os.close(fd)
    return out


def test_over_a_capacity_validate_plan_and_apply_refuse_and_the_box_is_unchanged(
        box: Box, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811 (the fixture)
    caps = {"services": 3, "conntrackFlows": 65536}
    (box.conf / "00-datapath.yaml").write_text(datapath_yaml(**caps))
    for i in range(2):
        (box.conf / f"svc-{i}.yaml").write_text(service_yaml(f"svc-{i}", f"198.51.100.{i + 1}", ["10.0.0.1"]))
    assert box.lbctl("apply", str(box.conf)) == 0
    before_pins = pins_of(box.pins)
    assert {name: n for name, _ino, n in before_pins}["lb_conf"] == 3
    before = read_live(box.drivers())

    for i in range(2, 4):  # 4 service entries, over the 3 of spec.capacities.services
        (box.conf / f"svc-{i}.yaml").write_text(service_yaml(f"svc-{i}", f"198.51.100.{i + 1}", ["10.0.0.1"]))
    capsys.readouterr()
    for command in ("validate", "plan", "apply"):
        assert box.lbctl(command, str(box.conf)) == 1, command
        out = capsys.readouterr()
        err = out.out + out.err
        assert "Service/svc-3" in err and "needs 4 service entries" in err, (command, err)
        assert "capacity is 3 (spec.capacities.services)" in err and "00-datapath.yaml:" in err, err
        assert pins_of(box.pins) == before_pins
        assert read_live(box.drivers()) == before

    # Raised: plan says the maps are re-created, apply does it live and programs the services.
    (box.conf / "00-datapath.yaml").write_text(datapath_yaml(**(caps | {"services": 8})))
    assert box.lbctl("plan", str(box.conf), "--detailed-exitcode") == 2
    err = capsys.readouterr().err
    assert "capacities change: services 3 -> 8" in err and "apply re-creates maps" in err, err
    assert pins_of(box.pins) == before_pins  # plan touched nothing
    assert box.lbctl("apply", str(box.conf)) == 0
    assert "capacities changed live: services 3 -> 8" in capsys.readouterr().err
    after = {name: n for name, _ino, n in pins_of(box.pins)}
    assert after["lb_conf"] == after["lb_svc"] == 8 and after["lb_backends"] == 16
    assert after["lb_ct"] == 2 * 65536
    assert len(read_live(box.drivers())["service"]) == 4
    assert box.lbctl("plan", str(box.conf), "--detailed-exitcode") == 0
    capsys.readouterr()
    assert box.lbctl("get", "capacities", "-o", "json") == 0
    rows = {r["capacity"]: r for r in json.loads(capsys.readouterr().out)}
    assert (rows["services"]["size"], rows["services"]["in_use"]) == (8, 4)
    assert (rows["endpoints"]["size"], rows["endpoints"]["in_use"]) == (131072, 4)
    assert rows["conntrackFlows"]["size"] == 65536


def test_a_capacity_change_migrates_live_and_a_tcp_stream_goes_on() -> None:
    tb = Testbed(n_backends=2).setup()
    pin_root = f"/sys/fs/bpf/lbctl-cap-{uuid.uuid4().hex[:8]}"
    try:
        ch = changes(tb, "tc")
        with BpfDriver(pin_root=pin_root, netns=tb.lb, capacities=SMALL) as drv:
            drv.apply(ch)
        desired = {k: {c.key: c.after for c in ch if c.kind == k} for k in ("service", "endpoints", "attach")}
        stream = Stream(tb)
        stream.wait_for(2000)
        bigger = dataclasses.replace(SMALL, conntrack_flows=131072, services=2048)

        # A command that only looks (plan) reports the change and changes nothing.
        before = pins_of(pin_root)
        with BpfDriver(pin_root=pin_root, netns=tb.lb, capacities=bigger, migrate=False) as looker:
            assert diff(desired, looker.read()).empty
            (note,) = looker.notices()
            assert "services 1,024 -> 2,048; conntrackFlows 65,536 -> 131,072" in note, note
        assert pins_of(pin_root) == before

        with BpfDriver(pin_root=pin_root, netns=tb.lb, capacities=bigger) as drv:
            live = drv.read()  # opens the pins: the maps are re-created at the new sizes here
            mig = drv.migration
            assert mig is not None and mig.resized["lb_ct"] == (131072, 262144), mig
            assert set(mig.resized) == {n for n, (cap, _) in CAPACITY_MAPS.items()
                                        if cap in ("services", "conntrack_flows")}
            assert mig.maps["lb_ct"] >= 2  # the stream's forward and reply entries, copied
            at_swap = stream.received
            stream.wait_for(at_swap + 2000)  # the established flow goes on through the new maps
            assert diff(desired, live).empty
            assert {n: s for n, _i, s in pins_of(pin_root) if n in CAPACITY_MAPS} == map_sizes(bigger)
            assert drv.datapath_snapshot().conntrack_capacity == 262144
            stream.finish()

            # Lowering a capacity below what is in use is refused; nothing changes.
            before = pins_of(pin_root)
        lower = dataclasses.replace(bigger, endpoints=1)
        with BpfDriver(pin_root=pin_root, netns=tb.lb, capacities=lower) as low:
            with pytest.raises(LbctlError) as exc:
                low.read()
            assert "spec.capacities.endpoints 1 is below what the datapath uses: endpoint counter slots up " \
                   "to 2 are in use" in str(exc.value) and "nothing was changed" in str(exc.value), exc.value
        assert pins_of(pin_root) == before
        # Lowering it to what is in use works (and keeps the service).
        fits = dataclasses.replace(bigger, endpoints=2)
        with BpfDriver(pin_root=pin_root, netns=tb.lb, capacities=fits) as ok:
            assert diff(desired, ok.read()).empty
            assert ok.map_limit("lb_be_stats") == 2
    finally:
        try:
            BpfDriver(pin_root=pin_root, netns=tb.lb).down()
        finally:
            tb.teardown()


def test_conntrack_holds_a_million_flows_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LBCTL_BOX_MEMORY", raising=False)  # this box's real memory (tests/conftest.py)
    flows = default_conntrack_flows(box_memory())
    if box_memory() >= 24 * 10**9:  # this development box (24 GB)
        assert flows >= 1_000_000
    pin_root = f"/sys/fs/bpf/lbctl-cap-{uuid.uuid4().hex[:8]}"
    drv = BpfDriver(pin_root=pin_root)  # no Datapath capacities: this box's defaults
    try:
        drv.load()
        ct = drv.map("lb_ct")
        assert B.map_info(ct.fd)[3] == 2 * flows == 2 * default_capacities().conntrack_flows  # type: ignore[operator]
        # Fill it with a million flows (both directions) by batch updates: all are held.
        raw = B.raw_map("lb_ct", ct.fd, ct.key_size, ct.value_size, False)
        value = bytes(ct.value_size)
        n = 2 * min(flows, 1_000_000)
        for start in range(0, n, 100_000):
            raw.update_batch_raw([(i.to_bytes(4, "little") + bytes(ct.key_size - 4), value)
                                  for i in range(start, min(n, start + 100_000))])
        assert sum(1 for _ in raw.items_raw()) == n
    finally:
        drv.down()


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_an_established_flow_that_lost_its_entry_is_counted_and_never_balanced(dp: Datapath,
                                                                              hook: str) -> None:
    """Conntrack full: the LRU evicts the least recently used entries, an established flow's
    too (here deleted as the LRU would); its next segment goes to the kernel (which answers
    RST), never to an endpoint that did not see the handshake, counted as pass_no_flow."""
    dp.service(VIP4, "tcp", 80, [Backend(BACKENDS4[0], 8080)])
    syn = P.Pkt(CLIENT4, VIP4, P.TCP, 43000, 80)
    ack = syn.but(flags=P.ACK)
    for pkt in (syn, ack):
        assert dp.run(hook, pkt.bytes()).retval == REDIRECT[hook]
    assert dp.driver.stats()["pass_no_flow"] == 0
    ct = dp.driver.map("lb_ct")
    for k, _v in list(ct.items()):
        ct.delete(k)
    out = dp.run(hook, ack.bytes())
    assert out.retval == PASS[hook] and P.parse(out.data).dst == VIP4
    assert dp.driver.stats()["pass_no_flow"] == 1
    assert dp.driver.conntrack() == []
