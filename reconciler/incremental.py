"""Incremental reconcile: plan only the records that changed Services touch.

Why this exists: at 10,000 services a full reconcile (compile everything, read
every map, diff 100k backends) takes a good part of a second, while a delivery
usually changes one endpoint in one file.  Like kube-proxy's partial sync, the
daemon keeps an index of the last verified desired state, and for a delivery
that only adds, removes or edits Services it

1. finds the changed Services by identity (the config loader's per-file cache
   hands back the same ``Resource`` objects for files whose content did not
   change, so this is a pointer comparison per resource);
2. compiles only those Services (``desired.compile_state`` on the subset plus
   the Datapath/BGPConfig context they depend on);
3. diffs only the keys their old and new records own, against the live
   records of just those keys (``read_keys`` when a driver offers it, else the
   state verified by the last reconcile);
4. after the apply, verifies those keys the same way.

Anything else (a Pool, Datapath, firewall or BGP change; a Service that would
need a new pool allocation) returns ``None``: the caller does a full reconcile.
The periodic full resync re-reads everything and repairs drift on all keys, so
the index never has to be trusted for long.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.desired import compile_state, host_prefixlen
from reconciler.model import PoolSpec, Resource, ServiceSpec
from reconciler.plan import Plan, diff
from reconciler.records import Record, ServiceEntry

ResId = tuple[str, str]  # (kind, metadata.name)
OWNED_KINDS: tuple[str, ...] = ("service", "endpoints", "vip", "announce")
CONTEXT_KINDS = frozenset({"Datapath", "BGPConfig"})  # what compiling a Service reads besides itself

MutableState = dict[str, dict[str, Record]]
Keys = Mapping[str, frozenset[str]]  # kind -> keys
ReadKeys = Callable[[Keys], Mapping[str, Mapping[str, Record]]]


def _contributions(desired: Mapping[str, Mapping[str, Record]],
                   resources: Mapping[ResId, Resource]) -> dict[str, dict[str, set[str]]]:
    """Service name -> kind -> the keys its records own in ``desired``.

    A VIP address belongs to every Service on that VIP; an announcement only to
    those with ``bgp: true``.
    """
    out: dict[str, dict[str, set[str]]] = {}
    endpoints = desired.get("endpoints", {})
    vips = desired.get("vip", {})
    announce = desired.get("announce", {})
    for key, entry in desired.get("service", {}).items():
        assert isinstance(entry, ServiceEntry)
        own = out.setdefault(entry.name, {kind: set() for kind in OWNED_KINDS})
        own["service"].add(key)
        if key in endpoints:
            own["endpoints"].add(key)
        vip = entry.key.vip
        if vip in vips:
            own["vip"].add(vip)
        prefix = f"{vip}/{host_prefixlen(vip)}"
        res = resources.get(("Service", entry.name))
        if prefix in announce and res is not None and isinstance(res.spec, ServiceSpec) and res.spec.bgp:
            own["announce"].add(prefix)
    return out


def _by_id(resources: Iterable[Resource]) -> dict[ResId, Resource]:
    return {(r.kind, r.name): r for r in resources}


def _placement(spec: ServiceSpec) -> tuple[object, ...]:
    """What decides a Service's VIPs (and so its pool allocation)."""
    return (spec.vip, spec.pool, spec.ports, spec.secondary_vips)


@dataclass(frozen=True)
class Partial:
    """A plan restricted to ``touched`` keys, plus what to commit once it verified."""

    plan: Plan
    touched: Keys
    desired: Mapping[str, Mapping[str, Record]]  # desired records of the touched keys
    resources: Mapping[ResId, Resource]
    changed: tuple[str, ...]  # Service names
    contributions: Mapping[str, Mapping[str, frozenset[str]]]  # new contributions of the changed names


