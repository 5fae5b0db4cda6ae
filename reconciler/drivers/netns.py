"""Enter a named network namespace on the calling thread only.

Why this exists: ``ip netns exec`` also unshares the mount namespace and remounts
``/sys``, which hides the host's bpffs and its pins (DESIGN pitfall 8).  We only
switch the *network* namespace of the current thread with ``setns(2)``, so pins,
files and the rest of the process stay where they are.  Sockets (netlink, BPF
attach) opened inside keep pointing at that namespace after we switch back.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class NetnsError(RuntimeError):
    pass


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"setns({what}): {os.strerror(err)}")


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body inside network namespace ``name`` (None: stay where we are)."""
    if not name:
        yield
        return
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(
            f"network namespace {name!r} does not exist (no {netns_path(name)}); "
            f"create it with 'ip netns add {name}'"
        ) from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, name)
        try:
            yield
        finally:
            _setns(home, "back to the original namespace")
    finally:
        os.close(target)
        os.close(home)
