"""Reconcile on the real datapath: real maps and programs, real addresses, a real netns.

Each test gets its own network namespace (with a veth pair to attach to), its
own pin root under bpffs and its own state dir, and removes all of them.
Marked ``root``: skipped on a laptop without root/bpffs, a failure in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.apply import ReconcileResult, read_live, reconcile
from reconciler.driver import Driver
from reconciler.drivers.registry import build_drivers
from tests.testbed import vip_routes

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]

DATAPATH = """\
apiVersion: lbctl.dev/v1alpha1
kind: Datapath
metadata: {name: box}
spec: {interfaces: [eth0]}
"""


def service_yaml(name: str, vip: str, endpoints: list[str], port: int = 80, selection: str = "rr") -> str:
    eps = ", ".join(f"{{address: {e}}}" for e in endpoints)
    return (f"apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n"
            f"  vip: {vip}\n  ports: [{{port: {port}, protocol: TCP, targetPort: 8080}}]\n"
            f"  selection: {selection}\n  endpoints: [{eps}]\n")


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


@dataclass
class Box:
    netns: str
    state: Path
    pins: Path
    conf: Path

    @property
    def common(self) -> list[str]:
        return ["--netns", self.netns, "--state-dir", str(self.state.parent),
                "--pin-root", str(self.pins.parent)]

    def ctx(self) -> Any:
        return cli.context_from(cli.build_parser().parse_args(["plan", *self.common]))

    def drivers(self) -> list[Driver]:
        return build_drivers(self.ctx())

    def lbctl(self, *argv: str) -> int:
        return cli.main([*argv, *self.common])

    def reconcile(self, drivers: list[Driver], dry_run: bool = False) -> ReconcileResult:
        return reconcile(self.conf, drivers, self.state, dry_run=dry_run)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    pytest.importorskip("reconciler.drivers.bpf", reason="the bpf driver is not in this tree yet")
    name = f"lbt-rc-{uuid.uuid4().hex[:8]}"
    pin_base = Path("/sys/fs/bpf") / f"lbctl-test-{name}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "eth0p", "up")
        conf = tmp_path / "conf"
        conf.mkdir()
        (conf / "00-datapath.yaml").write_text(DATAPATH)
        b = Box(name, tmp_path / "state" / name, pin_base / name, conf)
        yield b
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(pin_base, ignore_errors=True)


def write_services(box: Box, n: int, per_file: int = 1) -> None:
    for i in range(n):
        (box.conf / f"svc-{i}.yaml").write_text(
            service_yaml(f"svc-{i}", f"198.51.100.{i + 1}", [f"10.0.{i}.1", f"10.0.{i}.2"]))


def bpf_of(drivers: list[Driver]) -> Driver:
    return next(d for d in drivers if "service" in d.kinds)


def test_apply_from_empty_then_noop_with_zero_writes(box: Box) -> None:
    write_services(box, 3)
    assert box.lbctl("apply", str(box.conf)) == 0
    assert box.lbctl("plan", str(box.conf), "--detailed-exitcode") == 0
    assert "local 198.51.100.1 " in vip_routes(box.netns, "lbctl0")
    drivers = box.drivers()
    before = [d.writes for d in drivers]
    r = box.reconcile(drivers)
    assert r.ok and r.verified and r.plan.empty
    assert r.writes == 0 and [d.writes for d in drivers] == before


def test_one_endpoint_edit_changes_only_that_service(box: Box) -> None:
    write_services(box, 5)
    assert box.lbctl("apply", str(box.conf)) == 0
    drivers = box.drivers()
    live_before = read_live(drivers)
    (box.conf / "svc-2.yaml").write_text(service_yaml("svc-2", "198.51.100.3", ["10.0.2.1", "10.0.2.9"]))
    r = box.reconcile(drivers)
    assert r.ok and r.verified
    assert [(c.action, c.kind, c.key) for c in r.applied] == [("update", "endpoints", "tcp/198.51.100.3:80")]
    # the inactive slot's list and table, the conf publish: a handful, independent of the service count
    assert 0 < bpf_of(drivers).writes <= 10, f"{bpf_of(drivers).writes} map writes for one endpoint swap"
    live_after = read_live(drivers)
    for kind in live_before:
        for key, rec in live_before[kind].items():
            if (kind, key) != ("endpoints", "tcp/198.51.100.3:80"):
                assert live_after[kind][key] == rec


def test_deleting_a_file_removes_exactly_its_objects(box: Box) -> None:
    write_services(box, 3)
    assert box.lbctl("apply", str(box.conf)) == 0
    (box.conf / "svc-1.yaml").unlink()
    drivers = box.drivers()
    r = box.reconcile(drivers)
    assert r.ok and r.verified
    assert sorted((c.action, c.kind, c.key) for c in r.applied) == [
        ("delete", "endpoints", "tcp/198.51.100.2:80"), ("delete", "service", "tcp/198.51.100.2:80"),
        ("delete", "vip", "198.51.100.2")]
    live = read_live(drivers)
    assert sorted(live["service"]) == ["tcp/198.51.100.1:80", "tcp/198.51.100.3:80"]


def test_maglev_service_roundtrips(box: Box) -> None:
    (box.conf / "m.yaml").write_text(service_yaml("m", "198.51.100.50", [f"10.9.0.{i}" for i in range(1, 6)],
                                                  selection="maglev"))
    assert box.lbctl("apply", str(box.conf)) == 0
    assert box.lbctl("plan", str(box.conf), "--detailed-exitcode") == 0


def test_export_roundtrips(box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_services(box, 3)
    assert box.lbctl("apply", str(box.conf)) == 0
    capsys.readouterr()
    out = tmp_path / "exported"
    assert box.lbctl("export", "--dir", str(out)) == 0
    assert box.lbctl("validate", str(out)) == 0
    assert box.lbctl("plan", str(out), "--detailed-exitcode") == 0


def test_get_services_json(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    write_services(box, 2)
    assert box.lbctl("apply", str(box.conf)) == 0
    capsys.readouterr()
    assert box.lbctl("get", "services", "-o", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["ext_ip"] for r in rows] == ["198.51.100.1", "198.51.100.2"]


def test_down_leaves_nothing(box: Box) -> None:
    write_services(box, 3)
    assert box.lbctl("apply", str(box.conf)) == 0
    assert any(box.pins.rglob("*"))
    assert box.lbctl("down") == 0
    assert not box.pins.exists() or not any(box.pins.rglob("*")), list(box.pins.rglob("*"))
    assert "lbctl0" not in sh("ip", "-n", box.netns, "-o", "link")
    assert "bpf" not in sh("ip", "netns", "exec", box.netns, "tc", "filter", "show", "dev", "eth0", "ingress",
                           check=False)
    assert "xdp" not in sh("ip", "-n", box.netns, "-d", "link", "show", "eth0")
    assert not box.state.exists()
    # the --netns box's subdirectories went, and so did the (now empty) bases they were in
    assert not box.pins.parent.exists() and not box.state.parent.exists()
    assert box.lbctl("down") == 0
    assert os.path.exists(f"/var/run/netns/{box.netns}")


def test_down_finds_a_non_default_vip_interface_without_being_told(box: Box) -> None:
    """The VIP interface comes from the last applied configuration: `lbctl down` alone removes it."""
    custom = DATAPATH.replace("spec: {interfaces: [eth0]}", "spec: {interfaces: [eth0], vipInterface: vips7}")
    (box.conf / "00-datapath.yaml").write_text(custom)
    write_services(box, 2)
    assert box.lbctl("apply", str(box.conf)) == 0
    assert "local 198.51.100.1 " in vip_routes(box.netns, "vips7")
    assert box.lbctl("down") == 0
    links = sh("ip", "-n", box.netns, "-o", "link", "show")
    assert "vips7" not in links and "lbctl0" not in links


def test_down_removes_pins_of_another_layout(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    """The layout check sends the operator to `lbctl down`: it must work on such pins."""
    from reconciler.drivers import _libbpf as B

    write_services(box, 2)
    assert box.lbctl("apply", str(box.conf)) == 0
    assert "bpf" in sh("ip", "netns", "exec", box.netns, "tc", "filter", "show", "dev", "eth0", "ingress")
    # A layout no migration converts: lb_be_conns pinned as a per-CPU array (lb_stats).
    stats = box.pins / "lb_stats"
    fd = B.obj_get(str(stats))
    try:
        os.unlink(box.pins / "lb_be_conns")
        B.obj_pin(fd, str(box.pins / "lb_be_conns"))
    finally:
        os.close(fd)
    assert box.lbctl("plan", str(box.conf)) == 1
    assert "lbctl down" in capsys.readouterr().err
    assert box.lbctl("down") == 0
    out = capsys.readouterr().out
    assert out.startswith("lbctl is down: removed 2 vip and a datapath this lbctl cannot read "
                          "(the maps pinned under "), out
    assert not box.pins.exists() or not any(box.pins.rglob("*")), list(box.pins.rglob("*"))
    assert "bpf" not in sh("ip", "netns", "exec", box.netns, "tc", "filter", "show", "dev", "eth0", "ingress",
                           check=False)
    assert "lbctl0" not in sh("ip", "-n", box.netns, "-o", "link")
    assert not box.state.exists()
    assert box.lbctl("apply", str(box.conf)) == 0  # a fresh start works


def test_down_detaches_xdp(box: Box) -> None:
    (box.conf / "00-datapath.yaml").write_text(DATAPATH.replace("{interfaces: [eth0]}",
                                                                "{interfaces: [eth0], hook: xdp}"))
    write_services(box, 1)
    assert box.lbctl("apply", str(box.conf)) == 0
    assert "xdp" in sh("ip", "-n", box.netns, "-d", "link", "show", "eth0")
    assert box.lbctl("down") == 0
    assert "xdp" not in sh("ip", "-n", box.netns, "-d", "link", "show", "eth0")
    assert not box.pins.exists() or not any(box.pins.rglob("*"))


def test_get_conntrack_and_endpoints(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    write_services(box, 1)
    assert box.lbctl("apply", str(box.conf)) == 0
    capsys.readouterr()
    assert box.lbctl("get", "conntrack", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == []  # no traffic yet: an empty table, not "not available"
    assert box.lbctl("get", "endpoints") == 0
    out = capsys.readouterr().out
    assert "10.0.0.1" in out and "10.0.0.2" in out and "8080" in out


def test_reattaching_after_the_filter_was_deleted_succeeds(box: Box) -> None:
    """Issue 9 item 3: a fresh ``lbctl apply`` re-attaches a deleted tc filter without EBADF."""
    write_services(box, 1)
    assert box.lbctl("apply", str(box.conf)) == 0
    sh("tc", "-n", box.netns, "filter", "del", "dev", "eth0", "ingress")
    assert box.lbctl("plan", str(box.conf), "--detailed-exitcode") == 2
    assert box.lbctl("apply", str(box.conf)) == 0
    assert "lb_tc" in sh("tc", "-n", box.netns, "filter", "show", "dev", "eth0", "ingress")
    assert box.lbctl("plan", str(box.conf), "--detailed-exitcode") == 0


def test_fullnat_source_must_be_an_address_of_the_box(box: Box, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 13: endpoints answer the source address; one the box does not hold is refused."""
    (box.conf / "svc.yaml").write_text(
        service_yaml("nat", "198.51.100.1", ["10.0.0.1"])
        + "  mode: fullnat\n  sourceAddress: 192.0.2.7\n")
    assert box.lbctl("apply", str(box.conf)) == 1
    err = capsys.readouterr()
    assert "spec.sourceAddress: source address 192.0.2.7 is neither an address of this box nor in a Pool" in (
        err.out + err.err)
    assert not os.path.exists(box.pins), "nothing was applied"
    sh("ip", "-n", box.netns, "addr", "add", "192.0.2.7/32", "dev", "lo")
    assert box.lbctl("apply", str(box.conf)) == 0
    (rec,) = read_live(box.drivers())["service"].values()
    assert (rec.mode, rec.source_address) == ("fullnat", "192.0.2.7")
