"""Kernel settings as desired state: the sysctl driver, and a box that starts with forwarding off.

The root tests work in network namespaces they create (a sysctl written there
never reaches the host) and check that the host's values are untouched.
"""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.drivers.sysctl import STORE_NAME, SysctlDriver, read_sysctl, sysctl_path
from reconciler.errors import LbctlError
from reconciler.plan import diff
from reconciler.records import KernelSetting
from tests.testbed import VIP4, Testbed


def test_sysctl_names() -> None:
    assert sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert sysctl_path("net.ipv4.conf.eth0/100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    with pytest.raises(ValueError):
        sysctl_path("net..ipv4")


def test_a_corrupt_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / STORE_NAME).write_text("{not json")
    with pytest.raises(LbctlError, match="not a valid record of kernel settings"):
        SysctlDriver(tmp_path).read()


# -- against the kernel -----------------------------------------------------------


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"lbt-sc-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0.7")
        sh("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=0",
           "net.ipv4.conf.eth0/7.forwarding=0", "net.ipv4.conf.all.rp_filter=1",
           "net.ipv4.conf.eth0.rp_filter=2")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


FWD = "net.ipv4.conf.eth0.forwarding"
DOTTED = "net.ipv4.conf.eth0/7.forwarding"  # interface eth0.7
RPF_ALL, RPF = "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.eth0.rp_filter"


def desired(*pairs: tuple[str, str]) -> dict[str, dict[str, KernelSetting]]:
    return {"sysctl": {n: KernelSetting(n, v) for n, v in pairs}}


def host_values() -> dict[str, str]:
    return {n: read_sysctl(n) for n in ("net.ipv4.ip_forward", RPF_ALL, "net.ipv6.conf.all.forwarding")}


@pytest.mark.root
def test_take_in_charge_repair_drift_and_give_back(netns: str, tmp_path: Path) -> None:
    host = host_values()
    drv = SysctlDriver(tmp_path, netns)
    assert drv.read() == {"sysctl": {}}  # nothing in charge yet: plan shows creates
    want = desired((RPF_ALL, "0"), (FWD, "1"), (RPF, "0"), (DOTTED, "1"))
    plan = diff(want, drv.read())
    assert [c.action for c in plan.changes] == ["create"] * 4
    drv.apply(plan.changes)
    assert drv.writes == 4
    assert read_sysctl(FWD, netns) == "1" and read_sysctl(DOTTED, netns) == "1"
    assert read_sysctl(RPF_ALL, netns) == "0" and read_sysctl(RPF, netns) == "0"
    saved = json.loads((tmp_path / STORE_NAME).read_text())["original"]
    assert saved == {RPF_ALL: "1", FWD: "0", RPF: "2", DOTTED: "0"}
    assert diff(want, drv.read()).empty  # verified
    drv.apply(diff(want, drv.read()).changes)
    assert drv.writes == 4  # a no-op apply writes nothing

    # drift: someone turns forwarding off again; it shows as an update and is repaired
    sh("ip", "netns", "exec", netns, "sysctl", "-qw", f"{FWD}=0")
    drift = diff(want, drv.read())
    assert [(c.action, c.key, c.fields) for c in drift.changes] == [("update", FWD, ("value",))]
    drv.apply(drift.changes)
    assert read_sysctl(FWD, netns) == "1"

    # a setting no longer wanted gets its original value back and leaves the store
    fewer = desired((RPF_ALL, "0"), (FWD, "1"), (RPF, "0"))
    drv.apply(diff(fewer, drv.read()).changes)
    assert read_sysctl(DOTTED, netns) == "0"
    assert DOTTED not in json.loads((tmp_path / STORE_NAME).read_text())["original"]

    # down gives everything back, last taken first, and removes the store
    assert drv.down() == [f"{RPF}=2", f"{FWD}=0", f"{RPF_ALL}=1"]
    assert (read_sysctl(FWD, netns), read_sysctl(RPF, netns), read_sysctl(RPF_ALL, netns)) == ("0", "2", "1")
    assert not (tmp_path / STORE_NAME).exists()
    assert drv.read() == {"sysctl": {}} and drv.down() == []
    assert host_values() == host


@pytest.mark.root
def test_the_original_survives_a_second_take(netns: str, tmp_path: Path) -> None:
    """A crash after the store was written but before the kernel write: the original is still 0."""
    drv = SysctlDriver(tmp_path, netns)
    drv.apply(diff(desired((FWD, "1")), drv.read()).changes)
    again = SysctlDriver(tmp_path, netns)  # a new process
    again.apply(diff(desired((FWD, "1")), again.read()).changes)
    assert json.loads((tmp_path / STORE_NAME).read_text())["original"] == {FWD: "0"}
    again.down()
    assert read_sysctl(FWD, netns) == "0"


