"""Parse a directory's files on every CPU the process may use, by forking.

Why this exists: a cold load of a big directory (no parse cache yet: the first
``plan``/``apply`` on a box, ``validate``) is per-file work -- libyaml's events,
the compiled schema check, building the typed resources -- ~2.8 s of a 3.6 s
load at 10,000 services on the 2-vCPU development VM, all of it Python on one
core.  Forked children parse shares of the files (balanced by size) and hand
their ``FileResult``s back through a pipe, pickled with the parse cache's
reducers (``pickling``); the parent parses its own share meanwhile and then
unpickles theirs.  Measured in ``bench/results/reconcile.md`` (parse+validate
of a cold 10,000-service apply, same run, with and without).  Written here
rather than with ``multiprocessing``: its pools send every file's bytes to the
workers and start a fresh interpreter or a server thread, where a bare
``fork`` shares the bytes already read and costs ~10 ms.

When it does not fork (then ``parse_all`` is the plain serial loop):

- fewer than ``PARALLEL_MIN_BYTES`` to parse (re-parsing an edited file or two
  costs milliseconds; a fork would cost more);
- one CPU in the process's affinity mask;
- other threads are running (the watch daemon): ``fork`` copies only the
  calling thread, and a lock another thread held would stay locked in the child.

Whatever goes wrong with a child (it could not be forked, died, wrote a short
or bad payload), its share is parsed again in the parent, so the results are
always exactly the serial loop's, in the same order.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple

from reconciler.config import pickling
from reconciler.config.cache import FileResult

PARALLEL_MIN_BYTES = 1 << 20  # bytes of YAML to parse before a fork pays (a fork: ~10 ms)
MAX_WORKERS = 4  # past this the parent's unpickling and the serial semantic check dominate
PHASES = ("parse", "schema", "build")  # the timings load_bytes adds to

Job = tuple[str, bytes]  # (displayed path, the file's bytes)
# loader.load_bytes: (displayed path, bytes, timings to add to) -> the file's result
Parse = Callable[[str, bytes, dict[str, float]], FileResult]


class _Child(NamedTuple):
    pid: int
    fd: int  # read end of its pipe
    share: list[int]  # indexes into the jobs


def workers(total_bytes: int) -> int:
    """How many processes (the parent included) should parse ``total_bytes`` of YAML."""
    if total_bytes < PARALLEL_MIN_BYTES or threading.active_count() > 1:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def shares(sizes: Sequence[int], n: int) -> list[list[int]]:
    """Indexes of ``sizes`` in ``n`` groups of about equal total size (largest first, to the
    lightest group); each group in ascending order."""
    groups: list[list[int]] = [[] for _ in range(n)]
    loads = [0] * n
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        k = loads.index(min(loads))
        groups[k].append(i)
        loads[k] += sizes[i]
    return [sorted(g) for g in groups]


def parse_all(jobs: Sequence[Job], timings: dict[str, float], load_bytes: Parse) -> list[FileResult]:
    """``load_bytes`` of every job, in order; on several CPUs when it pays (module docstring)."""
    n = min(workers(sum(len(data) for _, data in jobs)), len(jobs))
    if n <= 1:
        return [load_bytes(display, data, timings) for display, data in jobs]
    groups = shares([len(data) for _, data in jobs], n)
    results: list[FileResult | None] = [None] * len(jobs)
    children: list[_Child] = []
    try:
        for share in groups[1:]:
            child = _fork(jobs, share, load_bytes)
            if child is None:  # no fork: the parent takes the share
                groups[0].extend(share)
            else:
                children.append(child)
        for i in groups[0]:
            results[i] = load_bytes(*jobs[i], timings)
        while children:
            child = children.pop(0)
            got = _collect(child)
            if got is None:
                got = ([load_bytes(*jobs[i], timings) for i in child.share], {})
            for i, result in zip(child.share, got[0], strict=True):
                results[i] = result
            for phase, seconds in got[1].items():
                timings[phase] = timings.get(phase, 0.0) + seconds
    finally:
        for child in children:  # only on an error in the parent (e.g. ^C): end and reap the rest
            _end(child)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _fork(jobs: Sequence[Job], share: list[int], load_bytes: Parse) -> _Child | None:
    """A child parsing ``share`` that writes (results, timings) pickled to a pipe, then exits."""
    try:
        r, w = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers
        status = 1
        try:
            os.close(r)
            spent = dict.fromkeys(PHASES, 0.0)
            payload = pickling.dumps(([load_bytes(*jobs[i], spent) for i in share], spent))
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view):]
            status = 0
        except BaseException:  # noqa: BLE001 - any failure: the parent parses this share itself
            pass
        finally:
            os._exit(status)
    os.close(w)
    return _Child(pid, r, share)


def _collect(child: _Child) -> tuple[list[FileResult], dict[str, float]] | None:
    """The child's results, or None when it did not deliver all of them."""
    chunks: list[bytes] = []
    try:
        while chunk := os.read(child.fd, 1 << 20):
            chunks.append(chunk)
    except OSError:
        chunks = []
    finally:
        os.close(child.fd)
    _, status = os.waitpid(child.pid, 0)
    if not chunks or os.waitstatus_to_exitcode(status) != 0:
        return None
    try:
        results, spent = pickle.loads(b"".join(chunks))  # our own child's bytes
    except Exception:  # noqa: BLE001 - a bad payload: parse the share here
        return None
    if not isinstance(results, list) or len(results) != len(child.share) or not isinstance(spent, dict):
        return None
    return results, spent


def _end(child: _Child) -> None:
    try:
        os.kill(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.close(child.fd)
    os.waitpid(child.pid, 0)
