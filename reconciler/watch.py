"""``lbctl watch``: the daemon that keeps the box converged to the directory.

Why this exists: a GitOps delivery (git-sync, a ConfigMap, a hand edit) must turn
into a correct, minimal, verified change without anyone running ``lbctl apply``,
and a bad delivery must never hurt traffic.  The daemon is level-based: every
trigger re-runs the whole loop (load, compare content, reconcile) rather than
interpreting file events.

Triggers and what they do:

* a file event, debounced (``--debounce``, 200 ms): load (per-file cache, so
  only changed files are re-parsed); an invalid delivery is rejected as a whole
  and the live state is left alone; an unchanged content digest does nothing;
  otherwise reconcile (the engine may take its incremental path);
* the resync timer (``--resync``, 30 s), start-up and SIGHUP: a full reload and
  a full reconcile against freshly read live state.  Whatever a resync of an
  unchanged, already-applied configuration changes is drift, and is counted.
  If the directory is invalid at that moment, the last good configuration is
  reconciled instead, so drift is still repaired;
* a health transition (an engine that is ``Probing``: ``lbctl watch`` runs health
  probes): the engine applies the new endpoint health at once; one log line per
  transition (``endpoint-down``/``endpoint-up``), and ``/status`` lists every probed
  endpoint (``endpoints``);
* SIGTERM/SIGINT: stop.  Nothing is torn down: the datapath is pinned and keeps
  forwarding (``lbctl down`` is the only thing that removes it).

Under systemd (``Type=notify``, ``reconciler.sdnotify``) the daemon sends
``READY=1`` once its first reconcile has verified, a ``STATUS=`` line naming the
applied revision whenever that changes or a delivery is rejected or a reconcile
fails, and ``STOPPING=1`` when it stops.

The daemon reaches the rest of lbctl only through the small ``Engine`` seam
below, so its logic is unit-tested with in-memory fakes; ``reconciler.engine``
binds it to the real config loader, reconcile layer and drivers.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Literal, Protocol, runtime_checkable

from reconciler.idle import SweepTotals
from reconciler.logs import EventLog
from reconciler.metrics import Exporter
from reconciler.revision import git_commit
from reconciler.sdnotify import Notifier
from reconciler.status import Address, Endpoints, StatusServer

DEFAULT_DEBOUNCE = 0.2
DEFAULT_RESYNC = 30.0
DEFAULT_SWEEP = 5.0  # idle-flow sweep interval (--sweep): a flow is reset at most this long after its timeout
Trigger = Literal["startup", "delivery", "sighup", "resync"]


# --- the seam to the rest of lbctl -------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    """The configuration directory as loaded once.

    ``payload`` is opaque to the daemon (the engine's loaded config); ``errors``
    are formatted ``file:line:col: Kind/name: spec.path: message (hint)``.
    """

    digest: str
    errors: tuple[str, ...] = ()
    resources: int = 0
    files_parsed: int = 0  # files actually re-read (not served from the cache)
    payload: Any = None

    @property
    def valid(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class Outcome:
    """What one reconcile did."""

    verified: bool
    mode: Literal["full", "incremental"] = "full"
    created: int = 0
    updated: int = 0
    deleted: int = 0
    records: Mapping[str, int] = field(default_factory=dict)  # desired record counts per kind
    error: str | None = None
    timings: Mapping[str, float] = field(default_factory=dict)  # phase -> seconds
    fixed: tuple[str, ...] = ()  # "~ endpoints tcp/198.51.100.1:80", what the apply changed
    kinds: Mapping[str, int] = field(default_factory=dict)  # changes applied per record kind
    warnings: tuple[str, ...] | None = None  # configured but not carried out; None: not re-evaluated
    notices: tuple[str, ...] = ()  # what a driver did on its own (a datapath layout migration)
    # Configuration errors only reconciling could find (a pool exhausted): the delivery is
    # invalid after all, and nothing was touched.
    invalid: tuple[str, ...] = ()

    @property
    def changes(self) -> int:
        return self.created + self.updated + self.deleted


class Engine(Protocol):
    """What the daemon needs from config loading and reconciling."""

    def load(self, *, full: bool) -> Delivery:
        """Load the directory; ``full`` re-reads and hashes every file instead of trusting stat data."""
        ...

    def reconcile(self, delivery: Delivery, *, full: bool) -> Outcome:
        """Make the box match ``delivery``; ``full`` re-reads all live state.

        Never raises for an operator-fixable failure: returns ``verified=False``
        with ``error`` set.
        """
        ...

    def sources(self) -> Iterable[object]:
        """What ``/metrics`` asks at a scrape: objects implementing ``telemetry``'s source
        protocols (the box's drivers; the probe engine once it exists)."""
        ...


@runtime_checkable
class Probing(Protocol):
    """An engine that runs endpoint health probes (``reconciler.watch_engine``)."""

    def start_probes(self, wake: Callable[[], None]) -> None:
        """Start probing; ``wake`` is called from another thread when health changed."""
        ...

    def stop_probes(self) -> None:
        ...

    def health_due(self) -> bool:
        """Transitions wait to be applied."""
        ...

    def apply_health(self) -> tuple[tuple[Any, ...], Outcome | None]:
        """Apply the pending health: (the transitions, each with ``key``, ``healthy``, ``reason``,
        ``failures``; the reconcile they caused or None)."""
        ...

    def endpoint_health(self) -> list[dict[str, Any]]:
        """Every probed endpoint as plain data (health, last result, last failure, latency)."""
        ...


@runtime_checkable
class Sweeping(Protocol):
    """An engine that ends idle flows and resets established TCP ones (``reconciler.watch_engine``)."""

    def sweep_idle(self) -> SweepTotals:
        """One sweep over the datapath's conntrack; what it did."""
        ...


@runtime_checkable
class Routing(Protocol):
    """An engine whose datapath caches next hops (``reconciler.watch_engine``)."""

    def nexthops_changed(self) -> int:
        """Routes or neighbours changed: forget the cached next hops; how many drivers did."""
        ...


# The longest the loop sleeps without looking at the flags the signal handlers set.  The
# handlers cannot wake it: they may run while the main thread holds any lock (the log's, the
# wake event's), so they only assign flags; and the kernel may give the signal to another
# thread, whose wait it does not interrupt.
SIGNAL_POLL = 0.2


# --- debounce ------------------------------------------------------------------------------------

class Debouncer:
    """Trailing-edge debounce with a cap, on an injected clock.

    Fires ``delay`` after the last poke of a burst, but never later than
    ``max_delay`` after its first poke, so a directory written to without pause
    is still picked up.
    """

    def __init__(self, delay: float, max_delay: float | None = None) -> None:
        self.delay = delay
        self.max_delay = max_delay if max_delay is not None else max(1.0, 10 * delay)
        self._first: float | None = None
        self._last: float | None = None
        self._lock = threading.Lock()

    def poke(self, now: float) -> None:
        with self._lock:
            if self._first is None:
                self._first = now
            self._last = now

    def deadline(self) -> float | None:
        with self._lock:
            if self._first is None or self._last is None:
                return None
            return min(self._last + self.delay, self._first + self.max_delay)

    def take(self, now: float) -> bool:
        """True (and reset) when the burst is due at ``now``."""
        with self._lock:
            if self._first is None or self._last is None:
                return False
            if now < min(self._last + self.delay, self._first + self.max_delay):
                return False
            self._first = self._last = None
            return True


# --- status ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LastReconcile:
    time: float
    trigger: str
    mode: str
    result: str  # ok | failed
    duration: float
    created: int
    updated: int
    deleted: int
    error: str | None


@dataclass(frozen=True)
class Snapshot:
    """The daemon's state as /status shows it; replaced whole, never mutated."""

    directory: str
    started: float
    ready: bool = False
    config_valid: bool | None = None
    digest: str | None = None  # applied config
    revision: str | None = None  # Git commit of the applied config, when in a checkout
    last_reconcile: LastReconcile | None = None
    last_error: tuple[str, ...] = ()
    last_error_time: float | None = None
    rejected_digest: str | None = None
    resources: int = 0
    records: Mapping[str, int] = field(default_factory=dict)
    drift_repairs: int = 0
    drift_repairs_by_kind: Mapping[str, int] = field(default_factory=dict)
    reconciles: int = 0
    rejected: int = 0  # invalid deliveries seen (each rejected whole)
    warnings: tuple[str, ...] = ()  # what the applied config asks for that the box does not carry out

    def to_json(self) -> dict[str, Any]:
        last = self.last_reconcile
        return {
            "format_version": 1,
            "directory": self.directory,
            "pid": os.getpid(),
            "started": _iso(self.started),
            "ready": self.ready,
            "config_valid": self.config_valid,
            "revision": ({"type": "git", "value": self.revision} if self.revision
                         else {"type": "digest", "value": self.digest} if self.digest else None),
            "digest": self.digest,
            "last_reconcile": None if last is None else {
                "time": _iso(last.time), "trigger": last.trigger, "type": last.mode, "result": last.result,
                "duration_ms": round(last.duration * 1000, 3),
                "changes": {"create": last.created, "update": last.updated, "delete": last.deleted},
                "error": last.error,
            },
            "last_error": None if not self.last_error else {
                "time": _iso(self.last_error_time or 0.0), "errors": list(self.last_error),
                "rejected_digest": self.rejected_digest,
            },
            "counts": {"resources": self.resources, "records": dict(sorted(self.records.items()))},
            "drift_repairs": self.drift_repairs,
            "drift_repairs_by_kind": dict(sorted(self.drift_repairs_by_kind.items())),
            "reconciles": self.reconciles,
            "invalid_deliveries": self.rejected,
            "warnings": list(self.warnings),
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --- the daemon ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    directory: str
    debounce: float = DEFAULT_DEBOUNCE
    resync: float = DEFAULT_RESYNC
    listen: Address | None = None  # None: no status server (unit tests)
    probes: bool = False  # run the engine's health probes (when it is ``Probing``)
    sweep: float = DEFAULT_SWEEP  # end idle flows this often (when the engine is ``Sweeping``); 0: never


Clock = Callable[[], float]


class Daemon:
    """The watch loop.  ``run()`` blocks until ``stop()`` or SIGTERM/SIGINT."""

    def __init__(self, options: Options, engine: Engine, log: EventLog,
                 watcher_factory: Callable[[str, Callable[[str], None]], Any] | None = None,
                 clock: Clock = time.monotonic, notifier: Notifier | None = None,
                 route_events_factory: Callable[[Callable[[], None]], Any] | None = None) -> None:
        """``route_events_factory(on_change)``: a started/stopped listener that calls
        ``on_change`` (on its own thread) when the box's routes or neighbours changed
        (``drivers.route_events.RouteEvents``); the loop then tells a ``Routing`` engine."""
        self.options = options
        self.engine = engine
        self.log = log
        self.clock = clock
        self.notifier = notifier if notifier is not None else Notifier(
            on_error=lambda error: log.warning("notify-failed", error=error))
        self._notified: str | None = None  # the last STATUS= sent
        self._ready_sent = False  # READY=1 goes with the first STATUS= after a verified reconcile
        self.exporter = Exporter(self._sources, self._source_failed)
        self.metrics = self.exporter.daemon
        self.debouncer = Debouncer(options.debounce)
        self._wake = threading.Event()
        self._stop = False
        self._stop_signal: str | None = None  # set by the SIGTERM/SIGINT handler, logged by run()
        self._hup = False
        self._health = False  # the engine's probes saw a transition
        self._routes = False  # the box's routes or neighbours changed
        self._route_events_factory = route_events_factory
        self._route_events: Any = None
        self._lock = threading.Lock()
        self._snapshot = Snapshot(directory=options.directory, started=time.time())
        self._applied: Delivery | None = None  # last good configuration that verified
        self._last_good: Delivery | None = None  # last valid configuration (maybe not verified yet)
        self._next_resync = 0.0
        self._next_sweep = 0.0
        self._watcher_factory = watcher_factory
        self._watcher: Any = None
        self.server: StatusServer | None = None
        self.fired_at: float | None = None  # when the last debounce fired (clock), for benches

    # -- what other threads call --

    def notify(self, path: str = "") -> None:
        """A file event (watchdog thread): start or extend the debounce window."""
        self.debouncer.poke(self.clock())
        self._wake.set()

    def hangup(self) -> None:
        self._hup = True
        self._wake.set()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def routes_changed(self) -> None:
        """The route listener's thread saw a route or neighbour change: tell the engine at once."""
        self._routes = True
        self._wake.set()

    def health_changed(self) -> None:
        """The probe thread saw a transition: apply it at once."""
        self._health = True
        self._wake.set()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def ready(self) -> bool:
        return self.snapshot().ready

    def status_json(self) -> dict[str, Any]:
        doc = self.snapshot().to_json()
        if self._watcher is not None:
            doc["watches"] = sorted(t.path for t in self._watcher.targets())
        doc["options"] = {"debounce_s": self.options.debounce, "resync_s": self.options.resync,
                          "sweep_s": self.options.sweep,
                          "listen": str(self.options.listen) if self.options.listen else None}
        if self._probing() is not None:
            doc["endpoints"] = self.engine.endpoint_health()  # type: ignore[attr-defined]
        return doc

    def _probing(self) -> Probing | None:
        engine = self.engine
        return engine if self.options.probes and isinstance(engine, Probing) else None

    def _sources(self) -> Iterable[object]:
        return self.engine.sources()

    def _source_failed(self, what: str, exc: Exception) -> None:
        self.log.warning("metrics-source-failed", source=what, error=f"{type(exc).__name__}: {exc}")

    def render_metrics(self) -> bytes:
        return self.exporter.render()

    def metrics_parts(self) -> list[bytes]:
        return self.exporter.render_parts()

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._snapshot = replace(self._snapshot, **changes)

    # -- life cycle --

    def install_signals(self) -> None:
        """SIGHUP: re-read now.  SIGTERM/SIGINT: stop, leaving the datapath running.

        The handlers only set flags.  Python runs a handler in the main thread
        between two bytecodes, where that thread may hold any lock: the event
        log's (a handler that logged deadlocked the daemon when SIGTERM came
        while it was writing a log line, and it never exited) or the wake
        event's.  The loop waits in slices of ``SIGNAL_POLL`` seconds, so it
        sees the flags promptly without being woken, and logs the signal itself.
        """
        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._hup = True

        def on_term(signum: int, frame: FrameType | None) -> None:
            self._stop_signal = signal.Signals(signum).name
            self._stop = True

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)

    def start_services(self) -> None:
        """Start the status server and the directory watcher (before the first reconcile)."""
        if self.options.listen is not None:
            self.server = StatusServer(self.options.listen, Endpoints(
                ready=self.ready, status=self.status_json, metrics=self.metrics_parts))
            self.server.start()
            self.log.info("listening", address=str(self.server.address),
                          endpoints="/healthz /readyz /status /metrics")
            if not ipaddress.ip_address(self.options.listen.host).is_loopback:
                self.log.warning("listening-off-loopback", address=str(self.server.address),
                                 detail="/status and /metrics have no TLS or authentication here; "
                                        "put a reverse proxy in front (docs/metrics.md)")
        probing = self._probing()
        if probing is not None:
            probing.start_probes(self.health_changed)
        if self._route_events_factory is not None and isinstance(self.engine, Routing):
            self._route_events = self._route_events_factory(self.routes_changed)
            self._route_events.start()
        if self._watcher_factory is not None:
            self._watcher = self._watcher_factory(self.options.directory, self.notify)
            self._watcher.start()
            self.log.info("watching", directory=self.options.directory,
                          targets=",".join(sorted(t.path for t in self._watcher.targets())))

    def shutdown(self) -> None:
        if self._route_events is not None:
            self._route_events.stop()
            self._route_events = None
        probing = self._probing()
        if probing is not None:
            probing.stop_probes()
        if self._watcher is not None:
            self._watcher.stop()
        if self.server is not None:
            self.server.stop()

    def run(self) -> None:
        self.start_services()
        try:
            self.log.info("start", directory=self.options.directory, debounce_s=self.options.debounce,
                          resync_s=self.options.resync)
            self.cycle("startup")
            self.loop()
        finally:
            if self._stop_signal is not None:
                self.log.info("signal", signal=self._stop_signal, action="stop; datapath keeps running")
            self.shutdown()
            self.notifier.stopping("stopping; the datapath keeps forwarding (lbctl down removes it)")
            self.log.info("stopped", datapath="left running (lbctl down removes it)")

    def loop(self) -> None:
        while not self._stop:
            now = self.clock()
            deadlines = [self._next_resync]
            if self._sweeping() is not None:
                deadlines.append(self._next_sweep)
            due = self.debouncer.deadline()
            if due is not None:
                deadlines.append(due)
            timeout = min(max(0.0, min(deadlines) - now), SIGNAL_POLL)
            if timeout > 0 and not self._hup:
                self._wake.wait(timeout)
            self._wake.clear()
            self.step()

    def step(self) -> None:
        """Act on whatever is due now (one pass of the loop; unit tests call it directly)."""
        if self._stop:
            return
        if self._hup:
            self._hup = False
            self.debouncer.take(float("inf"))  # the full reload covers pending events
            self.log.info("sighup", action="full reload")
            self.cycle("sighup")
            return
        if self._routes:
            self._routes = False
            self.routes_cycle()
        if self._health:
            self._health = False
            self.health_cycle()
        now = self.clock()
        if self.debouncer.take(now):
            self.fired_at = now
            if self._watcher is not None and self._watcher.rearm():
                self.log.info("rewatch", targets=",".join(sorted(t.path for t in self._watcher.targets())))
            self.cycle("delivery")
        if self.clock() >= self._next_resync:
            self.cycle("resync")
        if self._sweeping() is not None and self.clock() >= self._next_sweep:
            self.sweep_cycle()

    def _sweeping(self) -> Sweeping | None:
        if self.options.sweep <= 0 or not isinstance(self.engine, Sweeping):
            return None
        return self.engine

    # -- the work --

    def routes_cycle(self) -> None:
        """Routes or neighbours changed: established flows look their next hop up again."""
        if not isinstance(self.engine, Routing):
            return
        try:
            n = self.engine.nexthops_changed()
        except Exception as exc:  # noqa: BLE001 - keep running; the cache's age bound still holds
            self.log.warning("nexthop-bump-failed", error=str(exc) or type(exc).__name__)
            return
        self.metrics.nexthop_bumps.inc(n)

    def sweep_cycle(self) -> None:
        """End idle flows (resetting established TCP ones); one log line when it ended any."""
        engine = self._sweeping()
        if engine is None:
            return
        self._next_sweep = self.clock() + self.options.sweep
        try:
            done = engine.sweep_idle()
        except Exception as exc:  # noqa: BLE001 - keep running; the next sweep tries again
            self.log.warning("idle-sweep-failed", error=str(exc) or type(exc).__name__)
            return
        self.metrics.idle_expired.inc(done.expired)
        for to, n in done.resets.items():
            self.metrics.idle_resets.labels(to=to).inc(n)
        if done.expired or done.send_errors:
            self.log.info("idle-expired", flows=done.expired, resets_client=done.resets["client"],
                          resets_endpoint=done.resets["endpoint"], send_errors=done.send_errors)

    def health_cycle(self) -> None:
        """Apply the engine's pending health transitions; one log line per transition."""
        probing = self._probing()
        if probing is None or not probing.health_due():
            return
        started = self.clock()
        try:
            changes, outcome = probing.apply_health()
        except Exception as exc:  # noqa: BLE001 - keep running; the next resync applies health too
            self.log.error("health-apply-failed", error=f"internal error: {type(exc).__name__}: {exc}")
            return
        for ch in changes:
            service, address = ch.key
            if ch.healthy:
                self.log.info("endpoint-up", service=service, endpoint=address, action="back in selection")
            else:
                self.log.warning("endpoint-down", service=service, endpoint=address, reason=ch.reason,
                                 failures=ch.failures, action="out of selection")
        if outcome is None:
            return
        duration = self.clock() - started
        if outcome.verified:
            self.metrics.results.labels(result="ok").inc()
            self.log.info("health-applied", type=outcome.mode, changes=outcome.changes,
                          duration_ms=round(duration * 1000, 1))
        else:
            self._applied = None
            self.metrics.results.labels(result="failed").inc()
            self.log.error("health-apply-failed", type=outcome.mode,
                           error=outcome.error or "verification left changes",
                           action=f"will retry at the next resync (within {self.options.resync:g}s)")

    def cycle(self, trigger: Trigger) -> None:
        """Load, decide, reconcile; record the result.  Never raises for bad input."""
        full = trigger != "delivery"
        started = self.clock()
        if full:
            self._next_resync = started + self.options.resync
        try:
            delivery = self.engine.load(full=full)
        except Exception as exc:  # noqa: BLE001 - a loader bug must not kill the daemon
            delivery = Delivery(digest="", errors=(f"{self.options.directory}: cannot load: "
                                                   f"{type(exc).__name__}: {exc}",))
        if trigger == "delivery":
            self.log.info("delivery", digest=delivery.digest[:12], files_parsed=delivery.files_parsed,
                          valid=delivery.valid)
        if not delivery.valid:
            self._reject(delivery, trigger)
            if not full or self._last_good is None:
                return
            self._resync_last_good(trigger, started)
            return
        prior, last_good = self.snapshot(), self._last_good
        self._last_good = delivery
        if prior.rejected_digest is not None:
            # A valid delivery follows a rejected one: the rejection's errors are history,
            # cleared in the same update that says the config is valid, so /status never
            # shows config_valid: true beside the old delivery's errors.
            self._update(config_valid=True, last_error=(), last_error_time=None, rejected_digest=None)
        else:
            self._update(config_valid=True)
        self.metrics.valid.set(1)
        applied = self._applied
        if not full and applied is not None and applied.digest == delivery.digest:
            self.metrics.results.labels(result="unchanged").inc()
            self.log.info("unchanged", digest=delivery.digest[:12], action="nothing to do")
            return
        outcome = self._reconcile(delivery, trigger, full, started)
        if outcome.invalid:  # e.g. a pool exhausted: rejected whole, like a parse error
            self._last_good = last_good
            self._reject(replace(delivery, errors=outcome.invalid), trigger, prior)
            if full and last_good is not None:
                self._resync_last_good(trigger, started)

    def _resync_last_good(self, trigger: Trigger, started: float) -> None:
        assert self._last_good is not None
        self.log.info("resync-last-good", digest=self._last_good.digest[:12],
                      reason="directory is invalid; repairing drift against the last good config")
        self._reconcile(self._last_good, trigger, True, started)

    def _reject(self, delivery: Delivery, trigger: str, prior: Snapshot | None = None) -> None:
        """``prior``: the status before this delivery was (wrongly) taken as valid."""
        snap = self.snapshot()
        seen = prior or snap
        self.metrics.valid.set(0)
        self.metrics.results.labels(result="invalid").inc()
        self._update(config_valid=False, last_error=delivery.errors, last_error_time=time.time(),
                     rejected_digest=delivery.digest, rejected=snap.rejected + 1)
        if seen.rejected_digest == delivery.digest and seen.config_valid is False:
            return  # already reported this exact content
        self._tell(f"configuration {delivery.digest[:12]} rejected: {len(delivery.errors)} error(s), "
                   f"first: {delivery.errors[0] if delivery.errors else '-'}; {self._serving()}")
        self.log.error("config-invalid", trigger=trigger, digest=delivery.digest[:12],
                       errors=len(delivery.errors), action="rejected whole; live state left as it was")
        for line in delivery.errors:
            self.log.error("config-error", error=line)

    def _reconcile(self, delivery: Delivery, trigger: Trigger, full: bool, started: float) -> Outcome:
        previous = self._applied
        try:
            outcome = self.engine.reconcile(delivery, full=full)
        except Exception as exc:  # noqa: BLE001 - keep running; the next trigger retries
            outcome = Outcome(verified=False, error=f"internal error: {type(exc).__name__}: {exc}")
        if outcome.invalid:
            return outcome  # nothing was touched; the caller rejects the delivery
        duration = self.clock() - started
        result = "ok" if outcome.verified else "failed"
        self.metrics.duration.labels(type=outcome.mode).observe(duration)
        self.metrics.results.labels(result=result).inc()
        counts = (("create", outcome.created), ("update", outcome.updated), ("delete", outcome.deleted))
        for action, n in counts:
            if n:
                self.metrics.changes.labels(action=action).inc(n)
        drift = (trigger in ("resync", "sighup") and previous is not None
                 and previous.digest == delivery.digest and outcome.changes > 0)
        snap = self.snapshot()
        last = LastReconcile(time=time.time(), trigger=trigger, mode=outcome.mode, result=result,
                             duration=duration, created=outcome.created, updated=outcome.updated,
                             deleted=outcome.deleted, error=outcome.error)
        changes: dict[str, Any] = {"last_reconcile": last, "reconciles": snap.reconciles + 1}
        timings = " ".join(f"{k}={v * 1000:.1f}ms" for k, v in outcome.timings.items())
        for notice in outcome.notices:
            self.log.warning("driver-notice", detail=notice)
        if outcome.changes:
            self.log.info("applied", trigger=trigger, type=outcome.mode, create=outcome.created,
                          update=outcome.updated, delete=outcome.deleted, timings=timings)
        if drift:
            by_kind = dict(outcome.kinds)
            unnamed = outcome.changes - sum(by_kind.values())
            if unnamed > 0:  # an engine that does not say which kinds it changed
                by_kind["other"] = by_kind.get("other", 0) + unnamed
            totals = dict(snap.drift_repairs_by_kind)
            for kind, n in by_kind.items():
                self.metrics.repairs.labels(kind=kind).inc(n)
                totals[kind] = totals.get(kind, 0) + n
            changes["drift_repairs"] = snap.drift_repairs + outcome.changes
            changes["drift_repairs_by_kind"] = totals
            self.log.warning("drift-repaired", repairs=outcome.changes, fixed="; ".join(outcome.fixed[:20]))
        if outcome.warnings is not None and outcome.warnings != snap.warnings:
            for warning in outcome.warnings:  # logged when they change, not at every resync
                self.log.warning("not-carried-out", detail=warning)
            changes["warnings"] = outcome.warnings
        if outcome.verified:
            self._applied = delivery
            revision = git_commit(Path(self.options.directory))
            changes.update(ready=True, digest=delivery.digest, revision=revision,
                           resources=delivery.resources, records=dict(outcome.records))
            if delivery.valid and snap.config_valid:
                changes.update(last_error=(), last_error_time=None, rejected_digest=None)
            self.metrics.ready.set(1)
            self.metrics.resources.set(delivery.resources)
            self.metrics.records.clear()
            for k, v in outcome.records.items():
                self.metrics.records.labels(kind=k).set(v)
            self.metrics.applied.info({"revision": revision or "", "digest": delivery.digest})
            self.metrics.last_success.set(time.time())
            self.log.info("verified" if outcome.changes or trigger != "resync" else "resync",
                          trigger=trigger, type=outcome.mode, digest=delivery.digest[:12],
                          revision=revision[:12] if revision else "-", changes=outcome.changes,
                          duration_ms=round(duration * 1000, 1), timings=timings)
        else:
            self._applied = None  # never skip the next delivery as "unchanged" after a failure
            error = outcome.error or "verification left changes"
            changes.update(last_error=(error,), last_error_time=time.time())
            self.log.error("reconcile-failed", trigger=trigger, type=outcome.mode,
                           digest=delivery.digest[:12], error=error,
                           action=f"will retry at the next resync (within {self.options.resync:g}s)")
        self._update(**changes)
        if outcome.verified:
            self._tell(f"{self._serving()} (verified)")
        else:
            self._tell(f"reconcile failed: {outcome.error or 'verification left changes'}; "
                       f"retrying within {self.options.resync:g}s; {self._serving()}")
        return outcome

    # -- the service manager --

    def _serving(self) -> str:
        """What the box runs, for STATUS= lines: the applied revision (commit, else digest)."""
        snap = self.snapshot()
        if not snap.ready or snap.digest is None:
            return "nothing applied yet"
        what = f"revision {snap.revision[:12]}" if snap.revision else f"digest {snap.digest[:12]}"
        return f"applied {what}, {snap.resources} resources"

    def _tell(self, status: str) -> None:
        """STATUS= when it changed; READY=1 with the first one sent after a verified reconcile."""
        if not self.notifier.enabled:
            return
        if not self._ready_sent and self.snapshot().ready:
            self._ready_sent = True
            self.notifier.ready(status)
        elif status != self._notified:
            self.notifier.status(status)
        self._notified = status
