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
3. diffs only the keys their old and new records own and whose desired record
   actually changed, against the live records of just those keys
   (``read_keys`` when a driver offers it, else the state verified by the last
   reconcile);
4. after the apply, verifies those keys the same way.

Anything else (a Pool, Datapath, firewall or BGP change; a Service that would
need a new pool allocation; a delivery that adds the first VIP of an address
family or removes the last one, which changes the kernel settings the box
needs, ``desired.kernel_settings``) returns ``None``: the caller does a full
reconcile.
The periodic full resync re-reads everything and repairs drift on all keys, so
the index never has to be trusted for long.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.desired import Health, compile_state, host_prefixlen
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


def _same(a: Resource, b: Resource) -> bool:
    """Same content (where it sits in its file does not change any record)."""
    return a is b or (a.kind == b.kind and a.metadata == b.metadata and a.spec == b.spec)


@dataclass(frozen=True)
class _Scan:
    """Resources compared for one delivery: what changed, within which files."""

    updates: Mapping[ResId, Resource | None]  # changed Services: new version, None when removed
    scope: frozenset[str] | None  # files compared (None: all)
    resources: tuple[Resource, ...]  # the new resources of those files


@dataclass(frozen=True)
class Partial:
    """A plan restricted to ``touched`` keys, plus what to commit once it verified."""

    plan: Plan
    touched: Keys
    desired: Mapping[str, Mapping[str, Record]]  # desired records of the touched keys
    scan: _Scan
    changed: tuple[str, ...]  # Service names
    contributions: Mapping[str, Mapping[str, frozenset[str]]]  # new contributions of the changed names
    health: Health | None = None  # the endpoint health compiled with (None: the index's)


