"""Reconcile: load, plan, apply through the drivers, verify.

Why this exists: ``lbctl plan``, ``lbctl apply`` and the watch daemon must do
exactly the same thing, so the whole loop lives in one function,
``reconcile()``, and the CLI and the daemon only present its result.

* Planning selects the drivers the configuration needs from the box's
  ``DriverSet`` (``reconciler.driver``), reads live state from them, allocates
  pool VIPs (stable, see ``reconciler.ipam``), compiles the desired state and
  diffs it.  Only record kinds some driver owns take part: desired records of
  a kind nobody manages (e.g. BGP without a BGP driver) become a warning, not
  an eternal "create".  A driver the configuration no longer needs but that is
  still up is *leaving*: its kinds are desired empty, so the plan deletes what
  it holds, and once that verified it is taken away (``down()``).
* Applying walks the plan in its order and hands each run of consecutive
  changes owned by the same driver to one ``driver.apply()`` call (batching).
  Announcements (BGP) get a call of their own, made only once the service
  entries and VIP address the plan wrote for their VIP read back as planned
  (``check_before_announcing``).
* Verifying re-reads and re-diffs: verified means the new plan is empty;
  otherwise the leftover plan is returned.
* A driver failure stops the walk.  The live state is then re-read to tell
  exactly which changes took effect and which did not; since drivers are
  idempotent and the next run plans from live state, it converges.

Callers must hold the state lock (``reconciler.lock.StateLock``) around
``reconcile()``; the daemon takes it per reconcile so ``lbctl plan`` can run in
between.  Side effects here: the drivers', the allocation store's and the
applied-configuration record's (``reconciler.applied``, written after every
verified apply) only.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from ipaddress import ip_interface
from pathlib import Path
from typing import Any, Protocol

from reconciler import fwclass
from reconciler.applied import AppliedStore
from reconciler.desired import Health, TableBuilder, compile_state
from reconciler.driver import BoxAddresses, Driver, DriverSet, KeyReader, Notices, PartialSupport
from reconciler.errors import ConfigError, LbctlError
from reconciler.ipam import Allocation, allocate, source_errors
from reconciler.ipam_store import AllocationStore
from reconciler.model import Resource
from reconciler.plan import Change, Plan, diff
from reconciler.probes import store as health_store
from reconciler.records import FirewallEntry, Record, ServiceEntry, ServiceKey, VipAddress

State = Mapping[str, Mapping[str, Record]]
_PRESENT: Record = VipAddress("", 0, "")  # "any live record without faults" in check_before_announcing


class LoadedConfig(Protocol):
    """What ``reconciler.config.load_dir`` returns (only what reconcile needs)."""

    @property
    def resources(self) -> Sequence[Resource]: ...

    @property
    def errors(self) -> Sequence[ConfigError]: ...

    @property
    def digest(self) -> str: ...


@dataclass(frozen=True)
class Timings:
    """Seconds per phase.  ``parse`` is 0 when the caller passed a loaded config."""

    parse: float = 0.0  # load + schema + semantic checks
    plan: float = 0.0  # read live state, IPAM, compile, diff
    program: float = 0.0  # driver apply() calls: kernel programming
    verify: float = 0.0  # re-read live state and re-diff

    @property
    def total(self) -> float:
        return self.parse + self.plan + self.program + self.verify

    def as_dict(self) -> dict[str, float]:
        return {"parse": self.parse, "plan": self.plan, "program": self.program,
                "verify": self.verify, "total": self.total}


@dataclass(frozen=True)
class ApplyFailure:
    """A driver failed mid-way: what took effect, what did not, and why."""

    message: str
    applied: tuple[Change, ...]
    not_applied: tuple[Change, ...]


class ApplyError(LbctlError):
    def __init__(self, failure: ApplyFailure) -> None:
        super().__init__(failure.message,
                         hint=f"{len(failure.applied)} changes applied, {len(failure.not_applied)} not; "
                              "fix the cause and run apply again: it continues from the live state")
        self.failure = failure


@dataclass(frozen=True)
class ReconcileResult:
    """Everything one reconcile learned and did."""

    plan: Plan  # planned changes (empty when the config was invalid)
    errors: tuple[ConfigError, ...] = ()  # configuration/IPAM errors: nothing was touched
    dry_run: bool = True
    applied: tuple[Change, ...] = ()
    failure: ApplyFailure | None = None
    leftover: Plan | None = None  # the re-diff after applying; None when not verified
    timings: Timings = field(default_factory=Timings)
    writes: int = 0  # driver writes made by this run
    digest: str | None = None
    warnings: tuple[str, ...] = ()
    notices: tuple[str, ...] = ()  # what a driver did on its own (a datapath layout migration)
    desired: State = field(default_factory=dict, repr=False)
    live: State = field(default_factory=dict, repr=False)  # as read before planning
    allocations: Mapping[str, Allocation] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def verified(self) -> bool:
        return self.leftover is not None and self.leftover.empty

    @property
    def ok(self) -> bool:
        """Valid, and (for an apply) fully applied and verified."""
        if self.errors or self.failure is not None:
            return False
        return self.dry_run or self.verified


# --- building blocks ---------------------------------------------------------------------------


def drivers_by_kind(drivers: Iterable[Driver]) -> dict[str, Driver]:
    out: dict[str, Driver] = {}
    for d in drivers:
        for kind in d.kinds:
            if kind in out:
                raise LbctlError(f"two drivers claim record kind {kind!r}: "
                                 f"{type(out[kind]).__name__} and {type(d).__name__}")
            out[kind] = d
    return out


def read_live(drivers: Iterable[Driver]) -> dict[str, dict[str, Record]]:
    """Merged live state of all drivers (only the kinds each owns)."""
    live: dict[str, dict[str, Record]] = {}
    for d in drivers:
        state = d.read()
        for kind in d.kinds:
            live[kind] = dict(state.get(kind, {}))
    return live


def total_writes(drivers: Iterable[Driver]) -> int:
    return sum(d.writes for d in drivers)


def live_vip_hints(live: State) -> dict[str, str]:
    """Service name -> VIP as the datapath shows it (IPAM uses it when the store is lost)."""
    hints: dict[str, str] = {}
    for rec in live.get("service", {}).values():
        if isinstance(rec, ServiceEntry):
            hints.setdefault(rec.name, rec.key.vip)
    return hints


def restrict(state: State, kinds: Iterable[str]) -> dict[str, dict[str, Record]]:
    return {k: dict(state.get(k, {})) for k in kinds}


def apply_plan(plan: Plan, drivers: Iterable[Driver]) -> tuple[Change, ...]:
    """Carry out ``plan`` in order, one ``apply()`` per run of same-driver changes.

    Returns the changes applied.  On a driver failure raises ``ApplyError``
    whose failure tells (from a re-read of live state) what took effect.
    """
    drivers = list(drivers)
    owner = drivers_by_kind(drivers)
    changes = plan.changes
    done = 0
    i = 0
    while i < len(changes):
        drv = owner.get(changes[i].kind)
        if drv is None:
            raise LbctlError(f"no driver for record kind {changes[i].kind!r} ({changes[i].key})")
        j = i + 1
        while j < len(changes) and owner.get(changes[j].kind) is drv:
            j += 1
        # Announcements go in a call of their own, after what they depend on read back.
        k = next((n for n in range(i, j)
                  if changes[n].kind == "announce" and changes[n].after is not None), j)
        if i < k < j:
            j = k
        try:
            check_before_announcing(changes[i:j], changes[:i], owner)
            drv.apply(changes[i:j])
        except Exception as exc:
            raise ApplyError(_classify_failure(plan, done, exc, drivers)) from exc
        done = i = j
    return changes


def _vip_of(change: Change) -> str | None:
    rec = change.after or change.before
    key = getattr(rec, "key", None)
    if isinstance(key, ServiceKey):
        return key.vip
    return getattr(rec, "address", None) if change.kind == "vip" else None


def check_before_announcing(batch: Sequence[Change], done: Sequence[Change],
                            owner: Mapping[str, Driver]) -> None:
    """Announce a VIP only once what this plan wrote for it is live (read back) and its address is up.

    For each announcement ``batch`` creates or changes, the service, endpoint and
    VIP-address changes of the same VIP applied earlier in the plan (``done``)
    are read back (``KeyReader``, else a full read) and must equal what they
    were to become, and the VIP must be on the VIP interface without faults.
    Anything else raises: the announcement is not made, and the next reconcile
    tries again.  Entries this plan did not touch were read live to make it.
    """
    vips = {ip_interface(c.key).ip.compressed for c in batch if c.kind == "announce" and c.after is not None}
    if not vips:
        return
    wanted: dict[str, dict[str, Record | None]] = {}
    for c in done:
        if c.kind in ("service", "endpoints", "vip") and _vip_of(c) in vips:
            wanted.setdefault(c.kind, {})[c.key] = c.after
    for vip in vips:
        wanted.setdefault("vip", {}).setdefault(vip, _PRESENT)
    for kind, keys in wanted.items():
        drv = owner.get(kind)
        if drv is None:
            continue
        got = (drv.read_keys(kind, list(keys)) if isinstance(drv, KeyReader)
               else drv.read().get(kind, {}))
        for key, want in keys.items():
            have = got.get(key)
            ok = (have is not None and not getattr(have, "faults", ())) if want is _PRESENT else have == want
            if not ok:
                raise LbctlError(f"not announcing {', '.join(sorted(vips))}: {kind} {key} is not live "
                                 "as planned", hint="the next reconcile retries once it is")


def _classify_failure(plan: Plan, done: int, exc: Exception, drivers: Sequence[Driver]) -> ApplyFailure:
    msg = f"apply failed: {exc}"
    try:
        live = read_live(drivers)
    except Exception:  # cannot tell more than the batches that returned
        return ApplyFailure(msg + " (live state could not be re-read)", plan.changes[:done],
                            plan.changes[done:])
    applied: list[Change] = []
    not_applied: list[Change] = []
    for c in plan.changes:
        now = live.get(c.kind, {}).get(c.key)
        (applied if now == c.after else not_applied).append(c)
    return ApplyFailure(msg, tuple(applied), tuple(not_applied))


# A verify reads back just the keys a plan changed while they are at most this share of
# their kind's desired keys (a point lookup each); beyond it one full read is cheaper.
TARGETED_VERIFY_SHARE = 0.25


def verify(desired: State, drivers: Iterable[Driver], plan: Plan | None = None) -> Plan:
    """Re-read live state and re-diff: the empty plan means verified.

    With ``plan`` (made from a read of the whole box moments before): what the plan
    changed is read back, by key where the owning driver reads single keys
    (``KeyReader``) and the plan touched at most ``TARGETED_VERIFY_SHARE`` of the
    kind; a kind it did not touch is not read again (deleting 1,000 of 10,000
    services: 0.05 s instead of a full read's 0.4 s).  Without: everything.
    """
    drivers = list(drivers)
    kinds = drivers_by_kind(drivers)
    if plan is None or not plan.changes:
        return diff(restrict(desired, kinds), read_live(drivers))
    touched: dict[str, set[str]] = {}
    for c in plan.changes:
        touched.setdefault(c.kind, set()).add(c.key)
    want: dict[str, dict[str, Record]] = {}
    live: dict[str, dict[str, Record]] = {}
    full: dict[int, Mapping[str, Mapping[str, Record]]] = {}
    for kind, keys in touched.items():
        drv = kinds.get(kind)
        if drv is None:
            continue
        mine = desired.get(kind, {})
        if isinstance(drv, KeyReader) and len(keys) <= TARGETED_VERIFY_SHARE * max(len(mine), 1):
            want[kind] = {k: mine[k] for k in keys if k in mine}
            live[kind] = dict(drv.read_keys(kind, keys))
        else:
            if id(drv) not in full:
                full[id(drv)] = drv.read()
            want[kind] = dict(mine)
            live[kind] = dict(full[id(drv)].get(kind, {}))
    return diff(want, live)


def load_config(config_dir: str | Path, *, follow_external_symlinks: bool = False) -> LoadedConfig:
    import importlib

    config = importlib.import_module("reconciler.config")  # the config layer, when first needed
    loaded: LoadedConfig = config.load_dir(Path(config_dir),
                                           follow_external_symlinks=follow_external_symlinks)
    return loaded


def _count(state: State) -> int:
    return sum(len(v) for v in state.values())


# --- the loop ----------------------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC: a reconcile allocates ~10^6 small acyclic objects, and
    generation scans over them cost more than the work itself (measured 2-4x)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# What an operator configured that nothing on the box carries out yet, by record kind.
_UNOWNED_MEANS = {
    "bgp-global": "the BGPConfig starts no BGP speaker",
    "bgp-peer": "BGPPeer resources open no session",
    "announce": "VIPs with bgp: true are not announced",
}


def _names(names: Sequence[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown} and {len(names) - most} more"


def capability_warnings(resources: Sequence[Resource], full: State, desired: State,
                        owner: Mapping[str, Driver]) -> tuple[str, ...]:
    """Warnings for configuration the box accepts but does not (fully) carry out.

    Three sources: record kinds no driver manages; records a driver applies only
    in part (a ``PartialSupport`` driver says what it leaves out); firewall drop
    rules that cut off every address (remote management too:
    ``fwclass.lockout_warnings``).  (Health probes are run by ``lbctl watch``.)
    Grouped by message, so 10,000 services
    give one line each, not 10,000.
    """
    out = [f"{len(recs)} {kind} record(s) not applied: no driver manages {kind!r} on this box"
           + (f" ({_UNOWNED_MEANS[kind]})" if kind in _UNOWNED_MEANS else "")
           for kind, recs in sorted(full.items()) if recs and kind not in owner]
    partial: dict[str, list[str]] = {}
    for kind, records in sorted(desired.items()):
        drv = owner.get(kind)
        if not isinstance(drv, PartialSupport):
            continue
        for key, record in sorted(records.items()):
            why = drv.unsupported(record)
            if why is not None:
                name = getattr(record, "name", None)
                partial.setdefault(why, []).append(f"{name} ({key})" if name else key)
    out += [f"{why}: {_names(keys)}" for why, keys in sorted(partial.items())]
    rules = [r for r in desired.get("firewall", {}).values() if isinstance(r, FirewallEntry)]
    out += fwclass.lockout_warnings(rules)
    out += fwclass.interface_warnings(rules, desired.get("attach", {}))
    return tuple(out)


def record_applied(store: AppliedStore, resources: Sequence[Resource], digest: str | None) -> tuple[str, ...]:
    """Record a verified configuration for ``lbctl export``; a warning (not a failure) if that fails."""
    try:
        store.record(resources, digest)
    except OSError as exc:
        return (f"the applied configuration could not be recorded in {store.path} ({exc.strerror or exc}); "
                "'lbctl export' falls back to the live state",)
    return ()


def reconcile(config_dir: str | Path | None, drivers: Sequence[Driver] | DriverSet, state_dir: str | Path, *,
              dry_run: bool, loaded: LoadedConfig | None = None, live: State | None = None,
              table_builder: TableBuilder | None = None, health: Health | None = None,
              applied_store: AppliedStore | None = None) -> ReconcileResult:
    """Make the box match the configuration (or, with ``dry_run``, only plan).

    ``drivers``: the box's ``DriverSet``, from which the drivers this
    configuration needs are selected (drivers it no longer needs are planned
    empty and, once that verified, taken away), or a fixed list of drivers.
    ``loaded``: an already loaded config (the daemon's cached load); when None,
    ``config_dir`` is loaded.  ``live``: live state the caller just read (skip
    the read); when None the drivers are read.  ``health``: endpoint health
    (``desired.compile_state``; None: the daemon's last record in the state dir,
    ``reconciler.probes.store``, so a plan shows only configuration changes).  Never raises for invalid
    configuration (``result.errors``) or a failed driver (``result.failure``);
    raises ``LbctlError`` for a broken state dir.  A verified apply is recorded
    in ``applied_store`` (default: the state dir's ``AppliedStore``) for ``lbctl export``.
    """
    driver_set = drivers if isinstance(drivers, DriverSet) else DriverSet.of(drivers)
    with gc_paused():
        return _reconcile(config_dir, driver_set, state_dir, dry_run=dry_run, loaded=loaded, live=live,
                          table_builder=table_builder, health=health, applied_store=applied_store)


def _reconcile(config_dir: str | Path | None, driver_set: DriverSet, state_dir: str | Path, *,
               dry_run: bool, loaded: LoadedConfig | None, live: State | None,
               table_builder: TableBuilder | None, health: Health | None,
               applied_store: AppliedStore | None) -> ReconcileResult:
    t0 = time.perf_counter()
    if loaded is None:
        if config_dir is None:
            raise ValueError("reconcile needs config_dir or loaded")
        loaded = load_config(config_dir)
    t_parse = time.perf_counter() - t0
    digest = getattr(loaded, "digest", None)
    if loaded.errors:
        return ReconcileResult(plan=Plan(), errors=tuple(loaded.errors), dry_run=dry_run,
                               timings=Timings(parse=t_parse), digest=digest)

    t1 = time.perf_counter()
    chosen = driver_set.select(loaded.resources)
    drivers = chosen.all
    owner = drivers_by_kind(chosen.active)
    leaving = drivers_by_kind(chosen.leaving)
    live_state = restrict(live, [*owner, *leaving]) if live is not None else read_live(drivers)
    store = AllocationStore(state_dir)
    previous = store.load()
    ipam = allocate(loaded.resources, previous, live_vip_hints(live_state))
    if ipam.errors:
        return ReconcileResult(plan=Plan(), errors=ipam.errors, dry_run=dry_run,
                               timings=Timings(parse=t_parse, plan=time.perf_counter() - t1), digest=digest,
                               live=live_state)
    sources = source_errors(loaded.resources, _box_addresses(loaded.resources, drivers))
    if sources:
        return ReconcileResult(plan=Plan(), errors=sources, dry_run=dry_run,
                               timings=Timings(parse=t_parse, plan=time.perf_counter() - t1), digest=digest,
                               live=live_state)
    recorded_down: tuple[str, ...] = ()
    if health is None:
        health = health_store.load_health(state_dir)
        recorded_down = tuple(sorted(f"{svc}/{addr}" for svc, addr in health))
    full = compile_state(loaded.resources, ipam.vips, table_builder=table_builder, health=health)
    # The kinds of a leaving driver are wanted empty: the plan deletes what it still holds.
    desired = restrict(full, owner) | {kind: {} for kind in leaving}
    warnings = capability_warnings(loaded.resources, full, desired, owner)
    if recorded_down:
        warnings += (f"{len(recorded_down)} endpoint(s) kept out of selection as the health probes of "
                     f"'lbctl watch' last found them down ({Path(state_dir) / health_store.FILE}; the daemon "
                     f"keeps it current, remove it to put them back without one): " + _names(recorded_down),)
    plan = diff(desired, live_state)
    t_plan = time.perf_counter() - t1
    base = ReconcileResult(plan=plan, dry_run=dry_run, digest=digest, warnings=warnings,
                           desired=desired, live=live_state, allocations=ipam.allocations,
                           timings=Timings(parse=t_parse, plan=t_plan))
    if dry_run:  # the notices of a dry run say what apply would do besides the plan (resize the maps)
        return replace(base, notices=driver_notices(drivers))

    if dict(ipam.allocations) != previous:
        store.save(ipam.allocations)  # before programming: a live VIP is always on record
    writes0 = total_writes(drivers)
    t2 = time.perf_counter()
    try:
        changes = apply_plan(plan, drivers) if plan else ()
    except ApplyError as exc:
        t_prog = time.perf_counter() - t2
        return replace(base, applied=exc.failure.applied, failure=exc.failure,
                       timings=Timings(t_parse, t_plan, t_prog), writes=total_writes(drivers) - writes0)
    t_prog = time.perf_counter() - t2
    t3 = time.perf_counter()
    # An empty plan was computed from a fresh read a moment ago: that is the verification;
    # after a plan made from a fresh read, what it changed is read back (a snapshot the
    # caller passed in, ``live``, is not fresh: then everything is).
    leftover = (verify(desired, drivers, plan if live is None else None) if plan or live is not None
                else plan)
    t_verify = time.perf_counter() - t3
    timings = Timings(t_parse, t_plan, t_prog, t_verify)
    if chosen.leaving and leftover.empty:
        try:
            driver_set.retire(chosen.leaving)
        except LbctlError as exc:
            failure = ApplyFailure(str(exc), changes, ())
            return replace(base, applied=changes, failure=failure, leftover=leftover, warnings=warnings,
                           timings=timings, writes=total_writes(drivers) - writes0)
    if leftover.empty:
        warnings += record_applied(applied_store or AppliedStore(state_dir), loaded.resources, digest)
    return replace(base, applied=changes, leftover=leftover, warnings=warnings, timings=timings,
                   writes=total_writes(drivers) - writes0, notices=driver_notices(drivers))


def _box_addresses(resources: Sequence[Resource], drivers: Iterable[Driver]) -> frozenset[str] | None:
    """The box's addresses when a fullnat source needs checking and a driver knows them."""
    if not any(getattr(r.spec, "source_address", None) for r in resources):
        return None
    return next((d.box_addresses() for d in drivers if isinstance(d, BoxAddresses)), None)


def driver_notices(drivers: Iterable[Driver]) -> tuple[str, ...]:
    """The drivers' notices (``driver.Notices``), each handed out once."""
    return tuple(n for d in drivers if isinstance(d, Notices) for n in d.notices())


def summary(result: ReconcileResult) -> dict[str, Any]:
    """A JSON-friendly summary of a reconcile (CLI ``-o json``, daemon status)."""
    return {
        "ok": result.ok,
        "dry_run": result.dry_run,
        "digest": result.digest,
        "errors": [e.to_json() for e in result.errors],
        "warnings": list(result.warnings),
        "notices": list(result.notices),
        "plan": result.plan.to_dict(),
        "applied": len(result.applied),
        "failure": None if result.failure is None else {
            "message": result.failure.message,
            "applied": [f"{c.symbol} {c.kind} {c.key}" for c in result.failure.applied],
            "not_applied": [f"{c.symbol} {c.kind} {c.key}" for c in result.failure.not_applied],
        },
        "verified": result.verified,
        "leftover": None if result.leftover is None else result.leftover.to_dict(),
        "writes": result.writes,
        "records": {"desired": _count(result.desired), "live": _count(result.live)},
        "timings": result.timings.as_dict(),
    }
