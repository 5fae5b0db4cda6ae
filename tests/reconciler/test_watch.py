"""Unit tests of the watch daemon's decisions, with in-memory engines and a manual clock."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import replace

import pytest

from reconciler.logs import EventLog
from reconciler.watch import Daemon, Debouncer, Delivery, Options
from tests.reconciler.watch_fakes import ScriptedEngine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(engine: ScriptedEngine, debounce: float = 0.2,
         resync: float = 30.0) -> tuple[Daemon, Clock, io.StringIO]:
    clock = Clock()
    out = io.StringIO()
    daemon = Daemon(Options(directory="/cfg", debounce=debounce, resync=resync), engine,
                    EventLog("kv", out), clock=clock)
    return daemon, clock, out


def events(out: io.StringIO) -> list[str]:
    return [line.split(" event=")[1].split(" ")[0] for line in out.getvalue().splitlines()]


# --- debounce ---

def test_debounce_fires_after_the_last_event_of_a_burst() -> None:
    d = Debouncer(0.2)
    assert d.deadline() is None and not d.take(0.0)
    for t in (0.0, 0.1, 0.25):
        d.poke(t)
    assert d.deadline() == pytest.approx(0.45)
    assert not d.take(0.44)
    assert d.take(0.45)
    assert d.deadline() is None and not d.take(10.0)


def test_debounce_is_capped_for_a_directory_that_never_stops_changing() -> None:
    d = Debouncer(0.2, max_delay=1.0)
    t = 0.0
    while t < 0.95:
        d.poke(t)
        t += 0.1
    assert d.deadline() == pytest.approx(1.0)
    assert d.take(1.0)


# --- the loop's decisions ---

def test_startup_reconciles_fully_and_becomes_ready() -> None:
    engine = ScriptedEngine()
    daemon, _, out = make(engine)
    assert not daemon.ready()
    daemon.cycle("startup")
    assert [(c.kind, c.full) for c in engine.calls] == [("load", True), ("reconcile", True)]
    snap = daemon.snapshot()
    assert snap.ready and snap.config_valid and snap.digest == "d1"
    assert snap.last_reconcile is not None and snap.last_reconcile.result == "ok"
    assert "verified" in events(out)


def test_unchanged_content_does_not_reconcile() -> None:
    engine = ScriptedEngine()
    daemon, clock, out = make(engine)
    daemon.cycle("startup")
    daemon.notify("/cfg/a.yaml")
    clock.now += 0.3
    daemon.step()
    assert len(engine.reconciles()) == 1
    assert "unchanged" in events(out)
    assert daemon.metrics.value("lbctl_reconcile_total", result="unchanged") == 1


def test_changed_content_reconciles_once_after_the_debounce() -> None:
    engine = ScriptedEngine()
    daemon, clock, _ = make(engine)
    daemon.cycle("startup")
    engine.current = Delivery(digest="d2", resources=2)
    for _ in range(5):
        daemon.notify()
        clock.now += 0.05
    daemon.step()
    assert len(engine.reconciles()) == 1  # still inside the debounce window
    clock.now += 0.2
    daemon.step()
    recs = engine.reconciles()
    assert len(recs) == 2 and recs[-1].digest == "d2" and recs[-1].full is False
    assert daemon.snapshot().digest == "d2" and daemon.snapshot().resources == 2
    assert daemon.metrics.value("lbctl_reconcile_duration_seconds_count", type="incremental") == 1
    assert daemon.fired_at == clock.now


def test_invalid_delivery_is_rejected_whole_and_exposed() -> None:
    engine = ScriptedEngine()
    daemon, clock, out = make(engine)
    daemon.cycle("startup")
    err = "svc.yaml:7:9: Service/web: spec.endpoints[0].address: '10.0.0.300' is not an IP address (fix it)"
    engine.current = Delivery(digest="bad", errors=(err,))
    daemon.notify()
    clock.now += 1
    daemon.step()
    assert len(engine.reconciles()) == 1  # nothing live touched
    snap = daemon.snapshot()
    assert snap.config_valid is False and snap.ready and snap.digest == "d1"
    doc = daemon.status_json()
    assert doc["last_error"]["errors"] == [err]
    assert doc["config_valid"] is False
    assert daemon.metrics.value("lbctl_config_valid") == 0
    assert "config-invalid" in events(out) and "svc.yaml:7:9" in out.getvalue()


def test_twenty_invalid_deliveries_change_nothing_and_the_next_valid_one_applies() -> None:
    engine = ScriptedEngine()
    daemon, clock, out = make(engine)
    daemon.cycle("startup")
    for i in range(20):
        error = f"f.yaml:{i + 1}:1: Service/x: spec: broken (fix)"
        engine.current = Delivery(digest=f"bad{i}", errors=(error,))
        daemon.notify()
        clock.now += 0.3
        daemon.step()
    assert len(engine.reconciles()) == 1
    assert daemon.metrics.value("lbctl_reconcile_total", result="invalid") == 20
    engine.current = Delivery(digest="good2", resources=3)
    daemon.notify()
    clock.now += 0.3
    daemon.step()
    assert engine.reconciles()[-1].digest == "good2"
    snap = daemon.snapshot()
    assert snap.config_valid and snap.digest == "good2" and snap.last_error == ()
    assert daemon.metrics.value("lbctl_config_valid") == 1


def test_restoring_the_applied_content_clears_the_rejected_error() -> None:
    engine = ScriptedEngine()
    daemon, clock, out = make(engine)
    daemon.cycle("startup")
    good = engine.current
    engine.current = Delivery(digest="bad", errors=("a.yaml:1:1: x",))
    daemon.notify()
    clock.now += 0.3
    daemon.step()
    assert daemon.snapshot().last_error == ("a.yaml:1:1: x",)
    engine.current = good  # the bad file restored: the content that is already applied
    daemon.notify()
    clock.now += 0.3
    daemon.step()
    assert len(engine.reconciles()) == 1 and events(out)[-1] == "unchanged"
    doc = daemon.status_json()
    assert doc["config_valid"] is True and doc["last_error"] is None and doc["digest"] == "d1"
    assert daemon.metrics.value("lbctl_config_valid") == 1
    # The same bad content again is news, reported again.
    engine.current = Delivery(digest="bad", errors=("a.yaml:1:1: x",))
    daemon.notify()
    clock.now += 0.3
    daemon.step()
    assert events(out).count("config-invalid") == 2


def test_same_invalid_content_is_reported_once() -> None:
    engine = ScriptedEngine()
    daemon, clock, out = make(engine)
    daemon.cycle("startup")
    engine.current = Delivery(digest="bad", errors=("a.yaml:1:1: x",))
    for _ in range(3):
        daemon.notify()
        clock.now += 0.3
        daemon.step()
    assert events(out).count("config-invalid") == 1


def test_invalid_at_startup_touches_nothing_and_is_not_ready() -> None:
    engine = ScriptedEngine(current=Delivery(digest="bad", errors=("a.yaml:1:1: x",)))
    daemon, _, _ = make(engine)
    daemon.cycle("startup")
    assert engine.reconciles() == [] and not daemon.ready()


def test_resync_counts_drift_repairs() -> None:
    engine = ScriptedEngine()
    daemon, clock, out = make(engine, resync=30)
    daemon.cycle("startup")
    engine.drift = 3
    clock.now += 29
    daemon.step()
    assert len(engine.reconciles()) == 1
    clock.now += 1
    daemon.step()
    assert engine.reconciles()[-1].full
    assert daemon.snapshot().drift_repairs == 3
    assert daemon.snapshot().drift_repairs_by_kind == {"service": 3}
    assert daemon.metrics.value("lbctl_drift_repairs_total", kind="service") == 3
    assert 'lbctl_drift_repairs_total{kind="service"} 3.0' in daemon.render_metrics().decode()
    assert daemon.status_json()["drift_repairs_by_kind"] == {"service": 3}
    assert "drift-repaired" in events(out)
    clock.now += 30
    daemon.step()  # nothing drifted since
    assert daemon.snapshot().drift_repairs == 3
    assert "resync" in events(out)


def test_resync_while_invalid_repairs_against_the_last_good_config() -> None:
    engine = ScriptedEngine()
    daemon, clock, _ = make(engine, resync=30)
    daemon.cycle("startup")
    engine.current = Delivery(digest="bad", errors=("a.yaml:1:1: x",))
    engine.drift = 2
    clock.now += 30
    daemon.step()
    last = engine.reconciles()[-1]
    assert last.full and last.digest == "d1"
    snap = daemon.snapshot()
    assert snap.drift_repairs == 2 and snap.config_valid is False and snap.last_error == ("a.yaml:1:1: x",)


def test_failed_reconcile_is_reported_and_retried() -> None:
    engine = ScriptedEngine(fail="bpf: map lbctl_services: update: ENOSPC")
    daemon, clock, out = make(engine)
    daemon.cycle("startup")
    assert not daemon.ready()
    assert daemon.status_json()["last_error"]["errors"] == ["bpf: map lbctl_services: update: ENOSPC"]
    assert daemon.metrics.value("lbctl_reconcile_total", result="failed") == 1
    engine.fail = None
    daemon.notify()  # same content: must not be skipped as "unchanged" after a failure
    clock.now += 0.3
    daemon.step()
    assert daemon.ready()


def test_engine_exceptions_do_not_kill_the_daemon() -> None:
    class Broken(ScriptedEngine):
        def reconcile(self, delivery: Delivery, *, full: bool):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    daemon, _, out = make(Broken())
    daemon.cycle("startup")
    assert "internal error: RuntimeError: boom" in daemon.status_json()["last_reconcile"]["error"]


def test_hangup_reloads_fully_right_away() -> None:
    engine = ScriptedEngine()
    daemon, _, out = make(engine)
    daemon.cycle("startup")
    engine.current = replace(engine.current, digest="d2")
    daemon.hangup()
    daemon.step()
    assert engine.calls[-2:][0].full and engine.reconciles()[-1].digest == "d2"
    assert "sighup" in events(out)


def test_real_signals_hangup_and_terminate() -> None:
    engine = ScriptedEngine()
    out = io.StringIO()
    daemon = Daemon(Options(directory="/cfg", debounce=0.05, resync=3600), engine, EventLog("json", out))
    old = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.install_signals()
        thread = threading.Thread(target=daemon.run)
        thread.start()
        engine.wait_until("the start-up reconcile", lambda: bool(engine.reconciles()))
        engine.current = replace(engine.current, digest="after-hup")
        os.kill(os.getpid(), signal.SIGHUP)
        engine.wait_until("the reconcile of SIGHUP", lambda: engine.reconciles()[-1].digest == "after-hup")
        os.kill(os.getpid(), signal.SIGTERM)
        thread.join(5)
        assert not thread.is_alive()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {"sighup", "signal", "stopped"} <= {e["event"] for e in lines}
    assert lines[-1]["datapath"].startswith("left running")


def test_status_json_shape() -> None:
    engine = ScriptedEngine()
    daemon, _, _ = make(engine)
    daemon.cycle("startup")
    doc = daemon.status_json()
    assert doc["revision"] == {"type": "digest", "value": "d1"}
    assert doc["counts"] == {"resources": 1, "records": {"service": 1}}
    assert doc["last_reconcile"]["type"] == "full" and doc["last_reconcile"]["result"] == "ok"
    assert doc["drift_repairs"] == 0 and doc["ready"] is True
    json.dumps(doc)


def test_warnings_are_logged_when_they_change_and_shown_in_status() -> None:
    engine = ScriptedEngine(warnings=("firewall not enforced",))
    daemon, clock, out = make(engine, resync=30.0)
    daemon.cycle("startup")
    assert daemon.status_json()["warnings"] == ["firewall not enforced"]
    assert events(out).count("not-carried-out") == 1
    clock.now += 31
    daemon.cycle("resync")  # same warnings: not logged again
    assert events(out).count("not-carried-out") == 1
    engine.warnings = ()
    clock.now += 31
    daemon.cycle("resync")
    assert daemon.status_json()["warnings"] == []


def test_durations_on_the_command_line() -> None:
    import argparse

    from reconciler.cli import build_parser
    from reconciler.duration import format_duration, parse_duration

    assert parse_duration("200ms") == pytest.approx(0.2)
    assert parse_duration("2s") == 2 and parse_duration("1m") == 60 and parse_duration("0.5") == 0.5
    for bad in ("", "fast", "-1s", "2 days"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_duration(bad)
    assert format_duration(0.2) == "200ms" and format_duration(30) == "30s"
    args = build_parser().parse_args(["watch", "/cfg", "--debounce", "50ms", "--resync", "5s",
                                      "--log-format", "json"])
    assert (args.dir, args.debounce, args.resync, args.log_format) == ("/cfg", 0.05, 5.0, "json")


SIGNAL_WHILE_LOGGING = r"""
import io, os, signal, sys, threading
from reconciler.logs import EventLog
from reconciler.watch import Daemon, Options
from tests.reconciler.watch_fakes import ScriptedEngine