class Index:
    """The last verified desired state, indexed by the Service that owns each record."""

    def __init__(self, resources: Sequence[Resource], desired: Mapping[str, Mapping[str, Record]],
                 allocated: Mapping[str, str], owned: Iterable[str] = OWNED_KINDS,
                 health: Health | None = None) -> None:
        """``owned``: the record kinds some driver manages (the others are never planned).
        ``health``: the endpoint health ``desired`` was compiled with (a change needs a new index)."""
        owned = frozenset(owned)
        self.health: Health = dict(health or {})
        self.kinds = tuple(kind for kind in OWNED_KINDS if kind in owned)
        self.resources = _by_id(resources)
        self.by_file: dict[str, tuple[Resource, ...]] = {}
        for res in resources:
            self.by_file[res.location.file] = (*self.by_file.get(res.location.file, ()), res)
        self.context = tuple(r for r in resources if r.kind in CONTEXT_KINDS)
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
        # Services per VIP family (4, 6): the kernel settings depend on which families exist.
        entries = self.desired.get("service", {}).values()
        self.families: Counter[int] = Counter(e.key.family for e in entries if isinstance(e, ServiceEntry))

    def changed_services(self, resources: Sequence[Resource], files: Collection[str] | None = None,
                         parsed: Collection[str] | None = None) -> _Scan | None:
        """Services added, removed or edited (id -> new resource or None); None when something else changed.

        With ``files`` (every file loaded) and ``parsed`` (those the loader actually
        re-parsed; the others' resources are the very objects it returned before),
        only resources of parsed or vanished files are compared.
        """
        scope: frozenset[str] | None = None
        if files is None or parsed is None:
            scope_new = list(resources)
            scope_old: list[Resource] = list(self.resources.values())
        else:
            scope = frozenset(parsed) | (self.by_file.keys() - set(files))
            scope_new = [r for r in resources if r.location.file in scope]
            scope_old = [r for f in scope for r in self.by_file.get(f, ())]
        new = _by_id(scope_new)
        updates: dict[ResId, Resource | None] = {}
        for rid, res in new.items():
            old = self.resources.get(rid)
            if old is not None and _same(old, res):
                continue
            if rid[0] != "Service":
                return None
            updates[rid] = res
        for res in scope_old:
            rid = (res.kind, res.name)
            if rid in new:
                continue
            if rid[0] != "Service":
                return None
            updates[rid] = None
        return _Scan(dict(sorted(updates.items())), scope, tuple(scope_new))

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

    def plan(self, resources: Sequence[Resource], read_keys: ReadKeys | None = None, *,
             files: Collection[str] | None = None, parsed: Collection[str] | None = None) -> Partial | None:
        """The partial plan for ``resources``; None when a full reconcile is needed.

        ``files``/``parsed``: see ``changed_services``.
        """
        scan = self.changed_services(resources, files, parsed)
        if scan is None:
            return None
        return self._plan(scan, read_keys, None)

    def plan_health(self, names: Collection[str], health: Health,
                    read_keys: ReadKeys | None = None) -> Partial | None:
        """The partial plan that recompiles Services ``names`` (unchanged configuration) with
        the endpoint health ``health``: a health transition, as minimal as an endpoint edit."""
        updates: dict[ResId, Resource | None] = {
            ("Service", n): self.resources[("Service", n)]
            for n in sorted(names) if ("Service", n) in self.resources}
        scan = _Scan(updates, frozenset(), tuple(r for r in updates.values() if r is not None))
        return self._plan(scan, read_keys, dict(health))

    def _plan(self, scan: _Scan, read_keys: ReadKeys | None, health: Health | None) -> Partial | None:
        updates = scan.updates
        allocated: dict[str, str] = {}
        compile_set: list[Resource] = list(self.context)
        for rid, res in updates.items():
            if res is None:
                continue
            if isinstance(res.spec, ServiceSpec) and res.spec.source_address:
                return None  # a full reconcile checks the address against the box (ipam.source_errors)
            vips = self._vips_for(self.resources.get(rid), res)
            if vips is None:
                return None
            allocated.update(vips)
            compile_set.append(res)
        full = compile_state(compile_set, allocated, health=self.health if health is None else health)
        compiled = {kind: full.get(kind, {}) for kind in self.kinds}
        names = {name for _, name in updates}
        fresh = _contributions(compiled, {rid: r for rid, r in updates.items() if r is not None})
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
        # Only keys whose desired record changes go to the kernel: the others were
        # verified by the last reconcile, and drift on them is the full resync's job.
        # (An endpoint edit must not re-read the 10,000 VIPs that share the netlink dump.)
        for kind, keys in touched.items():
            was, want = self.desired[kind], desired[kind]
            keys.difference_update([key for key in keys if want.get(key) == was.get(key)])
            desired[kind] = {key: want[key] for key in keys if key in want}
        if "service" in touched and self._families_change(touched["service"], desired["service"]):
            return None  # the kernel settings change with the set of families: a full reconcile
        frozen_touched = {kind: frozenset(keys) for kind, keys in touched.items()}
        live = self._live(frozen_touched, read_keys)
        return Partial(plan=diff(desired, live), touched=frozen_touched, desired=desired, scan=scan,
                       changed=tuple(sorted(names)),
                       contributions={name: {k: frozenset(v) for k, v in own.items()}
                                      for name, own in fresh.items() if name in names},
                       health=health)

    def _family_delta(self, keys: Iterable[str], want: Mapping[str, Record]) -> Counter[int]:
        delta: Counter[int] = Counter()
        was = self.desired.get("service", {})
        for key in keys:
            for state, sign in ((was, -1), (want, 1)):
                rec = state.get(key)
                if isinstance(rec, ServiceEntry):
                    delta[rec.key.family] += sign
        return delta

    def _families_change(self, keys: Iterable[str], want: Mapping[str, Record]) -> bool:
        after = self.families.copy()
        after.update(self._family_delta(keys, want))
        return {f for f, n in after.items() if n > 0} != {f for f, n in self.families.items() if n > 0}

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
        if partial.health is not None:
            self.health = dict(partial.health)
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
        if "service" in partial.touched:
            self.families.update(self._family_delta(partial.touched["service"],
                                                    partial.desired.get("service", {})))
        for kind, keys in partial.touched.items():
            want = partial.desired.get(kind, {})
            for key in keys:
                if key in want:
                    self.desired[kind][key] = want[key]
                    self.live[kind][key] = want[key]
                else:
                    self.desired[kind].pop(key, None)
                    self.live[kind].pop(key, None)
        scan = partial.scan
        for rid, res in scan.updates.items():
            if res is None:
                self.resources.pop(rid, None)
                self.allocated.pop(rid[1], None)
        for res in scan.resources:
            self.resources[(res.kind, res.name)] = res
        if scan.scope is None:
            self.by_file = {}
            scope: Iterable[str] = {r.location.file for r in scan.resources}
        else:
            scope = scan.scope
        grouped: dict[str, list[Resource]] = {}
        for res in scan.resources:
            grouped.setdefault(res.location.file, []).append(res)
        for f in scope:
            if f in grouped:
                self.by_file[f] = tuple(grouped[f])
            else:
                self.by_file.pop(f, None)
