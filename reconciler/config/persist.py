"""A ``ParseCache`` kept on disk between CLI runs, trusted only for identical bytes.

Why this exists: ``lbctl plan`` and ``lbctl apply`` are fresh processes, and at
10,000 services most of their time went into parsing and checking YAML that had
not changed since the last run.  After a load, the cache (per-file results and
the semantic index, see ``semantic_index``) is pickled to
``STATE_DIR/parse-cache``; the next run unpickles it and re-parses only files
whose bytes differ.

Rules that keep it safe:

* every file is still read and its SHA-256 compared: a persisted entry is used
  only for the same path with the same bytes (stat signatures are not
  persisted, so nothing is trusted on mtime alone);
* the file records a key of everything that shapes its contents (lbctl version,
  Python version, the schemas and the source of the model and config layer);
  any difference, a truncated or corrupt file, or one that fails to unpickle is
  ignored and rebuilt;
* it is read only if owned by this user and not writable by group or others
  (pickle runs code), written with mode 0600 through a temp file and rename
  (no fsync: a file a power loss damaged is ignored like a corrupt one), so
  readers never see a partial file;
* a state dir that is missing or not writable just means no persistence:
  ``validate`` then loads from scratch, exactly as before;
* the file names the configuration directory it was written for: ``plan`` and
  ``apply`` own it (a cache of another directory is replaced), ``validate``
  uses and refreshes only a cache of the directory it checks, so validating
  some other directory as root never leaves the box's next ``plan`` cold;
* it is re-written only when the files parsed again since the last save reach
  1/``SAVE_FRACTION`` of the directory: one edited file among a hundred costs
  the next run a 20 ms re-parse, while re-writing the cache costs 0.3 s.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import pickle
import stat
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from reconciler import statedir
from reconciler.config import pickling
from reconciler.config.cache import ParseCache
from reconciler.config.loader import LoadResult, load_dir
from reconciler.errors import LbctlError

FILE_NAME = "parse-cache"
_MAGIC = b"lbctl-parse-cache\n"
SAVE_FRACTION = 20  # save when 1/20 of the files had to be parsed again


@cache
def cache_key() -> str:
    """What a persisted cache must have been written by: same code, same schemas, same Python."""
    import reconciler
    from reconciler.config import schemas

    root = Path(reconciler.__file__).resolve().parent
    h = hashlib.sha256(f"{reconciler.__version__}|{sys.version}|{pickle.HIGHEST_PROTOCOL}".encode())
    core = [root / "model.py", root / "limits.py", root / "errors.py", root / "constants.py"]
    sources = sorted((root / "config").glob("*.py")) + core
    for path in sources + sorted(schemas.SCHEMA_DIR.glob("*.json")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _trusted(fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _prefix() -> bytes:
    return _MAGIC + cache_key().encode() + b"\n"


def _head(config_dir: str | None) -> bytes:
    """The file's first lines: magic, ``cache_key()``, the configuration directory it belongs to."""
    return _prefix() + json.dumps(config_dir).encode() + b"\n"


def _read_head(data: bytes) -> tuple[str | None, int] | None:
    """(configuration directory, offset of the pickle) from a file's first bytes; None if not ours."""
    prefix = _prefix()
    end = data.find(b"\n", len(prefix))
    if not data.startswith(prefix) or end < 0:
        return None
    try:
        config_dir = json.loads(data[len(prefix):end])
    except ValueError:
        return None
    return (config_dir if isinstance(config_dir, str) else None), end + 1


def _config_dir(path: str | os.PathLike[str]) -> str:
    """How a cache names its configuration directory: absolute, symlinks not resolved (a
    git-sync root that is a link flipping at each delivery stays the same directory)."""
    return os.path.abspath(path)


def _read(path: str | os.PathLike[str], size: int = -1) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(size) if _trusted(f.fileno()) else None
    except OSError:
        return None


def cache_dir_of(path: str | os.PathLike[str]) -> str | None:
    """The configuration directory the cache at ``path`` was written for (None: no usable cache)."""
    data = _read(path, len(_prefix()) + 32768)  # a 4096-byte path is at most 24 KiB as JSON
    head = _read_head(data) if data is not None else None
    return head[0] if head is not None else None


def load_cache(path: str | os.PathLike[str], config_dir: str | None = None) -> ParseCache:
    """The cache saved at ``path`` (for ``config_dir``, when given), or an empty one when there
    is none usable."""
    data = _read(path)
    head = _read_head(data) if data is not None else None
    if data is None or head is None or (config_dir is not None and head[0] != config_dir):
        return ParseCache()
    was_enabled = gc.isenabled()
    gc.disable()  # millions of small objects: GC passes would triple the time
    try:
        loaded: Any = pickle.loads(memoryview(data)[head[1]:])
    except Exception:  # noqa: BLE001 - any damage means "no cache", never a failed command
        return ParseCache()
    finally:
        if was_enabled:
            gc.enable()
    return loaded if isinstance(loaded, ParseCache) else ParseCache()


def dumps(cache_: ParseCache) -> bytes:
    return pickling.dumps(cache_)


def save_cache(cache_: ParseCache, path: str | os.PathLike[str], config_dir: str | None = None) -> bool:
    """Write ``cache_`` (of ``config_dir``) atomically to ``path``; False (and nothing written)
    when that is not possible.

    Not fsynced (~0.1-0.4 s for 14 MB): it is a cache, and a file a power loss damaged
    unpickles to an error, which ``load_cache`` takes as no cache (a cold parse).
    """
    target = Path(path)
    payload = _head(config_dir) + dumps(cache_)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, target)
        tmp = None
    except OSError:
        return False
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return True


def load_dir_persisted(path: str | os.PathLike[str], state_dir: str | os.PathLike[str] | None,
                       *, create: bool = False, follow_external_symlinks: bool = False) -> LoadResult:
    """``load_dir(path)`` through the cache persisted in ``state_dir`` (when usable), then save it.

    ``create`` is for the commands that act on the box (plan, apply): they make
    the state dir if it is missing (``reconciler.statedir``: mode 0700) and own
    its cache, so a cache of another directory is replaced.  Without it
    (``validate``) a missing or unusable state dir means a plain load, and a
    cache written for another directory is neither used nor touched: checking
    some other directory must not leave the box's next ``plan`` cold.  The
    result is always the same as ``load_dir(path)``'s (``follow_external_symlinks``
    is passed on).
    """
    def load(parse_cache: ParseCache | None = None) -> LoadResult:
        return load_dir(path, cache=parse_cache, follow_external_symlinks=follow_external_symlinks)

    if state_dir is None:
        return load()
    state = Path(state_dir)
    if create:
        try:
            statedir.ensure(state)
        except LbctlError:
            return load()  # the writer lock, taken next, says what is wrong
    try:
        usable = state.is_dir() and os.access(state, os.W_OK | os.X_OK)
    except OSError:  # e.g. root's 0700 state dir seen by another user
        usable = False
    if not usable:
        return load()
    file = state / FILE_NAME
    config_dir = _config_dir(path)
    if not create and file.exists() and cache_dir_of(file) not in (config_dir, None):
        return load()
    parse_cache = load_cache(file, config_dir)
    before = parse_cache.generation
    result = load(parse_cache)
    # Re-writing the whole cache (13 MB at 10,000 services) costs far more than
    # re-parsing a file or two on the next run: save only once the files parsed
    # again since the last save are 5% of the directory (or there was no cache).
    stale = len(result.parsed) >= max(1, len(result.files) // SAVE_FRACTION)
    if not file.exists() or (parse_cache.generation != before and stale):
        save_cache(parse_cache, file, config_dir)
    return result
