"""The probe runner: one thread, one asyncio loop, inside the box's network namespace.

Why this exists: ``lbctl watch`` probes every endpoint of every probed Service on its
own interval without a thread per endpoint.  One daemon thread enters the namespace
(``--netns``; ``setns`` on that thread only), runs an event loop, and keeps one small
task per endpoint: wait for its slot (first probes spread over the interval by a hash
of the endpoint, so 1,000 endpoints do not fire at once), probe (bounded by the
timeout), hand the result to the ``HealthTracker``, and report a transition through
``on_transition`` (called on the runner's thread; it must only note and wake).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager

from reconciler.probes.health import HealthTracker, ProbeResult, Transition
from reconciler.probes.probers import ProbeNotRun, Probers, describe, timeout_means_up
from reconciler.probes.targets import HealthKey, ProbeTarget


class ProbeRunner:
    def __init__(self, tracker: HealthTracker, on_transition: Callable[[Transition], None], *,
                 namespace: Callable[[], AbstractContextManager[None]] | None = None) -> None:
        """``namespace``: enters the box's network namespace on the calling thread
        (``drivers.netns.in_netns``, given by the command; None: stay)."""
        self.tracker = tracker
        self.on_transition = on_transition
        self.namespace = namespace or contextlib.nullcontext
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._targets: Mapping[HealthKey, ProbeTarget] = {}
        self._tasks: dict[HealthKey, tuple[ProbeTarget, asyncio.Task[None]]] = {}
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None

    # --- called from other threads ---

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="lbctl-probes", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def configure(self, targets: Mapping[HealthKey, ProbeTarget]) -> None:
        """Probe exactly ``targets`` from now on (unchanged targets keep their schedule and state)."""
        targets = dict(targets)
        self.tracker.configure(targets)
        self._targets = targets
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._reschedule)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- the loop's thread ---

    def _main(self) -> None:
        try:
            with self.namespace():
                asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported to start() or logged by the owner
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self.probers = Probers(self._loop)
        self._reschedule()
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            for _, task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*(task for _, task in self._tasks.values()), return_exceptions=True)
            self.probers.close()

    def _reschedule(self) -> None:
        targets = self._targets
        for key, (target, task) in list(self._tasks.items()):
            if targets.get(key) != target:
                task.cancel()
                del self._tasks[key]
        for key, target in targets.items():
            if key not in self._tasks:
                self._tasks[key] = (target, asyncio.ensure_future(self._endpoint(target)))

    async def _endpoint(self, t: ProbeTarget) -> None:
        loop = asyncio.get_running_loop()
        # Spread first probes over the interval, the same slot for an endpoint every time.
        slot = zlib.crc32(f"{t.service}/{t.address}".encode()) / 2**32 * t.interval
        due = loop.time() + slot
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += t.interval
            try:
                result = await self.probe_once(t)
            except ProbeNotRun as exc:
                self.tracker.not_run(t.key, str(exc))
                continue
            change = self.tracker.record(t.key, result)
            if change is not None:
                self.on_transition(change)
            if due < loop.time():  # fell behind (a long stall): skip the missed slots
                due = loop.time() + t.interval

    async def probe_once(self, t: ProbeTarget) -> ProbeResult:
        """One probe of ``t``, bounded by its timeout.  (A timer that cancels this task, not
        ``asyncio.wait_for``, which wraps every probe in one more task: a third of the CPU at
        1,000 probes a second.)"""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        start = loop.time()
        timer = loop.call_later(t.timeout, expire)
        try:
            await self.probers.probe(t)
        except asyncio.CancelledError:
            if not expired:
                raise
            task.uncancel()
            took = loop.time() - start
            if timeout_means_up(t):
                return ProbeResult(True, took, None, time.time())
            return ProbeResult(False, took, f"no answer within {t.timeout:g}s", time.time())
        except ProbeNotRun:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of a probe is a result
            return ProbeResult(False, loop.time() - start, describe(exc), time.time())
        finally:
            timer.cancel()
        return ProbeResult(True, loop.time() - start, None, time.time())
