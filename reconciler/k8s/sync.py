"""``lbctl import k8s --watch`` and ``--write-status``: keep a directory in sync with a cluster.

Why this exists: the output directory must follow the cluster while Services
and EndpointSlices change, without a full list each time.  One thread per
resource lists it, then watches from the list's resourceVersion (bookmarks
asked for), and after each watch ends (the server's timeout, or a dropped
connection) watches again from the last version seen; a 410 Gone lists again;
any other failure waits with exponential backoff.  The main thread applies the
events to an in-memory copy of the objects, and once every resource has been
listed, runs the pure importer on it and writes only the files whose bytes
changed (atomically, ``outdir``).  With ``--write-status`` it writes each
Service's VIP (literal, or the one lbctl allocated from its pool, read from the
state dir's ``allocations.json``) into ``status.loadBalancer.ingress`` when it
differs, also when a later ``lbctl apply`` allocates it.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import LbctlError
from reconciler.ipam_store import STORE_NAME, AllocationStore
from reconciler.k8s import cluster, importer, outdir
from reconciler.k8s.objects import K8sObject, Objects, key_of, list_at, spec_of

Key = tuple[str, str]
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Backoff:
    first: float = 0.5
    factor: float = 2.0
    most: float = 30.0

    def delay(self, failures: int) -> float:
        return float(min(self.most, self.first * self.factor ** max(0, failures - 1)))


def _rv(obj: Mapping[str, Any]) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else None


def watch_resource(api: Any, res: cluster.Resource, events: queue.Queue[tuple[str, str, Any]],
                   stop: threading.Event, wait: Callable[[float], bool], backoff: Backoff, log: Log) -> None:
    """List, then watch ``res`` until ``stop``; everything it learns goes to ``events``."""
    rv: str | None = None
    failures = 0
    while not stop.is_set():
        try:
            if rv is None:
                listed = cluster.list_raw(api, res)
                if listed is None:  # an optional CRD the cluster does not have
                    events.put(("absent", res.name, None))
                    return
                items, rv = listed
                events.put(("reset", res.name, items))
            for event in cluster.watch(api, res, rv):
                if stop.is_set():
                    return
                obj = event.get("object") or {}
                kind = event.get("type")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    events.put((str(kind), res.name, obj))
                rv = _rv(obj) or rv
                failures = 0
        except cluster.Gone:
            log(f"import k8s: {res.name}: resourceVersion {rv} is gone (410); listing again")
            rv = None
        except Exception as exc:  # noqa: BLE001 - a dropped connection raises the HTTP library's own errors
            failures += 1
            delay = backoff.delay(failures)
            log(f"import k8s: {res.name}: {type(exc).__name__}: {exc}; retrying in {delay:g}s")
            if wait(delay):
                return


class Mirror:
    """The objects seen so far, per resource, as the last list and the watch events made them."""

    def __init__(self, resources: tuple[cluster.Resource, ...]) -> None:
        self.resources = resources
        self.objects: dict[str, dict[Key, K8sObject]] = {r.name: {} for r in resources}
        self.pending = {r.name for r in resources}  # not listed yet

    def apply(self, kind: str, name: str, payload: Any) -> None:
        if kind == "absent":
            self.pending.discard(name)
        elif kind == "reset":
            self.objects[name] = {key_of(o): o for o in payload}  # list_raw typed them
            self.pending.discard(name)
        elif kind == "DELETED":
            self.objects[name].pop(key_of(payload), None)
        else:
            res = next(r for r in self.resources if r.name == name)
            self.objects[name][key_of(payload)] = res.typed(payload)

    def snapshot(self) -> Objects:
        found: dict[str, list[K8sObject]] = {"services": [], "endpoint_slices": [], "nodes": [], "lbctl": []}
        for res in self.resources:
            found[res.category].extend(self.objects[res.name].values())
        return Objects(tuple(found["services"]), tuple(found["endpoint_slices"]),
                                tuple(found["nodes"]), tuple(found["lbctl"]))


def _ingress(svc: K8sObject) -> list[str]:
    lb = spec_of(spec_of(svc, "status"), "loadBalancer")
    return [str(i.get("ip")) for i in list_at(lb, "ingress") if isinstance(i, Mapping) and i.get("ip")]


def write_status(api: Any, result: importer.Result, services: Mapping[Key, K8sObject],
                 state_dir: str | os.PathLike[str], log: Log = _stderr) -> int:
    """Write each imported Service's VIP into its status where it differs; the number written."""
    try:
        allocations = AllocationStore(state_dir).load()
    except LbctlError as exc:
        log(f"import k8s: --write-status: {exc}")
        allocations = {}
    written = 0
    for imp in result.files:
        if imp.key is None:
            continue
        vip = imp.vip or (allocations[imp.resource_name].vip if imp.resource_name in allocations else None)
        svc = services.get(imp.key)
        if vip is None or svc is None or _ingress(svc) == [vip]:
            continue
        try:
            cluster.patch_ingress(api, imp.key[0], imp.key[1], [vip])
            written += 1
        except LbctlError as exc:
            log(f"import k8s: {exc}")
    return written


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def run(api: Any, options: importer.Options, out_dir: str, *, state_dir: str | os.PathLike[str] | None,
        on_import: Callable[[importer.Result, outdir.SyncReport], None],
        stop: threading.Event | None = None, wait: Callable[[float], bool] | None = None,
        backoff: Backoff = Backoff(), log: Log = _stderr,
        resources: tuple[cluster.Resource, ...] = cluster.RESOURCES, tick: float = 0.5) -> None:
    """Keep ``out_dir`` in sync until ``stop`` is set (SIGTERM/SIGINT end the process)."""
    stop = stop or threading.Event()
    wait = wait or stop.wait
    events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
    mirror = Mirror(resources)
    threads = [threading.Thread(target=watch_resource, name=f"lbctl-k8s-{r.name}", daemon=True,
                                args=(api, r, events, stop, wait, backoff, log)) for r in resources]
    for t in threads:
        t.start()
    last: tuple[bytes, ...] | None = None
    allocations = Path(state_dir) / STORE_NAME if state_dir is not None else None
    seen_allocations: tuple[int, int] | None = None
    result: importer.Result | None = None
    while not stop.is_set():
        try:
            item = events.get(timeout=tick)
        except queue.Empty:
            item = None
        while item is not None:  # everything queued so far is one delivery
            mirror.apply(*item)
            try:
                item = events.get_nowait()
            except queue.Empty:
                item = None
        if mirror.pending:
            continue
        changed = False
        snapshot = mirror.snapshot()
        fresh = importer.convert(snapshot, options)
        digest = tuple(f.filename.encode() + b"\0" + f.data for f in fresh.files)
        if digest != last:
            report = outdir.sync(out_dir, [(f.filename, f.data) for f in fresh.files])
            on_import(fresh, report)
            last, result, changed = digest, fresh, True
        if state_dir is not None and allocations is not None and result is not None:
            sig = _signature(allocations)
            if changed or sig != seen_allocations:
                seen_allocations = sig
                write_status(api, result, {key_of(s): s for s in snapshot.services}, state_dir, log)
