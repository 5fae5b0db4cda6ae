"""One writer at a time: an flock on a file in the state dir.

Why this exists: two reconciles interleaving their plans against the same box
(an operator's ``lbctl apply`` while the daemon converges) would each apply a
plan computed from a live state the other is changing.  ``plan``, ``apply``,
``watch`` (per reconcile) and ``down`` take this lock.  A second writer waits a
bounded time (default 10 s, ``LBCTL_LOCK_TIMEOUT`` or ``timeout=``) and then
fails with a message naming the holder's pid and command.

flock(2) is released by the kernel when the holder dies (even ``kill -9``), so
a stale lock file never blocks anyone; the file itself is left in place
(deleting a lock file another process may be opening races).

flock(2) also works on a read-only descriptor, so whoever can *open* the file
can block every writer: the lock is mode 0600 in a state dir of mode 0700
(``reconciler.statedir`` makes and checks it before every acquire), so only
root (the state dir's owner) can.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from reconciler import statedir
from reconciler.errors import LbctlError

LOCK_NAME = "lock"
DEFAULT_TIMEOUT = 10.0
POLL = 0.05


def default_timeout() -> float:
    try:
        return float(os.environ.get("LBCTL_LOCK_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


class LockTimeout(LbctlError):
    pass


def _open_lock(path: Path) -> int:
    """The lock file, mode 0600 and ours (an older lbctl made it 0644: tightened)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LbctlError(f"cannot take the lock {path}: {exc.strerror}",
                         hint="run lbctl as root (it reads and programs the datapath), or point "
                              "--state-dir at a directory you can write") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LbctlError(f"the lock {path} is not a file of this user's (owner "
                         f"{statedir.owner_name(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o})",
                         hint="check who made it, remove it, and run lbctl again")
    if st.st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return fd


class StateLock:
    """``with StateLock(state_dir):`` -- exclusive, bounded wait, reentrant per object."""

    def __init__(self, state_dir: str | os.PathLike[str], timeout: float | None = None,
                 purpose: str | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """``clock``/``sleep``: how the bounded wait measures and passes time (tests fake them)."""
        self.path = Path(state_dir) / LOCK_NAME
        self._clock, self._sleep = clock, sleep
        self.timeout = default_timeout() if timeout is None else timeout
        self.purpose = purpose or " ".join(["lbctl", *sys.argv[1:2]])
        self._fd: int | None = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """What the lock file says about its holder ('pid N (purpose)')."""
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return "an unknown process"
        pid, _, purpose = text.partition(" ")
        if not pid.isdigit():
            return "an unknown process"
        return f"pid {pid}" + (f" ({purpose})" if purpose else "")

    def acquire(self) -> None:
        if self._fd is not None:
            self._depth += 1
            return
        statedir.ensure(self.path.parent)
        fd = _open_lock(self.path)
        deadline = self._clock() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if self._clock() >= deadline:
                    os.close(fd)
                    raise LockTimeout(
                        f"another lbctl is changing this box: {self.holder()} holds {self.path}; "
                        f"waited {self.timeout:g} s",
                        hint="wait for it to finish (a running 'lbctl watch' holds it only while it "
                             "reconciles), or raise LBCTL_LOCK_TIMEOUT") from None
                self._sleep(POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.purpose}\n".encode(), 0)
        self._fd = fd
        self._depth = 1

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
