"""Delivery styles seen through real inotify and real renames (no root needed).

Each test runs the daemon with the real directory watcher and an engine that
hashes the directory's YAML, makes a delivery the way a tool makes it, and
waits (woken by the engine's calls, not by polling) until the daemon reconciled
the new content.  The latency printed is delivery -> reconcile started with the
test's short debounce; nothing asserts a time.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler import fswatch
from reconciler.fswatch import DirWatcher, Target, watch_targets
from reconciler.logs import EventLog
from reconciler.watch import Daemon, Options
from tests.reconciler.watch_fakes import DirectoryEngine, configmap_publish

DEBOUNCE = 0.05


class Running:
    def __init__(self, directory: Path, follow_external_symlinks: bool = False) -> None:
        self.engine = DirectoryEngine(str(directory))
        self.log = io.StringIO()
        self.notified: list[str] = []  # every path the watcher passed on to the daemon

        def watcher(path: str, notify: Callable[[str], None]) -> DirWatcher:
            def passed_on(changed: str) -> None:
                self.notified.append(changed)
                notify(changed)
            return DirWatcher(path, passed_on, follow_external_symlinks=follow_external_symlinks)

        self.daemon = Daemon(Options(directory=str(directory), debounce=DEBOUNCE, resync=3600), self.engine,
                             EventLog("kv", self.log), watcher_factory=watcher)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def applied(self) -> str | None:
        recs = self.engine.reconciles()
        return recs[-1].digest if recs else None

    def wait_for(self, digest: str) -> None:
        try:
            self.engine.wait_until(f"content {digest[:12]} reconciled", lambda: self.applied() == digest)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; log:\n{self.log.getvalue()}") from None

    def deliver(self, label: str, action: Callable[[], object]) -> None:
        t0 = time.monotonic()
        action()
        digest = self.engine.load(full=True).digest
        self.wait_for(digest)
        took = 1000 * (time.monotonic() - t0)
        print(f"{label}: delivery -> reconcile {took:.1f} ms (debounce {DEBOUNCE * 1000:g} ms)")


@pytest.fixture
def run_daemon() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(directory: Path, follow_external_symlinks: bool = False) -> Running:
        r = Running(directory, follow_external_symlinks)
        r.thread.start()
        r.wait_for(r.engine.load(full=True).digest)
        started.append(r)
        return r

    yield start
    for r in started:
        r.daemon.stop()
        r.thread.join(5)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_directory_itself_replaced_then_edited(tmp_path: Path,
                                                   run_daemon: Callable[..., Running]) -> None:
    """``mv conf.d conf.old; mv conf.new conf.d``: the recursive watch followed the old
    directory (inotify watches inodes) and later edits of the new one went unseen."""
    conf = tmp_path / "conf.d"
    write(conf / "a.yaml", "a: 1\n")
    r = run_daemon(conf)

    def swap() -> None:
        write(tmp_path / "conf.new" / "a.yaml", "a: 2\n")
        conf.rename(tmp_path / "conf.old")
        (tmp_path / "conf.new").rename(conf)

    r.deliver("directory replaced", swap)
    r.deliver("edit inside the new directory", lambda: (conf / "a.yaml").write_text("a: 3\n"))
    r.deliver("new file in the new directory", lambda: write(conf / "b.yaml", "b: 1\n"))


def test_plain_edit_and_new_file(tmp_path: Path, run_daemon: Callable[..., Running]) -> None:
    conf = tmp_path / "conf.d"
    write(conf / "a.yaml", "a: 1\n")
    r = run_daemon(conf)
    r.deliver("plain edit", lambda: (conf / "a.yaml").write_text("a: 2\n"))
    r.deliver("new file in a new subdirectory", lambda: write(conf / "sub" / "b.yaml", "b: 1\n"))
    r.deliver("file removed", lambda: (conf / "sub" / "b.yaml").unlink())


def test_editor_save_via_rename(tmp_path: Path, run_daemon: Callable[..., Running]) -> None:
    conf = tmp_path / "conf.d"
    write(conf / "a.yaml", "a: 1\n")
    r = run_daemon(conf)

    def save() -> None:
        tmp = conf / ".a.yaml.swp"
        tmp.write_text("a: 2\n")
        os.replace(tmp, conf / "a.yaml")

    r.deliver("editor save-via-rename", save)


def test_configmap_data_swap(tmp_path: Path, run_daemon: Callable[..., Running]) -> None:
    conf = tmp_path / "volume"
    conf.mkdir()
    configmap_publish(conf, "2024_01_01_00_00_00.1", {"svc.yaml": "v: 1\n"})
    r = run_daemon(conf)
    r.deliver("configmap ..data swap",
              lambda: configmap_publish(conf, "2024_01_01_00_00_01.2", {"svc.yaml": "v: 2\n"}))
    r.deliver("configmap ..data swap again",
              lambda: configmap_publish(conf, "2024_01_01_00_00_02.3", {"svc.yaml": "v: 3\n"}))


def _gitsync_flip(root: Path, sha: str, files: dict[str, str], link: str = "current") -> None:
    """What git-sync does: a new worktree, a temp link, rename it over the link, drop the old worktree."""
    wt = root / ".worktrees" / sha
    for name, text in files.items():
        write(wt / name, text)
    old = os.readlink(root / link) if (root / link).is_symlink() else None
    os.symlink(f".worktrees/{sha}", root / f"{link}.tmp")
    os.replace(root / f"{link}.tmp", root / link)
    if old:
        shutil.rmtree(root / old)


def test_gitsync_link_flip_on_dir_itself(tmp_path: Path, run_daemon: Callable[..., Running]) -> None:
    root = tmp_path / "git"
    _gitsync_flip(root, "a" * 40, {"lb/svc.yaml": "v: 1\n"})
    r = run_daemon(root / "current" / "lb")  # DIR lies below the flipped link
    r.deliver("git-sync flip", lambda: _gitsync_flip(root, "b" * 40, {"lb/svc.yaml": "v: 2\n"}))
    # the watch followed the flip: an edit inside the new worktree is seen too
    r.deliver("edit inside the new worktree", lambda: (root / ".worktrees" / ("b" * 40) / "lb" / "svc.yaml")
              .write_text("v: 3\n"))
    r.deliver("git-sync flip again", lambda: _gitsync_flip(root, "c" * 40, {"lb/svc.yaml": "v: 4\n"}))
    stale = ("a" * 40, "b" * 40)
    assert not any(t.path.endswith(stale) for t in r.daemon._watcher.targets())


def test_gitsync_link_flip_as_a_child(tmp_path: Path, run_daemon: Callable[..., Running]) -> None:
    # /etc/lbctl/conf.d/site -> /srv/git/current (a child link pointing outside DIR), which
    # the loader reads only with --follow-external-symlinks
    root = tmp_path / "srv"
    _gitsync_flip(root, "a" * 40, {"svc.yaml": "v: 1\n"})
    conf = tmp_path / "conf.d"
    conf.mkdir()
    os.symlink(root / "current", conf / "site")
    write(conf / "local.yaml", "l: 1\n")
    outside = Target(os.path.realpath(root / "current"), True)
    assert outside not in watch_targets(str(conf))
    assert outside in watch_targets(str(conf), follow_external_symlinks=True)
    r = run_daemon(conf, follow_external_symlinks=True)
    r.deliver("git-sync flip behind a child link",
              lambda: _gitsync_flip(root, "b" * 40, {"svc.yaml": "v: 2\n"}))
    r.deliver("edit inside the new worktree", lambda: (root / ".worktrees" / ("b" * 40) / "svc.yaml")
              .write_text("v: 3\n"))


def test_directory_created_after_start(tmp_path: Path, run_daemon: Callable[..., Running]) -> None:
    conf = tmp_path / "later"
    r = run_daemon(conf)
    r.deliver("directory appears", lambda: write(conf / "a.yaml", "a: 1\n"))
    r.deliver("edit in it", lambda: (conf / "a.yaml").write_text("a: 2\n"))


def test_watch_targets_for_the_layouts(tmp_path: Path) -> None:
    root = tmp_path / "git"
    _gitsync_flip(root, "a" * 40, {"svc.yaml": "v: 1\n"})
    real_root = os.path.realpath(root)
    targets = watch_targets(str(root / "current"))
    assert Target(os.path.join(real_root, ".worktrees", "a" * 40), True) in targets
    assert Target(real_root, False, frozenset({"current"})) in targets
    conf = tmp_path / "cm"
    conf.mkdir()
    configmap_publish(conf, "x", {"a.yaml": "a: 1\n"})
    targets = watch_targets(str(conf))
    assert Target(os.path.realpath(conf), True) in targets
    assert {t.path for t in targets} == {os.path.realpath(conf), os.path.realpath(tmp_path)}


class Handled:
    """Every (watch, path) a watch handler was given, whether it passed it on or not."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.cond = threading.Condition()

    def add(self, watch: str, path: str) -> None:
        with self.cond:
            self.seen.append((watch, path))
            self.cond.notify_all()

    def wait_for(self, watch: str, path: str) -> None:
        with self.cond:  # the timeout only keeps a dead watcher from hanging the suite
            assert self.cond.wait_for(lambda: (watch, path) in self.seen, 10), f"{watch} never saw {path}"


