"""In-memory engines for the watch daemon's unit tests.

Why this exists: the daemon's decisions (debounce, skip unchanged content, keep
the last good config, count drift) are pure logic over the ``Engine`` seam; these
fakes stand in for the config loader and the reconcile layer.  A test waiting for
the daemon blocks in ``wait_until``, woken by each call the daemon makes (no
polling, no sleeps).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.watch import Delivery, Outcome


@dataclass
class Call:
    kind: str  # load | reconcile
    full: bool
    digest: str = ""


@dataclass
class ScriptedEngine:
    """``current``: what the directory holds; ``drift``: changes the next full reconcile makes."""

    current: Delivery = field(default_factory=lambda: Delivery(digest="d1", resources=1))
    drift: int = 0
    fail: str | None = None
    calls: list[Call] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    telemetry: list[object] = field(default_factory=list)  # what /metrics asks (telemetry sources)
    warnings: tuple[str, ...] | None = None  # what full reconciles report as not carried out
    _called: threading.Condition = field(default_factory=threading.Condition, repr=False, compare=False)

    def _record(self, call: Call) -> None:
        with self._called:
            self.calls.append(call)
            self._called.notify_all()

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``check()`` holds, re-checked at each call the daemon makes.

        ``timeout`` only keeps a dead daemon from hanging the suite; it measures nothing.
        """
        with self._called:
            if not self._called.wait_for(check, timeout):
                raise AssertionError(f"{what}: never happened; last calls: {self.calls[-6:]}")

    def load(self, *, full: bool) -> Delivery:
        self._record(Call("load", full, self.current.digest))
        return self.current

    def reconcile(self, delivery: Delivery, *, full: bool) -> Outcome:
        self._record(Call("reconcile", full, delivery.digest))
        if self.fail:
            return Outcome(verified=False, error=self.fail, mode="full" if full else "incremental")
        changed = 0
        if not self.applied or self.applied[-1] != delivery.digest:
            changed = 1
        elif full:
            changed, self.drift = self.drift, 0
        self.applied.append(delivery.digest)
        return Outcome(verified=True, mode="full" if full else "incremental", updated=changed,
                       records={"service": delivery.resources},
                       fixed=tuple(f"~ service s{i}" for i in range(changed)),
                       kinds={"service": changed} if changed else {},
                       warnings=self.warnings if full else None)

    def sources(self) -> Iterable[object]:
        return self.telemetry

    def reconciles(self) -> list[Call]:
        return [c for c in self.calls if c.kind == "reconcile"]


def _walk_yaml(directory: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in sorted(files)
                   if f.endswith((".yaml", ".yml")) and not f.startswith("."))
    return out


class DirectoryEngine(ScriptedEngine):
    """Loads a real directory: digest = hash of its YAML files; a file holding 'INVALID' is an error."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def load(self, *, full: bool) -> Delivery:
        h = hashlib.sha256()
        errors = []
        files = _walk_yaml(self.directory)
        for path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            rel = os.path.relpath(path, self.directory)
            h.update(rel.encode() + b"\0" + data + b"\0")
            if b"INVALID" in data:
                errors.append(f"{rel}:1:1: Service/x: spec: invalid (fix it)")
        delivery = Delivery(digest=h.hexdigest(), errors=tuple(errors), resources=len(files))
        self._record(Call("load", full, delivery.digest))
        return delivery


def configmap_publish(conf: Path, stamp: str, files: dict[str, str]) -> None:
    """What kubelet's AtomicWriter does: new timestamped dir, ..data_tmp link, rename over ..data."""
    data = conf / f"..{stamp}"
    data.mkdir()
    for name, text in files.items():
        (data / name).write_text(text)
    old = os.readlink(conf / "..data") if (conf / "..data").is_symlink() else None
    os.symlink(data.name, conf / "..data_tmp")
    os.replace(conf / "..data_tmp", conf / "..data")
    for name in files:
        if not (conf / name).is_symlink():
            os.symlink(f"..data/{name}", conf / name)
    if old:
        shutil.rmtree(conf / old)
