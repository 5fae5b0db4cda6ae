"""The dev/test venv is reproducible: it installs exactly the committed lock.

Why this exists: the venv once resolved every dependency to the newest release
at install time, so a PyYAML release changed what the test suite meant from one
week to the next (issue #8).  ``make venv`` now installs
``requirements/dev-lock.txt`` (exact versions, hashes) and lbctl without
dependencies; these tests keep the lock well-formed and complete, and check
that the venv running them holds exactly what the lock says.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "dev-lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from the lock's logical lines."""
    entries: dict[str, tuple[str, int]] = {}
    logical = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"dev-lock.txt: not an exact pin: {line[:80]}"
        entries[_norm(m.group(1))] = (m.group(2), line.count("--hash=sha256:"))
    return entries


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])


def test_every_entry_is_pinned_with_hashes() -> None:
    entries = _locked()
    assert entries
    unhashed = [name for name, (_, hashes) in entries.items() if hashes == 0]
    assert not unhashed, f"entries without a hash: {unhashed}"


def test_lock_covers_pyproject_and_the_build_backend() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_requirement_name(s) for s in project["dependencies"]}
    wanted |= {_requirement_name(s) for s in project["optional-dependencies"]["dev"]}
    wanted |= {"setuptools", "wheel"}  # the editable install runs --no-build-isolation
    missing = wanted - set(_locked())
    assert not missing, f"not in requirements/dev-lock.txt (run 'make lock'): {sorted(missing)}"


def test_makefile_installs_the_lock_only() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes --no-deps -r $(LOCK)" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    assert "'.[dev]'" not in makefile  # the old, unpinned install


def _in_project_venv() -> bool:
    return Path(sys.prefix).resolve() == (REPO / ".venv").resolve()


@pytest.mark.skipif(not _in_project_venv(), reason="checks the project's .venv (make test's first run)")
def test_the_venv_holds_exactly_the_locked_versions() -> None:
    wrong = []
    for name, (version, _) in sorted(_locked().items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (lock {version})")
            continue
        if installed != version:
            wrong.append(f"{name}: {installed} installed, lock says {version}")
    assert not wrong, "; ".join(wrong)