class Index:
    """The last verified desired state, indexed by the Service that owns each record."""

    def __init__(self, resources: Sequence[Resource], desired: Mapping[str, Mapping[str, Record]],
                 allocated: Mapping[str, str], owned: Iterable[str] = OWNED_KINDS) -> None:
        """``owned``: the record kinds some driver manages (the others are never planned)."""
        owned = frozenset(owned)
        self.kinds = tuple(kind for kind in OWNED_KINDS if kind in owned)
        self.resources = _by_id(resources)
        self.desired: MutableState = {kind: dict(desired.get(kind, {})) for kind in self.kinds}
        self.allocated = dict(allocated)
        self.has_pools = any(isinstance(r.spec, PoolSpec) for r in resources)
        contrib = _contributions(self.desired, self.resources)
        self.contrib = {name: {k: frozenset(v) for k, v in own.items()} for name, own in contrib.items()}
        self.owners: dict[tuple[str, str], set[str]] = {}
        for name, own in contrib.items():
            for kind, keys in own.items():
                for key in keys:
                    self.owners.setdefault((kind, key), set()).add(name)
        # Live records as the last verification saw them (== desired after a verified reconcile).
        self.live: MutableState = {kind: dict(records) for kind, records in self.desired.items()}

    def changed_services(
            self, resources: Sequence[Resource]) -> tuple[list[ResId], dict[ResId, Resource]] | None:
        """Ids of Services added, removed or edited; None when something else changed."""
        new = _by_id(resources)
        changed: list[ResId] = []
        for rid, res in new.items():
            old = self.resources.get(rid)
            if old is res or (old is not None and old == res):
                continue
            if rid[0] != "Service":
                return None
            changed.append(rid)
        for rid in self.resources.keys() - new.keys():
            if rid[0] != "Service":
                return None
            changed.append(rid)
        return sorted(changed), new

    def _vips_for(self, old: Resource | None, new: Resource) -> dict[str, str] | None:
        """Allocation for ``new`` without running IPAM, or None if IPAM must decide."""
        spec = new.spec
        assert isinstance(spec, ServiceSpec)
        if old is not None:
            assert isinstance(old.spec, ServiceSpec)
            if _placement(old.spec) == _placement(spec):
                return {new.name: self.allocated[new.name]} if new.name in self.allocated else {}
        if spec.vip is not None and not self.has_pools:
            return {}
        return None

    def plan(self, resources: Sequence[Resource], read_keys: ReadKeys | None = None) -> Partial | None:
        """The partial plan for ``resources``; None when a full reconcile is needed."""
        found = self.changed_services(resources)
        if found is None:
            return None
        changed, new = found
        allocated: dict[str, str] = {}
        compile_set: list[Resource] = [r for (kind, _), r in new.items() if kind in CONTEXT_KINDS]
        for rid in changed:
            res = new.get(rid)
            if res is None:
                continue
            vips = self._vips_for(self.resources.get(rid), res)
            if vips is None:
                return None
            allocated.update(vips)
            compile_set.append(res)
        full = compile_state(compile_set, allocated)
        compiled = {kind: full.get(kind, {}) for kind in self.kinds}
        names = {name for _, name in changed}
        fresh = _contributions(compiled, new)
        touched: dict[str, set[str]] = {kind: set() for kind in self.kinds}
        for name in names:
            for own in (self.contrib.get(name, {}), fresh.get(name, {})):
                for kind, keys in own.items():
                    if kind in touched:
                        touched[kind] |= keys
        desired: MutableState = {kind: {} for kind in self.kinds}
        for kind, keys in touched.items():
            for key in keys:
                others = self.owners.get((kind, key), set()) - names
                if key in compiled.get(kind, {}):
                    desired[kind][key] = compiled[kind][key]
                elif others:
                    desired[kind][key] = self.desired[kind][key]
        frozen_touched = {kind: frozenset(keys) for kind, keys in touched.items()}
        live = self._live(frozen_touched, read_keys)
        return Partial(plan=diff(desired, live), touched=frozen_touched, desired=desired, resources=new,
                       changed=tuple(sorted(names)),
                       contributions={name: {k: frozenset(v) for k, v in own.items()}
                                      for name, own in fresh.items() if name in names})

    def _live(self, touched: Keys, read_keys: ReadKeys | None) -> MutableState:
        if read_keys is not None:
            got = read_keys(touched)
            return {kind: {k: v for k, v in got.get(kind, {}).items() if k in touched[kind]}
                    for kind in self.kinds}
        return {kind: {k: self.live[kind][k] for k in touched[kind] if k in self.live[kind]}
                for kind in self.kinds}

    def verify(self, partial: Partial, read_keys: ReadKeys | None) -> Plan:
        """What is still different on the touched keys after the apply (empty: verified)."""
        if read_keys is None:
            return Plan()
        return diff(partial.desired, self._live(partial.touched, read_keys))

    def commit(self, partial: Partial) -> None:
        """Take the partial result as the new verified state."""
        names = set(partial.changed)
        for name in names:
            for kind, keys in self.contrib.pop(name, {}).items():
                for key in keys:
                    owners = self.owners.get((kind, key))
                    if owners is not None:
                        owners.discard(name)
                        if not owners:
                            del self.owners[(kind, key)]
        for name, own in partial.contributions.items():
            own = {kind: keys for kind, keys in own.items() if kind in self.desired}
            self.contrib[name] = own
            for kind, keys in own.items():
                for key in keys:
                    self.owners.setdefault((kind, key), set()).add(name)
        for kind, keys in partial.touched.items():
            want = partial.desired.get(kind, {})
            for key in keys:
                if key in want:
                    self.desired[kind][key] = want[key]
                    self.live[kind][key] = want[key]
                else:
                    self.desired[kind].pop(key, None)
                    self.live[kind].pop(key, None)
        self.resources = dict(partial.resources)
        for name in names:
            if ("Service", name) not in self.resources:
                self.allocated.pop(name, None)
