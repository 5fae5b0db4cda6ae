"""Tests of reconcile/apply/verify with in-memory drivers."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from reconciler.apply import ReconcileResult, apply_plan, reconcile, summary
from reconciler.errors import ConfigError
from reconciler.ipam_store import AllocationStore
from reconciler.model import Probe, Resource
from reconciler.plan import Change, diff
from reconciler.probes import store as health_store
from reconciler.records import Record, empty_state
from tests.reconciler.fakes import (
    BPF_KINDS,
    FakeDriver,
    Loaded,
    bgp_config,
    datapath,
    fake_bgp,
    fake_drivers,
    fake_table,
    pool,
    service,
)


def run(res: Sequence[Resource], drivers: Sequence[FakeDriver], state: Path, dry_run: bool = False,
        ) -> ReconcileResult:
    return reconcile(None, drivers, state, dry_run=dry_run, loaded=Loaded(tuple(res)),
                     table_builder=fake_table)


def config(n: int = 3) -> list[Resource]:
    return [datapath("eth0")] + [service(f"s{i}", vip=f"198.51.100.{i + 1}",
                                         endpoints=[f"10.0.{i}.1", f"10.0.{i}.2"]) for i in range(n)]


def test_apply_from_empty_then_noop(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    r = run(config(), [bpf, nl, ks], tmp_path)
    assert r.ok and r.verified and not r.dry_run
    assert r.plan.counts() == {"add": 13, "change": 0, "destroy": 0}  # 3 of them kernel settings
    assert r.writes == 13 and len(r.applied) == 13
    assert len(bpf.state["service"]) == 3 and len(nl.state["vip"]) == 3
    assert set(r.timings.as_dict()) == {"parse", "plan", "program", "verify", "total"}
    again = run(config(), [bpf, nl, ks], tmp_path)
    assert again.ok and again.plan.empty and again.writes == 0
    assert summary(again)["writes"] == 0


def test_batches_consecutive_changes_per_driver(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    run(config(), [bpf, nl, ks], tmp_path)
    assert len(bpf.calls) == 1 and len(nl.calls) == 1  # attach..service in one call, vips in one


def test_one_endpoint_edit_touches_only_that_service(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    run(config(), [bpf, nl, ks], tmp_path)
    edited = config()
    edited[2] = service("s1", vip="198.51.100.2", endpoints=["10.0.1.1"])
    r = run(edited, [bpf, nl, ks], tmp_path)
    assert r.ok and r.writes == 1
    assert [(c.action, c.kind, c.key) for c in r.applied] == [("update", "endpoints", "tcp/198.51.100.2:80")]


def test_dry_run_touches_nothing(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    r = run(config() + [pool("p", "203.0.113.0/30"), service("x", vip=None, pool="p")], [bpf, nl, ks],
            tmp_path, dry_run=True)
    assert r.ok and not r.verified and len(r.plan) == 16
    assert bpf.writes == nl.writes == ks.writes == 0 and not (tmp_path / "allocations.json").exists()


def test_invalid_config_touches_nothing(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    err = ConfigError("a.yaml", 3, 5, "Service", "web", "spec.vip", "not an IP address")
    r = reconcile(None, [bpf, nl, ks], tmp_path, dry_run=False, loaded=Loaded(tuple(config()), (err,)))
    assert not r.ok and r.errors == (err,) and r.plan.empty and bpf.calls == []


def test_exhausted_pool_touches_nothing(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    res = config() + [pool("p", "203.0.113.9/32", sharing="exclusive"),
                      service("x", vip=None, pool="p"), service("y", vip=None, pool="p")]
    r = run(res, [bpf, nl, ks], tmp_path)
    assert not r.ok and "Pool/p" in str(r.errors[0]) and "y" in str(r.errors[0])
    assert bpf.calls == [] and not (tmp_path / "allocations.json").exists()


def test_pool_allocations_persist_and_release(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    p = pool("p", "203.0.113.0/30", sharing="exclusive")
    run(config(0) + [p, service("b", vip=None, pool="p")], [bpf, nl, ks], tmp_path)
    assert "tcp/203.0.113.0:80" in bpf.state["service"]
    r = run(config(0) + [p, service("a", vip=None, pool="p"), service("b", vip=None, pool="p")],
            [bpf, nl, ks], tmp_path)
    assert r.ok and "tcp/203.0.113.1:80" in bpf.state["service"]  # 'a' sorts first but b keeps .0
    assert {a.vip for a in AllocationStore(tmp_path).load().values()} == {"203.0.113.0", "203.0.113.1"}
    run(config(0) + [p, service("a", vip=None, pool="p")], [bpf, nl, ks], tmp_path)
    assert set(AllocationStore(tmp_path).load()) == {"a"}


def test_store_lost_keeps_live_vips(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    p = pool("p", "203.0.113.0/30", sharing="exclusive")
    run(config(0) + [p, service("b", vip=None, pool="p")], [bpf, nl, ks], tmp_path)
    (tmp_path / "allocations.json").unlink()
    r = run(config(0) + [p, service("a", vip=None, pool="p"), service("b", vip=None, pool="p")],
            [bpf, nl, ks], tmp_path)
    assert r.allocations["b"].vip == "203.0.113.0" and r.allocations["a"].vip == "203.0.113.1"


def test_failure_midway_reports_and_next_run_converges(tmp_path: Path) -> None:
    bpf = FakeDriver({"service", "endpoints", "attach"}, fail_at=4, name="bpf")
    nl = FakeDriver({"vip"}, name="netlink")
    ks = FakeDriver({"sysctl"}, name="sysctl")
    r = run(config(), [bpf, nl, ks], tmp_path)
    assert not r.ok and r.failure is not None and "injected failure" in r.failure.message
    assert len(r.failure.applied) == 7 and len(r.failure.not_applied) == 6
    assert [c.kind for c in r.failure.applied] == ["sysctl"] * 3 + ["attach", "endpoints", "endpoints",
                                                                    "endpoints"]
    assert summary(r)["failure"]["not_applied"][0] == "+ service tcp/198.51.100.1:80"
    bpf.fail_at = None
    again = run(config(), [bpf, nl, ks], tmp_path)
    assert again.ok and len(again.applied) == 6
    assert run(config(), [bpf, nl, ks], tmp_path).writes == 0


class LossyDriver(FakeDriver):
    """Accepts changes but loses VIP creates (verification must catch it)."""

    def apply(self, changes: Sequence[Change]) -> None:
        super().apply([c for c in changes if c.action != "create"])


def test_verify_reports_leftover(tmp_path: Path) -> None:
    bpf, _, _ = fake_drivers()
    r = run(config(1), [bpf, LossyDriver({"vip"})], tmp_path)
    assert not r.ok and r.leftover is not None
    assert [(c.kind, c.key) for c in r.leftover.changes] == [("vip", "198.51.100.1")]


def test_a_vip_is_announced_only_once_its_entries_and_address_read_back(tmp_path: Path) -> None:
    """A VIP address that did not take: the announcement is not made, and the apply says why."""
    bpf, _, ks = fake_drivers()
    bgp = fake_bgp()
    res = config(1) + [bgp_config(), service("b", vip="198.51.100.9", bgp=True)]
    r = run(res, [bpf, LossyDriver({"vip"}), ks, bgp], tmp_path)
    assert r.failure is not None and "not announcing 198.51.100.9" in r.failure.message
    assert not bgp.state["announce"] and bgp.state["bgp-global"]  # the speaker is up, the VIP not announced
    nl = FakeDriver({"vip"}, name="netlink")
    r = run(res, [bpf, nl, ks, bgp], tmp_path)
    assert r.ok and set(bgp.state["announce"]) == {"198.51.100.9/32"}


def test_unmanaged_kinds_are_warnings(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    r = run(config(1) + [bgp_config(), service("b", vip="198.51.100.9", bgp=True)], [bpf, nl, ks], tmp_path)
    assert r.ok and r.warnings == (
        "1 announce record(s) not applied: no driver manages 'announce' on this box "
        "(VIPs with bgp: true are not announced)",
        "1 bgp-global record(s) not applied: no driver manages 'bgp-global' on this box "
        "(the BGPConfig starts no BGP speaker)")


def test_partly_supported_records_are_warnings_and_probes_are_not(tmp_path: Path) -> None:
    """What the box accepts but does not carry out is said, grouped, never silent (probes run
    in lbctl watch: no warning)."""
    bpf, nl, ks = fake_drivers()

    def unsupported(record: object) -> str | None:
        mode = getattr(record, "mode", "default")
        return None if mode == "default" else f"mode {mode} is not implemented yet"

    bpf.unsupported = unsupported  # type: ignore[attr-defined]
    res = config(1) + [service(f"f{i}", vip=f"198.51.100.{20 + i}", mode="fullnat") for i in range(7)]
    res.append(service("probed", vip="198.51.100.40", probe=Probe(type="tcp", port=80)))
    r = run(res, [bpf, nl, ks], tmp_path)
    assert r.ok and r.warnings == (
        "mode fullnat is not implemented yet: f0 (tcp/198.51.100.20:80), f1 (tcp/198.51.100.21:80), "
        "f2 (tcp/198.51.100.22:80), f3 (tcp/198.51.100.23:80), f4 (tcp/198.51.100.24:80) and 2 more",
    )
    assert len(bpf.state["service"]) == 9  # warnings never stop the apply


def test_apply_plan_to_fakes_matches_pure_model(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    run(config(5), [bpf, nl, ks], tmp_path)
    live = {**bpf.read(), **nl.read(), **ks.read()}
    from reconciler.desired import compile_state
    desired = compile_state(config(2) + [service("z", vip="198.51.100.200")])
    plan = diff(desired, live)
    apply_plan(plan, [bpf, nl, ks])
    assert diff(desired, {**bpf.read(), **nl.read(), **ks.read()}).empty
    assert diff(empty_state(), empty_state()).empty


def test_endpoint_health_reaches_the_plan(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    assert run(config(1), [bpf, nl, ks], tmp_path).ok
    r = reconcile(None, [bpf, nl, ks], tmp_path, dry_run=False, loaded=Loaded(tuple(config(1))),
                  table_builder=fake_table, health={("s0", "10.0.0.2"): False})
    assert r.ok and [(c.action, c.kind) for c in r.applied] == [("update", "endpoints")]
    backends = bpf.state["endpoints"]["tcp/198.51.100.1:80"].backends  # type: ignore[union-attr]
    assert [(b.address, b.weight) for b in backends] == [("10.0.0.1", 1), ("10.0.0.2", 0)]
    # With the daemon's record of that health in the state dir, health=None (the CLI) plans nothing;
    # without it, the plan puts the endpoint back.
    health_store.save(tmp_path, {("s0", "10.0.0.2"): False})
    planned = run(config(1), [bpf, nl, ks], tmp_path, dry_run=True)
    assert planned.plan.counts() == {"add": 0, "change": 0, "destroy": 0}
    assert any("1 endpoint(s) kept out of selection" in w and "s0/10.0.0.2" in w for w in planned.warnings)
    (tmp_path / health_store.FILE).unlink()
    assert run(config(1), [bpf, nl, ks], tmp_path).plan.counts() == {"add": 0, "change": 1, "destroy": 0}


def test_driver_notices_reach_the_result_once(tmp_path: Path) -> None:
    """What a driver did on its own (a layout migration) is said by apply and the daemon."""
    class Migrating(FakeDriver):
        def __init__(self) -> None:
            super().__init__(BPF_KINDS, name="bpf")
            self.pending = ["migrated the pinned datapath to layout v2 live"]

        def notices(self) -> list[str]:
            out, self.pending = self.pending, []
            return out

    _, nl, ks = fake_drivers()
    first = run(config(), [Migrating(), nl, ks], tmp_path)
    assert first.notices == ("migrated the pinned datapath to layout v2 live",)
    assert summary(first)["notices"] == list(first.notices)


def test_a_fullnat_source_off_the_box_is_refused_before_anything_is_applied(tmp_path: Path) -> None:
    """Endpoints would answer an address that reaches no box: refused, never black-holed."""
    bpf, nl, ks = fake_drivers()
    nl.box_addresses = lambda: frozenset({"192.0.2.1"})  # type: ignore[attr-defined]
    lost = service("lost", vip="198.51.100.30", mode="fullnat", source_address="192.0.2.77")
    r = run(config(1) + [lost], [bpf, nl, ks], tmp_path)
    assert [(e.name, e.path) for e in r.errors] == [("lost", "spec.sourceAddress")]
    assert not bpf.state["service"], "nothing is applied"
    ok = service("ok", vip="198.51.100.30", mode="fullnat", source_address="192.0.2.1")
    r = run(config(1) + [ok], [bpf, nl, ks], tmp_path)
    assert r.ok and bpf.state["service"]["tcp/198.51.100.30:80"].source_address == "192.0.2.1"


class KeyReadingDriver(FakeDriver):
    """Reads single keys (KeyReader) and counts full reads and the keys read."""

    def __init__(self, *a: object, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.full_reads = 0
        self.keys_read: list[str] = []

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        self.full_reads += 1
        return super().read()

    def read_keys(self, kind: str, keys: Collection[str]) -> Mapping[str, Record]:
        self.keys_read += list(keys)
        return {k: self.state[kind][k] for k in keys if k in self.state[kind]}


def test_verify_reads_back_just_what_a_small_plan_changed(tmp_path: Path) -> None:
    bpf = KeyReadingDriver(BPF_KINDS, name="bpf")
    _, nl, ks = fake_drivers()
    assert run(config(8), [bpf, nl, ks], tmp_path).ok
    bpf.full_reads, bpf.keys_read = 0, []
    res = config(8)
    res[1] = service("s0", vip="198.51.100.1", endpoints=["10.0.0.1", "10.0.0.9"])  # one endpoint set
    r = run(res, [bpf, nl, ks], tmp_path)
    assert r.ok and [c.kind for c in r.applied] == ["endpoints"]
    assert bpf.full_reads == 1  # the plan's read; the verify read one key
    assert bpf.keys_read == ["tcp/198.51.100.1:80"]


def test_a_targeted_verify_still_finds_what_did_not_take(tmp_path: Path) -> None:
    class Lossy(KeyReadingDriver):
        def apply(self, changes: Sequence[Change]) -> None:
            super().apply([c for c in changes if c.kind != "endpoints" or c.action != "update"])

    bpf = Lossy(BPF_KINDS, name="bpf")
    _, nl, ks = fake_drivers()
    assert run(config(8), [bpf, nl, ks], tmp_path).ok
    res = config(8)
    res[1] = service("s0", vip="198.51.100.1", endpoints=["10.0.0.1", "10.0.0.9"])
    r = run(res, [bpf, nl, ks], tmp_path)
    assert not r.ok and r.leftover is not None
    assert [(c.kind, c.key) for c in r.leftover.changes] == [("endpoints", "tcp/198.51.100.1:80")]
