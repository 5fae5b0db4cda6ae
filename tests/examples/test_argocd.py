"""``examples/argocd``: kustomize renders it, the objects are valid Kubernetes objects, the
ConfigMap holds a valid lbctl configuration, the DaemonSet asks for only the capabilities it
needs, and the Lua health check maps published ``/status`` reports to Argo CD health.

The Lua runs under Debian's lua5.1 (Argo CD's gopher-lua implements Lua 5.1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.config import load_dir
from reconciler.k8s import health

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "argocd"
LUA = EXAMPLE / "bootstrap" / "health.lua"


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: `make setup` installs kubernetes-client"
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def test_renders_with_a_valid_lbctl_configuration(tmp_path: Path) -> None:
    docs = _kustomize(EXAMPLE)
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "DaemonSet", "Namespace", "Role", "RoleBinding",
                                               "ServiceAccount"]
    cm = _one(docs, "ConfigMap")
    assert cm["metadata"]["name"] == "lbctl-config"  # no hash suffix: updated in place, no restart
    for name, text in cm["data"].items():
        (tmp_path / name).write_text(text)
    loaded = load_dir(tmp_path)
    assert loaded.errors == ()
    assert {r.kind for r in loaded.resources} == {"Datapath", "Pool", "Service"}


def test_daemonset_asks_for_only_what_lbctl_needs() -> None:
    ds = _one(_kustomize(EXAMPLE), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    lbctl, status = pod["containers"]
    assert lbctl["args"][:2] == ["watch", "/etc/lbctl/conf.d"]
    mounts = {m["name"]: m for m in lbctl["volumeMounts"]}
    assert mounts["config"]["mountPath"] == "/etc/lbctl/conf.d" and mounts["config"]["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "lbctl-config"
    assert volumes["bpffs"]["hostPath"]["path"] == "/sys/fs/bpf"
    sc = lbctl["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "NET_ADMIN"]}
    assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
    assert status["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert status["securityContext"]["runAsNonRoot"] is True
    own = f"{ds['metadata']['namespace']}/{ds['metadata']['name']}"
    assert status["args"][:3] == ["status", "--publish", own]
    assert "lbctl.dev/status-annotations" in ds["metadata"]["annotations"]


def test_container_commands_are_lbctl_commands() -> None:
    from reconciler.cli import build_parser

    pod = _one(_kustomize(EXAMPLE), "DaemonSet")["spec"]["template"]["spec"]
    for container in pod["containers"]:
        args = build_parser().parse_args(container["args"])  # exits (SystemExit) on a bad option
        assert args._module is not None


def test_bootstrap_renders_the_application_and_the_health_check() -> None:
    docs = _kustomize(EXAMPLE / "bootstrap")
    app = _one(docs, "Application")
    assert app["spec"]["source"]["path"] == "examples/argocd"
    cm = _one(docs, "ConfigMap", "argocd-cm")
    assert cm["data"]["resource.customizations.health.apps_DaemonSet"] == LUA.read_text()


def test_rendered_objects_validate_against_the_kubernetes_openapi_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate")  # in the venv (dev lock); Debian has no package
    version = kv.utils.latest_version()
    argocd_cm = [d for d in _kustomize(EXAMPLE / "bootstrap") if d["kind"] == "ConfigMap"]
    for doc in _kustomize(EXAMPLE) + argocd_cm:
        kv.validate(doc, version, strict=True)
    ds = _one(_kustomize(EXAMPLE), "DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True  # the check has teeth: a typo fails
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, version, strict=True)


# --- the Lua health check --------------------------------------------------------------------


def _lua(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    return json.dumps(value)


def _health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.1")
    assert lua, "lua5.1 is missing: it is in the Makefile's APT_PACKAGES"
    harness = (f"obj = {_lua(obj)}\nlocal hs = dofile({json.dumps(str(LUA))})\n"
               "io.write(hs.status, '\\n', hs.message or '')")
    out = subprocess.run([lua, "-"], input=harness, check=True, capture_output=True, text=True).stdout
    status, _, message = out.partition("\n")
    return status, message


def _ds(reports: dict[str, str] | None, desired: int = 2, **status: int) -> dict[str, Any]:
    annotations = {"lbctl.dev/status-annotations": "status.lbctl.dev/NODE"} if reports is not None else {}
    for node, value in (reports or {}).items():
        annotations[health.annotation_key(node)] = value
    st = {"observedGeneration": 3, "desiredNumberScheduled": desired, "updatedNumberScheduled": desired,
          "numberAvailable": desired, "numberReady": desired} | status
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "lbctl", "generation": 3, "annotations": annotations}, "status": st}


def _status(ready: bool = True, valid: bool | None = True, result: str = "ok", digest: str = "d" * 64,
            errors: list[str] | None = None) -> dict[str, Any]:
    return {"ready": ready, "config_valid": valid, "digest": digest,
            "last_reconcile": {"result": result, "error": None},
            "last_error": {"errors": errors} if errors else None}


GOOD = health.node_report(_status())


def test_healthy_when_every_node_runs_one_verified_configuration() -> None:
    assert _health(_ds({"node-a": GOOD, "node-b": GOOD})) == ("Healthy",
                                                              "2 nodes run configuration dddddddddddd")


def test_degraded_when_a_node_rejects_the_configuration() -> None:
    bad = health.node_report(_status(valid=False,
                                     errors=["conf.d/20-services.yaml:3:5: Service/web: bad; x=1"]))
    status, message = _health(_ds({"node-a": GOOD, "node-b": bad}))
    assert status == "Degraded"
    assert message.startswith("node-b: configuration rejected: conf.d/20-services.yaml:3:5")
    failed = health.node_report(_status(result="failed", errors=["apply stopped"]))
    assert _health(_ds({"node-a": failed, "node-b": GOOD}))[0] == "Degraded"


@pytest.mark.parametrize("obj, why", [
    (_ds({"node-a": GOOD, "node-b": health.node_report(_status(ready=False, result="none"))}), "not ready"),
    (_ds({"node-a": GOOD, "node-b": health.node_report(None)}), "daemon unreachable"),
    (_ds({"node-a": GOOD}), "a node has not reported"),
    (_ds({"node-a": GOOD, "node-b": health.node_report(_status(digest="e" * 64))}), "two configurations"),
    (_ds({"node-a": GOOD, "node-b": GOOD}, updatedNumberScheduled=1), "rollout"),
    (_ds({"node-a": GOOD, "node-b": GOOD}, observedGeneration=2), "generation not observed"),
    ({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "lbctl"}}, "no status yet"),
])
def test_progressing(obj: dict[str, Any], why: str) -> None:
    assert _health(obj)[0] == "Progressing", why


def test_other_daemonsets_are_healthy_once_rolled_out() -> None:
    assert _health(_ds(None))[0] == "Healthy"
    assert _health(_ds(None, numberAvailable=1))[0] == "Progressing"
