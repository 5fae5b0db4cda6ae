"""``lbctl watch`` on the real datapath: real maps, addresses and programs in a real netns.

Each test runs the daemon as a real process (``python -m reconciler.cli watch``)
against its own network namespace, pin root, state dir and status port, and
observes the box from outside through the real drivers.  Latencies are printed
(run with ``-s``), never asserted.  Marked ``root``: skipped on a laptop, a
failure in CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.apply import read_live
from reconciler.driver import Driver
from reconciler.drivers.netns import in_netns
from reconciler.drivers.registry import build_drivers
from reconciler.plan import Change
from reconciler.records import EndpointSet
from tests.reconciler.watch_fakes import configmap_publish
from tests.testbed import vip_routes

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
HEADER = "apiVersion: lbctl.dev/v1alpha1\n"
DATAPATH = f"{HEADER}kind: Datapath\nmetadata: {{name: box}}\nspec: {{interfaces: [eth0]}}\n"
WEB_KEY = "tcp/198.51.100.10:80"


def service_yaml(name: str, vip: str, endpoints: list[str], port: int = 80) -> str:
    eps = ", ".join(f"{{address: {e}}}" for e in endpoints)
    return (f"{HEADER}kind: Service\nmetadata: {{name: {name}}}\nspec:\n  vip: {vip}\n"
            f"  ports: [{{port: {port}, protocol: TCP, targetPort: 8080}}]\n  endpoints: [{eps}]\n")


def web(n: int) -> str:
    return service_yaml("web", "198.51.100.10", [f"10.0.0.{n}"])


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Box:
    netns: str
    state_root: Path
    pin_root: Path
    tmp: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    _drivers: list[Driver] | None = None

    @property
    def common(self) -> list[str]:
        return ["--netns", self.netns, "--state-dir", str(self.state_root), "--pin-root", str(self.pin_root)]

    def start(self, directory: Path, *extra: str) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None
        self.log = self.tmp / f"watch-{time.monotonic_ns()}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler.cli", "watch", str(directory), *self.common,
                 "--listen", f"127.0.0.1:{self.port}", *extra], stdout=out, stderr=out, env=env, cwd=REPO)
        return self.proc

    def logs(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=2) as r:
                doc: dict[str, Any] = json.loads(r.read())
                return doc
        except OSError:
            return None

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if check():
                return time.monotonic() - t0
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}) waiting for {what}:\n"
                                     f"{self.logs()}")
            time.sleep(0.005)
        raise AssertionError(f"timed out waiting for {what}:\n{self.logs()[-4000:]}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait("ready", lambda: bool((self.status() or {}).get("ready")), timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(20)

    def drivers_ctx(self) -> Any:
        return cli.context_from(cli.build_parser().parse_args(["plan", *self.common]))

    def drivers(self) -> list[Driver]:
        if self._drivers is None:
            self._drivers = build_drivers(self.drivers_ctx())
        return self._drivers

    def live(self) -> dict[str, dict[str, Any]]:
        return read_live(self.drivers())

    def backends(self, key: str = WEB_KEY) -> list[str]:
        rec = self.live()["endpoints"].get(key)
        return [b.address for b in rec.backends] if isinstance(rec, EndpointSet) else []

    def bpf(self) -> Driver:
        return next(d for d in self.drivers() if "service" in d.kinds)

    def plan_empty(self, directory: Path) -> bool:
        with contextlib.redirect_stdout(io.StringIO()):
            return cli.main(["plan", str(directory), "--detailed-exitcode", "-o", "json", *self.common]) == 0


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    pytest.importorskip("reconciler.drivers.bpf", reason="the bpf driver is not in this tree yet")
    name = f"lbt-w-{uuid.uuid4().hex[:8]}"
    pin_base = Path("/sys/fs/bpf") / f"lbctl-test-{name}"
    sh("ip", "netns", "add", name)
    b = Box(name, tmp_path / "state", pin_base, tmp_path)
    try:
        sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        sh("ip", "-n", name, "link", "set", "eth0", "up")
        sh("ip", "-n", name, "link", "set", "eth0p", "up")
        yield b
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.proc.kill()
            b.proc.wait(10)
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(pin_base, ignore_errors=True)


# --- delivery styles ------------------------------------------------------------------------------

def _replace(path: Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


def _gitsync(root: Path, rev: int, files: dict[str, str]) -> None:
    wt = root / ".worktrees" / f"{rev:040x}"
    (wt / "lb").mkdir(parents=True)
    for name, text in files.items():
        (wt / "lb" / name).write_text(text)
    old = os.readlink(root / "current") if (root / "current").is_symlink() else None
    os.symlink(f".worktrees/{rev:040x}", root / "current.tmp")
    os.replace(root / "current.tmp", root / "current")
    if old:
        shutil.rmtree(root / old)


def _layout(style: str, tmp: Path) -> tuple[Path, Callable[[int], object]]:
    """(DIR for the daemon, deliver(n): make web's endpoint 10.0.0.n the way ``style`` delivers)."""
    if style in ("plain", "rename"):
        conf = tmp / "conf.d"
        conf.mkdir()
        (conf / "00-datapath.yaml").write_text(DATAPATH)
        (conf / "web.yaml").write_text(web(1))
        if style == "plain":
            return conf, lambda n: (conf / "web.yaml").write_text(web(n))
        return conf, lambda n: _replace(conf / "web.yaml", web(n))
    if style == "configmap":
        conf = tmp / "volume"
        conf.mkdir()
        configmap_publish(conf, "2026_01_01_00_00_01.1", {"datapath.yaml": DATAPATH, "web.yaml": web(1)})
        return conf, lambda n: configmap_publish(conf, f"2026_01_01_00_00_{n:02d}.{n}",
                                                 {"datapath.yaml": DATAPATH, "web.yaml": web(n)})
    root = tmp / "git"
    _gitsync(root, 1, {"datapath.yaml": DATAPATH, "web.yaml": web(1)})
    return root / "current" / "lb", lambda n: _gitsync(root, n,
                                                      {"datapath.yaml": DATAPATH, "web.yaml": web(n)})


@pytest.mark.parametrize("style", ["plain", "rename", "configmap", "gitsync"])
def test_delivery_style_reaches_the_map(box: Box, style: str) -> None:
    directory, deliver = _layout(style, box.tmp)
    box.start(directory)  # default debounce (200 ms)
    box.wait_ready()
    assert box.backends() == ["10.0.0.1"]
    for n in (2, 3, 4):
        deliver(n)
        took = box.wait(f"10.0.0.{n} in the map", lambda n=n: box.backends() == [f"10.0.0.{n}"], timeout=10)
        print(f"{style}: delivery -> map updated {took * 1000:.0f} ms (default debounce 200 ms)")
    assert box.stop() == 0
    assert box.backends() == ["10.0.0.4"], "SIGTERM must leave the datapath in place"
    assert "local 198.51.100.10 " in vip_routes(box.netns, "lbctl0")


# --- invalid deliveries ---------------------------------------------------------------------------

INVALID: list[str] = [
    service_yaml("web", "198.51.100.10", ["10.0.0.300"]),
    service_yaml("web", "198.51.100.10", ["10.0.0.2"], port=70000),
    service_yaml("web", "198.51.100.10", ["10.0.0.2"], port=0),
    "apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {name: web\nspec: [",
    service_yaml("web", "not-an-ip", ["10.0.0.2"]),
    service_yaml("web", "198.51.100.10", ["10.0.0.2"]).replace("ports:", "portz:"),
    service_yaml("web", "198.51.100.10", ["10.0.0.2"]).replace("kind: Service", "kind: Servise"),
    service_yaml("web", "198.51.100.10", ["10.0.0.2"]) + "---\n"
    + service_yaml("web", "198.51.100.11", ["10.0.0.3"]),
    service_yaml("web", "198.51.100.10", ["10.0.0.2"]) + "---\n"
    + service_yaml("other", "198.51.100.10", ["10.0.0.3"]),
    service_yaml("web", "198.51.100.10", ["224.0.0.1"]),
]


def test_invalid_deliveries_change_nothing_then_a_valid_one_applies(box: Box) -> None:
    conf, deliver = _layout("rename", box.tmp)
    box.start(conf)
    box.wait_ready()
    before = box.live()
    for i in range(20):
        _replace(conf / "web.yaml", INVALID[i % len(INVALID)] + f"# delivery {i}\n")
        box.wait(f"invalid delivery {i} rejected",
                 lambda i=i: (box.status() or {}).get("invalid_deliveries") == i + 1, timeout=10)
        doc = box.status() or {}
        assert doc["config_valid"] is False and doc["ready"] is True
        assert any("web.yaml" in e for e in doc["last_error"]["errors"]), doc["last_error"]
        assert box.live() == before, f"invalid delivery {i} changed the live state"
    assert "config-invalid" in box.logs() and "web.yaml:" in box.logs()
    deliver(9)
    took = box.wait("the valid delivery", lambda: box.backends() == ["10.0.0.9"], timeout=10)
    print(f"valid delivery after 20 invalid ones: map updated in {took * 1000:.0f} ms")
    box.wait("status valid again", lambda: (box.status() or {}).get("config_valid") is True)
    # the errors are cleared when the valid content has verified, a moment after it was found valid
    box.wait("last error cleared", lambda: (box.status() or {}).get("last_error") is None)


# --- drift ------------------------------------------------------------------------------------------

def test_drift_by_hand_is_repaired_within_one_resync(box: Box) -> None:
    conf, _ = _layout("plain", box.tmp)
    (conf / "api.yaml").write_text(service_yaml("api", "198.51.100.11", ["10.0.1.1", "10.0.1.2"]))
    box.start(conf, "--resync", "1s")
    box.wait_ready()
    desired = box.live()
    assert desired["attach"] and desired["vip"] and desired["endpoints"]
    # 1. a VIP's local route deleted by hand
    sh("ip", "-n", box.netns, "route", "del", "local", "198.51.100.11/32", "dev", "lbctl0", "table", "local")
    # 2. a map entry deleted behind lbctl's back
    entry = desired["service"][WEB_KEY]
    box.bpf().apply([Change("service", WEB_KEY, "delete", entry, None)])
    # 3. the program detached
    sh("tc", "-n", box.netns, "filter", "del", "dev", "eth0", "ingress")
    # No check that the drift is visible now: the 1 s resync may already have repaired
    # it. The three repairs counted below prove the drift existed when a resync ran.
    took = box.wait("drift repaired", lambda: box.live() == desired, timeout=5)
    print(f"drift (VIP route, map entry, program) repaired {took * 1000:.0f} ms after it was made "
          f"(resync 1 s)")
    box.wait("repairs counted", lambda: (box.status() or {}).get("drift_repairs", 0) >= 3)
    assert "drift-repaired" in box.logs()


def fresh_backends(box: Box, key: str = WEB_KEY) -> list[str]:
    """Endpoints of ``key`` as a new lbctl process reads them (no handles kept from before)."""
    rec = read_live(build_drivers(box.drivers_ctx()))["endpoints"].get(key)
    return [b.address for b in rec.backends] if isinstance(rec, EndpointSet) else []


def test_daemon_reopens_pins_replaced_by_down_and_apply(box: Box) -> None:
    """Issue 9 item 2: after ``lbctl down`` + ``lbctl apply`` from the CLI, the daemon's
    handles are orphaned maps: it must notice and write to the pinned ones."""
    conf = box.tmp / "conf.d"
    conf.mkdir()
    (conf / "00-datapath.yaml").write_text(DATAPATH)
    (conf / "web.yaml").write_text(service_yaml("web", "198.51.100.10", ["10.0.0.1", "10.0.0.2"]))
    box.start(conf, "--resync", "1h")
    box.wait_ready()
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["down", *box.common]) == 0
        assert cli.main(["apply", str(conf), *box.common]) == 0
    (conf / "web.yaml").write_text(web(1))  # an edit of one Service: the daemon's incremental path
    took = box.wait("the delivery in the pinned maps", lambda: fresh_backends(box) == ["10.0.0.1"],
                    timeout=10)
    print(f"delivery after down + apply reached the pinned maps in {took * 1000:.0f} ms")
    assert box.plan_empty(conf)
    # and a resync repairs drift in the pinned maps, not in the orphaned ones
    assert box.proc is not None
    drifted = box.live()["endpoints"][WEB_KEY]
    bpf = next(d for d in build_drivers(box.drivers_ctx()) if "endpoints" in d.kinds)
    bpf.apply([Change("endpoints", WEB_KEY, "delete", drifted, None)])
    assert not box.plan_empty(conf)
    reconciles = (box.status() or {}).get("reconciles", 0)
    box.proc.send_signal(signal.SIGHUP)
    box.wait("the SIGHUP resync", lambda: (box.status() or {}).get("reconciles", 0) > reconciles)
    assert fresh_backends(box) == ["10.0.0.1"] and box.plan_empty(conf)


