"""Shared pytest policy: root/datapath tests skip on a laptop but fail in CI.

Why this exists: a datapath test that silently skips proves nothing.  Tests that
need root, bpffs or network namespaces carry ``@pytest.mark.root``; when the
machine cannot run them they are skipped, unless ``CI`` is set, in which case
the skip becomes a failure (the product rule: CI must fail if a root test was
skipped).  Also the ``dp`` fixture shared by the datapath tests.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.bpf.harness import Datapath


# Every datapath a test builds preallocates its conntrack at the box's default size (one flow
# per 16 KiB of memory: ~1.5 million flows, several hundred MB of kernel memory on a 24 GB
# box); size the defaults to 4 GiB for the suite (subprocesses inherit it).  The test of the
# real default removes it.
os.environ.setdefault("LBCTL_BOX_MEMORY", str(4 << 30))


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _root_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        with open("/proc/mounts", encoding="ascii") as mounts:
            if not any(line.split()[2] == "bpf" for line in mounts if len(line.split()) > 2):
                return "needs bpffs mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)"
    except OSError as exc:
        return f"cannot read /proc/mounts: {exc}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is None:
        return
    problem = _root_problem()
    if problem is None:
        return
    if _ci():
        pytest.fail(f"root/datapath test cannot run in CI: {problem}", pytrace=False)
    pytest.skip(problem)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    # A root test that skipped itself (pytest.skip inside the test) also fails CI.
    # The report must be changed here, where it is made: by the time
    # pytest_runtest_logreport runs, the terminal and the session have already
    # counted it as skipped (the run exited 0 and `-rs` crashed).
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if _ci() and report.skipped and item.get_closest_marker("root") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"root/datapath test skipped in CI (a failure there): {reason}"


@pytest.fixture
def dp() -> Iterator[Datapath]:
    """A fresh namespace with the datapath loaded under its own pin root; removed afterwards."""
    from tests.bpf.harness import Datapath  # libbpf is loaded only by tests that ask for it

    d = Datapath()
    try:
        yield d
    finally:
        d.close()


_BPFFS = "/sys/fs/bpf"
_TEST_PIN_PREFIXES = ("lbctl-test-", "lbctl-e2e-", "lbctl-mig-")
_pin_dirs_at_start: set[str] = set()


def _test_pin_dirs() -> set[str]:
    try:
        return {d for d in os.listdir(_BPFFS) if d.startswith(_TEST_PIN_PREFIXES)}
    except OSError:
        return set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _pin_dirs_at_start.update(_test_pin_dirs())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A safety net for pin directories this session's tests made and left empty (tests remove
    their pins; an interrupted teardown can leave the directory). Non-empty ones are left for
    inspection; both are reported."""
    left = sorted(_test_pin_dirs() - _pin_dirs_at_start)
    if not left:
        return
    removed, kept = [], []
    for name in left:
        path = os.path.join(_BPFFS, name)
        try:
            for root, dirs, files in os.walk(path, topdown=False):
                if files:
                    raise OSError("holds pins")
                for d in dirs:
                    os.rmdir(os.path.join(root, d))
            os.rmdir(path)
            removed.append(name)
        except OSError:
            kept.append(name)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        if removed:
            reporter.write_line(f"note: removed empty test pin directories left by teardowns: {removed}")
        if kept:
            reporter.write_line(f"warning: test pin directories with pins left behind: {kept}", red=True)