@pytest.mark.root
def test_a_missing_interface_is_a_clear_error_and_a_vanished_one_is_forgotten(netns: str,
                                                                              tmp_path: Path) -> None:
    drv = SysctlDriver(tmp_path, netns)
    with pytest.raises(LbctlError, match="does not exist") as exc:
        drv.apply(diff(desired(("net.ipv4.conf.nope0.forwarding", "1")), drv.read()).changes)
    assert "interface 'nope0' does not exist" in (exc.value.hint or "")
    drv.apply(diff(desired((FWD, "1")), drv.read()).changes)
    sh("ip", "-n", netns, "link", "del", "eth0")
    assert drv.read() == {"sysctl": {}}  # its settings went with it
    assert drv.down() == [f"{FWD}=0"] and not (tmp_path / STORE_NAME).exists()


@pytest.mark.root
def test_works_from_a_worker_thread(netns: str, tmp_path: Path) -> None:
    """/proc/sys follows the calling thread's namespace: a daemon thread sets the box's, not the host's."""
    host = host_values()
    drv = SysctlDriver(tmp_path, netns)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            drv.apply(diff(desired((RPF_ALL, "0")), drv.read()).changes)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors and read_sysctl(RPF_ALL, netns) == "0"
    assert host_values() == host
    drv.down()


# -- a fresh box: forwarding off until lbctl apply --------------------------------

DATAPATH = """apiVersion: lbctl.dev/v1alpha1
kind: Datapath
metadata: {name: box}
spec: {interfaces: [cl0, be0, be1]}
"""
WEB = f"""apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {{name: web}}
spec:
  vip: {VIP4}
  ports: [{{port: 80, protocol: TCP, targetPort: 8080}}]
  endpoints: [{{address: 10.201.0.2}}, {{address: 10.201.1.2}}]
"""


def http_get(tb: Testbed) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", tb.client, "curl", "-s", "-m", "2", f"http://{VIP4}/"],
                          capture_output=True, text=True)


@pytest.mark.root
@pytest.mark.slow
def test_a_box_with_forwarding_off_forwards_after_apply(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    tb = Testbed(n_backends=2, forwarding=False).setup()
    pins = Path("/sys/fs/bpf") / f"lbctl-test-{tb.prefix}"
    common = ["--netns", tb.lb, "--state-dir", str(tmp_path / "state"), "--pin-root", str(pins)]
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dp.yaml").write_text(DATAPATH)
    (conf / "web.yaml").write_text(WEB)
    try:
        cl0_fwd, be0_rpf = "net.ipv4.conf.cl0.forwarding", "net.ipv4.conf.be0.rp_filter"
        before = {n: read_sysctl(n, tb.lb) for n in (cl0_fwd, RPF_ALL, be0_rpf)}
        assert before == {cl0_fwd: "0", RPF_ALL: "1", be0_rpf: "1"}
        assert http_get(tb).returncode != 0  # without lbctl: no VIP, nothing forwards

        assert cli.main(["plan", str(conf), "--detailed-exitcode", *common]) == 2
        out = capsys.readouterr().out
        assert '+ sysctl "net.ipv4.conf.cl0.forwarding"' in out
        assert '+ sysctl "net.ipv4.conf.all.rp_filter"' in out
        assert cli.main(["apply", str(conf), *common]) == 0
        assert "Verified" in capsys.readouterr().out
        assert read_sysctl("net.ipv4.conf.cl0.forwarding", tb.lb) == "1"
        assert read_sysctl("net.ipv4.ip_forward", tb.lb) == "0"  # only the attached interfaces
        assert "net.ipv6" not in json.dumps(json.loads((tmp_path / "state" / tb.lb / STORE_NAME).read_text()))
        answers = {http_get(tb).stdout.strip() for _ in range(8)}
        assert answers == {"backend0", "backend1"}

        # drift: forwarding turned off by hand shows in the plan and apply repairs it
        sh("ip", "netns", "exec", tb.lb, "sysctl", "-qw", "net.ipv4.conf.cl0.forwarding=0")
        assert http_get(tb).returncode != 0
        assert cli.main(["plan", str(conf), "--detailed-exitcode", *common]) == 2
        assert '~ sysctl "net.ipv4.conf.cl0.forwarding"' in capsys.readouterr().out
        assert cli.main(["apply", str(conf), *common]) == 0
        assert http_get(tb).returncode == 0

        # down gives the box its settings back
        assert cli.main(["down", *common]) == 0
        assert "restored 7 kernel settings" in capsys.readouterr().out
        assert {n: read_sysctl(n, tb.lb) for n in before} == before
        assert read_sysctl("net.ipv4.conf.be1.forwarding", tb.lb) == "0"
    finally:
        cli.main(["down", *common])
        tb.teardown()
