"""The bpf driver's contract against real pinned maps: read == applied, idempotence, writes, restart."""

from __future__ import annotations

import pytest

from reconciler import maglev
from reconciler.drivers.bpf import BpfDriver, weighted_table
from reconciler.plan import Change
from reconciler.records import Backend, EndpointSet, ServiceEntry, ServiceKey
from tests.bpf.harness import Datapath

pytestmark = pytest.mark.root


def records(n: int) -> list[Change]:
    out: list[Change] = []
    for i in range(n):
        key = ServiceKey(f"10.97.{i // 200}.{i % 200 + 1}", "tcp", 80, 80)
        bes = tuple(Backend(f"10.99.0.{10 + j}", 8080, j + 1) for j in range(3))
        out.append(Change("endpoints", str(key), "create", None, EndpointSet(key, bes)))
        out.append(Change("service", str(key), "create", None,
                          ServiceEntry(key, f"svc{i}", "default", "hash", 240, 10800,
                                       ("10.0.0.0/8", "fd00::/8"))))
    rk = ServiceKey("fd00:97::1", "udp", 1000, 1999)
    bes6 = (Backend("fd00:99::10", 0), Backend("fd00:99::11", 0))
    out.append(Change("endpoints", str(rk), "create", None,
                      EndpointSet(rk, bes6, maglev.for_backends([(b.address, b.port, 1) for b in bes6]))))
    out.append(Change("service", str(rk), "create", None,
                      ServiceEntry(rk, "range", "default", "maglev", 20, 10800)))
    return out


def remove_pins(root: str) -> None:
    """Remove a pin root a test made beside the harness's (after the driver's down())."""
    import os

    if os.path.isdir(root):
        for f in os.listdir(root):
            os.unlink(os.path.join(root, f))
        os.rmdir(root)


def as_state(changes: list[Change]) -> dict[str, dict[str, object]]:
    st: dict[str, dict[str, object]] = {"service": {}, "endpoints": {}, "attach": {}, "firewall": {}}
    for c in changes:
        st[c.kind][c.key] = c.after
    return st


def test_read_returns_exactly_what_was_applied(dp: Datapath) -> None:
    ch = records(20)
    dp.driver.apply(ch)
    assert dp.driver.read() == as_state(ch)


def test_reapply_is_a_noop_and_one_endpoint_edit_is_local(dp: Datapath) -> None:
    ch = records(20)
    dp.driver.apply(ch)
    w = dp.driver.writes
    dp.driver.apply(ch)
    assert dp.driver.writes == w
    # Edit one endpoint of one service: only that service's entries are written.
    before = ch[0].after
    assert isinstance(before, EndpointSet)
    after = EndpointSet(before.key, before.backends[:2] + (Backend("10.99.0.20", 8080),))
    dp.driver.apply([Change("endpoints", ch[0].key, "update", before, after)])
    delta = dp.driver.writes - w
    assert 0 < delta <= 8  # new list + table chunk + lb_conf swap + the new endpoint's counters
    assert dp.driver.read()["endpoints"][ch[0].key] == after


def test_read_keys_reads_the_kernel_for_just_those_keys(dp: Datapath) -> None:
    ch = records(20)
    dp.driver.apply(ch)
    state = as_state(ch)
    # a single-port service, a port range, and a key that does not exist
    keys = [ch[0].key, ch[-1].key, str(ServiceKey("10.97.9.9", "tcp", 80, 80))]
    for kind in ("service", "endpoints"):
        assert dp.driver.read_keys(kind, keys) == {k: state[kind][k] for k in keys if k in state[kind]}
    # A fresh process (no index yet) finds them too, through the published lookup entries.
    fresh = BpfDriver(pin_root=dp.pin_root, netns=dp.ns)
    try:
        assert fresh.read_keys("service", keys[:2]) == {k: state["service"][k] for k in keys[:2]}
    finally:
        fresh.close()
    # Drift behind the driver's back (a service's conf entry deleted) shows up at once.
    svc_id = dp.driver._index.ids[ch[0].key] if dp.driver._index else None
    assert svc_id is not None
    dp.driver.map("lb_conf").delete(svc_id)
    # its lookup entry now points at nothing: a stray entry, shown with what is wrong
    stray = dp.driver.read_keys("service", [ch[0].key])[ch[0].key]
    assert isinstance(stray, ServiceEntry) and "no service of lbctl's owns" in stray.faults[0]
    assert dp.driver.read()["service"][ch[0].key] == stray  # the full read finds the same
    assert dp.driver.read_keys("endpoints", [ch[0].key]) == {}
    with pytest.raises(ValueError):
        dp.driver.read_keys("vip", ["10.0.0.1"])


