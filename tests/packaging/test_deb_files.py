"""The Debian packaging's files agree with the code: versions, paths, dependencies, the unit.

Why this exists: ``make deb-test`` builds and installs the package, but it is slow and
not part of ``make test``; these checks catch the packaging falling behind the code
(a new version without a changelog entry, a path moved in ``constants.py``, a
dependency bound changed in ``pyproject.toml``) in every test run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from reconciler import __version__
from reconciler.constants import BPFFS, DATAPATH_SYSTEM_DIR, DEFAULT_CONFIG_DIR, DEFAULT_STATE_DIR

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "deb" / "debian"


def unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEBIAN / "lbctl.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_changelog_is_at_the_package_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.match(r"lbctl \(([^)]+)\) ", first)
    assert m is not None and re.split(r"[+~-]", m.group(1))[0] == __version__, first


def test_dependency_bounds_are_pyprojects() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in deps}
    overrides = [line.split()[0] for line in (DEBIAN / "py3dist-overrides").read_text().splitlines()
                 if line and not line.startswith("#")]
    assert set(overrides) <= names, set(overrides) - names
    control = (DEBIAN / "control").read_text()
    assert "Depends: ${python3:Depends}, ${misc:Depends}, libbpf1" in control  # Depends come from pyproject


def test_the_package_puts_things_where_lbctl_looks() -> None:
    install = (DEBIAN / "lbctl.install").read_text()
    assert f"build/bpf/lb_kern.o {DATAPATH_SYSTEM_DIR.lstrip('/')}" in install
    assert f"bpf/lb_shared.h {DATAPATH_SYSTEM_DIR.lstrip('/')}" in install
    assert f"debian/conf.d/README {DEFAULT_CONFIG_DIR.lstrip('/')}" in install
    assert (DEBIAN / "lbctl.dirs").read_text().split() == [DEFAULT_STATE_DIR.lstrip("/")]
    assert f"rm -rf {DEFAULT_STATE_DIR}\n" in (DEBIAN / "lbctl.postrm").read_text()


def test_the_unit() -> None:
    u = unit()
    assert u["Type"] == ["notify"] and u["Restart"] == ["on-failure"]
    assert u["ExecStartPre"] == [f"/usr/bin/lbctl validate {DEFAULT_CONFIG_DIR}"]
    assert u["ExecStart"][0].startswith(f"/usr/bin/lbctl watch {DEFAULT_CONFIG_DIR}")
    validate = f"/usr/bin/lbctl validate {DEFAULT_CONFIG_DIR}"
    assert u["ExecReload"] == [validate, '/bin/sh -c "kill -HUP ${MAINPID}"']  # validate, then SIGHUP
    assert "man:lbctl(8)" in u["Documentation"][0]
    assert u["RequiresMountsFor"] == [BPFFS] and u["AssertPathIsMountPoint"] == [BPFFS]
    assert u["ProtectSystem"] == ["strict"] and u["ReadWritePaths"] == [f"{DEFAULT_STATE_DIR} {BPFFS}"]
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert u[key] == ["yes"], key
    assert u["SystemCallFilter"] == ["@system-service bpf"]
    assert set(u["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"}
    assert set(u["CapabilityBoundingSet"][0].split()) <= {
        "CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"}
