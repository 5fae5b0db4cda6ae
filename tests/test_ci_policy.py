"""Self-test of the CI policy: a skipped root test fails the run in CI and under make test.

Why this exists: the policy lives in hooks (``tests/conftest.py`` and
``tests/no_root_skips.py``) that nothing else exercises when every root test
runs; a silent regression there would let the datapath go untested in CI.
Each case runs a throw-away pytest session in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SELF_SKIPPING_ROOT_TEST = '''
import pytest

@pytest.mark.root
def test_root_that_skips():
    pytest.skip("pretend the kernel lacks a feature")

def test_plain():
    pass
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("lbctl_no_such_module_anywhere")

def test_never_collected():
    pass
'''


def run(tmp_path: Path, source: str, ci: bool, plugin: bool,
        extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import *  # noqa: F403  (the project's hooks)\n"
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'root: needs root')\n"
    )
    (tmp_path / "test_case.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if ci:
        env["CI"] = "true"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)]
    if plugin:
        cmd += ["-p", "tests.no_root_skips"]
    cmd += extra or []
    return subprocess.run(cmd + [str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def test_root_skip_is_a_skip_on_a_laptop(tmp_path: Path) -> None:
    result = run(tmp_path, SELF_SKIPPING_ROOT_TEST, ci=False, plugin=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout


def test_root_skip_fails_in_ci(tmp_path: Path) -> None:
    result = run(tmp_path, SELF_SKIPPING_ROOT_TEST, ci=True, plugin=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "skipped in CI" in result.stdout
    assert "1 failed, 1 passed" in result.stdout


def test_root_skip_in_ci_with_skip_summary(tmp_path: Path) -> None:
    # -rs (the short summary of skips) used to crash on the rewritten report.
    result = run(tmp_path, SELF_SKIPPING_ROOT_TEST, ci=True, plugin=True, extra=["-rs"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert "INTERNALERROR" not in result.stdout + result.stderr


def test_root_skip_fails_under_make_test(tmp_path: Path) -> None:
    result = run(tmp_path, SELF_SKIPPING_ROOT_TEST, ci=False, plugin=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "test_root_that_skips (root test skipped)" in result.stdout


def test_module_skip_fails_under_make_test(tmp_path: Path) -> None:
    result = run(tmp_path, MODULE_SKIP, ci=False, plugin=True)
    assert result.returncode != 0, result.stdout + result.stderr  # 5: nothing ran
    assert "whole module skipped" in result.stdout