def test_noise_next_to_the_directory_is_ignored(tmp_path: Path, run_daemon: Callable[..., Running],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    handled = Handled()
    handle = fswatch._Handler.on_any_event

    def spy(self: fswatch._Handler, event: fswatch.FileSystemEvent) -> None:
        handle(self, event)
        handled.add(self.target.path, os.fsdecode(event.src_path))

    monkeypatch.setattr(fswatch._Handler, "on_any_event", spy)
    conf = tmp_path / "conf.d"
    write(conf / "a.yaml", "a: 1\n")
    r = run_daemon(conf)
    loads, notified = len(r.engine.calls), list(r.notified)
    parent = os.path.realpath(tmp_path)  # watched for a replacement of conf.d, filtered to that name
    for i in range(20):
        (tmp_path / f"unrelated{i}").write_text("x")
    (tmp_path / "unrelated-last").write_text("x")
    # One watch hands its events over in order: once the parent's watch has handled the
    # last file, it has handled (and dropped) every one before it.
    handled.wait_for(parent, os.path.join(parent, "unrelated-last"))
    assert sum(path.startswith(os.path.join(parent, "unrelated")) for _, path in handled.seen) >= 21
    assert r.notified == notified and len(r.engine.calls) == loads
    # and the watcher is alive: a real edit after the noise is delivered
    r.deliver("edit after the noise", lambda: (conf / "a.yaml").write_text("a: 2\n"))
    assert len(r.notified) > len(notified)
