"""The real engine (config loader, reconcile, incremental index) on in-memory drivers and real YAML."""

from __future__ import annotations

import io
import json
from pathlib import Path

from reconciler.logs import EventLog
from reconciler.records import EndpointSet
from reconciler.watch import Daemon, Options
from reconciler.watch_engine import ReconcileEngine
from tests.reconciler.fakes import FakeDriver, fake_drivers

HEADER = "apiVersion: lbctl.dev/v1alpha1\n"


def svc(name: str, vip: str, port: int, endpoints: list[str], pool: str | None = None) -> str:
    eps = ", ".join(f"{{address: {e}}}" for e in endpoints)
    where = f"pool: {pool}" if pool else f"vip: {vip}"
    return (f"{HEADER}kind: Service\nmetadata: {{name: {name}}}\nspec:\n  {where}\n"
            f"  ports: [{{port: {port}, protocol: TCP}}]\n  endpoints: [{eps}]\n---\n")


def make_box(tmp_path: Path) -> tuple[Path, ReconcileEngine, tuple[FakeDriver, FakeDriver, FakeDriver]]:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.yaml").write_text(svc("a1", "198.51.100.1", 80, ["10.0.0.1", "10.0.0.2"])
                                 + svc("a2", "198.51.100.2", 80, ["10.0.0.3"]))
    (conf / "b.yaml").write_text(svc("b1", "198.51.100.3", 80, ["10.0.0.4"]))
    drivers = fake_drivers()
    engine = ReconcileEngine(conf, tmp_path / "state", drivers)
    return conf, engine, drivers


def test_full_then_incremental_then_full(tmp_path: Path) -> None:
    conf, engine, (bpf, netlink, _) = make_box(tmp_path)
    first = engine.reconcile(engine.load(full=True), full=True)
    assert first.verified and first.mode == "full" and first.created == 9  # 3 x (service, endpoints, vip)
    assert first.records["service"] == 3
    writes = bpf.writes
    (conf / "b.yaml").write_text(svc("b1", "198.51.100.3", 80, ["10.0.0.4", "10.0.0.5"]))
    delivery = engine.load(full=False)
    assert delivery.files_parsed == 1
    out = engine.reconcile(delivery, full=False)
    assert out.verified and out.mode == "incremental" and (out.created, out.updated, out.deleted) == (0, 1, 0)
    assert out.fixed == ("~ endpoints tcp/198.51.100.3:80",)
    assert bpf.writes == writes + 1
    rec = bpf.state["endpoints"]["tcp/198.51.100.3:80"]
    assert isinstance(rec, EndpointSet) and len(rec.backends) == 2
    # removing a file deletes exactly its objects, incrementally
    (conf / "b.yaml").unlink()
    out = engine.reconcile(engine.load(full=False), full=False)
    assert out.verified and out.mode == "incremental" and out.deleted == 3
    assert set(netlink.state["vip"]) == {"198.51.100.1", "198.51.100.2"}
    assert out.records["service"] == 2
    # drift behind our back: a full reconcile repairs it
    del bpf.state["endpoints"]["tcp/198.51.100.1:80"]
    out = engine.reconcile(engine.load(full=True), full=True)
    assert out.verified and out.mode == "full" and out.fixed == ("+ endpoints tcp/198.51.100.1:80",)


def test_pool_services_go_through_ipam(tmp_path: Path) -> None:
    conf, engine, (bpf, _, _) = make_box(tmp_path)
    (conf / "pool.yaml").write_text(f"{HEADER}kind: Pool\nmetadata: {{name: p}}\nspec:\n"
                                    "  addresses: [203.0.113.0/30]\n")
    assert engine.reconcile(engine.load(full=True), full=True).verified
    (conf / "c.yaml").write_text(svc("c1", "", 90, ["10.0.0.9"], pool="p"))
    out = engine.reconcile(engine.load(full=False), full=False)
    assert out.verified and out.mode == "full"  # a new allocation needs IPAM
    assert "tcp/203.0.113.0:90" in bpf.state["service"] or "tcp/203.0.113.1:90" in bpf.state["service"]
    (conf / "c.yaml").write_text(svc("c1", "", 90, ["10.0.0.9", "10.0.0.8"], pool="p"))
    out = engine.reconcile(engine.load(full=False), full=False)
    assert out.verified and out.mode == "incremental" and out.updated == 1