def test_daemon_reattaches_a_deleted_filter_on_adopted_pins(box: Box) -> None:
    """Issue 9 item 3 in the daemon: it adopted pins made by ``lbctl apply`` (no object loaded)
    and re-attaches after ``tc filter del`` without failing the reconcile (EBADF)."""
    conf = box.tmp / "conf.d"
    conf.mkdir()
    (conf / "00-datapath.yaml").write_text(DATAPATH)
    (conf / "web.yaml").write_text(web(1))
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["apply", str(conf), *box.common]) == 0
    box.start(conf, "--resync", "1h")
    box.wait_ready()
    sh("tc", "-n", box.netns, "filter", "del", "dev", "eth0", "ingress")
    assert not box.plan_empty(conf)
    reconciles = (box.status() or {}).get("reconciles", 0)
    assert box.proc is not None
    box.proc.send_signal(signal.SIGHUP)
    box.wait("the SIGHUP resync", lambda: (box.status() or {}).get("reconciles", 0) > reconciles)
    last = (box.status() or {})["last_reconcile"]
    assert last["result"] == "ok", (last, box.logs()[-2000:])
    assert "lb_tc" in sh("tc", "-n", box.netns, "filter", "show", "dev", "eth0", "ingress")
    assert box.plan_empty(conf)


