"""Tests of the single-writer lock."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.lock import LockTimeout, StateLock
from tests.other_user import public_dir, run_as_nobody, spawn_as_nobody


class FakeClock:
    """The lock's clock and sleep: sleeping advances time at once, and may run a callback."""

    def __init__(self, on_sleep: Callable[[int], None] | None = None) -> None:
        self.now, self.sleeps, self.on_sleep = 100.0, 0, on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(self.sleeps)


def test_second_writer_waits_then_fails_naming_holder(tmp_path: Path) -> None:
    with StateLock(tmp_path, purpose="lbctl apply"):
        clock = FakeClock()
        with pytest.raises(LockTimeout) as exc:
            StateLock(tmp_path, timeout=0.3, clock=clock, sleep=clock.sleep).acquire()
        assert clock.now - 100.0 >= 0.3 and clock.sleeps >= 2  # it waited the whole timeout, polling
        assert f"pid {os.getpid()} (lbctl apply)" in str(exc.value)
        assert "LBCTL_LOCK_TIMEOUT" in str(exc.value)


def test_waiter_gets_it_when_released(tmp_path: Path) -> None:
    first = StateLock(tmp_path)
    first.acquire()
    clock = FakeClock(on_sleep=lambda n: first.release() if n == 3 else None)  # released while it waits
    with StateLock(tmp_path, timeout=5, clock=clock, sleep=clock.sleep) as second:
        assert second.held and clock.sleeps == 3


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

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(LbctlError, match="cannot create the state dir .*Permission denied") as info:
            StateLock(ro / "state").acquire()
        assert info.value.hint is not None and "root" in info.value.hint
        return
    # Root may write anywhere: check what an unprivileged operator sees, in a child
    # process that drops to nobody (the directory stays readable to it).
    with public_dir() as base:
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        code = (
            "from reconciler.errors import LbctlError\n"
            "from reconciler.lock import StateLock\n"
            "try:\n"
            f"    StateLock({str(ro / 'state')!r}).acquire()\n"
            "except LbctlError as exc:\n"
            "    print(str(exc)); print('HINT', exc.hint)\n"
        )
        out = run_as_nobody(code)
    assert out.returncode == 0, out.stderr
    assert re.search(r"cannot create the state dir .*/ro/state: Permission denied", out.stdout), out.stdout
    assert "HINT" in out.stdout and "root" in out.stdout.split("HINT", 1)[1]


def test_the_lock_is_private_to_its_owner(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateLock(state):
        pass
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "lock").stat().st_mode) == 0o600


def test_an_older_lock_file_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "lock").write_text("")
    (state / "lock").chmod(0o644)  # what lbctl made before
    with StateLock(state):
        assert stat.S_IMODE((state / "lock").stat().st_mode) == 0o600


def test_a_lock_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    from reconciler.errors import LbctlError

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LbctlError, match="cannot take the lock .*/state/lock"):
        StateLock(state).acquire()
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.root
def test_another_local_user_cannot_block_writers() -> None:
    """flock works on a read-only descriptor: nobody must not be able to open the lock at all."""
    with public_dir() as base:
        state = base / "state"
        with StateLock(state):  # the lock file exists from then on, as on a box that ran lbctl
            pass
        code = (
            "import fcntl, time\n"
            "try:\n"
            f"    fd = os.open({str(state / 'lock')!r}, os.O_RDONLY)\n"
            "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except OSError as exc:\n"
            "    print('denied', exc.strerror, flush=True)\n"
            "else:\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n"
        )
        child = spawn_as_nobody(code)
        try:
            assert child.stdout is not None
            said = child.stdout.readline().strip()
            with StateLock(state, timeout=0.5) as lock:  # today's root apply and the daemon
                assert lock.held
            assert said == "denied Permission denied"
        finally:
            child.kill()
            child.wait()
