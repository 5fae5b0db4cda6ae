"""Per-endpoint health: probe results in, up/down transitions out.  Pure.

Why this exists: the rule that decides when an endpoint leaves and rejoins
selection must be one small, testable piece: ``retries`` failed probes in a row
take an endpoint down; one success brings it back; every success resets the
failure count (a count that never reset made loxilb's endpoints flap, PR#1087),
so an endpoint failing every other probe never reaches ``retries`` >= 2.

``status()`` is the plain data the daemon serves in ``/status`` (``endpoints``)
and that ``lbctl get endpoints`` and the metrics read: one dict per endpoint.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.probes.targets import HealthKey, ProbeTarget


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency: float  # seconds from send to answer (or to giving up)
    reason: str | None = None  # why it failed
    at: float = 0.0  # wall-clock time of the result


@dataclass(frozen=True, slots=True)
class Transition:
    key: HealthKey
    healthy: bool  # the new state
    reason: str | None  # the failure that took it down
    failures: int


# Upper bounds (seconds) of the probe latency histogram: loopback-fast to a slow https handshake.
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0)


@dataclass(slots=True)
class _State:
    target: ProbeTarget
    healthy: bool = True
    failures: int = 0  # consecutive
    last: ProbeResult | None = None
    last_failure: str | None = None
    last_failure_at: float | None = None
    transitions: int = 0
    probes: int = 0
    not_run: str | None = None  # why the last probe could not even be run (a local problem)
    # Latencies of answered probes, cumulative per LATENCY_BUCKETS bound (for /metrics).
    latency_counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    latency_sum: float = 0.0
    latency_n: int = 0


class HealthTracker:
    """The health of every probed endpoint.  Thread-safe (results come from the probe
    thread, status and health are read by the daemon)."""

    def __init__(self, down: Iterable[HealthKey] = ()) -> None:
        """``down``: endpoints known down before (the state dir's record): they start down."""
        self._initial_down = set(down)
        self._states: dict[HealthKey, _State] = {}
        self._lock = threading.Lock()

    def configure(self, targets: Mapping[HealthKey, ProbeTarget]) -> None:
        """Follow a new configuration: new endpoints start up (or down if recorded down),
        endpoints no longer probed are forgotten, the others keep their state."""
        with self._lock:
            for key in list(self._states):
                if key not in targets:
                    del self._states[key]
            for key, target in targets.items():
                st = self._states.get(key)
                if st is None:
                    self._states[key] = _State(target, healthy=key not in self._initial_down)
                else:
                    st.target = target
            self._initial_down &= set(targets)

    def record(self, key: HealthKey, result: ProbeResult) -> Transition | None:
        """Take one probe result; the transition it causes, if any."""
        with self._lock:
            st = self._states.get(key)
            if st is None:
                return None  # no longer probed
            st.last = result
            st.probes += 1
            st.not_run = None
            if result.ok:
                st.latency_n += 1
                st.latency_sum += result.latency
                for i, bound in enumerate(LATENCY_BUCKETS):
                    if result.latency <= bound:
                        st.latency_counts[i] += 1
                st.failures = 0
                if not st.healthy:
                    st.healthy = True
                    st.transitions += 1
                    return Transition(key, True, None, 0)
                return None
            st.failures += 1
            st.last_failure = result.reason
            st.last_failure_at = result.at
            if st.healthy and st.failures >= st.target.retries:
                st.healthy = False
                st.transitions += 1
                return Transition(key, False, result.reason, st.failures)
            return None

    def not_run(self, key: HealthKey, reason: str) -> None:
        """The probe could not be run on this box: shown, but the endpoint's state is left alone."""
        with self._lock:
            st = self._states.get(key)
            if st is not None:
                st.not_run = reason

    def health(self) -> dict[HealthKey, bool]:
        """``desired.Health``: only the endpoints that are down (missing means healthy)."""
        with self._lock:
            return {k: False for k, st in self._states.items() if not st.healthy}

    def latencies(self) -> dict[HealthKey, tuple[tuple[tuple[float, int], ...], int, float]]:
        """Per endpoint: (cumulative (bound, count) buckets, answered probes, their latency sum)."""
        with self._lock:
            return {key: (tuple(zip(LATENCY_BUCKETS, st.latency_counts, strict=True)), st.latency_n,
                          st.latency_sum) for key, st in self._states.items()}

    def status(self) -> list[dict[str, Any]]:
        """One plain dict per probed endpoint, sorted by (service, address)."""
        with self._lock:
            out = []
            for (service, address), st in sorted(self._states.items()):
                last = st.last
                out.append({
                    "service": service, "address": address, "probe": st.target.type, "port": st.target.port,
                    "health": "up" if st.healthy else "down",
                    "last_result": None if last is None else "ok" if last.ok else "failed",
                    "last_probe_time": None if last is None else last.at,
                    "latency_ms": None if last is None else round(last.latency * 1000, 3),
                    "consecutive_failures": st.failures,
                    "last_failure": st.last_failure, "last_failure_time": st.last_failure_at,
                    "transitions": st.transitions, "probes": st.probes, "probe_error": st.not_run,
                })
            return out
