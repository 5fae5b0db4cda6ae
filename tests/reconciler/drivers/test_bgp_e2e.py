"""VIPs announced through lbctl's gobgpd to a real FRR and a real BIRD 2, end to end.

Why this exists: the BGP driver is only done when routers operators run learn
the VIPs and clients behind them reach the service: after ``lbctl apply`` the
routers' kernel tables hold each VIP via the LB, HTTP through the VIP works from
behind each router, removing the service withdraws the route, one peer's timer
change resets only that session, a killed gobgpd is restored by ``lbctl watch``
at its next resync, and two LB boxes announcing one VIP give FRR an ECMP route.
Topology: ``tests.routers.BgpLab``; every namespace, pin and process is this
test's own (processes stopped by PID).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.drivers.bgp import BgpDriver
from tests.reconciler.drivers.test_contract import stop_gobgpd
from tests.routers import BIRD_ASN, FRR_ASN, MD5_PASSWORD, BgpLab, Bird, Frr, kernel_route, wait_for
from tests.testbed import Testbed

pytestmark = pytest.mark.root

VIP, VIP2 = "10.250.0.1", "10.250.0.2"
LB1, LB2, R1, R2 = "10.200.0.1", "10.202.0.1", "10.200.0.2", "10.203.0.2"

HEAD = "apiVersion: lbctl.dev/v1alpha1\n"


def config(*, services: tuple[str, ...] = (VIP, VIP2), frr_hold: int = 90, bird: bool = True,
           router_id: str = LB1, interfaces: str = "[cl0, rt2, be0, be1]") -> str:
    docs = [f"kind: Datapath\nmetadata: {{name: box}}\nspec: {{interfaces: {interfaces}}}\n",
            f"kind: BGPConfig\nmetadata: {{name: bgp}}\nspec: {{localAS: 65001, routerID: {router_id}}}\n",
            f"kind: BGPPeer\nmetadata: {{name: frr}}\n"
            f"spec: {{address: {R1 if router_id == LB1 else '10.202.0.2'}, remoteAS: {FRR_ASN}, "
            f"holdTime: {frr_hold}, keepalive: {frr_hold // 3}"
            + (f", password: {MD5_PASSWORD}" if router_id == LB1 else "") + ", description: upstream frr}\n"]
    if bird:
        docs.append(f"kind: BGPPeer\nmetadata: {{name: bird}}\n"
                    f"spec: {{address: {R2}, remoteAS: {BIRD_ASN}}}\n")
    for i, vip in enumerate(services):
        docs.append(f"kind: Service\nmetadata: {{name: web{i}}}\nspec:\n  vip: {vip}\n  bgp: true\n"
                    "  ports: [{port: 80, targetPort: 8080}]\n"
                    "  endpoints: [{address: 10.201.0.2}, {address: 10.201.1.2}]\n")
    return "---\n".join(HEAD + d for d in docs)


@dataclass
class Box:
    """One LB box: its namespace, configuration directory, state dir and pin root."""

    ns: str
    conf: Path
    state: Path
    pins: Path

    def args(self) -> list[str]:
        return ["--netns", self.ns, "--state-dir", str(self.state), "--pin-root", str(self.pins)]

    def write(self, text: str) -> None:
        (self.conf / "lb.yaml").write_text(text)

    def lbctl(self, *argv: str) -> int:
        return cli.main([*argv, *self.args()])

    def apply(self) -> None:
        assert self.lbctl("apply", str(self.conf)) == 0

    @property
    def pid_file(self) -> Path:
        return self.state / self.ns / "gobgpd.pid"

    def down(self) -> None:
        self.lbctl("down")
        stop_gobgpd(self.state / self.ns, self.ns)
        if self.pins.is_dir():
            for f in self.pins.rglob("*"):
                if f.is_file():
                    f.unlink()
            for d in sorted((p for p in self.pins.rglob("*") if p.is_dir()), reverse=True):
                d.rmdir()
            self.pins.rmdir()


@dataclass
class World:
    lab: BgpLab
    lb: Box
    frr: Frr
    bird: Bird


def _box(tmp: Path, ns: str, name: str) -> Box:
    conf = tmp / f"conf-{name}"
    conf.mkdir()
    return Box(ns, conf, tmp / f"state-{name}", Path(f"/sys/fs/bpf/lbctl-test-bgp-{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bgp")
    lab = BgpLab(Testbed(n_backends=2, prefix="lbbg" + uuid.uuid4().hex[:6]), tmp)
    lb = _box(tmp, lab.prefix + "-lb", "lb")
    try:
        lab.setup()
        frr, bird = lab.start_frr(), lab.start_bird()
        yield World(lab, lb, frr, bird)
    finally:
        lb.down()
        lab.teardown()


@pytest.fixture
def applied(world: World) -> Iterator[World]:
    world.lb.write(config())
    world.lb.apply()
    try:
        yield world
    finally:
        world.lb.down()


def sessions(box: Box, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    assert box.lbctl("get", "bgp", "-o", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    return {r["address"]: r for r in rows if r["type"] == "peer"}


def established(box: Box, capsys: pytest.CaptureFixture[str], address: str) -> bool:
    return bool(sessions(box, capsys).get(address, {}).get("state") == "established")


def http(ns: str, vip: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "--max-time", "5", f"http://{vip}/"],
                          capture_output=True, text=True).stdout.strip()


def test_frr_and_bird_learn_the_vips_clients_reach_them_and_removal_withdraws(
        applied: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = applied
    lab = w.lab
    for vip in (VIP, VIP2):
        wait_for(f"{vip} via the LB in FRR's kernel table",
                 lambda v=vip: kernel_route(lab.r1, f"{v}/32") == [LB1])
        wait_for(f"{vip} via the LB in BIRD's kernel table",
                 lambda v=vip: kernel_route(lab.ns("r2"), f"{v}/32") == ["10.203.0.1"])
    # Both sessions are up, the MD5 one with FRR included; the password is shown nowhere.
    got = sessions(w.lb, capsys)
    assert {a: (r["as"], r["state"]) for a, r in got.items()} == {R1: (FRR_ASN, "established"),
                                                                  R2: (BIRD_ASN, "established")}
    assert got[R1]["sent"] == 2 and MD5_PASSWORD not in json.dumps(got)
    assert w.lb.lbctl("get", "bgp") == 0
    table = capsys.readouterr().out
    assert "| announce | 10.250.0.1/32 |" in table and MD5_PASSWORD not in table
    # Clients behind each router reach the service through the VIP.
    assert http(lab.ns("c1"), VIP) in ("backend0", "backend1")
    assert http(lab.ns("c2"), VIP2) in ("backend0", "backend1")
    # Nothing left to do, and the plan shows no secret.
    assert w.lb.lbctl("plan", str(w.lb.conf), "--detailed-exitcode") == 0
    # Removing one service withdraws its route from both routers; the other stays.
    w.lb.write(config(services=(VIP,)))
    capsys.readouterr()
    assert w.lb.lbctl("plan", str(w.lb.conf)) == 0
    plan = capsys.readouterr().out
    assert '- announce "10.250.0.2/32"' in plan and plan.index("- announce") < plan.index("- service")
    w.lb.apply()
    wait_for("10.250.0.2 withdrawn from FRR", lambda: kernel_route(lab.r1, f"{VIP2}/32") == [])
    wait_for("10.250.0.2 withdrawn from BIRD", lambda: kernel_route(lab.ns("r2"), f"{VIP2}/32") == [])
    assert kernel_route(lab.r1, f"{VIP}/32") == [LB1]


def test_one_peers_timer_change_resets_only_its_session(
        applied: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = applied
    wait_for("both sessions", lambda: established(w.lb, capsys, R1) and established(w.lb, capsys, R2))
    speaker = BgpDriver(w.lb.state / w.lb.ns, w.lb.ns)
    before = {p["address"]: p for p in speaker.sessions()["peers"]}
    w.lb.write(config(frr_hold=30))
    capsys.readouterr()
    assert w.lb.lbctl("plan", str(w.lb.conf), "-o", "json") == 0
    plan = json.loads(capsys.readouterr().out)
    resets = [(c["key"], c["action"], sorted(c["fields"])) for c in plan["changes"]]
    assert resets == [(R1, "replace", ["hold_time", "keepalive"])]  # the plan names the one session reset
    w.lb.apply()
    wait_for("the FRR session back", lambda: established(w.lb, capsys, R1))
    after = {p["address"]: p for p in speaker.sessions()["peers"]}
    # BIRD's session never left established: the same session (same start, no flop), so its uptime
    # kept growing.  FRR's was reset: FRR counts a second established connection (below).
    assert after[R2]["flops"] == before[R2]["flops"] and after[R2]["uptime"] == before[R2]["uptime"] > 0
    raw = w.lab.routers[0]
    assert isinstance(raw, Frr)
    frr_state = json.loads(raw.vtysh(f"show bgp neighbors {LB1} json"))[LB1]
    assert frr_state["bgpTimerHoldTimeMsecs"] == 30_000  # negotiated: the new hold time is in force
    assert frr_state["connectionsEstablished"] >= 2


def test_apply_restores_a_killed_gobgpd_and_says_so(applied: World,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    w = applied
    wait_for("the VIP in FRR's table", lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [LB1])
    pid = int(w.lb.pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    wait_for("FRR to drop the route", lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [])
    capsys.readouterr()
    assert w.lb.lbctl("plan", str(w.lb.conf), "--detailed-exitcode") == 2  # gobgpd holds nothing now
    w.lb.apply()  # a fresh process: it learns of the old gobgpd from the pid file
    out = "".join(capsys.readouterr())
    assert f"gobgpd (pid {pid}) is no longer running; it is started again" in out
    wait_for("FRR to relearn the route", lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [LB1])
    assert w.lb.lbctl("plan", str(w.lb.conf), "--detailed-exitcode") == 0


def test_an_ipv6_vip_is_announced_over_an_ipv6_session(world: World, tmp_path: Path) -> None:
    w = world
    text = config(services=(), bird=False) + "---\n" + HEAD + (
        "kind: BGPPeer\nmetadata: {name: frr6}\nspec: {address: 'fd00:200::2', remoteAS: 65000}\n---\n"
        + HEAD + "kind: Service\nmetadata: {name: web6}\nspec:\n  vip: 'fd00:250::1'\n  bgp: true\n"
        "  ports: [{port: 80, targetPort: 8080}]\n  endpoints: [{address: 'fd00:201:0::2'}]\n")
    w.lb.write(text)
    try:
        w.lb.apply()
        # Next hop self: the LB's address on the session (or its link-local one, FRR's choice).
        wait_for("the IPv6 VIP in FRR's kernel table",
                 lambda: any(h == "fd00:200::1" or h.startswith("fe80:")
                             for h in kernel_route(w.lab.r1, "fd00:250::1/128")))
        assert w.lb.lbctl("plan", str(w.lb.conf), "--detailed-exitcode") == 0
    finally:
        w.lb.down()
    wait_for("the IPv6 VIP withdrawn", lambda: kernel_route(w.lab.r1, "fd00:250::1/128") == [])


def test_watch_restores_announcements_after_gobgpd_is_killed(world: World, tmp_path: Path) -> None:
    w = world
    w.lb.write(config(bird=False))
    log = open(tmp_path / "watch.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "watch", str(w.lb.conf), *w.lb.args(),
                               "--resync", "1s", "--listen", "off"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        wait_for("the VIP in FRR's table", lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [LB1])
        pid = int(w.lb.pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        wait_for("FRR to drop the route", lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [])
        wait_for("FRR to relearn the route", lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [LB1])
        assert int(w.lb.pid_file.read_text().split()[0]) != pid
        text = (tmp_path / "watch.log").read_text()
        assert f"gobgpd (pid {pid}) is no longer running" in text
    finally:
        os.kill(daemon.pid, signal.SIGTERM)
        daemon.wait(10)
        log.close()
        w.lb.down()


def test_two_lb_boxes_give_frr_an_ecmp_route(world: World, tmp_path: Path) -> None:
    w = world
    lb2 = _box(tmp_path, w.lab.ns("l2"), "lb2")
    w.lb.write(config(services=(VIP,), bird=False))
    lb2.write(config(services=(VIP,), bird=False, router_id=LB2, interfaces="[eth0]"))
    try:
        w.lb.apply()
        lb2.apply()
        wait_for("two next hops in FRR's kernel table",
                 lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [LB1, LB2])
        lb2.down()  # the second box goes away: its next hop goes with it
        wait_for("one next hop again", lambda: kernel_route(w.lab.r1, f"{VIP}/32") == [LB1])
    finally:
        lb2.down()
        w.lb.down()
