"""``plan`` (and ``apply``) over a capacity: refused from the configuration alone, drivers untouched.

The same load as ``validate`` runs first (``tests/reconciler/config/test_capacity.py`` covers every
capacity there); here: the refusal happens before any driver is read or written, and a capacity
change a driver reports during a dry run (the maps would be re-created) reaches the plan's result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import pytest

from reconciler.apply import reconcile
from reconciler.model import DatapathCapacities
from reconciler.records import Record
from tests.reconciler.fakes import BPF_KINDS, FakeDriver, fake_drivers, fake_table


class Untouchable(FakeDriver):
    def read(self) -> Mapping[str, Mapping[str, Record]]:
        raise AssertionError("a configuration over a capacity must be refused before the box is read")


def write(conf: Path, endpoints_capacity: int) -> None:
    conf.mkdir(exist_ok=True)
    (conf / "00-dp.yaml").write_text(
        "apiVersion: lbctl.dev/v1alpha1\nkind: Datapath\nmetadata: {name: box}\n"
        f"spec:\n  interfaces: [eth0]\n  capacities: {{endpoints: {endpoints_capacity}}}\n")
    (conf / "web.yaml").write_text(
        "apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n"
        "spec:\n  vip: 198.51.100.1\n  ports: [{port: 80}, {port: 443}]\n"
        "  endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]\n")


@pytest.mark.parametrize("dry_run", [True, False], ids=["plan", "apply"])
def test_over_a_capacity_nothing_is_read_or_written(tmp_path: Path, dry_run: bool) -> None:
    write(tmp_path / "conf", endpoints_capacity=3)  # 2 ports x 2 endpoints = 4 counters
    drivers = [Untouchable(BPF_KINDS, name="bpf"), Untouchable({"vip"}, name="netlink"),
               Untouchable({"sysctl"}, name="sysctl")]
    r = reconcile(tmp_path / "conf", drivers, tmp_path, dry_run=dry_run, table_builder=fake_table)
    assert not r.ok and r.plan.empty and not r.applied
    (err,) = r.errors
    assert (err.kind, err.name, err.path) == ("Service", "web", "spec.endpoints")
    assert "needs 4 endpoint counters" in str(err) and "capacity is 3 (spec.capacities.endpoints)" in str(err)
    assert all(d.writes == 0 and not d.calls for d in drivers)


def test_a_capacity_change_a_driver_reports_in_a_dry_run_reaches_the_plan(tmp_path: Path) -> None:
    class Resizing(FakeDriver):
        def notices(self) -> list[str]:
            return ["capacities change: endpoints 131,072 -> 262,144; apply re-creates maps ..."]

    write(tmp_path / "conf", endpoints_capacity=262144)
    _, nl, ks = fake_drivers()
    r = reconcile(tmp_path / "conf", [Resizing(BPF_KINDS, name="bpf"), nl, ks], tmp_path, dry_run=True,
                  table_builder=fake_table)
    assert r.ok and r.dry_run and r.notices == ("capacities change: endpoints 131,072 -> 262,144; "
                                                "apply re-creates maps ...",)


def test_a_driver_rebuilt_for_new_capacities_closes_the_one_it_replaces() -> None:
    """The daemon's bpf driver is rebuilt when the Datapath's capacities change (a driver
    setting); the old one's handles on the replaced maps are let go at once."""
    from reconciler.driver import DriverSet, DriverSpec
    from reconciler.drivers.registry import capacities_of
    from tests.reconciler.fakes import datapath

    built: list[Closing] = []

    class Closing(FakeDriver):
        closed = False

        def close(self) -> None:
            self.closed = True

    def build(_box: object, settings: object) -> Closing:
        built.append(Closing(BPF_KINDS, name=f"bpf {settings}"))
        return built[-1]

    drivers = DriverSet([DriverSpec("bpf", BPF_KINDS, build, settings=capacities_of)], None)
    small, big = datapath("eth0"), datapath("eth0")
    big = dataclasses.replace(big, spec=dataclasses.replace(
        big.spec, capacities=DatapathCapacities(services=131072)))  # type: ignore[arg-type]
    drivers.select([small])
    drivers.select([small])
    assert len(built) == 1 and not built[0].closed
    drivers.select([big])
    assert len(built) == 2 and built[0].closed and not built[1].closed
