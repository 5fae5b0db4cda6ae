"""``load_dir``: directory -> validated, typed configuration plus every error.

Why this exists: this is the one entry point the CLI, the planner and the
watch daemon call.  It wires the stages -- discover files, read them with a
size limit, parse YAML with positions, dispatch on ``kind``, JSON-Schema check
each document once, build typed resources, then run semantic checks over the
whole set -- collects all errors in a stable order, and computes a content
digest that does not depend on file names or order.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from reconciler.config import build, schemas, semantic
from reconciler.config.cache import FileResult, ParseCache, Signature, signature
from reconciler.config.discover import Found, discover, read_limited
from reconciler.config.fork_parse import parse_all
from reconciler.config.tree import Loc, find
from reconciler.config.yamlparse import Document, Positions, parse_bytes
from reconciler.errors import ConfigError, sort_key
from reconciler.model import KINDS, Resource


@dataclass(frozen=True)
class LoadResult:
    """A loaded configuration directory.

    ``resources`` holds the schema-valid resources in discovery order (also
    when semantic errors exist, so ``lbctl validate`` can still summarise);
    consumers that act on the box must check ``valid`` first.
    """

    root: str
    resources: tuple[Resource, ...]
    errors: tuple[ConfigError, ...]
    files: tuple[str, ...]  # every file loaded, as displayed
    digest: str  # SHA-256 over the documents' canonical JSON, order-independent
    parsed: tuple[str, ...] = ()  # files actually parsed by this call (the rest came from the cache)
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)

    @property
    def valid(self) -> bool:
        return not self.errors

    def of_kind(self, kind: str) -> tuple[Resource, ...]:
        return tuple(r for r in self.resources if r.kind == kind)

    def counts(self) -> dict[str, int]:
        """Resources per kind, every kind listed (0 when absent)."""
        out = dict.fromkeys(KINDS, 0)
        for res in self.resources:
            out[res.kind] = out.get(res.kind, 0) + 1
        return out

    @property
    def files_with_errors(self) -> tuple[str, ...]:
        return tuple(sorted({e.file for e in self.errors}))


def _document_digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _doc(display: str, doc: Document, positions: Positions | None, timings: dict[str, float]
         ) -> tuple[Resource | None, list[ConfigError]]:
    value, start = doc.value, doc.loc

    def tree() -> Loc:  # the document's full position tree, only for errors
        return positions.root(doc.index) if positions is not None else start
    kind = value.get("kind")
    meta = value.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    if kind not in KINDS:
        if "kind" not in value:
            message, hint = "required field is missing", f"add kind: one of {', '.join(KINDS)}"
            loc = start
        else:
            message, hint = schemas.unknown_kind(kind)
            kind = kind if isinstance(kind, str) else None
            root = tree()
            loc = find(root, ["kind"])[0] or root
        return None, [ConfigError(display, loc.line, loc.column, kind, name, "kind", message, hint)]
    t0 = time.perf_counter()
    errors = [] if schemas.passes(kind, value) else schemas.check(kind, value, display, tree(), name)
    t1 = time.perf_counter()
    timings["schema"] += t1 - t0
    if errors:
        return None, errors
    res = build.resource(kind, value, display, start, positions, doc.index)
    timings["build"] += time.perf_counter() - t1
    return res, []


def load_bytes(display: str, data: bytes, timings: dict[str, float] | None = None) -> FileResult:
    """Parse and check one file's bytes (no I/O); ``display`` is used in errors."""
    timings = timings if timings is not None else {"parse": 0.0, "schema": 0.0, "build": 0.0}
    t0 = time.perf_counter()
    parsed = parse_bytes(display, data, positions=False)
    timings["parse"] += time.perf_counter() - t0
    resources: list[Resource] = []
    broken: list[str] = []
    errors = list(parsed.errors)
    digests = [_document_digest(doc.value) for doc in parsed.documents]
    if parsed.errors:  # content that did not parse cleanly still has to change the digest
        digests.append("raw:" + hashlib.sha256(data).hexdigest())
    for doc in parsed.documents:
        res, errs = _doc(display, doc, parsed.positions, timings)
        errors.extend(errs)
        if res is not None:
            resources.append(res)
        elif isinstance(kind := doc.value.get("kind"), str):
            meta = doc.value.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            broken.extend([kind, f"{kind}/{name}"] if isinstance(name, str) else [kind])
    return FileResult(tuple(resources), tuple(errors), tuple(digests), tuple(broken))


