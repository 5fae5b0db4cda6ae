"""Tests of the single-writer lock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconciler.lock import LockTimeout, StateLock


def test_second_writer_waits_then_fails_naming_holder(tmp_path: Path) -> None:
    with StateLock(tmp_path, purpose="lbctl apply"):
        t = time.monotonic()
        with pytest.raises(LockTimeout) as exc:
            StateLock(tmp_path, timeout=0.3).acquire()
        assert time.monotonic() - t >= 0.3
        assert f"pid {os.getpid()} (lbctl apply)" in str(exc.value)
        assert "LBCTL_LOCK_TIMEOUT" in str(exc.value)


def test_waiter_gets_it_when_released(tmp_path: Path) -> None:
    first = StateLock(tmp_path)
    first.acquire()
    threading.Timer(0.2, first.release).start()
    with StateLock(tmp_path, timeout=5) as second:
        assert second.held


def test_reentrant_and_env_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lock = StateLock(tmp_path)
    with lock, lock:
        assert lock.held
    assert not lock.held
    monkeypatch.setenv("LBCTL_LOCK_TIMEOUT", "0.5")
    assert StateLock(tmp_path).timeout == 0.5


def test_lock_dies_with_its_holder(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    code = (f"import sys, time; sys.path.insert(0, {root!r}); from reconciler.lock import StateLock; "
            f"StateLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match=f"pid {proc.pid}"):
            StateLock(tmp_path, timeout=0.1).acquire()
        proc.kill()
        proc.wait()
        with StateLock(tmp_path, timeout=2):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_state_dir_the_user_cannot_write_is_a_clear_error(tmp_path: Path) -> None:
    from reconciler.errors import LbctlError

    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if os.geteuid() != 0:
        with pytest.raises(LbctlError, match="cannot take the lock .*Permission denied") as info:
            StateLock(ro / "state").acquire()
        assert info.value.hint is not None and "root" in info.value.hint
        return
    # Root may write anywhere: check what an unprivileged operator sees, in a child
    # process that drops to nobody (the directory stays readable to it).
    os.chmod(tmp_path, 0o755)
    code = (
        "import os\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "from reconciler.errors import LbctlError\n"
        "from reconciler.lock import StateLock\n"
        "try:\n"
        f"    StateLock({str(ro / 'state')!r}).acquire()\n"
        "except LbctlError as exc:\n"
        "    print(str(exc)); print('HINT', exc.hint)\n"
    )
    repo = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": repo}, cwd="/")
    assert out.returncode == 0, out.stderr
    assert re.search(r"cannot take the lock .*Permission denied", out.stdout), out.stdout
    assert "HINT" in out.stdout and "root" in out.stdout.split("HINT", 1)[1]
