"""The live path (``lbctl import k8s`` without -f) and ``--watch``, against ``fakeapi``.

No kube-apiserver can be built on this machine, so these run the real
``kubernetes`` client over real HTTP against recorded list/watch responses,
including a dropped watch and a 410 Gone.
"""

from __future__ import annotations

import copy
import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.errors import LbctlError
from reconciler.k8s import cluster, importer, outdir, sync
from tests.reconciler.k8s.fakeapi import FakeApiServer, api_list, fixture_lists

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "cluster.yaml"
GOLDEN = HERE / "golden"
SERVICES = "/api/v1/services"


def _serve_fixture(server: FakeApiServer, rv: str = "1000") -> dict[str, dict[str, Any]]:
    lists = fixture_lists(FIXTURE, rv)
    for resource, body in lists.items():
        server.lists[resource].append(body)
    return lists


def test_live_import_matches_the_file_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeApiServer() as server:
        _serve_fixture(server)
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        out = tmp_path / "out"
        assert main(["import", "k8s", "--kubeconfig", str(kubeconfig), "-o", str(out)]) == 0
    got = {p.name: p.read_bytes() for p in out.glob("*.yaml")}
    want = {p.name: p.read_bytes() for p in GOLDEN.glob("*.yaml")}
    assert got == want
    assert "Imported 11 resources" in capsys.readouterr().out


