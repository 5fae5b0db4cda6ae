"""Health transitions through the real engine and daemon, on in-memory drivers (no root, no sockets).

The probe runner is left out: results are fed to the engine's ``HealthTracker`` by hand,
and its transitions reach the engine the way the runner hands them over.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.apply import reconcile
from reconciler.logs import EventLog
from reconciler.probes import store
from reconciler.probes.health import HealthTracker, ProbeResult
from reconciler.probes.targets import HealthKey, ProbeTarget
from reconciler.records import EndpointSet
from reconciler.watch import Daemon, Options
from reconciler.watch_engine import ReconcileEngine
from tests.reconciler.fakes import fake_drivers

HEADER = "apiVersion: lbctl.dev/v1alpha1\n"
KEY = "tcp/198.51.100.1:80"
FAIL = ProbeResult(False, 0.001, "connection refused", 1.0)
OK = ProbeResult(True, 0.001, None, 2.0)


def write_conf(conf: Path) -> None:
    conf.mkdir()
    (conf / "web.yaml").write_text(
        f"{HEADER}kind: Service\nmetadata: {{name: web}}\nspec:\n  vip: 198.51.100.1\n"
        "  ports: [{port: 80, protocol: TCP, targetPort: 8080}]\n"
        "  endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}, {address: 10.0.0.3, backup: true}]\n"
        "  probe: {type: tcp, retries: 2}\n")
    (conf / "other.yaml").write_text(
        f"{HEADER}kind: Service\nmetadata: {{name: other}}\nspec:\n  vip: 198.51.100.2\n"
        "  ports: [{port: 80}]\n  endpoints: [{address: 10.0.1.1}]\n")


def backends(bpf: object) -> list[str]:
    rec = bpf.state["endpoints"][KEY]  # type: ignore[attr-defined]
    assert isinstance(rec, EndpointSet)
    return [b.address for b in rec.backends if b.weight > 0]  # the others are out of selection


class NoThread:
    """The probe runner without its thread: it only follows the configuration."""

    def __init__(self, tracker: HealthTracker, report: object, namespace: object) -> None:
        self.tracker = tracker

    def start(self) -> None:
        pass

    def configure(self, targets: Mapping[HealthKey, ProbeTarget]) -> None:
        self.tracker.configure(targets)

    def stop(self) -> None:
        pass


class Engine(ReconcileEngine):
    """The real engine with a tracker fed by hand."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.runner_factory = NoThread

    def feed(self, address: str, result: ProbeResult) -> None:
        assert self.tracker is not None
        change = self.tracker.record(("web", address), result)
        if change is not None:
            self._on_transition(change)


def test_a_transition_is_one_endpoint_write_logged_once_and_never_a_plan_change(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write_conf(conf)
    drivers = fake_drivers()
    bpf = drivers[0]
    engine = Engine(conf, tmp_path / "state", drivers)
    out = io.StringIO()
    daemon = Daemon(Options(directory=str(conf), probes=True), engine, EventLog("kv", out))
    woken: list[bool] = []
    daemon.start_services()
    engine._wake = lambda: woken.append(True)  # type: ignore[method-assign]
    daemon.cycle("startup")
    assert backends(bpf) == ["10.0.0.1", "10.0.0.2"]  # the backup waits

    writes = bpf.writes
    engine.feed("10.0.0.1", FAIL)
    assert not engine.health_due()  # one failure of retries 2: nothing yet
    engine.feed("10.0.0.1", FAIL)
    assert engine.health_due() and woken
    daemon.health_changed()
    daemon.step()
    assert backends(bpf) == ["10.0.0.2"]
    assert bpf.writes == writes + 1  # one endpoint set rewritten, nothing else
    log = out.getvalue()
    assert log.count("endpoint-down") == 1 and "service=web" in log and "10.0.0.1" in log
    assert store.load_down(tmp_path / "state") == {("web", "10.0.0.1")}
    # The CLI's plan compiles with the recorded health: empty.
    plan = reconcile(conf, drivers, tmp_path / "state", dry_run=True)
    assert not plan.plan.changes, plan.plan.changes

    engine.feed("10.0.0.2", FAIL)
    engine.feed("10.0.0.2", FAIL)
    daemon.health_changed()
    daemon.step()
    assert backends(bpf) == ["10.0.0.3"]  # every primary down: the backup takes new flows

    engine.feed("10.0.0.1", OK)
    daemon.health_changed()
    daemon.step()
    assert backends(bpf) == ["10.0.0.1"]  # a primary is back: the backup is out again
    assert out.getvalue().count("endpoint-up") == 1
    assert daemon.status_json()["endpoints"][0]["health"] == "up"
    # A resync compiles with the same health: nothing to repair.
    daemon.cycle("resync")
    assert daemon.snapshot().drift_repairs == 0
    assert backends(bpf) == ["10.0.0.1"]


def test_the_daemon_starts_with_the_recorded_health(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write_conf(conf)
    store.save(tmp_path / "state", {("web", "10.0.0.2"): False})
    drivers = fake_drivers()
    engine = Engine(conf, tmp_path / "state", drivers)
    daemon = Daemon(Options(directory=str(conf), probes=True), engine, EventLog("kv", io.StringIO()))
    daemon.start_services()
    daemon.cycle("startup")
    assert backends(drivers[0]) == ["10.0.0.1"]