# --- kill -9 ----------------------------------------------------------------------------------------

def _services(conf: Path, generation: int, n: int) -> None:
    """n services; even and odd generations use different VIPs and endpoints (a large switch)."""
    g = generation % 2
    docs = [service_yaml(f"s{i}", f"198.{18 + g}.{i // 250}.{i % 250 + 1}",
                         [f"10.{100 + g}.{2 * (i // 250) + j}.{i % 250 + 1}" for j in range(2)])
            for i in range(n)]
    _replace(conf / "services.yaml", "---\n".join(docs))


def test_kill_9_during_large_applies_always_converges(box: Box) -> None:
    n, rounds = 300, 50
    rng = random.Random(5)
    conf = box.tmp / "conf.d"
    conf.mkdir()
    (conf / "00-datapath.yaml").write_text(DATAPATH)

    def start_reconciling() -> float:
        """Start the daemon; return when its first reconcile begins (after imports and set-up)."""
        box.start(conf)
        box.wait("the first reconcile to start", lambda: "event=start " in box.logs(), timeout=30)
        return time.monotonic()

    # time one switch (every service's VIP and endpoints change) to aim the kills inside applies
    _services(conf, 0, n)
    start_reconciling()
    box.wait_ready(60)
    box.stop()
    _services(conf, 1, n)
    t0 = start_reconciling()
    box.wait_ready(60)
    span = time.monotonic() - t0
    box.stop()
    print(f"a switch of {n} services ({6 * n} changes) takes {span:.2f} s; "
          f"killing the daemon at {rounds} random points inside such applies")
    for r in range(rounds):
        _services(conf, r, n)
        start_reconciling()
        time.sleep(rng.uniform(0.0, span))
        assert box.proc is not None
        box.proc.kill()
        box.proc.wait(10)
        if r % 10 == 9:  # restart and let it converge from whatever the kills left
            box.start(conf)
            box.wait_ready(60)
            box.stop()
            assert box.plan_empty(conf), f"round {r}: the box did not converge"
            live = box.live()
            assert len(live["service"]) == n and len(live["endpoints"]) == n and len(live["vip"]) == n
            vips = {k for k in live["vip"]}
            assert all(v.startswith(f"198.{18 + r % 2}.") for v in vips), "orphaned VIPs"


