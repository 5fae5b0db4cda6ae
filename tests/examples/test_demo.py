"""The README's first command, end to end: examples/demo/run.sh, then its teardown.

Runs the real demo script (namespaces, datapath, lbctl plan/apply, HTTP through
the VIP, the one-endpoint edit) under a unique namespace prefix, with its own
pin root and state dir, so it never meets a demo an operator left running.
Asserts the traffic reached all three backends before the edit and only the
two remaining ones after, then that ``run.sh down`` leaves no namespace, pin,
state or backend process behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "examples" / "demo" / "run.sh"


def _summary(out: str, label: str) -> dict[str, int]:
    m = re.search(rf"^backends answering {label} the edit:(.*)$", out, re.M)
    assert m, f"no '{label}' summary in the demo output:\n{out}"
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]


def _pids(prefix: str) -> list[int]:
    pids = []
    for ns in _namespaces(prefix):
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    return pids


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_demo_runs_end_to_end_and_tears_down(tmp_path: Path) -> None:
    if not (REPO / "reconciler" / "datapath" / "lb_kern.o").exists():
        pytest.fail("the datapath is not built: run 'make build'")
    prefix = f"lbdt{uuid.uuid4().hex[:6]}"
    pin_root = Path(f"/sys/fs/bpf/lbctl-test-{prefix}")
    state = tmp_path / "state"
    env = os.environ | {"LBCTL_DEMO_PREFIX": prefix, "LBCTL_PIN_ROOT": str(pin_root),
                        "LBCTL_STATE_DIR": str(state)}

    def demo(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(RUN), *args], env=env, capture_output=True, text=True, timeout=120)

    try:
        r = demo()
        assert r.returncode == 0, f"demo failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        out = r.stdout
        before, after = _summary(out, "before"), _summary(out, "after")
        assert set(before) == {"backend0", "backend1", "backend2"} and sum(before.values()) == 12
        assert set(after) == {"backend0", "backend1"} and sum(after.values()) == 12
        assert "Plan: 0 to add, 1 to change, 0 to destroy." in out
        assert "- 10.201.2.2:8080 weight 1" in out
        assert "FLOWS" in out and "sudo make demo-down" in out
        # The box is left running: the namespaces, the pins and the backend servers.
        assert sorted(_namespaces(prefix)) == sorted(f"{prefix}-{n}" for n in ("lb", "cl", "b0", "b1", "b2"))
        assert (pin_root / f"{prefix}-lb" / "lb_svc").exists()
        servers = _pids(prefix)
        assert len(servers) == 3, servers

        # A second run starts from a clean slate and works the same.
        r = demo()
        assert r.returncode == 0, f"second demo run failed:\n{r.stdout}\n{r.stderr}"
        assert not any(_alive(p) for p in servers), "the first run's servers survived"
        servers = _pids(prefix)

        r = demo("down")
        assert r.returncode == 0, f"demo down failed:\n{r.stdout}\n{r.stderr}"
        assert _namespaces(prefix) == []
        assert not (pin_root / f"{prefix}-lb").exists(), list((pin_root / f"{prefix}-lb").rglob("*"))
        assert not (state / f"{prefix}-lb").exists()
        assert not any(_alive(p) for p in servers), "backend servers survived the teardown"
        r = demo("down")  # idempotent
        assert r.returncode == 0 and "nothing" in r.stdout, r.stdout + r.stderr
    finally:
        demo("down")
        for ns in _namespaces(prefix):
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(pin_root, ignore_errors=True)