def test_invalid_delivery_reports_file_line_and_field(tmp_path: Path) -> None:
    conf, engine, _ = make_box(tmp_path)
    (conf / "b.yaml").write_text(svc("b1", "198.51.100.3", 70000, ["10.0.0.4"]))
    delivery = engine.load(full=False)
    assert not delivery.valid
    assert any("/b.yaml:6:" in e and "Service/b1: spec.ports[0].port" in e for e in delivery.errors)


def test_driver_failure_is_an_outcome_and_the_next_run_converges(tmp_path: Path) -> None:
    conf, engine, (bpf, netlink, _) = make_box(tmp_path)
    bpf.fail_at = 2
    out = engine.reconcile(engine.load(full=True), full=True)
    assert not out.verified and out.error and "injected failure" in out.error
    assert engine.index is None
    bpf.fail_at = None
    out = engine.reconcile(engine.load(full=False), full=False)
    assert out.verified and out.mode == "full"


def test_daemon_with_the_real_engine_keeps_last_good(tmp_path: Path) -> None:
    conf, engine, (bpf, _, _) = make_box(tmp_path)
    daemon = Daemon(Options(directory=str(conf)), engine, EventLog("kv", io.StringIO()))
    daemon.cycle("startup")
    before = {k: dict(v) for k, v in bpf.state.items()}
    writes = bpf.writes
    for i in range(20):
        (conf / "b.yaml").write_text(svc("b1", "198.51.100.3", 80, [f"10.0.0.{300 + i}"]))
        daemon.cycle("delivery")
    assert bpf.state == before and bpf.writes == writes
    doc = daemon.status_json()
    assert doc["config_valid"] is False and "/b.yaml:" in doc["last_error"]["errors"][0]
    (conf / "b.yaml").write_text(svc("b1", "198.51.100.3", 80, ["10.0.0.7"]))
    daemon.cycle("delivery")
    assert daemon.status_json()["config_valid"] is True
    last = daemon.snapshot().last_reconcile
    assert last is not None and last.mode == "incremental"
    rec = bpf.state["endpoints"]["tcp/198.51.100.3:80"]
    assert isinstance(rec, EndpointSet) and [b.address for b in rec.backends] == ["10.0.0.7"]


def test_a_link_to_a_file_outside_the_directory_never_reaches_status(tmp_path: Path) -> None:
    """/status is readable by every local user: a root-only file linked in must not show there."""
    conf, engine, (bpf, _, _) = make_box(tmp_path)
    daemon = Daemon(Options(directory=str(conf)), engine, EventLog("kv", io.StringIO()))
    daemon.cycle("startup")
    secret = tmp_path / "shadow"
    secret.write_text("kind: s3cr3t-value\nmetadata: {name: hunter2}\n")
    secret.chmod(0o600)
    (conf / "creds.yaml").symlink_to(secret)
    daemon.cycle("delivery")
    doc = json.dumps(daemon.status_json())
    assert "s3cr3t" not in doc and "hunter2" not in doc
    assert daemon.status_json()["last_error"]["errors"] == [
        f"{conf}/creds.yaml: symlink leaves the configuration directory: it points to {secret}; not read "
        "(copy what it points to into the directory, or pass --follow-external-symlinks to read links that "
        "leave it)"]
    follow = ReconcileEngine(conf, tmp_path / "state", fake_drivers(),
                             follow_external_symlinks=True)
    assert "s3cr3t-value" in " ".join(follow.load(full=True).errors)  # the option does read it