# --- restarts under traffic ---------------------------------------------------------------------

def test_restarts_keep_the_pinned_datapath(box: Box) -> None:
    conf, _ = _layout("plain", box.tmp)
    box.start(conf)
    box.wait_ready()
    desired = box.live()
    prog = sh("tc", "-n", box.netns, "filter", "show", "dev", "eth0", "ingress")
    assert "bpf" in prog
    for i in range(20):
        box.stop(signal.SIGTERM if i % 2 else signal.SIGKILL)
        assert box.live() == desired
        box.start(conf)
        box.wait_ready()
        assert box.live() == desired
        # adopted: nothing re-applied
        doc = box.status() or {}
        changes = doc["last_reconcile"]["changes"]
        assert changes == {"create": 0, "update": 0, "delete": 0}, (i, doc["last_reconcile"])
    box.stop()


def _http_loop(netns: str, url_host: str, stop: threading.Event, results: list[str]) -> None:
    """GET / through the VIP from inside ``netns`` until ``stop``; one result per request."""
    with in_netns(netns):
        while not stop.is_set():
            try:
                with socket.create_connection((url_host, 80), timeout=2) as s:
                    s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
                ok = data.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
                results.append("ok" if ok else f"bad reply {data[:40]!r}")
            except OSError as exc:
                results.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.01)


