"""Run a snippet of Python as another local user (``nobody``), for tests of what such a user can do.

Why this exists: the safety tests (the writer lock, the state dir, the status
port) ask "can an unprivileged local user do X to root's lbctl?".  Run as root
(``make test``, CI) they drop a child process to ``nobody``; nothing skips.
``public_dir`` makes a directory that user can reach (pytest's own temporary
directories sit under a 0700 directory of root's, which would make every
attempt fail for the wrong reason).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534
REPO = str(Path(__file__).resolve().parents[1])


def _argv(code: str) -> list[str]:
    prelude = f"import os\nos.setgroups([])\nos.setgid({NOBODY})\nos.setuid({NOBODY})\n"
    return [sys.executable, "-c", prelude + code]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO}


def run_as_nobody(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as nobody to completion (stdout and stderr captured as text)."""
    return subprocess.run(_argv(code), capture_output=True, text=True, timeout=timeout, env=_env(), cwd="/")


def spawn_as_nobody(code: str) -> subprocess.Popen[str]:
    """Start ``code`` as nobody; the caller reads its stdout and must kill it (by this Popen)."""
    return subprocess.Popen(_argv(code), stdout=subprocess.PIPE, text=True, env=_env(), cwd="/")


@contextmanager
def public_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that every user can traverse (mode 0755); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="lbctl-sf-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