def test_an_edit_delivered_with_an_invalid_file_is_applied_once_the_file_is_fixed(tmp_path: Path) -> None:
    # The loader's cache already holds a.yaml's edit from the rejected load, so the fixing
    # load re-parses only b.yaml: the engine must still compare a.yaml against what it applied.
    conf, engine, (bpf, _, _) = make_box(tmp_path)
    daemon = Daemon(Options(directory=str(conf)), engine, EventLog("kv", io.StringIO()))
    daemon.cycle("startup")
    (conf / "a.yaml").write_text(svc("a1", "198.51.100.1", 80, ["10.0.0.9"])
                                 + svc("a2", "198.51.100.2", 80, ["10.0.0.3"]))
    (conf / "b.yaml").write_text(svc("b1", "198.51.100.3", 70000, ["10.0.0.4"]))
    daemon.cycle("delivery")
    assert daemon.status_json()["config_valid"] is False
    (conf / "b.yaml").write_text(svc("b1", "198.51.100.3", 80, ["10.0.0.4"]))
    daemon.cycle("delivery")
    last = daemon.snapshot().last_reconcile
    assert last is not None and last.result == "ok" and last.mode == "incremental" and last.updated == 1
    rec = bpf.state["endpoints"]["tcp/198.51.100.1:80"]
    assert isinstance(rec, EndpointSet) and [b.address for b in rec.backends] == ["10.0.0.9"]
    # and a resync of that content finds nothing to repair (it is not drift)
    daemon.cycle("resync")
    assert daemon.snapshot().drift_repairs == 0


def test_an_exhausted_pool_is_rejected_whole_and_resync_keeps_the_last_good(tmp_path: Path) -> None:
    conf, engine, (bpf, netlink, _) = make_box(tmp_path)
    (conf / "pool.yaml").write_text(f"{HEADER}kind: Pool\nmetadata: {{name: p}}\nspec:\n"
                                    "  addresses: [203.0.113.7/32]\n  sharing: exclusive\n")
    (conf / "c.yaml").write_text(svc("c1", "", 90, ["10.0.0.9"], pool="p"))
    out = io.StringIO()
    daemon = Daemon(Options(directory=str(conf)), engine, EventLog("kv", out))
    daemon.cycle("startup")
    assert daemon.snapshot().ready and "tcp/203.0.113.7:90" in bpf.state["service"]
    before = {k: dict(v) for k, v in bpf.state.items()}
    vips = dict(netlink.state["vip"])
    (conf / "d.yaml").write_text(svc("d1", "", 91, ["10.0.0.8"], pool="p"))  # no address left for it
    daemon.cycle("delivery")
    doc = daemon.status_json()
    assert doc["config_valid"] is False and doc["invalid_deliveries"] == 1
    assert "pool exhausted" in doc["last_error"]["errors"][0] and "d1" in doc["last_error"]["errors"][0]
    assert daemon.metrics.value("lbctl_config_valid") == 0
    assert bpf.state == before and netlink.state["vip"] == vips
    assert out.getvalue().count("pool exhausted") == 1
    # a resync while the directory stays invalid repairs drift against the last good config
    del bpf.state["endpoints"]["tcp/198.51.100.1:80"]
    daemon.cycle("resync")
    assert bpf.state == before
    snap = daemon.snapshot()
    assert snap.drift_repairs == 1 and snap.config_valid is False and snap.rejected == 2
    assert out.getvalue().count("pool exhausted") == 1  # the same content is reported once
    # the fix applies normally
    (conf / "d.yaml").unlink()
    (conf / "c.yaml").write_text(svc("c1", "", 90, ["10.0.0.9", "10.0.0.10"], pool="p"))
    daemon.cycle("delivery")
    doc = daemon.status_json()
    assert doc["config_valid"] is True and doc["last_error"] is None
    rec = bpf.state["endpoints"]["tcp/203.0.113.7:90"]
    assert isinstance(rec, EndpointSet) and len(rec.backends) == 2


def test_full_reconciles_recount_least_connection_counts_only_when_lc_is_used(tmp_path: Path) -> None:
    conf, engine, (bpf, _, _) = make_box(tmp_path)
    calls: list[int] = []
    bpf.sync_conn_counts = lambda: calls.append(1)  # type: ignore[attr-defined]
    assert engine.reconcile(engine.load(full=True), full=True).verified
    assert calls == []  # no lc service: no conntrack scan
    (conf / "c.yaml").write_text(svc("c1", "198.51.100.9", 80, ["10.0.0.9"]).replace(
        "  endpoints:", "  selection: lc\n  endpoints:"))
    assert engine.reconcile(engine.load(full=False), full=False).verified
    assert calls == []  # the incremental path does not scan conntrack
    assert engine.reconcile(engine.load(full=True), full=True).verified
    assert calls == [1]  # the resync does
