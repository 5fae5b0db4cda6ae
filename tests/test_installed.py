"""lbctl as pip installs it: a plain (not editable) install into a fresh venv works from anywhere.

Why this exists: in the checkout every path happens to be near every other; an
installed lbctl has only its package.  This builds the package the way a user or
a packager does (``pip install --no-deps --no-build-isolation``, into a venv made
from Debian's python3 with ``--system-site-packages`` for Debian's yaml,
jsonschema, watchdog, pyroute2, cffi and rich; no network), then runs that
venv's ``lbctl apply`` from an unrelated working directory against a namespace
of its own and checks the plan is empty afterwards.  It proves the BPF object and
its header travel as package data and nothing is looked up in the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from reconciler.constants import BPFFS, DATAPATH_HEADER, DATAPATH_OBJECT, DATAPATH_PACKAGE_DIR

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PY = "/usr/bin/python3"
CONFIG = """\
apiVersion: lbctl.dev/v1alpha1
kind: Datapath
metadata: {name: box}
spec: {interfaces: [eth0]}
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  vip: 198.51.100.1
  ports: [{port: 80, protocol: TCP, targetPort: 8080}]
  endpoints: [{address: 10.0.0.1}, {address: 10.0.0.2}]
"""


def run(*argv: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_pip_install_then_apply_from_any_directory(tmp_path: Path) -> None:
    built = REPO / "reconciler" / DATAPATH_PACKAGE_DIR
    for name in (DATAPATH_OBJECT, DATAPATH_HEADER):
        if not (built / name).is_file():
            pytest.fail(f"{built / name} is missing: run 'make build'")
    # The source as pip sees it (the package with its package data), copied so the
    # build's in-tree output (build/, *.egg-info) never lands in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "reconciler", src / "reconciler", ignore=shutil.ignore_patterns("__pycache__"))

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "LBCTL_", "VIRTUAL_ENV", "PIP_"))} | {"PYTHONNOUSERSITE": "1"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    # --without-pip: Debian's pip is visible through the system site-packages.
    made = run(DEBIAN_PY, "-m", "venv", "--system-site-packages", "--without-pip", venv,
               cwd=elsewhere, env=env)
    assert made.returncode == 0, made.stderr
    pip = run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
              "--no-index", "--disable-pip-version-check", src, cwd=elsewhere, env=env)
    assert pip.returncode == 0, pip.stdout + pip.stderr

    where = run(venv / "bin" / "python", "-c",
                "import reconciler; from reconciler.drivers.datapath_files import datapath_file as f; "
                f"print(reconciler.__file__); print(f({DATAPATH_OBJECT!r})); print(f({DATAPATH_HEADER!r}))",
                cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    site = (venv / "lib").resolve()
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(site), f"{line} is not the installed copy"

    name = f"lbt-inst-{uuid.uuid4().hex[:8]}"
    pins = Path(BPFFS) / f"lbctl-test-{name}"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "box.yaml").write_text(CONFIG)
    lbctl = venv / "bin" / "lbctl"
    common = ["--netns", name, "--state-dir", tmp_path / "state", "--pin-root", pins]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                    ["link", "set", "eth0", "up"], ["link", "set", "eth0p", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        applied = run(lbctl, "apply", conf, *common, cwd=elsewhere, env=env)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "Verified" in applied.stdout
        plan = run(lbctl, "plan", conf, "--detailed-exitcode", *common, cwd=elsewhere, env=env)
        assert plan.returncode == 0, plan.stdout + plan.stderr
        down = run(lbctl, "down", *common, cwd=elsewhere, env=env)
        assert down.returncode == 0, down.stdout + down.stderr
        assert not (pins / name).exists(), "lbctl down left pins behind"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(pins, ignore_errors=True)