class _Pending(NamedTuple):
    """A file to parse: its bytes, and what the cache stores it under."""

    data: bytes
    sha256: str
    signature: Signature | None


def _look_up(found: Found, cache: ParseCache | None, timings: dict[str, float]) -> FileResult | _Pending:
    """One file's result from the cache (or its read error), else what parsing it needs."""
    sig = None
    if cache is not None:
        try:
            sig = signature(os.stat(found.display))
        except OSError:
            sig = None
        if sig is not None and (hit := cache.by_signature(found.display, sig)) is not None:
            return hit
    t0 = time.perf_counter()
    data, error = read_limited(found)
    timings["read"] += time.perf_counter() - t0
    if error is not None or data is None:
        fail = error or ConfigError(found.display, 0, 0, None, None, "", "cannot read", None)
        return FileResult((), (fail,), ("error:" + fail.message,), ())
    sha = hashlib.sha256(data).hexdigest()
    if cache is not None and sig is not None and (hit := cache.by_content(found.display, sha, sig)):
        return hit
    return _Pending(data, sha, sig)


def load_dir(path: str | os.PathLike[str], cache: ParseCache | None = None, *,
             follow_external_symlinks: bool = False) -> LoadResult:
    """Load, validate and type every resource under ``path`` (a directory or one file).

    Never raises for bad content: every problem is a ``ConfigError`` in
    ``errors``.  Raises ``LbctlError`` only when ``path`` itself is missing or
    unreadable.  Pass the same ``ParseCache`` to successive calls to re-parse
    only changed files.  Symlinks leaving ``path`` are errors unless
    ``follow_external_symlinks`` (see ``discover``).
    """
    was_enabled = gc.isenabled()
    gc.disable()  # the load allocates millions of small acyclic objects; GC passes cost seconds
    try:
        return _load_dir(os.fspath(path), cache, follow_external_symlinks)
    finally:
        if was_enabled:
            gc.enable()


def _load_dir(root: str, cache: ParseCache | None, follow_external_symlinks: bool) -> LoadResult:
    timings = dict.fromkeys(("discover", "read", "parse", "schema", "build", "semantic"), 0.0)
    start = time.perf_counter()
    found, errors = discover(root, follow_external_symlinks=follow_external_symlinks)
    timings["discover"] = time.perf_counter() - start
    resources: list[Resource] = []
    broken: set[str] = set()
    digests: list[str] = ["error:" + str(e) for e in errors]  # a new loop or broken link is a change too
    parsed: list[str] = []
    groups: list[tuple[Resource, ...]] = []
    looked = [_look_up(item, cache, timings) for item in found]
    todo = [(item.display, job) for item, job in zip(found, looked, strict=True) if isinstance(job, _Pending)]
    fresh = parse_all([(display, job.data) for display, job in todo], timings, load_bytes)  # maybe forked
    for (display, job), done in zip(todo, fresh, strict=True):
        parsed.append(display)
        if cache is not None and job.signature is not None:
            cache.store(display, job.signature, job.sha256, done)
    fresh_of = iter(fresh)
    for got in looked:
        result = next(fresh_of) if isinstance(got, _Pending) else got
        groups.append(result.resources)
        resources.extend(result.resources)
        errors.extend(result.errors)
        broken.update(result.broken)
        digests.extend(result.digests)
    if cache is not None:
        cache.retain({f.display for f in found})
    t0 = time.perf_counter()
    if cache is not None:  # incremental: only what the changed files touch is checked again
        errors.extend(cache.semantic.check(groups, broken))
    else:
        errors.extend(semantic.check(resources, broken))
    timings["semantic"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    digest = hashlib.sha256("\n".join(sorted(digests)).encode("ascii", "replace")).hexdigest()
    return LoadResult(root=root, resources=tuple(resources), errors=tuple(sorted(set(errors), key=sort_key)),
                      files=tuple(f.display for f in found), digest=digest, parsed=tuple(parsed),
                      timings=timings)
