"""Semantic checks, incrementally: per-file facts and indexes kept across loads.

Why this exists: the watch daemon re-loads a 10,000-service directory on every
change and must have the result within 100 ms of the debounce firing, but
``semantic.check`` costs ~0.3-0.5 s over the whole set.  A ``ParseCache`` hands
back the same ``Resource`` tuple for every file that did not change, so a
``SemanticMemo`` keeps, per file (by the identity of that tuple):

* its *shape*, which depends on its resources only: the non-Service resources,
  the (kind, name) pairs, the (VIP, protocol) claims of its services, their
  service-map entries and the pools they name;
* the services' own errors, together with the inputs they read besides the
  services (the named pools: known? family? broken? and, for a missing pool,
  every pool name for the "did you mean" hint);

and two indexes over all files, (kind, name) -> owners and (VIP, protocol) ->
claims, updated only for the files that came or went.  Conflicts are looked at
(and their errors memoised) only for the keys held by more than one resource,
and recomputed only when a file holding such a key changed.  The non-Service
kinds (pools, peers, firewall rules, the datapath) are few and are checked in
full every time with the functions of ``semantic``.

Discovery order decides who is "first" (duplicate names, VIP claims with equal
ports); files keep their relative order across loads (it is their sorted path),
so a conflict's order is (file position, position in file, port index) and
memoised errors of untouched keys stay valid.  The result is identical to
``semantic.check`` over the concatenated files; a property test checks it.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.config import semantic
from reconciler.errors import ConfigError
from reconciler.model import DatapathSpec, Resource, ServiceSpec

NameKey = tuple[str, str]  # (kind, name)
ClaimKey = tuple[str, str]  # (canonical VIP, protocol)
# first port, last port, position in file, port index, service, path
ClaimEntry = tuple[int, int, int, int, Resource, str]


@dataclass(frozen=True)
class _Shape:
    """What one file contributes that depends on its resources only."""

    resources: tuple[Resource, ...]
    services: tuple[tuple[Resource, ServiceSpec], ...]
    others: tuple[Resource, ...]  # every resource that is not a Service, in order
    bgp_services: tuple[Resource, ...]  # services with bgp: true (they need a BGPConfig)
    names: dict[NameKey, list[tuple[int, Resource]]]
    claims: dict[ClaimKey, list[ClaimEntry]]
    usage: tuple[tuple[int, ...], ...]  # per service: what it takes of each capacity (semantic.usage_of)
    usage_total: tuple[int, ...]
    pools_named: tuple[str, ...]


def _shape(resources: tuple[Resource, ...]) -> _Shape:
    services: list[tuple[Resource, ServiceSpec]] = []
    others: list[Resource] = []
    names: dict[NameKey, list[tuple[int, Resource]]] = {}
    claims: dict[ClaimKey, list[ClaimEntry]] = {}
    pools: set[str] = set()
    service_pos = 0
    for pos, res in enumerate(resources):
        names.setdefault((res.kind, res.name), []).append((pos, res))
        spec = res.spec
        if not isinstance(spec, ServiceSpec):
            others.append(res)
            continue
        services.append((res, spec))
        if spec.pool is not None:
            pools.add(spec.pool)
        port_index: dict[ClaimKey, int] = {}
        for vip, proto, start, end, path in semantic.claims_of(spec):
            key = (vip, proto)
            i = port_index.get(key, 0)
            port_index[key] = i + 1
            claims.setdefault(key, []).append((start, end, service_pos, i, res, path))
        service_pos += 1
    usage = tuple(semantic.usage_of(s) for _, s in services)
    usage_total = tuple(sum(u[i] for u in usage) for i in range(len(semantic.CAPACITIES)))
    return _Shape(resources, tuple(services), tuple(others), tuple(r for r, s in services if s.bgp), names,
                  claims, usage, usage_total, tuple(sorted(pools)))


@dataclass(frozen=True)
class _Checked:
    """A file's services' own errors and the inputs they were computed from."""

    inputs: Hashable
    errors: tuple[ConfigError, ...]


class SemanticMemo:
    """Per-file facts and cross-file indexes of the last check; see the module docstring.

    One memo belongs to one ``ParseCache`` (``cache.semantic``).  Checks on one
    memo are serialised by a lock; the memo holds only the last configuration.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shapes: dict[int, _Shape] = {}  # id(resources tuple) -> shape, files of the last check
        self._checked: dict[int, _Checked] = {}
        self._names: dict[NameKey, dict[int, list[tuple[int, Resource]]]] = {}
        self._claims: dict[ClaimKey, dict[int, list[ClaimEntry]]] = {}
        self._name_errors: dict[NameKey, tuple[ConfigError, ...]] = {}  # keys with > 1 owner
        self._claim_errors: dict[ClaimKey, tuple[ConfigError, ...]] = {}  # keys with > 1 claim
        self.reused = 0  # files whose services' errors were reused by the last check

    def __getstate__(self) -> dict[str, object]:
        """Pickled (see ``persist``) with files numbered: ``id()`` keys mean nothing in another process."""
        with self._lock:
            number = {gid: n for n, gid in enumerate(self._shapes)}
            return {
                "shapes": list(self._shapes.values()),
                "checked": {number[gid]: c for gid, c in self._checked.items()},
                "names": {k: {number[gid]: v for gid, v in held.items()} for k, held in self._names.items()},
                "claims": {k: {number[gid]: v for gid, v in held.items()}
                           for k, held in self._claims.items()},
                "name_errors": self._name_errors, "claim_errors": self._claim_errors,
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        shapes: list[_Shape] = state["shapes"]
        gid = [id(shape.resources) for shape in shapes]  # the tuples the unpickled FileResults hold
        self._shapes = dict(zip(gid, shapes, strict=True))
        self._checked = {gid[n]: c for n, c in state["checked"].items()}
        self._names = {k: {gid[n]: v for n, v in held.items()} for k, held in state["names"].items()}
        self._claims = {k: {gid[n]: v for n, v in held.items()} for k, held in state["claims"].items()}
        self._name_errors, self._claim_errors = state["name_errors"], state["claim_errors"]

    def check(self, groups: Sequence[tuple[Resource, ...]], broken: Iterable[str] = ()) -> list[ConfigError]:
        with self._lock:
            return self._check(groups, set(broken))

    def _check(self, groups: Sequence[tuple[Resource, ...]], gone: set[str]) -> list[ConfigError]:
        report = semantic.Report()
        groups = [g for g in groups if g]  # () is one shared object: empty files would collide
        ids = [id(g) for g in groups]
        shapes: dict[int, _Shape] = {}
        for gid, group in zip(ids, groups, strict=True):
            shape = self._shapes.get(gid)
            if shape is None or shape.resources is not group:
                shape = _shape(group)
            shapes[gid] = shape
        order = {gid: i for i, gid in enumerate(ids)}
        self._reindex(shapes, order)

        # the few: singletons, pools, peers, firewall rules, datapath
        others = [r for gid in ids for r in shapes[gid].others]
        semantic.singletons(others + [r for gid in ids for r in shapes[gid].bgp_services], report, gone)
        pools = semantic.check_pools(others, report)
        semantic.check_others(others, report)

        # the many: each service on its own, with its inputs
        names: tuple[str, ...] | None = None
        checked: dict[int, _Checked] = {}
        reused = 0
        for gid in ids:
            shape = shapes[gid]
            inputs: list[Hashable] = []
            for pool in shape.pools_named:
                known = pool in pools
                if not known and names is None:
                    names = tuple(sorted(pools))
                inputs.append((pool, known, pools.get(pool), f"Pool/{pool}" in gone,
                               None if known else names))
            key = tuple(inputs)
            done = self._checked.get(gid)
            if done is None or done.inputs != key or gid not in self._shapes:
                own = semantic.Report()
                for res, spec in shape.services:
                    semantic.check_service(res, spec, pools, own, gone)
                done = _Checked(key, tuple(own.errors))
            else:
                reused += 1
            checked[gid] = done
            report.errors.extend(done.errors)

        # across files: the capacities (per-file totals; a file's services are walked only
        # when a capacity is passed), then the memoised conflicts of contested keys
        totals = [sum(shapes[gid].usage_total[i] for gid in ids) for i in range(len(semantic.CAPACITIES))]
        datapath = next((r for r in others if isinstance(r.spec, DatapathSpec)), None)
        caps = semantic.datapath_capacities(datapath)
        if any(t > limit for t, limit in zip(totals, semantic.capacity_limits(caps), strict=True)):
            used = [(res, u) for gid in ids
                    for (res, _), u in zip(shapes[gid].services, shapes[gid].usage, strict=True)]
            semantic.capacity_totals(used, datapath, report, totals)
        for errors in self._name_errors.values():
            report.errors.extend(errors)
        for errors in self._claim_errors.values():
            report.errors.extend(errors)

        self._shapes, self._checked, self.reused = shapes, checked, reused
        return report.errors

    def _reindex(self, shapes: dict[int, _Shape], order: dict[int, int]) -> None:
        """Move the indexes from the last check's files to ``shapes``; redo touched conflicts."""
        old = self._shapes
        gone = [gid for gid, shape in old.items() if shapes.get(gid) is not shape]
        came = [gid for gid, shape in shapes.items() if old.get(gid) is not shape]
        touched_names: set[NameKey] = set()
        touched_claims: set[ClaimKey] = set()
        for gid in gone:
            shape = old[gid]
            for nkey in shape.names:
                holders = self._names[nkey]
                del holders[gid]
                if not holders:
                    del self._names[nkey]
                touched_names.add(nkey)
            for ckey in shape.claims:
                claimers = self._claims[ckey]
                del claimers[gid]
                if not claimers:
                    del self._claims[ckey]
                touched_claims.add(ckey)
        for gid in came:
            shape = shapes[gid]
            for nkey, owners in shape.names.items():
                self._names.setdefault(nkey, {})[gid] = owners
                touched_names.add(nkey)
            for ckey, entries in shape.claims.items():
                self._claims.setdefault(ckey, {})[gid] = entries
                touched_claims.add(ckey)
        for nkey in touched_names:
            self._name_errors.pop(nkey, None)
            now = self._names.get(nkey)
            if now is None or (len(now) == 1 and len(next(iter(now.values()))) == 1):
                continue
            ranked = sorted(((order[gid], pos), res)
                            for gid, owners in now.items() for pos, res in owners)
            own = semantic.Report()
            first = ranked[0][1]
            for _, res in ranked[1:]:
                semantic.duplicate_name(res, first, own)
            self._name_errors[nkey] = tuple(own.errors)
        for ckey in touched_claims:
            self._claim_errors.pop(ckey, None)
            held = self._claims.get(ckey)
            if held is None or (len(held) == 1 and len(next(iter(held.values()))) == 1):
                continue
            ranked_claims = sorted(((start, end, order[gid], pos, i), res, path)
                                   for gid, entries in held.items()
                                   for start, end, pos, i, res, path in entries)
            own = semantic.Report()
            semantic.claim_conflicts(ckey[0], ckey[1],
                                     [(k[0], k[1], res, path) for k, res, path in ranked_claims], own)
            if own.errors:
                self._claim_errors[ckey] = tuple(own.errors)
