"""``lbctl watch`` repairs drift on every object lbctl owns, within one resync.

One box for the module (client, LB, two HTTP backends from ``reconciler.testbed``,
plus an interface carrying lbctl's XDP program), applied by ``lbctl apply``
first so the daemon adopts it (nothing loaded in the daemon: a re-attach must
use the pinned program).  For each case of ``drift_cases`` (delete, corrupt,
replace of every map lbctl writes, the tc and XDP hooks, the pinned programs,
the VIP address): ``lbctl plan --detailed-exitcode`` exits 2 and names the
records; one SIGHUP (a full resync, deterministic, no timer) repairs it; the
plan is empty again; the repair is counted in ``/status`` and ``/metrics`` by
record kind; HTTP through the VIP works again.  Marked ``root``.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.drivers.netns import in_netns
from tests.reconciler.drift_cases import CASES, VIP_CASES, Case, Target, break_it
from tests.reconciler.test_watch_root import HEADER, Box
from tests.testbed import HTTP_PORT, VIP4, Testbed

pytestmark = pytest.mark.root

PORTS = (80, 81)  # web (rr, allowed sources) and mag (maglev), both HTTP to the backends


def _service(name: str, port: str, selection: str, endpoints: list[str], extra: str = "") -> str:
    eps = ", ".join(f"{{address: {e}}}" for e in endpoints)
    return (f"{HEADER}kind: Service\nmetadata: {{name: {name}}}\nspec:\n  vip: {VIP4}\n  ports: [{port}]\n"
            f"  selection: {selection}\n  endpoints: [{eps}]\n{extra}")


@dataclass
class Drift:
    tb: Testbed
    box: Box
    conf: Path
    target: Target

    def plan(self) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = cli.main(["plan", str(self.conf), "--detailed-exitcode", *self.box.common])
        return rc, out.getvalue()

    def repairs(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.box.port}/metrics", timeout=2) as r:
            text = r.read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r'^lbctl_drift_repairs_total\{kind="([^"]+)"\} (\S+)$',
                                                        text, re.M)}

    def http_ok(self, port: int) -> bool:
        with in_netns(self.tb.client):
            try:
                with socket.create_connection((VIP4, port), timeout=2) as s:
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    return s.recv(12).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
            except OSError:
                return False


@pytest.fixture(scope="module")
def drift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drift]:
    pytest.importorskip("reconciler.drivers.bpf", reason="the bpf driver is not in this tree yet")
    tmp = tmp_path_factory.mktemp("drift")
    with Testbed(n_backends=2) as tb:
        box = Box(tb.lb, tmp / "state", Path("/sys/fs/bpf") / f"lbctl-test-{tb.prefix}", tmp)
        try:
            subprocess.run(["ip", "-n", tb.lb, "link", "add", "xd0", "type", "veth", "peer", "name", "xd1"],
                           check=True)
            for ifname in ("xd0", "xd1"):
                subprocess.run(["ip", "-n", tb.lb, "link", "set", ifname, "up"], check=True)
            conf = tmp / "conf.d"
            conf.mkdir()
            ifaces = ", ".join(tb.lb_interfaces + ["{name: xd0, hook: xdp}"])
            (conf / "00-datapath.yaml").write_text(
                f"{HEADER}kind: Datapath\nmetadata: {{name: box}}\nspec: {{interfaces: [{ifaces}]}}\n")
            backends = [tb.backend4(i) for i in range(tb.n_backends)]
            (conf / "web.yaml").write_text(_service(
                "web", f"{{port: 80, protocol: TCP, targetPort: {HTTP_PORT}}}", "rr", backends,
                "  allowedSources: [10.200.0.0/24]\n"))
            (conf / "mag.yaml").write_text(_service(
                "mag", f"{{port: 81, protocol: TCP, targetPort: {HTTP_PORT}}}", "maglev", backends))
            ranges = tuple(f"{{port: {p}, endPort: {p + 99}, protocol: UDP}}" for p in (6000, 6100))
            (conf / "ranges.yaml").write_text(_service("rng-a", ranges[0], "hash", backends[:1]) + "---\n"
                                              + _service("rng-b", ranges[1], "rr", backends))
            assert cli.main(["apply", str(conf), *box.common]) == 0
            box.start(conf, "--resync", "1h")  # repairs come from SIGHUP only
            box.wait_ready()
            target = Target(netns=tb.lb, pin_root=str(box.pin_root / tb.lb), weighted=f"tcp/{VIP4}:80",
                            maglev=f"tcp/{VIP4}:81",
                            ranges=(f"udp/{VIP4}:6000-6099", f"udp/{VIP4}:6100-6199"),
                            tc_if="cl0", xdp_if="xd0", vip=VIP4)
            d = Drift(tb, box, conf, target)
            assert d.plan()[0] == 0 and all(d.http_ok(p) for p in PORTS)
            yield d
        finally:
            if box.proc is not None and box.proc.poll() is None:
                box.stop()
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(["down", *box.common])
            shutil.rmtree(box.pin_root, ignore_errors=True)


@pytest.mark.parametrize("case", CASES + VIP_CASES, ids=lambda c: c.name)
def test_daemon_repairs_drift_within_one_resync(drift: Drift, case: Case) -> None:
    box = drift.box
    before: dict[str, Any] = box.status() or {}
    metrics_before = drift.repairs()
    break_it(case, drift.target)

    rc, text = drift.plan()
    assert rc == 2, text
    kinds = set()
    for where in case.shows:
        kind, key = where(drift.target)
        kinds.add(kind)
        assert f'{kind} "{key}"' in text, text

    assert box.proc is not None
    box.proc.send_signal(signal.SIGHUP)
    box.wait("the resync SIGHUP asks for",
             lambda: (box.status() or {}).get("reconciles", 0) > before["reconciles"], timeout=30)
    doc: dict[str, Any] = box.status() or {}
    last = doc["last_reconcile"]
    assert doc["reconciles"] == before["reconciles"] + 1 and last["trigger"] == "sighup", last
    assert last["result"] == "ok", (last, box.logs()[-3000:])
    rc, text = drift.plan()
    assert rc == 0, text

    assert doc["drift_repairs"] > before["drift_repairs"]
    metrics = drift.repairs()
    for kind in kinds:
        assert doc["drift_repairs_by_kind"].get(kind, 0) > before["drift_repairs_by_kind"].get(kind, 0), doc
        assert metrics.get(kind, 0) > metrics_before.get(kind, 0), metrics
    assert "drift-repaired" in box.logs()
    for port in PORTS:
        assert drift.http_ok(port), f"HTTP to {VIP4}:{port} after repairing {case.name}"
