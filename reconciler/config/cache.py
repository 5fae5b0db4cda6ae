"""Per-file memo of load results, so a re-load re-reads only what changed.

Why this exists: the watch daemon (issue 5) re-runs the whole load on every
trigger (level-based), and a 10,000-service directory must not be parsed and
schema-checked again because one file changed.  A ``ParseCache`` keeps, per
displayed path, the file's stat signature, the SHA-256 of its bytes and its
``FileResult`` (typed resources, errors, document digests).  On the next
``load_dir(path, cache=...)``:

* same stat signature (device, inode, size, mtime_ns) and an mtime older than
  ``RACY_SECONDS`` -> reused without reading the file;
* otherwise the bytes are read and hashed; same hash -> reused (this covers
  ``touch``, ``git checkout`` of identical content and kubelet's atomic
  ``..data`` swap; ``distrust_metadata()`` forces this step for every file);
* otherwise the file is parsed and checked again.

Semantic checks run over the whole set, but with the cache's
``SemanticMemo`` (``cache.semantic``) a service whose file was reused is not
checked again: only the checks across resources are redone (see ``semantic``).
Entries of files that disappeared are dropped.  A cache may be shared by
threads; it holds a lock around its own dictionary only.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from reconciler.config.semantic_index import SemanticMemo
from reconciler.errors import ConfigError
from reconciler.model import Resource

RACY_SECONDS = 2.0  # a file modified this recently may change again within one mtime tick

Signature = tuple[int, int, int, int]
_NO_SIGNATURE: Signature = (-1, -1, -1, -1)  # matches no file


@dataclass(frozen=True)
class FileResult:
    """Everything one file contributes: resources, errors, and document digests."""

    resources: tuple[Resource, ...]
    errors: tuple[ConfigError, ...]
    digests: tuple[str, ...]
    broken: tuple[str, ...] = ()  # "Kind" and "Kind/name" of documents that failed schema validation


@dataclass(frozen=True)
class _Entry:
    signature: Signature
    sha256: str
    result: FileResult


def signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ParseCache:
    """Memo of per-file results across ``load_dir`` calls; see the module docstring."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.semantic = SemanticMemo()  # per-file semantic facts and indexes across loads
        self.generation = 0  # bumped whenever an entry is stored or dropped (persist saves only then)

    def __getstate__(self) -> dict[str, object]:
        """Pickled (see ``persist``) without the lock and without stat signatures.

        A cache read back from disk must never trust a file on its mtime: with
        the signatures zeroed, every file is hashed and matched on content.
        """
        with self._lock:
            entries = {d: _Entry(_NO_SIGNATURE, e.sha256, e.result) for d, e in self._entries.items()}
        return {"entries": entries, "semantic": self.semantic}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]
        entries, memo = state["entries"], state["semantic"]
        assert isinstance(entries, dict) and isinstance(memo, SemanticMemo)
        self._entries, self.semantic = entries, memo

    def by_signature(self, display: str, sig: Signature) -> FileResult | None:
        with self._lock:
            entry = self._entries.get(display)
        if entry is None or entry.signature != sig:
            return None
        if time.time_ns() - sig[3] < RACY_SECONDS * 1e9:
            return None  # too fresh to trust the mtime: hash the content
        return entry.result

    def by_content(self, display: str, sha256: str, sig: Signature) -> FileResult | None:
        with self._lock:
            entry = self._entries.get(display)
            if entry is None or entry.sha256 != sha256:
                return None
            self._entries[display] = _Entry(sig, sha256, entry.result)
            return entry.result

    def distrust_metadata(self) -> None:
        """Make the next load read and hash every file instead of trusting stat data.

        Used by the daemon's full resync: every file is re-read, and only files
        whose bytes changed are parsed and checked again.  Identical bytes give
        an identical result, so reusing it is exact.
        """
        with self._lock:
            self._entries = {d: _Entry(_NO_SIGNATURE, e.sha256, e.result) for d, e in self._entries.items()}

    def store(self, display: str, sig: Signature, sha256: str, result: FileResult) -> None:
        with self._lock:
            self._entries[display] = _Entry(sig, sha256, result)
            self.generation += 1

    def retain(self, displays: set[str]) -> None:
        """Forget files that are no longer part of the directory."""
        with self._lock:
            for gone in set(self._entries) - displays:
                del self._entries[gone]
                self.generation += 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