def test_restart_finds_ids_and_state(dp: Datapath) -> None:
    ch = records(5)
    dp.driver.apply(ch)
    fresh = BpfDriver(pin_root=dp.pin_root, netns=dp.ns)
    try:
        assert fresh.read() == as_state(ch)
        fresh.apply(ch)
        assert fresh.writes == 0
    finally:
        fresh.close()


def test_delete_everything(dp: Datapath) -> None:
    ch = records(3)
    dp.driver.apply(ch)
    dp.driver.apply([Change(c.kind, c.key, "delete", c.after, None) for c in reversed(ch)])
    live = dp.driver.read()
    assert live["service"] == {} and live["endpoints"] == {}
    assert list(dp.driver.map("lb_svc").items()) == []
    assert list(dp.driver.map("lb_range").items()) == []
    assert list(dp.driver.map("lb_backends").items()) == []
    assert list(dp.driver.map("lb_sel").items()) == []


def test_read_without_pins_is_empty_and_creates_nothing(tmp_path: object) -> None:
    d = BpfDriver(pin_root="/sys/fs/bpf/lbctl-test-absent-xyz")
    assert d.read() == {"service": {}, "endpoints": {}, "attach": {}, "firewall": {}}
    import os

    assert not os.path.exists("/sys/fs/bpf/lbctl-test-absent-xyz")


def test_weighted_table() -> None:
    t = weighted_table([1, 2, 0, 3])
    assert sorted(t) == [0, 1, 1, 3, 3, 3]
    assert t[:3] != [3, 3, 3]  # smooth, not blocky
    big = weighted_table([1000, 3000])
    assert len(big) == 4 and big.count(1) == 3
    assert weighted_table([0, 0]) == []


def test_unsupported_names_what_the_datapath_does_not_carry_out() -> None:
    key = ServiceKey("10.97.0.1", "tcp", 80, 80)
    entry = ServiceEntry(key, "web", "default", "rr", 240, 10800)
    assert BpfDriver.unsupported(entry) is None
    assert BpfDriver.unsupported(EndpointSet(key, ())) is None
    for mode in ("onearm", "fullnat", "dsr"):  # issue 13: every mode is carried out, no warning
        assert BpfDriver.unsupported(ServiceEntry(key, "web", mode, "hash", 240, 10800)) is None
    sctp = ServiceEntry(ServiceKey("10.97.0.1", "sctp", 3868, 3868), "sig", "default", "rr", 240, 10800)
    assert BpfDriver.unsupported(sctp) is None  # issue 14: SCTP is balanced
    nat46 = ServiceEntry(ServiceKey("10.97.0.1", "sctp", 3868, 3868), "sig", "fullnat", "rr", 240, 10800,
                         source_address="fd00::1")
    assert "SCTP" in (BpfDriver.unsupported(nat46) or "")


def _pin_copy(dp: Datapath, other: str, swap: dict[str, str]) -> None:
    """Pin dp's maps again under ``other``, map ``swap[name]`` standing in for ``name``."""
    import os

    from reconciler.drivers import _libbpf as B

    os.makedirs(other)
    for name in B.MAPS:
        B.obj_pin(dp.driver.map(swap.get(name, name)).fd, os.path.join(other, name))


