"""Replace a file in the state dir atomically and durably.

Why this exists: the files lbctl keeps in its state dir (IP allocations, the
applied-configuration record) must never be seen half written, also across a
crash or power loss: write a temp file beside the target (mode 0600), fsync
it, rename it over the target, fsync the directory.  Files that are only a
convenience may skip the fsyncs (``durable=False``): still never half written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_file(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Make ``path`` hold exactly ``data`` (its directory is created if missing).

    ``durable=False`` skips both fsyncs: readers still see the old or the new
    file, never a mix, but a power loss may leave the old one (for files that
    can be rebuilt, where ~10 ms per write matter).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