daemon = Daemon(Options(directory="/cfg", debounce=0.05, resync=3600), ScriptedEngine(),
                EventLog("kv", io.StringIO()))
daemon.install_signals()
with daemon.log._lock:  # the main thread is in the middle of writing a log line
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, while the lock is held
    os.kill(os.getpid(), signal.SIGHUP)
print("handlers returned", daemon._stop, daemon._hup, flush=True)
daemon.run()  # sees the flag within one poll slice and exits
print("stopped", flush=True)
"""


def test_a_signal_while_the_main_thread_holds_a_lock_does_not_deadlock() -> None:
    """SIGTERM arriving while the daemon writes a log line once hung it for good (it never exited)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_LOGGING], cwd=root, capture_output=True,
                            text=True, timeout=30, env={**os.environ, "PYTHONPATH": root})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["handlers returned True True", "stopped"]


def test_signal_handlers_take_no_lock() -> None:
    """A handler runs in the main thread between any two bytecodes, e.g. inside the log's
    lock: one that logged (or set the wake event) could deadlock the daemon on SIGTERM."""
    engine = ScriptedEngine()
    daemon, _, out = make(engine)
    old = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    try:
        daemon.install_signals()
        handlers = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM)}
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    with daemon.log._lock, daemon._wake._cond:  # held, as when a signal interrupts a write
        for signum, handler in handlers.items():
            assert callable(handler)
            thread = threading.Thread(target=handler, args=(signum, None), daemon=True)
            thread.start()
            thread.join(2)
            assert not thread.is_alive(), f"the {signal.Signals(signum).name} handler blocked"
    assert daemon._hup and daemon._stop


# --- route and neighbour changes: the next-hop cache ---

class RoutingEngine(ScriptedEngine):
    def __init__(self) -> None:
        super().__init__()
        self.bumps = 0

    def nexthops_changed(self) -> int:
        self.bumps += 1
        return 1


class FakeRouteEvents:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


def test_a_route_change_makes_the_engine_forget_cached_next_hops_at_once() -> None:
    engine = RoutingEngine()
    made: list[FakeRouteEvents] = []

    def factory(on_change: Callable[[], None]) -> FakeRouteEvents:
        made.append(FakeRouteEvents(on_change))
        return made[-1]

    daemon = Daemon(Options(directory="/cfg", resync=30), engine, EventLog("kv", io.StringIO()),
                    clock=lambda: 1000.0, route_events_factory=factory)
    daemon.start_services()
    (events,) = made
    assert events.running
    daemon.cycle("startup")
    daemon.step()
    assert engine.bumps == 0
    events.on_change()  # the listener's thread
    daemon.step()
    assert engine.bumps == 1 and daemon.metrics.value("lbctl_nexthop_invalidations_total") == 1
    daemon.step()
    assert engine.bumps == 1, "one change, one bump"
    daemon.shutdown()
    assert not events.running
