"""The real ``Engine`` behind ``lbctl watch``: config loader + reconcile layer + drivers.

Why this exists: the daemon (``reconciler.watch``) decides *when* to act; this
module is the one place that knows *how*: load the directory through the config
layer's per-file cache, reconcile through ``reconciler.apply.reconcile`` (the
same loop ``lbctl apply`` runs) under the state-dir writer lock, and take the
incremental path (``reconciler.incremental``) for deliveries that only touch
Services.  Every verified reconcile, full or incremental, is recorded for
``lbctl export`` (``reconciler.applied``).  After every verified full reconcile
the incremental index is rebuilt from what was verified; after any failure it is
dropped, so the next delivery goes through a full reconcile that plans from live
state.  It is dropped too when a driver finds that the objects it holds are no
longer the live ones (``Revalidate``: the pins were replaced by another process),
since then the live state may differ anywhere, not just in the keys a delivery
touches.

Health probes (``start_probes``): after every verified reconcile the probe runner
(``reconciler.probes.runner``) is told which endpoints to probe; a transition it
reports wakes the daemon, which calls ``apply_health``: the new health is recorded
in the state dir (``reconciler.probes.store``, read by ``lbctl plan``/``apply``) and
the Services concerned are recompiled and applied through the incremental index
(``Index.plan_health``: the same minimal writes and slot swap as an endpoint edit),
or by a full reconcile when there is no index.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from reconciler.applied import AppliedStore
from reconciler.apply import ApplyError, apply_plan, drivers_by_kind, reconcile, record_applied
from reconciler.config import LoadResult, ParseCache, load_dir
from reconciler.desired import Health
from reconciler.driver import ConnCountSync, Driver, DriverSet, KeyReader, NextHopCache, Revalidate
from reconciler.errors import LbctlError
from reconciler.idle import IdleExpiry, IdleSweeper, SweepTotals
from reconciler.incremental import OWNED_KINDS, Index, Keys, ReadKeys
from reconciler.lock import StateLock
from reconciler.plan import Change
from reconciler.probes import store as health_store
from reconciler.probes.health import HealthTracker, Transition
from reconciler.probes.runner import ProbeRunner
from reconciler.probes.targets import HealthKey, ProbeTarget, probe_targets
from reconciler.records import EndpointSet, Record, ServiceEntry, ServiceKey
from reconciler.telemetry import EndpointHealth, LatencyHistogram
from reconciler.watch import Delivery, Outcome

Namespace = Callable[[], AbstractContextManager[None]]


class Runner(Protocol):
    """What the engine needs of the probe runner (``ProbeRunner``; tests use a stand-in)."""

    def start(self) -> None: ...

    def configure(self, targets: Mapping[HealthKey, ProbeTarget]) -> None: ...

    def stop(self) -> None: ...


RunnerFactory = Callable[[HealthTracker, Callable[[Transition], None], Namespace | None], Runner]


def _describe(changes: Sequence[Change]) -> tuple[str, ...]:
    return tuple(f"{c.symbol} {c.kind} {c.key}" for c in changes)


def _kinds(changes: Sequence[Change]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in changes:
        out[c.kind] = out.get(c.kind, 0) + 1
    return out


def _counts(changes: Sequence[Change]) -> tuple[int, int, int]:
    created = sum(1 for c in changes if c.action == "create")
    deleted = sum(1 for c in changes if c.action == "delete")
    return created, len(changes) - created - deleted, deleted


class ReconcileEngine:
    """Loads ``directory`` and reconciles it onto the box's drivers.

    ``drivers``: the box's ``DriverSet`` (each full reconcile selects the drivers
    the configuration needs from it), or a fixed list of drivers.
    """

    def __init__(self, directory: str | Path, state_dir: str | Path, drivers: DriverSet | Sequence[Driver], *,
                 lock_timeout: float | None = None, incremental: bool = True,
                 follow_external_symlinks: bool = False, probe_namespace: Namespace | None = None) -> None:
        """``probe_namespace``: enters the box's network namespace on the calling thread, for
        the probe thread (``drivers.netns.in_netns`` bound to ``--netns``; None: stay)."""
        self.directory = Path(directory)
        self.follow_external_symlinks = follow_external_symlinks
        self.state_dir = Path(state_dir)
        self.drivers = drivers if isinstance(drivers, DriverSet) else DriverSet.of(drivers)
        self.lock = StateLock(self.state_dir, timeout=lock_timeout, purpose="lbctl watch")
        self.incremental = incremental
        self.cache = ParseCache()
        self.applied = AppliedStore(self.state_dir)  # kept: it re-serializes only changed resources
        self.index: Index | None = None
        self._last_desired: Mapping[str, Mapping[str, Record]] = {}  # of the last full reconcile
        self.records: dict[str, int] = {}
        # Endpoint health, an input of every compile (the probes' verdicts; missing: healthy).
        self.health: Health = {}
        self.tracker: HealthTracker | None = None
        self._runner: Runner | None = None
        self._pending: list[Transition] = []
        self._health_dirty = False
        self._pending_lock = threading.Lock()
        self._wake: Callable[[], None] = lambda: None
        self._verified: LoadResult | None = None  # the configuration last verified
        self.probe_namespace = probe_namespace
        self.sweeper = IdleSweeper()
        self.runner_factory: RunnerFactory = (
            lambda tracker, report, namespace: ProbeRunner(tracker, report, namespace=namespace))
        # Loads are numbered; the index reflects load ``_index_load``.  A load's
        # ``parsed`` lists files re-read since the *previous load*, so it tells what
        # changed since the index only when that previous load is the one the index
        # reflects (not after a rejected or skipped delivery, or a resync that fell
        # back to the last good config).
        self._loads = 0
        self._index_load: int | None = None

    # --- Engine protocol ---

    def load(self, *, full: bool) -> Delivery:
        if full:
            # A full reload re-reads and hashes every file; only changed bytes are parsed again.
            self.cache.distrust_metadata()
        t0 = time.perf_counter()
        loaded = load_dir(self.directory, cache=self.cache,
                          follow_external_symlinks=self.follow_external_symlinks)
        took = time.perf_counter() - t0
        self._loads += 1
        return Delivery(digest=loaded.digest, errors=tuple(str(e) for e in loaded.errors),
                        resources=len(loaded.resources), files_parsed=len(loaded.parsed),
                        payload=(loaded, took, self._loads))

    def reconcile(self, delivery: Delivery, *, full: bool) -> Outcome:
        loaded, load_time, seq = delivery.payload
        assert isinstance(loaded, LoadResult)
        try:
            with self.lock:
                if self._revalidate(self.drivers.active):
                    self.index = None  # the live objects were replaced: plan everything from them
                if (not full and self.incremental and self.index is not None
                        and self.drivers.current_for(loaded.resources)):
                    # A delivery that changes which drivers the box needs is never incremental.
                    outcome = self._incremental(loaded, self.drivers.active, load_time,
                                                consecutive=self._index_load == seq - 1)
                    if outcome is not None:
                        if outcome.verified:
                            self._index_load = seq
                        return outcome
                outcome = self._full(loaded, load_time)
                if outcome.verified:
                    self._index_load = seq
                return outcome
        except LbctlError as exc:
            self.index = None
            return Outcome(verified=False, error=str(exc))

    def sources(self) -> Iterable[object]:
        """What ``/metrics`` reads: the box's active drivers (the bpf driver is the
        ``telemetry.DatapathSource`` and ``FirewallSource``, the BGP driver the ``BgpSource``)
        and this engine, the ``HealthSource`` of the probes."""
        return [*self.drivers.active, self]

    def sweep_idle(self) -> SweepTotals:
        """``watch.Sweeping``: end the idle flows of the active drivers that can (the bpf driver's
        conntrack), resetting established TCP ones (``idle.IdleSweeper``).  No writer lock: it
        changes no configuration, only flows, as the datapath itself does."""
        done = SweepTotals()
        for driver in self.drivers.active:
            if isinstance(driver, IdleExpiry):
                done.add(self.sweeper.sweep(driver))
        return done

    def nexthops_changed(self) -> int:
        """``watch.Routing``: routes or neighbours of the box changed; every active driver that
        caches next hops forgets them (the bpf driver bumps ``lb_nh_gen``).  How many did."""
        n = 0
        for driver in self.drivers.active:
            if isinstance(driver, NextHopCache):
                driver.bump_nexthop_generation()
                n += 1
        return n

    def health_stats(self) -> list[EndpointHealth]:
        """``telemetry.HealthSource``: every probed endpoint, once per service key of its Service
        (the keys applied last), labelled as the datapath counts it (address, port packets go to)."""
        if self.tracker is None:
            return []
        desired = self.index.desired if self.index is not None else self._last_desired
        keys: dict[str, list[ServiceKey]] = {}
        for rec in desired.get("service", {}).values():
            if isinstance(rec, ServiceEntry):
                keys.setdefault(rec.name, []).append(rec.key)
        eps = desired.get("endpoints", {})
        latencies = self.tracker.latencies()
        out = []
        for st in self.tracker.status():
            service, address = str(st["service"]), str(st["address"])
            buckets, n, total = latencies.get((service, address), ((), 0, 0.0))
            hist = LatencyHistogram(buckets, n, total) if buckets else None
            host = f"[{address}]" if ":" in address else address
            for key in sorted(keys.get(service, ())):
                eset = eps.get(str(key))
                ports = [b.port or key.port for b in (eset.backends if isinstance(eset, EndpointSet) else ())
                         if b.address == address] or [key.port]
                out += [EndpointHealth(key, f"{host}:{port}", st["health"] == "up", str(st["probe"]), hist)
                        for port in ports]
        return out

    # --- health probes (``watch.Probing``) ---

    def start_probes(self, wake: Callable[[], None]) -> None:
        """Start the probe runner; ``wake`` is called (on the runner's thread) when health changed.
        Endpoints recorded down in the state dir start down."""
        self._wake = wake
        down = health_store.load_down(self.state_dir)
        self.tracker = HealthTracker(down)
        self.health = {key: False for key in down}
        self._runner = self.runner_factory(self.tracker, self._on_transition, self.probe_namespace)
        self._runner.start()

    def stop_probes(self) -> None:
        if self._runner is not None:
            self._runner.stop()
            self._runner = None

    def endpoint_health(self) -> list[dict[str, Any]]:
        """One plain dict per probed endpoint (``HealthTracker.status``); empty without probes."""
        return self.tracker.status() if self.tracker is not None else []

    def health_due(self) -> bool:
        with self._pending_lock:
            return bool(self._pending) or self._health_dirty

    def _on_transition(self, change: Transition) -> None:
        with self._pending_lock:
            self._pending.append(change)
        self._wake()

    def _configure_probes(self, loaded: LoadResult) -> None:
        self._verified = loaded
        if self._runner is None or self.tracker is None:
            return
        self._runner.configure(probe_targets(loaded.resources))
        if self.tracker.health() != dict(self.health):  # endpoints no longer probed are healthy
            with self._pending_lock:
                self._health_dirty = True
            self._wake()

    def apply_health(self) -> tuple[tuple[Transition, ...], Outcome | None]:
        """Apply the probes' verdicts: the transitions since the last call, and the reconcile
        they caused (None: nothing to change, e.g. no configuration verified yet)."""
        with self._pending_lock:
            changes = tuple(self._pending)
            self._pending.clear()
            self._health_dirty = False
        if self.tracker is None:
            return changes, None
        new = self.tracker.health()
        old = dict(self.health)
        if new == old:
            return changes, None
        names = {key[0] for key in set(new) ^ set(old)}
        self.health = new
        try:
            health_store.save(self.state_dir, new)
        except OSError:
            pass  # a convenience for plan/apply; the datapath below is what matters
        loaded = self._verified
        if loaded is None:
            return changes, None  # the first reconcile compiles with it
        t0 = time.perf_counter()
        try:
            with self.lock:
                if self._revalidate(self.drivers.active):
                    self.index = None
                if self.incremental and self.index is not None:
                    outcome = self._incremental(loaded, self.drivers.active, 0.0, consecutive=True,
                                                health_of=names)
                    if outcome is not None:
                        return changes, outcome
                return changes, self._full(loaded, time.perf_counter() - t0)
        except LbctlError as exc:
            self.index = None
            return changes, Outcome(verified=False, error=str(exc))

    # --- internals ---

    @staticmethod
    def _revalidate(drivers: Sequence[Driver]) -> bool:
        """True when a driver had to drop handles to objects that are no longer the live ones."""
        dropped = False
        for driver in drivers:
            if isinstance(driver, Revalidate) and driver.revalidate():
                dropped = True
        return dropped

    def _read_keys(self, drivers: Sequence[Driver]) -> ReadKeys | None:
        """Live records of just some keys, if every driver concerned can read by key."""
        owner = drivers_by_kind(drivers)
        readers: dict[str, KeyReader] = {}
        for kind in OWNED_KINDS:
            drv = owner.get(kind)
            if drv is None:
                continue
            if not isinstance(drv, KeyReader):
                return None
            readers[kind] = drv

        if not readers:
            return None

        def read(touched: Keys) -> Mapping[str, Mapping[str, Record]]:
            out: dict[str, Mapping[str, Record]] = {}
            for kind, keys in touched.items():
                reader = readers.get(kind)
                if reader is not None and keys:
                    out[kind] = reader.read_keys(kind, keys)
            return out

        return read

    def _incremental(self, loaded: LoadResult, drivers: Sequence[Driver], load_time: float, *,
                     consecutive: bool, health_of: set[str] | None = None) -> Outcome | None:
        """``consecutive``: ``loaded`` directly follows the load the index reflects, so only its
        re-parsed files need comparing; otherwise every resource is compared.  ``health_of``:
        recompile just these Services with ``self.health`` (a health transition)."""
        assert self.index is not None
        t0 = time.perf_counter()
        read_keys = self._read_keys(drivers)
        if health_of is not None:
            partial = self.index.plan_health(health_of, self.health, read_keys)
        elif consecutive:
            partial = self.index.plan(loaded.resources, read_keys, files=loaded.files, parsed=loaded.parsed)
        else:
            partial = self.index.plan(loaded.resources, read_keys)
        if partial is None:
            return None
        t1 = time.perf_counter()
        try:
            applied = apply_plan(partial.plan, drivers) if partial.plan else ()
        except ApplyError as exc:
            self.index = None
            return Outcome(verified=False, mode="incremental", error=str(exc),
                           timings={"load": load_time, "plan": t1 - t0, "program": time.perf_counter() - t1})
        t2 = time.perf_counter()
        leftover = self.index.verify(partial, read_keys)
        t3 = time.perf_counter()
        timings = {"load": load_time, "plan": t1 - t0, "program": t2 - t1, "verify": t3 - t2}
        created, updated, deleted = _counts(applied)
        if not leftover.empty:
            self.index = None
            return Outcome(verified=False, mode="incremental", created=created, updated=updated,
                           deleted=deleted, error=f"verification left {len(leftover)} change(s): "
                                 + "; ".join(_describe(leftover.changes)[:5]),
                           timings=timings, fixed=_describe(applied))
        self.index.commit(partial)
        self._configure_probes(loaded)
        warnings = record_applied(self.applied, loaded.resources, loaded.digest)
        for kind in OWNED_KINDS:
            if kind in self.records:
                self.records[kind] = len(self.index.desired[kind])
        return Outcome(verified=True, mode="incremental", created=created, updated=updated, deleted=deleted,
                       records=dict(self.records), timings=timings, fixed=_describe(applied),
                       warnings=warnings or None,  # None: the last full reconcile's warnings stand
                       kinds=_kinds(applied))

    def _full(self, loaded: LoadResult, load_time: float) -> Outcome:
        result = reconcile(None, self.drivers, self.state_dir, dry_run=False, loaded=loaded,
                           health=self.health, applied_store=self.applied)
        drivers = self.drivers.active
        t = result.timings
        timings = {"load": load_time, "plan": t.plan, "program": t.program, "verify": t.verify}
        created, updated, deleted = _counts(result.applied)
        records = {kind: len(recs) for kind, recs in result.desired.items()}
        if result.errors:  # IPAM (pool exhausted): a configuration error found late
            self.index = None
            return Outcome(verified=False, error="; ".join(str(e) for e in result.errors), timings=timings,
                           invalid=tuple(str(e) for e in result.errors))
        if result.failure is not None:
            self.index = None
            return Outcome(verified=False, created=created, updated=updated, deleted=deleted, records=records,
                           error=f"{result.failure.message} ({len(result.failure.applied)} applied, "
                                 f"{len(result.failure.not_applied)} not)",
                           timings=timings, fixed=_describe(result.applied), notices=result.notices)
        if not result.verified:
            self.index = None
            left = result.leftover.changes if result.leftover is not None else ()
            return Outcome(verified=False, created=created, updated=updated, deleted=deleted, records=records,
                           error=f"verification left {len(left)} change(s): "
                                 + "; ".join(_describe(left)[:5]),
                           timings=timings, fixed=_describe(result.applied), notices=result.notices)
        self.records = records
        self._configure_probes(loaded)
        if any(isinstance(r, ServiceEntry) and r.selection == "lc"
               for r in result.desired.get("service", {}).values()):
            # Flows that age out or are evicted never say goodbye: recount open
            # connections from conntrack at every full reconcile (resync).
            for driver in drivers:
                if isinstance(driver, ConnCountSync):
                    driver.sync_conn_counts()
        owned = frozenset(drivers_by_kind(drivers))
        vips = {name: alloc.vip for name, alloc in result.allocations.items()}
        self.index = (Index(loaded.resources, result.desired, vips, owned, self.health)
                      if self.incremental else None)
        self._last_desired = result.desired
        return Outcome(verified=True, created=created, updated=updated, deleted=deleted, records=records,
                       timings=timings, fixed=_describe(result.applied), notices=result.notices,
                       warnings=result.warnings, kinds=_kinds(result.applied))