def test_pinned_map_of_another_layout_is_refused_with_what_to_do(dp: Datapath) -> None:
    import os
    import shutil

    from reconciler.drivers import _libbpf as B

    dp.driver.apply(records(1))
    # lb_stats (a per-CPU array) pinned as lb_be_conns (an array): a map type no migration converts.
    other = dp.pin_root + "-old"
    try:
        _pin_copy(dp, other, {"lb_be_conns": "lb_stats"})
        inodes = sorted((n, os.stat(os.path.join(other, n)).st_ino) for n in os.listdir(other))
        for action in ("open", "load"):
            drv = BpfDriver(pin_root=other, netns=dp.ns)
            with pytest.raises(B.LayoutError) as exc:
                drv.read() if action == "open" else drv.load()
            msg = str(exc.value)
            assert "lb_be_conns: the map type changed" in msg and "nothing was changed" in msg, msg
            assert exc.value.hint is not None and "lbctl down" in exc.value.hint
            assert drv._own_fds == [] and drv._maps == {} and drv._obj is None
            assert sorted((n, os.stat(os.path.join(other, n)).st_ino) for n in os.listdir(other)) == inodes
            drv.close()
    finally:
        shutil.rmtree(other, ignore_errors=True)
    # The real pins still open and read.
    assert dp.driver.read()["service"]


def test_pinned_map_with_fewer_entries_is_migrated_with_its_counters(dp: Datapath) -> None:
    import os
    import shutil

    from reconciler.drivers import _libbpf as B

    ch = records(2)
    dp.driver.apply(ch)
    stats = dp.driver.map("lb_svc_stats")
    k, v = next(iter(stats.items()))
    v[0].packets = 1234
    stats.update(k, v[0])  # every CPU: 1234 packets
    # lb_svc_stats has lb_be_stats' key and value but half its entries: a smaller capacity
    # the migration converts to the one the driver is given (more entries now).
    from reconciler.drivers.bpf_capacity import capacities_of, pinned_sizes

    other = dp.pin_root + "-old"
    try:
        _pin_copy(dp, other, {"lb_be_stats": "lb_svc_stats"})
        os.unlink(os.path.join(other, "lb_rr"))  # as if this version added the map
        drv = BpfDriver(pin_root=other, netns=dp.ns, capacities=capacities_of(pinned_sizes(dp.pin_root)))
        try:
            assert drv.read() == as_state(ch)
            assert drv.migration is not None and drv.migration.changed == ("lb_be_stats", "lb_rr")
            assert os.path.exists(os.path.join(other, "lb_rr"))
            assert B.map_info(drv.map("lb_be_stats").fd)[3] == 131072
            got = drv.map("lb_be_stats").lookup(k)
            assert got is not None and [c.packets for c in got] == [1234] * B.lib().ncpus
        finally:
            drv.close()
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert dp.driver.read() == as_state(ch)  # the pins it was copied from are untouched


def test_sctp_peer_vips_round_trip_through_the_service_bytes() -> None:
    from reconciler.drivers.bpf_codec import sctp_peers_bytes, sctp_peers_decode

    for vips in [(), ("10.97.0.2",), ("10.97.0.2", "fd00:97::3", "10.97.0.4")]:
        raw = sctp_peers_bytes(vips)
        assert len(raw) == 3 * 16 + 3 + 1 and sctp_peers_decode(raw) == vips
    with pytest.raises(ValueError):
        sctp_peers_bytes(("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"))


def test_a_first_load_verifies_only_the_programs_the_box_attaches(dp: Datapath) -> None:
    """The verifier's time is per program (about a second each for lb_tc and lb_xdp here):
    a load verifies the hooks it needs, another hook's program is loaded when first asked for."""
    import os

    from reconciler.records import Attachment

    tc, xdp = (os.path.join(dp.pin_root, f"prog_{h}") for h in ("tc", "xdp"))
    assert os.path.exists(tc) and not os.path.exists(xdp)  # the harness's load(): tc only
    dp.driver.apply([Change("attach", "v0", "create", None, Attachment("v0", "xdp"))])
    assert os.path.exists(xdp)
    assert dp.driver.read()["attach"] == {"v0": Attachment("v0", "xdp")}
    # A fresh datapath whose first apply attaches XDP verifies no tc program.
    root = dp.pin_root + "-xdp"
    d = BpfDriver(pin_root=root, netns=dp.ns)
    try:
        d.apply([Change("attach", "v1", "create", None, Attachment("v1", "xdp"))])
        assert os.path.exists(os.path.join(root, "prog_xdp"))
        assert not os.path.exists(os.path.join(root, "prog_tc"))
        assert d.read()["attach"] == {"v1": Attachment("v1", "xdp")}
        assert d.prog_fd("tc") > 0 and os.path.exists(os.path.join(root, "prog_tc"))  # on demand
    finally:
        d.down()
        remove_pins(root)


