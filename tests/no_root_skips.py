"""pytest plugin for ``make test``: a skipped root test, or a skipped module, fails the run.

Why this exists: ``make test`` runs as root on a machine ``make setup`` has
prepared, so nothing should skip there.  ``tests/conftest.py`` already turns
root-test skips into failures when ``CI`` is set; this plugin is the second,
independent check the Makefile loads with ``-p tests.no_root_skips``:

- it also works when ``CI`` is not set (a developer's ``sudo make test``);
- it catches skips conftest cannot see: a whole module skipped at collection
  (``pytest.importorskip``, ``pytest.skip(allow_module_level=True)``), where
  no test and hence no marker exists yet.

It lists every such skip with its reason and sets the exit status to 1.
"""

from __future__ import annotations

import pytest

_offenders: list[str] = []


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _offenders.append(f"{report.nodeid} (whole module skipped): {_reason(report)}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "root" in report.keywords:
        _offenders.append(f"{report.nodeid} (root test skipped): {_reason(report)}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _offenders:
        terminalreporter.section("skipped root tests (a failure under make test)", sep="=", red=True)
        for line in _offenders:
            terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _offenders and exitstatus == 0:
        session.exitstatus = 1
