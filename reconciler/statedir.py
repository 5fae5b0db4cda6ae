"""The state directory, made and kept so that only its owner can open anything in it.

Why this exists: the state dir holds the writer lock, the IP allocations and a
pickled parse cache.  flock(2) works on a read-only descriptor, so a lock file
any local user can open lets that user block every ``apply`` and the daemon.
So every command that writes the state dir goes through ``ensure``: missing
directories (the state dir and any missing parent, e.g. ``/var/lib/lbctl`` for
``/var/lib/lbctl/NETNS``) are created with mode 0700; an existing state dir
owned by this user with looser permissions (older lbctl versions made it 0755)
is tightened to 0700; one owned by another user, or writable by everyone (a
shared directory such as ``/tmp``), is refused with an error naming its path,
owner and mode.  ``validate`` never calls it: it needs no state dir and must
keep working for users who cannot read root's.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from reconciler.errors import LbctlError

MODE = 0o700


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owner_name(uid: int) -> str:
    """``nobody (uid 65534)``, or ``uid 1234`` for a uid without a name."""
    name = _user(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


def _make(path: Path) -> None:
    """``mkdir -p -m 0700``: every missing directory of ``path`` gets mode 0700."""
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, MODE)
        except FileExistsError:
            pass  # made meanwhile by another lbctl: checked below like any existing one
        except OSError as exc:
            raise LbctlError(f"cannot create the state dir {path}: {exc.strerror}",
                             hint="run lbctl as root (it reads and programs the datapath), or point "
                                  "--state-dir at a directory you can write") from None


def ensure(state_dir: str | os.PathLike[str]) -> Path:
    """Create ``state_dir`` (mode 0700) or check and tighten an existing one; the path."""
    path = Path(state_dir)
    _make(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LbctlError(f"cannot open the state dir {path}: {exc.strerror}",
                         hint="run lbctl as root, or point --state-dir at a directory you own") from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISDIR(st.st_mode):
        raise LbctlError(f"the state dir {path} is not a directory",
                         hint="remove it, or pass another --state-dir")
    if st.st_uid != os.geteuid():
        raise LbctlError(
            f"the state dir {path} is owned by {owner_name(st.st_uid)}, mode {mode:04o}: another user "
            f"controls the directory lbctl keeps its writer lock and allocations in, so lbctl refuses it",
            hint=f"check its contents, then: chown {_user(os.geteuid())} {path} && "
                 f"chmod 0700 {path}; or pass another --state-dir")
    if mode & 0o002:
        raise LbctlError(
            f"the state dir {path} is writable by every user (owner {owner_name(st.st_uid)}, "
            f"mode {mode:04o}): files in it may not be lbctl's, so lbctl refuses it",
            hint=f"pass a --state-dir of lbctl's own (the default is /var/lib/lbctl); if {path} is really "
                 f"lbctl's, check its contents, then: chmod 0700 {path}")
    if mode & 0o077:
        os.chmod(path, MODE)  # made by an older lbctl (0755): only root may open the lock
    return path