def test_a_first_apply_verifies_the_hook_program_aside_while_the_maps_fill(
        dp: Datapath, monkeypatch: pytest.MonkeyPatch) -> None:
    """The verifier (~1 s per hook program) runs in a thread of its own while the apply writes
    the maps; the program is attached after them and pinned; a verifier error fails the apply."""
    import os
    import threading

    from reconciler.drivers import _libbpf as B
    from reconciler.drivers.bpf_pins import BpfPins
    from reconciler.records import Attachment

    loads: list[tuple[tuple[str, ...], str]] = []  # (programs, the thread that loaded them)
    real = BpfPins._load_object

    def spy(self: BpfPins, progs: tuple[str, ...], migrate: bool) -> B.BpfObject:
        loads.append((progs, threading.current_thread().name))
        return real(self, progs, migrate)

    monkeypatch.setattr(BpfPins, "_load_object", spy)
    root = dp.pin_root + "-aside"
    d = BpfDriver(pin_root=root, netns=dp.ns)
    ch = [Change("attach", "v0", "create", None, Attachment("v0", "tc")), *records(50)]
    try:
        d.apply(ch)
        assert loads == [(("lb_ct_expire",), "MainThread"), (("lb_tc",), "lbctl-verify")]
        assert os.path.exists(os.path.join(root, "prog_tc"))
        assert d.read() == as_state(ch)
        d.down()

        # A verifier error surfaces from the apply that loaded, nothing is attached.
        def refuse(self: BpfPins, progs: tuple[str, ...], migrate: bool) -> B.BpfObject:
            if "lb_tc" in progs:
                raise B.BpfError("bpf_object__load (verifier says no)", -13)
            return real(self, progs, migrate)

        monkeypatch.setattr(BpfPins, "_load_object", refuse)
        d = BpfDriver(pin_root=root, netns=dp.ns)
        with pytest.raises(B.BpfError, match="verifier says no"):
            d.apply(ch)
        assert d.read()["attach"] == {}
    finally:
        d.down()
        remove_pins(root)


def test_fresh_ids_in_maps_the_apply_created_are_not_zeroed_again_but_reused_ones_are(dp: Datapath) -> None:
    """A cold apply skips the 220,000 zero writes of 10,000 x 10 (the kernel creates arrays
    zeroed); an id freed and handed out again later starts from zero counters all the same."""

    counters = ("lb_svc_stats", "lb_rr", "lb_be_stats", "lb_be_conns")
    root = dp.pin_root + "-zero"
    d = BpfDriver(pin_root=root, netns=dp.ns)
    try:
        ch = records(5)
        d.apply(ch)
        assert [d.map(n).writes for n in counters] == [0, 0, 0, 0]
        assert d.read() == as_state(ch)
        used = sorted(d._build_index().used_stats)
        assert len(used) == 5 * 3 + 2
        conns = d.map("lb_be_conns")
        busy = b"\x07" * conns.value_size
        for sid in used:  # counters the datapath would have left behind
            conns.update_raw(sid.to_bytes(4, "little"), busy)
        d.apply([Change(c.kind, c.key, "delete", c.after, None) for c in reversed(ch)])
        again = BpfDriver(pin_root=root, netns=dp.ns)  # a later process: the maps are not new
        again.apply(ch)
        reused = sorted(again._build_index().used_stats)
        assert set(reused) & set(used)
        assert all(conns.lookup_raw(sid.to_bytes(4, "little")) == bytes(conns.value_size) for sid in reused)
        assert again.map("lb_be_stats").writes > 0
    finally:
        d.down()
        remove_pins(root)
