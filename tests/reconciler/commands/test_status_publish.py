"""``lbctl status --publish``: the daemon's /status as an annotation of the DaemonSet.

The daemon side is the real ``StatusServer``; the API server is ``fakeapi``'s
recorded-response server, which records the JSON patches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.cli import main
from reconciler.k8s import health
from reconciler.status import Address, Endpoints, StatusServer
from tests.reconciler.k8s.fakeapi import FakeApiServer

DS_PATH = "/apis/apps/v1/namespaces/lbctl-system/daemonsets/lbctl"
DOC: dict[str, Any] = {"ready": True, "config_valid": True, "digest": "abc123",
                       "last_reconcile": {"result": "ok", "error": None}, "last_error": None}


def _publish(tmp_path: Path, server: FakeApiServer, listen: str) -> int:
    return main(["status", "--publish", "lbctl-system/lbctl", "--every", "0", "--node", "node-a",
                 "--listen", listen, "--kubeconfig", str(server.kubeconfig(tmp_path / "kc"))])


def test_publishes_the_node_report(tmp_path: Path) -> None:
    daemon = StatusServer(Address("127.0.0.1", 0), Endpoints(lambda: True, lambda: DOC, lambda: ""))
    daemon.start()
    try:
        with FakeApiServer() as server:
            assert _publish(tmp_path, server, str(daemon.address)) == 0
            patches = list(server.patches)
    finally:
        daemon.stop()
    ((path, body, _),) = patches
    assert path == DS_PATH
    assert body == [{"op": "add", "path": "/metadata/annotations/status.lbctl.dev~1node-a",
                     "value": "ready=true;valid=true;result=ok;digest=abc123;error="}]
    assert body[0]["value"] == health.node_report(DOC)


def test_an_absent_daemon_is_published_as_not_ready(tmp_path: Path) -> None:
    daemon = StatusServer(Address("127.0.0.1", 0), Endpoints(lambda: True, lambda: DOC, lambda: ""))
    listen = str(daemon.address)
    daemon._server.server_close()  # the port is known and nobody answers there
    with FakeApiServer() as server:
        assert _publish(tmp_path, server, listen) == 0
        ((_, body, _),) = server.patches
    assert body[0]["value"].startswith("ready=false;valid=unknown;result=none;digest=;error=no lbctl watch")


def test_bad_publish_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with FakeApiServer() as server:
        assert main(["status", "--publish", "lbctl", "--every", "0",
                     "--kubeconfig", str(server.kubeconfig(tmp_path / "kc"))]) == 1
    assert "NAMESPACE/DAEMONSET" in capsys.readouterr().err


@pytest.mark.parametrize("doc, want", [
    (None, "ready=false;valid=unknown;result=none;digest=;error=no lbctl watch daemon answers"),
    ({"ready": False, "config_valid": None}, "ready=false;valid=unknown;result=none;digest=;error="),
    ({"ready": True, "config_valid": False, "digest": "d", "last_reconcile": {"result": "ok"},
      "last_error": {"errors": ["f.yaml:1:1: Service/x: spec; a=b"]}},
     "ready=true;valid=false;result=ok;digest=d;error=f.yaml:1:1: Service/x: spec, a:b"),
])
def test_node_report(doc: dict[str, Any] | None, want: str) -> None:
    assert health.node_report(doc) == want
