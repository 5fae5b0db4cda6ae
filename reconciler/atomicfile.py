"""Durable, atomic replacement of a small file in the state dir.

Why this exists: lbctl's state files (pool allocations, the kernel settings it
changed and must give back) must never be seen half-written, even across a
crash or power loss: a reader finds either the old content or the new one.
One helper, so every state file is written the same way: a temp file in the
same directory, ``fsync``, ``rename`` over the target, ``fsync`` of the
directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (parents are created; root-only by default)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
