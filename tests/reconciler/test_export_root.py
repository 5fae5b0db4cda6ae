"""``lbctl export`` on the real datapath: export -> validate -> empty plan, in awkwardly named namespaces.

Every kind and field the README documents (``export_cases.EVERYTHING``: XDP
on one interface, VIPs on ``vips0``, pools, ICMP, port ranges, SCTP
secondary VIPs, BGP, firewall, probes) is applied with ``lbctl apply`` in a
namespace whose name has '_', capitals and dots, then exported three ways
(stdout, ``--dir``, ``--live``) and each export must validate (after the
operator puts the BGP password in for the placeholder, see
``commands/test_export_command.py``) and plan empty against the box.
Marked ``root``: skipped on a laptop, a failure in CI.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.applied import RECORD_NAME
from reconciler.model import SECRET_PLACEHOLDER
from tests.reconciler.drivers.test_contract import stop_gobgpd
from tests.reconciler.export_cases import fill_secrets, write
from tests.testbed import vip_routes

pytestmark = pytest.mark.root

Cap = pytest.CaptureFixture[str]


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@dataclass
class Box:
    netns: str
    tmp: Path
    pin_root: Path

    @property
    def state(self) -> Path:
        return self.tmp / "state" / self.netns

    def __call__(self, *argv: str) -> int:
        return cli.main([*argv, "--netns", self.netns, "--state-dir", str(self.tmp / "state"),
                         "--pin-root", str(self.pin_root)])


@pytest.fixture(params=["lbt-ex_Lb.{}", "Lbt-EX.{}_box.example"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    pytest.importorskip("reconciler.drivers.bpf", reason="the bpf driver is not in this tree yet")
    tag = uuid.uuid4().hex[:8]
    name = request.param.format(tag)
    pin_root = Path("/sys/fs/bpf") / f"lbctl-test-ex-{tag}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        for ifname in ("eth0", "eth1"):
            sh("ip", "-n", name, "link", "set", ifname, "up")
        # The BGPConfig's listen addresses: gobgpd binds them.
        sh("ip", "-n", name, "addr", "add", "192.0.2.1/32", "dev", "eth0")
        sh("ip", "-n", name, "addr", "add", "2001:db8::1/128", "dev", "eth0", "nodad")
        yield Box(name, tmp_path, pin_root)
    finally:
        stop_gobgpd(tmp_path / "state" / name, name)  # the box's gobgpd (its BGPConfig)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(pin_root, ignore_errors=True)


def round_trip(box: Box, directory: Path, capsys: Cap, *, secret: bool) -> None:
    if secret:
        assert box("validate", str(directory)) == 1  # the password placeholder, and nothing else
        said = "".join(capsys.readouterr())
        assert "spec.password: is the placeholder" in said and "1 error in" in said
        for f in directory.glob("*.yaml"):
            if SECRET_PLACEHOLDER in f.read_text():
                f.write_text(fill_secrets(f.read_text()))
    assert box("validate", str(directory)) == 0, capsys.readouterr()
    assert box("plan", str(directory), "--detailed-exitcode") == 0, capsys.readouterr().out
    capsys.readouterr()


def test_export_round_trips_on_the_real_datapath(box: Box, capsys: Cap) -> None:
    assert box("apply", str(write(box.tmp / "conf"))) == 0, capsys.readouterr()
    assert "local 198.51.100.10 " in vip_routes(box.netns, "vips0")
    capsys.readouterr()

    assert box("export") == 0
    out = capsys.readouterr().out
    assert "pool: edge-v4" in out and "vipInterface: vips0" in out and "name: edge-box" in out
    round_trip(box, write(box.tmp / "stdout", out), capsys, secret=True)

    assert box("export", "--dir", str(box.tmp / "perfile")) == 0
    capsys.readouterr()
    round_trip(box, box.tmp / "perfile", capsys, secret=True)

    assert box("export", "--live", "--vip-interface", "vips0") == 0
    live = capsys.readouterr().out
    label = box.netns.lower().replace("_", "-").replace(".", "-")  # the namespace name as a DNS label
    assert f"kind: Datapath\nmetadata:\n  name: {label}\n" in live
    assert "port: 0" not in live and "web-tcp" not in live
    assert "kind: BGPConfig" in live  # rebuilt from the running speaker, peers included
    round_trip(box, write(box.tmp / "live", live), capsys, secret=True)


def test_a_box_lbctl_never_recorded_exports_valid_yaml(box: Box, capsys: Cap) -> None:
    assert box("apply", str(write(box.tmp / "conf"))) == 0
    (box.state / RECORD_NAME).unlink()  # as on a box applied by an older lbctl, or a lost state dir
    capsys.readouterr()
    assert box("export") == 0
    out, err = capsys.readouterr()
    assert "are not on lbctl0" in err and "--vip-interface" in err  # the VIPs live on vips0
    assert box("validate", str(write(box.tmp / "guess", fill_secrets(out)))) == 0  # BGP peers from live
    capsys.readouterr()
    assert box("export", "--vip-interface", "vips0") == 0
    round_trip(box, write(box.tmp / "live", capsys.readouterr().out), capsys, secret=True)