def test_lbctl_custom_resources_are_read_from_the_cluster(tmp_path: Path) -> None:
    with FakeApiServer() as server:
        _serve_fixture(server)
        server.customs["pools"] = api_list("lbctl.dev/pools", [{
            "apiVersion": "lbctl.dev/v1alpha1", "kind": "Pool",
            "metadata": {"name": "default", "resourceVersion": "5"},
            "spec": {"addresses": ["198.18.0.0/24"]}}],
            "5")
        api = cluster.connect(str(server.kubeconfig(tmp_path / "kc")))
        listing = cluster.list_all(api)
    assert [o["metadata"]["name"] for o in listing.objects.lbctl] == ["default"]
    result = importer.convert(listing.objects)
    assert "lbctl-pool-default.yaml" in [f.filename for f in result.files]


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def _svc(lists: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return next(copy.deepcopy(s) for s in lists["services"]["items"] if s["metadata"]["name"] == name)


class Imports:
    """What on_import reported, for the test thread to wait on (events, not sleeps)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.q: queue.Queue[outdir.SyncReport] = queue.Queue()

    def __call__(self, result: importer.Result, report: outdir.SyncReport) -> None:
        self.q.put(report)

    def until(self, predicate: Any) -> None:
        while not predicate(sorted(p.name for p in self.out.glob("*.yaml"))):
            self.q.get(timeout=30)  # a safety net only: each import is an event


def test_watch_follows_events_a_dropped_watch_and_410_gone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    delays: list[float] = []
    stop = threading.Event()
    logs: list[str] = []
    with FakeApiServer() as server:
        lists = _serve_fixture(server, "1000")
        new = _svc(lists, "web")
        new["metadata"].update(name="new", resourceVersion="1001", uid="uid-new")
        new["apiVersion"], new["kind"] = "v1", "Service"
        # 1st watch (from 1000): one ADDED event, then the connection dies mid-chunk.
        server.watches["services"].append([_event("ADDED", new), "drop"])
        # 2nd watch (from 1001, no re-list): the version expired: 410 Gone.
        server.watches["services"].append(["gone"])
        # the re-list: shop/api disappeared while nobody watched, "new" is there.
        second = copy.deepcopy(lists["services"])
        second["metadata"]["resourceVersion"] = "2000"
        second["items"] = [s for s in second["items"] if s["metadata"]["name"] != "api"]
        second["items"].append({k: v for k, v in new.items() if k not in ("kind", "apiVersion")})
        server.lists["services"].append(second)
        # 3rd watch (from 2000): web MODIFIED (port 443 gone), a BOOKMARK at 2002, then the server
        # ends the watch normally; the 4th watch (from the bookmark's 2002) stays open.
        web = _svc(lists, "web")
        web["metadata"]["resourceVersion"] = "2001"
        web["spec"]["ports"] = web["spec"]["ports"][:1]
        web["apiVersion"], web["kind"] = "v1", "Service"
        server.watches["services"].append([_event("MODIFIED", web), {"type": "BOOKMARK", "object": {
            "kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "2002"}}}, "close"])

        api = cluster.connect(str(server.kubeconfig(tmp_path / "kc")))
        imports = Imports(out)

        def wait(delay: float) -> bool:
            delays.append(delay)
            return stop.is_set()

        runner = threading.Thread(target=sync.run, kwargs=dict(
            api=api, options=importer.Options(), out_dir=str(out), state_dir=None, on_import=imports,
            stop=stop, wait=wait, log=logs.append, resources=cluster.RESOURCES[:3], tick=0.05))
        runner.start()
        try:
            imports.until(lambda names: "default-new.yaml" in names and "shop-api.yaml" not in names)
            imports.until(lambda names: b"443" not in (out / "default-web.yaml").read_bytes())
            assert server.watch_requests(SERVICES)[:4] == ["1000", "1001", "2000", "2002"]
        finally:
            stop.set()
            server.release()
            runner.join(30)
    assert not runner.is_alive()
    assert server.list_count(SERVICES) == 2  # the drop watched again from 1001; only the 410 re-listed
    assert delays and delays[0] == sync.Backoff().first  # the drop backed off
    assert any("410" in line for line in logs)
    text = (out / "default-new.yaml").read_text()
    assert text.startswith("# Generated by `lbctl import k8s` from Service default/new "
                           "(resourceVersion 1001).")


def test_backoff_grows_and_is_capped() -> None:
    b = sync.Backoff(first=0.5, factor=2, most=4)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_write_status_patches_the_vip(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "allocations.json").write_text(json.dumps({"format_version": 1, "allocations": {
        "default-web": {"pool": "default", "vip": "198.18.0.5"}}}))
    with FakeApiServer() as server:
        _serve_fixture(server)
        kubeconfig = server.kubeconfig(tmp_path / "kc")
        assert main(["import", "k8s", "--kubeconfig", str(kubeconfig), "-o", str(tmp_path / "out"),
                     "--write-status", "--state-dir", str(state)]) == 0
        patches = {path: body for path, body, _ in server.patches}
    assert patches["/api/v1/namespaces/default/services/web/status"] == [
        {"op": "add", "path": "/status/loadBalancer", "value": {"ingress": [{"ip": "198.18.0.5"}]}}]
    assert patches["/api/v1/namespaces/annotated/services/sctp-multihome/status"][0]["value"] == {
        "ingress": [{"ip": "192.0.2.10"}]}
    assert len(patches) == 2  # the other pool Services have no VIP allocated yet


def test_files_and_watch_do_not_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["import", "k8s", "-f", str(FIXTURE), "-o", str(tmp_path), "--watch"]) == 1
    assert "need a live cluster" in capsys.readouterr().err


def test_watch_command_end_to_end(tmp_path: Path) -> None:
    """``lbctl import k8s --watch`` as a process: it imports, follows an event, and SIGTERM ends it."""
    out = tmp_path / "out"
    with FakeApiServer() as server:
        lists = _serve_fixture(server, "1000")
        gone = _svc(lists, "api")
        gone["apiVersion"], gone["kind"] = "v1", "Service"
        gone["metadata"]["resourceVersion"] = "1001"
        server.watches["services"].append([_event("DELETED", gone)])  # then a held watch
        cmd = [sys.executable, "-m", "reconciler.cli", "import", "k8s", "--watch", "-o", str(out),
               "--kubeconfig", str(server.kubeconfig(tmp_path / "kc"))]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[3])
        try:
            assert proc.stdout is not None
            lines = []
            while not any(line.startswith("Imported 10 resources") for line in lines):
                line = proc.stdout.readline()  # each import prints one summary line: an event, no sleep
                assert line, f"lbctl exited: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
                lines.append(line)
            assert not (out / "shop-api.yaml").exists() and (out / "default-web.yaml").exists()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            server.release()
    assert proc.returncode == -signal.SIGTERM


def test_list_errors_back_off_then_import(tmp_path: Path) -> None:
    out = tmp_path / "out"
    delays: list[float] = []
    stop = threading.Event()
    with FakeApiServer() as server:
        _serve_fixture(server, "1000")
        server.lists["endpointslices"].appendleft(500)
        server.lists["endpointslices"].appendleft(503)
        api = cluster.connect(str(server.kubeconfig(tmp_path / "kc")))
        imports = Imports(out)

        def wait(delay: float) -> bool:
            delays.append(delay)
            return stop.is_set()

        runner = threading.Thread(target=sync.run, kwargs=dict(
            api=api, options=importer.Options(), out_dir=str(out), state_dir=None, on_import=imports,
            stop=stop, wait=wait, log=lambda line: None, resources=cluster.RESOURCES[:3], tick=0.05))
        runner.start()
        try:
            imports.until(lambda names: len(names) == 11)
        finally:
            stop.set()
            server.release()
            runner.join(30)
    assert delays == [0.5, 1.0]  # two failed lists, then the list that worked
    assert "10.0.0.12" in (out / "shop-api.yaml").read_text()  # Local: needs the slices of the third answer


def test_watch_writes_status_when_lbctl_allocates(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    stop = threading.Event()
    with FakeApiServer() as server:
        lists = _serve_fixture(server, "1000")
        for svc in lists["services"]["items"]:  # the static VIP is already in this Service's status
            if svc["metadata"]["name"] == "sctp-multihome":
                svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}
        api = cluster.connect(str(server.kubeconfig(tmp_path / "kc")))
        imports = Imports(tmp_path / "out")
        runner = threading.Thread(target=sync.run, kwargs=dict(
            api=api, options=importer.Options(), out_dir=str(tmp_path / "out"), state_dir=state,
            on_import=imports, stop=stop, log=lambda line: None, resources=cluster.RESOURCES[:3], tick=0.05))
        runner.start()
        try:
            imports.until(lambda names: len(names) == 11)
            assert server.patches == []  # nothing allocated yet; the static VIP is already written
            # `lbctl apply` allocates default/web's VIP: the importer notices the state file changed
            (state / "allocations.json").write_text(json.dumps({"format_version": 1, "allocations": {
                "default-web": {"pool": "default", "vip": "198.18.0.9"}}}))
            ((path, body, _),) = server.wait_for_patches(1)
        finally:
            stop.set()
            server.release()
            runner.join(30)
    assert path == "/api/v1/namespaces/default/services/web/status"
    assert body[0]["value"] == {"ingress": [{"ip": "198.18.0.9"}]}


def test_kubeconfig_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeApiServer() as server:
        _serve_fixture(server)
        monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{server.kubeconfig(tmp_path / 'kc')}")
        listing = cluster.list_all(cluster.connect())
    assert len(listing.objects.services) == 13


def test_no_configuration_at_all_is_an_error_with_a_hint(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(LbctlError, match="cannot configure the Kubernetes client"):
        cluster.connect()