def test_request_loop_sees_no_failure_across_20_daemon_restarts(tmp_path: Path) -> None:
    pytest.importorskip("reconciler.drivers.bpf", reason="the bpf driver is not in this tree yet")
    from tests.testbed import HTTP_PORT, VIP4, Testbed

    with Testbed(n_backends=3) as tb:
        box = Box(tb.lb, tmp_path / "state", Path("/sys/fs/bpf") / f"lbctl-test-{tb.prefix}", tmp_path)
        try:
            conf = tmp_path / "conf.d"
            conf.mkdir()
            ifaces = ", ".join(tb.lb_interfaces)
            (conf / "00-datapath.yaml").write_text(
                f"{HEADER}kind: Datapath\nmetadata: {{name: box}}\nspec: {{interfaces: [{ifaces}]}}\n")
            eps = ", ".join(f"{{address: {tb.backend4(i)}}}" for i in range(tb.n_backends))
            (conf / "web.yaml").write_text(
                f"{HEADER}kind: Service\nmetadata: {{name: web}}\nspec:\n  vip: {VIP4}\n"
                f"  ports: [{{port: 80, protocol: TCP, targetPort: {HTTP_PORT}}}]\n  endpoints: [{eps}]\n")
            box.start(conf)
            box.wait_ready()
            box.wait("the VIP answers", lambda: _probe(tb.client, VIP4), timeout=15)
            stop = threading.Event()
            results: list[str] = []
            loop = threading.Thread(target=_http_loop, args=(tb.client, VIP4, stop, results), daemon=True)
            loop.start()
            t0 = time.monotonic()
            for i in range(20):
                box.stop(signal.SIGKILL if i % 2 else signal.SIGTERM)
                time.sleep(0.05)
                box.start(conf)
                box.wait_ready()
            stop.set()
            loop.join(10)
            failures = [r for r in results if r != "ok"]
            print(f"{len(results)} requests through the VIP during 20 daemon restarts "
                  f"({time.monotonic() - t0:.1f} s): {len(failures)} failed")
            assert results and not failures, failures[:5]
        finally:
            if box.proc is not None and box.proc.poll() is None:
                box.proc.kill()
                box.proc.wait(10)
            shutil.rmtree(box.pin_root, ignore_errors=True)


def _probe(client: str, vip: str) -> bool:
    with in_netns(client):
        try:
            with socket.create_connection((vip, 80), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return s.recv(12).startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
        except OSError:
            return False
