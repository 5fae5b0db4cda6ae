"""Replace a file in the state dir atomically and durably.

Why this exists: the files lbctl keeps in its state dir (IP allocations, the
applied-configuration record) must never be seen half written, also across a
crash or power loss: write a temp file beside the target (mode 0600), fsync
it, rename it over the target, fsync the directory.  Files that are only a
convenience may skip the fsyncs (``durable=False``): still never half written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from reconciler.errors import LbctlError

T = TypeVar("T")


def replace_file(path: str | os.PathLike[str], data: bytes, *, durable: bool = True,
                 mode: int | None = None) -> None:
    """Make ``path`` hold exactly ``data`` (its directory is created if missing).

    ``durable=False`` skips both fsyncs: readers still see the old or the new
    file, never a mix, but a power loss may leave the old one (for files that
    can be rebuilt, where ~10 ms per write matter).  ``mode`` replaces the temp
    file's 0600 before the rename (for files other users may read).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
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


def read_json_state(path: Path, format_version: int, parse: Callable[[dict[str, Any]], T], *,
                    what: str, hint: str) -> T | None:
    """``parse`` of the JSON state file ``path`` (None when it does not exist).

    The file must carry ``"format_version": format_version``; anything unreadable (bad
    JSON, another format, a field ``parse`` does not find) is an ``LbctlError`` saying
    that ``path`` is not a valid ``what``, with ``hint`` on how to recover.
    """
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if data.get("format_version") != format_version:
            raise ValueError(f"format_version {data.get('format_version')!r}")
        return parse(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LbctlError(f"{path} is not a valid {what}: {exc}", hint=hint) from None
