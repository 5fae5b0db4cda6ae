"""The driver contract's core side: abilities by protocol, and the drivers chosen per desired state.

A BGP driver does not exist yet; an in-memory one registered the way it will be
(``needed=has_kind("BGPConfig")``) proves that a BGPConfig brings a driver up and
removing it takes the driver down, through ``reconcile`` and through the daemon.
"""

from __future__ import annotations

import ast
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import reconciler
from reconciler.apply import ReconcileResult, reconcile
from reconciler.driver import (
    ConnCountSync,
    ConntrackReader,
    CounterReader,
    DriverSet,
    DriverSpec,
    KeyReader,
    PartialSupport,
    Teardown,
    has_kind,
)
from reconciler.errors import LbctlError
from reconciler.logs import EventLog
from reconciler.model import Resource
from reconciler.plan import Change
from reconciler.records import Record
from reconciler.watch import Daemon, Options
from reconciler.watch_engine import ReconcileEngine
from tests.reconciler.fakes import (
    FakeDriver,
    Loaded,
    bgp_config,
    bgp_peer,
    datapath,
    fake_bgp,
    fake_drivers,
    fake_specs,
    fake_table,
    service,
)


def run(res: Sequence[Resource], drivers: DriverSet, state: Path, dry_run: bool = False) -> ReconcileResult:
    return reconcile(None, drivers, state, dry_run=dry_run, loaded=Loaded(tuple(res)),
                     table_builder=fake_table)


def with_bgp() -> list[Resource]:
    return [datapath("eth0"), service("web", bgp=True), bgp_config(), bgp_peer("up", "192.0.2.254")]


def without_bgp() -> list[Resource]:
    return [datapath("eth0"), service("web")]


class Minimal:
    """A driver with no optional ability."""

    kinds = frozenset({"vip"})
    writes = 0

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        return {"vip": {}}

    def apply(self, changes: Sequence[Change]) -> None:
        pass


# --- abilities ---------------------------------------------------------------------------------


def test_abilities_are_protocols_not_attribute_probes() -> None:
    abilities = (Teardown, PartialSupport, KeyReader, CounterReader, ConntrackReader, ConnCountSync)
    assert not any(isinstance(Minimal(), a) for a in abilities)
    fake = FakeDriver({"vip"})
    assert isinstance(fake, Teardown) and not isinstance(fake, KeyReader)


