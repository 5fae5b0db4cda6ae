"""Tell the daemon when anything under its configuration directory may have changed.

Why this exists: deliveries are atomic swaps of symlinks more often than file
edits.  kubelet writes a ConfigMap volume as ``DIR/..2024_01_01_xx/`` plus a
``..data`` link renamed over the old one; git-sync checks out
``ROOT/.worktrees/<sha>`` and renames a new ``ROOT/current`` link over the old
one, so DIR itself (or one of its ancestors, or a child) is a symlink that
flips.  A watcher that only follows the directory it resolved at start-up
keeps watching the *old* target and misses every later delivery.

So we watch a set of targets computed from the layout and recompute it
(``rearm``) whenever the daemon acts on a change:

* the resolved DIR, recursively (plain edits, editor save-via-rename, the
  ConfigMap ``..data`` swap, which all happen inside it);
* the real parent directory of every symlink on DIR's lexical path (and of DIR
  itself), non-recursively, filtered to that link's name: this is where a
  git-sync link flip happens;
* with ``--follow-external-symlinks`` only, the resolved targets of symlinks
  inside DIR that point outside it (without it the loader refuses such links,
  so there is nothing there to watch).

Events carry no meaning beyond "look again": the daemon re-loads and compares
content.  This is the only module that imports watchdog (bookworm's 2.2 API,
which the newest releases still accept).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from reconciler.config.discover import inside

# Events that cannot mean new content (watchdog >= 2.3 reports opens and reads).
_IGNORED_EVENTS = frozenset({"opened", "closed_no_write"})
_SKIP_DIRS = frozenset({".git"})


@dataclass(frozen=True, order=True)
class Target:
    """One watch: a real directory, recursive or not, optionally filtered by entry name."""

    path: str
    recursive: bool
    names: frozenset[str] | None = None  # only events on these entry names count


def _lexical(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def watch_targets(directory: str, follow_external_symlinks: bool = False) -> frozenset[Target]:
    """The watches that see every delivery style for ``directory`` as laid out now."""
    lexical = _lexical(directory)
    real = os.path.realpath(lexical)
    parent_names: dict[str, set[str]] = {}

    def watch_parent_of(link: str) -> None:
        parent = os.path.realpath(os.path.dirname(link))
        if os.path.isdir(parent):
            parent_names.setdefault(parent, set()).add(os.path.basename(link))

    # DIR itself may be replaced (or created later): watch its real parent.
    watch_parent_of(lexical)
    # Every symlink on the lexical path can flip (git-sync: ROOT/current -> .worktrees/SHA).
    probe = lexical
    while True:
        if os.path.islink(probe):
            watch_parent_of(probe)
        up = os.path.dirname(probe)
        if up == probe:
            break
        probe = up

    targets: set[Target] = set()
    if os.path.isdir(real):
        targets.add(Target(real, True))
    if os.path.isdir(real) and follow_external_symlinks:
        # Links inside DIR that point outside it (ConfigMap links point inside: already covered).
        for root, dirs, files in os.walk(real):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
            for name in dirs + files:
                entry = os.path.join(root, name)
                if not os.path.islink(entry):
                    continue
                resolved = os.path.realpath(entry)
                if inside(resolved, real):
                    continue
                if os.path.isdir(resolved):
                    targets.add(Target(resolved, True))
                elif os.path.exists(resolved):
                    parent_names.setdefault(os.path.dirname(resolved), set()).add(os.path.basename(resolved))
    for parent, names in parent_names.items():
        if Target(parent, True) in targets:
            continue
        targets.add(Target(parent, False, frozenset(names)))
    return frozenset(targets)


class _Handler(FileSystemEventHandler):
    def __init__(self, target: Target, notify: Callable[[str], None]) -> None:
        super().__init__()
        self.target = target
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED_EVENTS:
            return
        paths = [os.fsdecode(event.src_path)]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(os.fsdecode(dest))
        names = self.target.names
        if names is not None:
            paths = [p for p in paths if os.path.basename(p.rstrip(os.sep)) in names]
        if paths:
            self.notify(paths[-1])


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class DirWatcher:
    """Watches ``directory`` through symlink flips; calls ``notify(path)`` from watchdog's threads."""

    def __init__(self, directory: str, notify: Callable[[str], None], *,
                 follow_external_symlinks: bool = False) -> None:
        self.directory = directory
        self.follow_external_symlinks = follow_external_symlinks
        self._notify = notify
        self._observer = Observer()
        self._observer.daemon = True
        self._watches: dict[Target, object] = {}
        self._ids: dict[Target, tuple[int, int] | None] = {}  # (st_dev, st_ino) when scheduled
        self._lock = threading.Lock()

    def start(self) -> None:
        self._observer.start()
        self.rearm()

    def targets(self) -> frozenset[Target]:
        with self._lock:
            return frozenset(self._watches)

    def rearm(self) -> bool:
        """Bring the watches in line with the current layout; True when they changed.

        A watch follows the directory it was placed on (inotify watches inodes), not
        its path: when a watched path now names another directory (``mv conf.d
        conf.old; mv conf.new conf.d``), its watch is placed again.
        """
        wanted = watch_targets(self.directory, self.follow_external_symlinks)
        with self._lock:
            before = {t: self._ids.get(t) for t in self._watches}
            moved = {t for t in set(self._watches) & wanted if _identity(t.path) != self._ids.get(t)}
            for target in (set(self._watches) - wanted) | moved:
                watch = self._watches.pop(target)
                self._ids.pop(target, None)
                try:
                    self._observer.unschedule(watch)  # type: ignore[arg-type]
                except Exception:  # noqa: BLE001 - the target may be gone already
                    pass
            for target in sorted(wanted - set(self._watches)):
                ident = _identity(target.path)
                try:
                    self._watches[target] = self._observer.schedule(
                        _Handler(target, self._notify), target.path, recursive=target.recursive)
                except OSError:
                    continue  # vanished between listing and scheduling: the next rearm retries
                self._ids[target] = ident
            return {t: self._ids.get(t) for t in self._watches} != before

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
