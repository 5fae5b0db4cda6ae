"""The datapath builds from the headers of the listed Debian packages and nothing else.

Why this exists: a bare bookworm machine failed to compile the datapath because
a header came from a package the Makefile did not install (issue #8).  The
build now sees only headers staged from ``APT_PACKAGES`` (``bpf/Makefile``,
``-nostdinc``); these tests prove the full list builds and that dropping a
package the datapath needs fails the build, naming the missing header.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="clang is not installed")


def _packages() -> list[str]:
    out = subprocess.run(["make", "-s", "--no-print-directory", "print-packages"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    return out.split()


def _build(tmp_path: Path, packages: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-C", str(REPO / "bpf"), f"OUT={tmp_path}", f"PACKAGES={' '.join(packages)}"],
        capture_output=True, text=True, timeout=300)


def test_the_listed_packages_build_the_datapath(tmp_path: Path) -> None:
    result = _build(tmp_path, _packages())
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "lb_kern.o").stat().st_size > 0
    assert "-nostdinc" in result.stdout
    # glibc's headers are not in the staged tree: the multiarch sys/ and gnu/ dirs
    assert not (tmp_path / "include" / "gnu").exists()
    assert not (tmp_path / "include" / "sys" / "socket.h").exists()


def test_dropping_a_package_fails_the_build(tmp_path: Path) -> None:
    packages = _packages()
    for needed, header in (("libbpf-dev", "bpf/bpf_helpers.h"), ("linux-libc-dev", "linux/bpf.h")):
        assert needed in packages, f"{needed} must be in APT_PACKAGES"
        out = tmp_path / needed
        result = _build(out, [p for p in packages if p != needed])
        assert result.returncode != 0, f"built without {needed}"
        assert f"'{header}' file not found" in result.stderr
        assert "missing from that list" in result.stderr