def test_the_core_never_imports_the_drivers_package() -> None:
    """Layering: only the registry's users (the commands) and the drivers themselves may."""
    root = Path(reconciler.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("drivers", "commands") or rel.name == "cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "reconciler.drivers" or n.startswith("reconciler.drivers.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


# --- the set of drivers ------------------------------------------------------------------------


def test_a_bgpconfig_brings_the_bgp_driver_up_and_removing_it_takes_it_down(tmp_path: Path) -> None:
    bpf, nl, ks = fake_drivers()
    bgp = fake_bgp()
    drivers = DriverSet(fake_specs([bpf, nl, ks, bgp]))
    first = run(without_bgp(), drivers, tmp_path)
    assert first.ok and bgp not in drivers.active and not bgp.calls
    up = run(with_bgp(), drivers, tmp_path)
    assert up.ok and bgp in drivers.active
    assert set(bgp.state["bgp-peer"]) == {"192.0.2.254"}
    assert set(bgp.state["announce"]) == {"198.51.100.10/32"}
    # Removing the BGPConfig: the plan withdraws and removes what the driver holds, then it goes down.
    plan = run(without_bgp(), drivers, tmp_path, dry_run=True)
    assert sorted(f"{c.symbol} {c.kind} {c.key}" for c in plan.plan.changes) == [
        "- announce 198.51.100.10/32", "- bgp-global global", "- bgp-peer 192.0.2.254"]
    assert not bgp.downed and bgp.state["announce"]  # a plan takes nothing away
    down = run(without_bgp(), drivers, tmp_path)
    assert down.ok and down.verified and len(down.applied) == 3
    assert bgp.downed and bgp not in drivers.active
    again = run(without_bgp(), drivers, tmp_path)
    # three calls: speaker and peer, then the announcement (after its VIP read back), then the teardown
    assert again.ok and again.plan.empty and len(bgp.calls) == 3 and bgp not in drivers.active


def test_a_fresh_process_takes_away_a_driver_left_up_by_an_earlier_configuration(tmp_path: Path) -> None:
    """``lbctl apply`` builds a new set each run: an unneeded driver still holding records is leaving."""
    bpf, nl, ks = fake_drivers()
    bgp = fake_bgp()
    run(with_bgp(), DriverSet(fake_specs([bpf, nl, ks, bgp])), tmp_path)
    bgp.downed = False
    fresh = DriverSet(fake_specs([bpf, nl, ks, bgp]))
    r = run(without_bgp(), fresh, tmp_path)
    assert r.ok and {c.kind for c in r.applied} == {"announce", "bgp-global", "bgp-peer"} and bgp.downed
    assert bgp.read() == {"bgp-global": {}, "bgp-peer": {}, "announce": {}}
    # An unneeded driver with nothing live is left alone.
    bgp.downed = False
    r = run(without_bgp(), DriverSet(fake_specs([bpf, nl, ks, bgp])), tmp_path)
    assert r.ok and r.plan.empty and not bgp.downed


def test_a_failed_teardown_is_a_failure_and_the_next_run_retries(tmp_path: Path) -> None:
    class Stuck(FakeDriver):
        fail = True

        def down(self) -> None:
            if self.fail:
                raise LbctlError("gobgpd does not stop", hint="look at it")
            super().down()

    bpf, nl, ks = fake_drivers()
    bgp = Stuck({"bgp-peer", "announce"}, name="bgp")
    drivers = DriverSet(fake_specs([bpf, nl, ks, bgp]))
    run(with_bgp(), drivers, tmp_path)
    r = run(without_bgp(), drivers, tmp_path)
    assert not r.ok and r.failure is not None
    assert "taking the bgp driver away failed: gobgpd does not stop" in r.failure.message
    bgp.fail = False
    r = run(without_bgp(), drivers, tmp_path)
    assert r.ok and bgp.downed


def test_drivers_are_built_once_and_again_when_their_settings_change(tmp_path: Path) -> None:
    built: list[str] = []

    def netlink(box: object, ifname: object) -> FakeDriver:
        built.append(str(ifname))
        return FakeDriver({"vip"}, name="netlink")

    def vip_if(resources: Sequence[Resource]) -> str:
        return next((r.spec.vip_interface for r in resources if r.kind == "Datapath"), "lbctl0")  # type: ignore[union-attr]

    drivers = DriverSet([DriverSpec("netlink", frozenset({"vip"}), netlink, settings=vip_if)])
    res = [datapath("eth0"), service("web")]
    drivers.select(res)
    drivers.select(res)
    assert built == ["lbctl0"] and drivers.current_for(res)
    moved = [datapath("eth0", vip_interface="vips0"), service("web")]
    assert not drivers.current_for(moved)
    drivers.select(moved)
    assert built == ["lbctl0", "vips0"]
    assert [type(d).__name__ for d in drivers.every({"netlink": "other0"})] == ["FakeDriver"]
    assert built[-1] == "other0"


def test_a_driver_must_own_what_its_entry_says() -> None:
    wrong = DriverSet([DriverSpec("bpf", frozenset({"service"}), lambda box, s: FakeDriver({"vip"}))])
    with pytest.raises(LbctlError, match="owns \\['vip'\\] but is registered for \\['service'\\]"):
        wrong.select([])
    with pytest.raises(LbctlError, match="two drivers claim record kind 'vip': a and b"):
        DriverSet([DriverSpec("a", frozenset({"vip"}), lambda box, s: Minimal()),
                   DriverSpec("b", frozenset({"vip"}), lambda box, s: Minimal())])


def test_an_unneeded_driver_that_cannot_be_built_is_not_up() -> None:
    def broken(box: object, settings: object) -> FakeDriver:
        raise LbctlError("the bgp driver cannot be loaded: no module named grpc")

    drivers = DriverSet([DriverSpec("bgp", frozenset({"announce"}), broken, needed=has_kind("BGPConfig"))])
    assert drivers.select([service("web")]).all == ()
    with pytest.raises(LbctlError, match="cannot be loaded"):
        drivers.select([bgp_config()])


def test_the_daemon_brings_the_bgp_driver_up_and_down_with_the_bgpconfig(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    head = "apiVersion: lbctl.dev/v1alpha1\n"
    def svc(name: str, vip: str, bgp: bool) -> str:
        return (f"{head}kind: Service\nmetadata: {{name: {name}}}\nspec:\n  vip: {vip}\n"
                f"  bgp: {str(bgp).lower()}\n  ports: [{{port: 80}}]\n  endpoints: [{{address: 10.0.0.1}}]\n")

    (conf / "web.yaml").write_text(svc("web", "198.51.100.1", False))
    bgp_yaml = (f"{head}kind: BGPConfig\nmetadata: {{name: bgp}}\n"
                "spec: {localAS: 65001, routerID: 192.0.2.1}\n"
                f"---\n{head}kind: BGPPeer\nmetadata: {{name: up}}\n"
                "spec: {address: 192.0.2.254, remoteAS: 65000}\n"
                f"---\n{svc('api', '198.51.100.2', True)}")
    bpf, nl, ks = fake_drivers()
    bgp = fake_bgp()
    engine = ReconcileEngine(conf, tmp_path / "state", DriverSet(fake_specs([bpf, nl, ks, bgp])))
    daemon = Daemon(Options(directory=str(conf)), engine, EventLog("kv", io.StringIO()))
    daemon.cycle("startup")
    assert daemon.ready() and bgp not in engine.drivers.active
    (conf / "bgp.yaml").write_text(bgp_yaml)
    daemon.cycle("delivery")
    last = daemon.snapshot().last_reconcile
    assert last is not None and last.result == "ok" and last.mode == "full"
    assert set(bgp.state["announce"]) == {"198.51.100.2/32"} and bgp in engine.drivers.active
    # A Service-only edit keeps the incremental path (the drivers needed did not change).
    (conf / "web.yaml").write_text((conf / "web.yaml").read_text().replace("10.0.0.1", "10.0.0.2"))
    daemon.cycle("delivery")
    last = daemon.snapshot().last_reconcile
    assert last is not None and last.result == "ok" and last.mode == "incremental"
    (conf / "bgp.yaml").unlink()
    daemon.cycle("delivery")
    last = daemon.snapshot().last_reconcile
    assert last is not None and last.result == "ok" and last.deleted == 6  # api's 3, announce, peer, speaker
    assert bgp.downed and bgp not in engine.drivers.active
    assert bgp.read() == {"bgp-global": {}, "bgp-peer": {}, "announce": {}}
