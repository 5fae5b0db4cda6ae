"""The bpf driver's handles: loading the object, pinning, opening and revalidating the pins.

Why this exists: every other part of the driver works on ``self._maps``; this
part makes them: it checks the object against lb_shared.h and ``_libbpf.MAPS``
(``check_layout``), migrates pins of an older layout live (``bpf_migrate``; commands
that only look report it instead) and refuses what cannot be converted
(``_libbpf.check_pinned_map``, the one place that detects a pinned-layout
mismatch), loads the object reusing
pinned maps, pins maps and programs, and drops the handles when the pins were
replaced behind its back (``revalidate``).  It also holds the driver's state.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import Future
from typing import Self

from reconciler.constants import BPFFS, DATAPATH_OBJECT, DEFAULT_PIN_ROOT
from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_capacity, bpf_migrate
from reconciler.drivers.bpf_capacity import CAPACITY_MAPS, capacities_of, map_sizes, pinned_sizes
from reconciler.drivers.bpf_codec import _Index
from reconciler.drivers.datapath_files import datapath_file
from reconciler.errors import LbctlError
from reconciler.limits import box_memory
from reconciler.model import DatapathCapacities

PROGS = {"tc": "lb_tc", "xdp": "lb_xdp"}
EXPIRE_PROG = "lb_ct_expire"  # the idle sweep's syscall program (bpf_expire)


def pin_root_for(netns: str | None, root: str = DEFAULT_PIN_ROOT) -> str:
    return os.path.join(root, netns) if netns else root


def _ensure_bpffs() -> None:
    with open("/proc/mounts", encoding="ascii") as fh:
        if any(ln.split()[1] == BPFFS and ln.split()[2] == "bpf" for ln in fh if len(ln.split()) > 2):
            return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise LbctlError(
            f"bpffs is not mounted at {BPFFS} and mounting it failed: {os.strerror(err)}",
            f"mount it: mount -t bpf bpf {BPFFS} (needs root)",
        )


def default_capacities() -> DatapathCapacities:
    """This box's default capacities (a Datapath that sets none, or no Datapath)."""
    return DatapathCapacities().resolved(box_memory())


def _resize_notice(done: bpf_migrate.Migration) -> str:
    """One line saying which capacities change (pending: what apply will do)."""
    old = capacities_of({n: o for n, (o, _new) in done.resized.items()})
    new = capacities_of({n: m for n, (_old, m) in done.resized.items()})
    parts = [f"{setting} {getattr(old, f):,} -> {getattr(new, f):,}"
             for f, setting in bpf_capacity.SETTING.items()
             if getattr(new, f) is not None and getattr(old, f) != getattr(new, f)]
    maps = ", ".join(sorted(done.resized))
    if done.pending:
        return (f"capacities change: {'; '.join(parts)}; apply re-creates maps {maps} at the new size live "
                "(contents copied, established flows kept)")
    return f"capacities changed live: {'; '.join(parts)} (maps {maps} re-created, contents copied)"


class BpfPins:
    """Map handles and the driver's state; the base of the bpf driver's parts."""

    def __init__(
        self, pin_root: str | None = None, netns: str | None = None, obj_path: str | None = None,
        migrate: bool = True, capacities: DatapathCapacities | None = None,
    ) -> None:
        """``migrate=False``: pins of another layout are reported (LayoutError), not migrated
        (commands that only look: plan, get, export, down); a change of capacities only is
        reported as a notice (the plan shows it).  ``capacities``: the Datapath's, resolved (map
        sizes, ``bpf_capacity``); None keeps the pinned sizes (the defaults for a new datapath)."""
        self.netns = netns
        self.migrate = migrate
        self.capacities = capacities
        self._limits: dict[str, int] = {}
        self.pin_root = pin_root or pin_root_for(netns)
        self.obj_path = obj_path or datapath_file(DATAPATH_OBJECT)
        self._obj: B.BpfObject | None = None  # the first object loaded: its map fds are self._maps
        # program name -> the object that loaded it: each program is verified only when first
        # needed (~1 s each for lb_tc and lb_xdp), later ones by objects reusing the pinned maps
        self._progs: dict[str, B.BpfObject] = {}
        self.load_hooks: tuple[str, ...] = ("tc",)  # the hooks load() verifies (the bpf apply sets them)
        # True while the bpf apply loads: the hook programs are then verified aside (load())
        self.verify_aside = False
        self._aside: tuple[tuple[str, ...], Future[B.BpfObject]] | None = None
        # maps this process's load created (the kernel zeroes a new array); the bpf apply
        # that loaded skips zeroing the counters of fresh ids in them, then clears this
        self._created: frozenset[str] = frozenset()
        self._maps: dict[str, B.Map] = {}
        self._own_fds: list[int] = []
        self._base_writes = 0
        self._checked = False
        self._index: _Index | None = None
        self._pend: dict[str, dict[bytes, bytes]] = {}
        self._pend_bytes = 0
        self._addr_pend: dict[int, int] | None = None  # lb_addrset word -> bits to set (bpf_addrset)
        self._touched: set[int] = set()
        self._purge: dict[int, set[int] | None] = {}  # service id -> stat ids whose flows end (None: all)
        self._held_stats: set[int] = set()  # released this apply: not reused before their flows end
        self._pins: tuple[tuple[int, int], ...] | None = None  # (dev, inode) of each map pin opened
        self._map_ids: frozenset[int] | None = None
        self.reopened = 0  # times the handles were dropped because the pins had been replaced
        self.migration: bpf_migrate.Migration | None = None  # the last layout migration this driver ran
        self._notices: list[str] = []

    # ----------------------------------------------------------------- plumbing

    @property
    def writes(self) -> int:
        return self._base_writes + sum(m.writes for m in self._maps.values())

    def _count_write(self, n: int = 1) -> None:
        self._base_writes += n

    def _pins_exist(self) -> bool:
        return all(os.path.exists(os.path.join(self.pin_root, n)) for n in B.MAPS)

    def _pin_inodes(self) -> tuple[tuple[int, int], ...] | None:
        """(device, inode) of every map pin; None when one is missing.  A pin removed and
        made again (``lbctl down`` then ``lbctl apply``) is a new inode on bpffs."""
        out = []
        for name in B.MAPS:
            try:
                st = os.stat(os.path.join(self.pin_root, name))
            except OSError:
                return None
            out.append((st.st_dev, st.st_ino))
        return tuple(out)

    def revalidate(self) -> bool:
        """Drop the map handles if the pins are no longer the maps they were opened from.

        Another process may have removed the pins and made new ones (``lbctl down``
        then ``lbctl apply`` while the daemon runs): writes through the old handles
        would go to orphaned maps the datapath no longer uses.  Returns True when
        the handles were dropped (the next call reopens the pins, or finds none).
        Costs one ``stat`` per map; ``read``, ``read_keys`` and ``apply`` call it.
        """
        if not self._maps or self._pin_inodes() == self._pins:
            return False
        self.close()
        self.reopened += 1
        return True

    def _check_layout(self) -> dict[str, tuple[int, int, int, int]]:
        """Check the object against lb_shared.h; its map definitions (for the pins)."""
        obj = B.BpfObject(self.obj_path)
        try:
            if not self._checked:
                obj.check_layout()
            defs = {name: obj.map_def(name) for name in B.MAPS}
        finally:
            obj.close()
        self._checked = True
        return defs

    def _check_pinned_layout(self, defs: dict[str, tuple[int, int, int, int]],
                             fds: dict[str, int] | None = None) -> None:
        """The one place pins of another layout are detected (``_open`` and ``load`` call it):
        every pinned map must have the (type, key size, value size, max entries) the object
        declares (``defs``), else ``LayoutError`` (``_libbpf.check_pinned_map``).  ``fds``:
        maps already opened, by name; other existing pins are opened here for the check.
        """
        def check(name: str, path: str, fd: int) -> None:
            want = defs[name]
            if name in CAPACITY_MAPS:  # a setting: any size is this layout (a change is a migration)
                want = (*want[:3], B.map_info(fd)[3])
            B.check_pinned_map(name, path, fd, want)

        for name in B.MAPS:
            path = os.path.join(self.pin_root, name)
            fd = (fds or {}).get(name, -1)
            if fd >= 0:
                check(name, path, fd)
                continue
            if not os.path.exists(path):
                continue
            fd = B.obj_get(path)
            try:
                check(name, path, fd)
            finally:
                os.close(fd)

    def _open(self, create: bool) -> bool:
        """Make map handles available; False when nothing is installed and not create."""
        if self._maps:
            return True
        self._migrate()
        for _attempt in range(3):
            before = self._pin_inodes()
            if before is None:
                break
            defs = self._check_layout()
            try:
                fds = {}
                for name in B.MAPS:
                    fds[name] = B.obj_get(os.path.join(self.pin_root, name))
                    self._own_fds.append(fds[name])
                self._check_pinned_layout(defs, fds)
                self._maps = {name: B.Map(name, fds[name], spec) for name, spec in B.MAPS.items()}
            except BaseException:
                self.close()
                raise
            if self._pin_inodes() == before:
                self._pins = before
                return True
            self.close()  # the pins changed while we opened them: open them again
        if not create:
            return False
        self.load()
        return True

    def load(self) -> None:
        """Load the object (reusing pinned maps) with the programs of ``load_hooks`` and the
        expiry program, pin maps and those programs.  Another hook's program is loaded when
        first asked for (``_prog``).

        With ``verify_aside`` (the bpf apply's first load) the first object holds only the
        small expiry program: it creates and pins the maps at once, and the hook programs
        are loaded by a second object on those maps in a thread of their own.  The kernel's
        verifier (1.1-2.7 s for ``lb_tc`` on the 2-vCPU VMs) then runs while the apply fills
        the maps (libbpf's calls release the GIL); the first ``_prog`` of such a program, or
        ``settle()``, waits for it and pins it.  A cold 10,000-service apply's kernel phase, same
        run: 5.20 -> 3.33 s (``bench/results/reconcile.md``, ``docs/architecture.md``).
        """
        if self._obj is not None:
            return
        _ensure_bpffs()
        os.makedirs(self.pin_root, exist_ok=True)
        hooks = tuple(PROGS[h] for h in self.load_hooks)
        aside = self.verify_aside and bool(hooks)
        progs = (EXPIRE_PROG,) if aside else (*hooks, EXPIRE_PROG)
        missing = frozenset(n for n in B.MAPS if not os.path.lexists(os.path.join(self.pin_root, n)))
        obj = self._load_object(progs, migrate=True)
        self._created = missing  # no pin before the load: libbpf created (and pinned) the map
        self._obj = obj
        self._progs = dict.fromkeys(progs, obj)
        for m in self._maps.values():
            self._base_writes += m.writes
        for fd in self._own_fds:
            os.close(fd)
        self._own_fds = []
        self._maps = {name: B.Map(name, obj.map_fd(name), spec) for name, spec in B.MAPS.items()}
        self._pins = self._pin_inodes()
        self._map_ids = None
        self._pin_progs()
        if aside:
            self._aside = (hooks, self._load_aside(hooks))

    def _load_aside(self, progs: tuple[str, ...]) -> Future[B.BpfObject]:
        """``_load_object(progs)`` in a thread; its result or error comes out of the future."""
        done: Future[B.BpfObject] = Future()

        def run() -> None:
            try:
                done.set_result(self._load_object(progs, migrate=False))
            except BaseException as exc:  # handed to whoever waits (settle)
                done.set_exception(exc)

        threading.Thread(target=run, name="lbctl-verify", daemon=True).start()
        return done

    def settle(self) -> None:
        """Wait for programs being verified aside (``load``) and pin them; a verifier error raises here."""
        if self._aside is None:
            return
        progs, done = self._aside
        self._aside = None
        obj = done.result()
        for name in progs:
            self._progs[name] = obj
        for hook, prog in PROGS.items():
            if prog in progs:
                self._pin_prog(hook, obj)

    def _load_object(self, progs: tuple[str, ...], migrate: bool) -> B.BpfObject:
        """A loaded object holding ``progs`` only, its maps the pinned ones (or new, pinned)."""
        obj = B.BpfObject(self.obj_path)
        try:
            obj.check_layout()
            self._checked = True
            if migrate:
                self._migrate()
            self._check_pinned_layout({name: obj.map_def(name) for name in B.MAPS})
            # pinned maps are reused at their size (libbpf refuses another); new ones get the setting
            sizes = map_sizes(self.capacities or default_capacities()) | pinned_sizes(self.pin_root)
            obj.set_max_entries({n: size for n, size in sizes.items() if n in obj.map_names()})
            obj.set_pin_root(self.pin_root)
            obj.load(progs, only=True)
        except BaseException:
            obj.close()
            raise
        return obj

    def _prog(self, name: str) -> int:
        """An fd of this process's loaded program ``name`` (loading the object first, or
        another object with just this program, which reuses the pinned maps; a hook's
        program is pinned as it loads)."""
        self.load()
        if self._aside is not None and name in self._aside[0]:
            self.settle()
        obj = self._progs.get(name)
        if obj is None:
            obj = self._load_object((name,), migrate=False)
            self._progs[name] = obj
            for hook, prog in PROGS.items():
                if prog == name:
                    self._pin_prog(hook, obj)
        return obj.prog_fd(name)

    def _migrate(self) -> bool:
        """Convert pinned maps of another layout to the object's, live (see bpf_migrate)."""
        if not any(os.path.exists(os.path.join(self.pin_root, n)) for n in B.MAPS):
            return False  # nothing installed
        if not self._checked:
            self._check_layout()  # the migration writes lb_attach through cffi: it must fit the object
        want = self.capacities
        sizes = map_sizes(want) if want is not None else pinned_sizes(self.pin_root)

        def check_shrink() -> None:
            if want is not None:
                bpf_capacity.check_shrink(capacities_of(pinned_sizes(self.pin_root)), want,
                                          bpf_capacity.usage(self.pin_root))

        done = bpf_migrate.migrate_if_needed(self.pin_root, self.obj_path, self.netns, PROGS,
                                             dry_run=not self.migrate, sizes=sizes, check=check_shrink)
        if done is not None and done.resized:
            self._notices.append(_resize_notice(done))
        if done is not None and done.pending:
            return False
        if done is not None:
            self.migration = done
        if done is not None and set(done.changed) - set(done.resized):
            self._notices.append(
                f"migrated the pinned datapath to layout v{B.const('LB_LAYOUT_VERSION')} live: maps "
                f"{', '.join(done.changed)} changed; {sum(done.maps.values())} entries copied, "
                f"{done.second_pass} again after the swap; programs replaced on "
                f"{', '.join(f'{i} ({h})' for i, h, _ in done.hooks) or 'no hook'}")
        return done is not None

    def map_limit(self, name: str) -> int:
        """``max_entries`` of the live map ``name`` (a capacity map's size is a setting)."""
        n = self._limits.get(name)
        if n is None:
            n = self._limits[name] = B.map_info(self.map(name).fd)[3]
        return n

    def capacity_use(self) -> dict[str, tuple[int, int]]:
        """Setting -> (size, in use) of the pinned datapath; this driver's (or the default)
        capacities with nothing in use when none is pinned (``lbctl get capacities``)."""
        sizes = pinned_sizes(self.pin_root)
        if len(sizes) == len(CAPACITY_MAPS):
            caps, used = capacities_of(sizes), bpf_capacity.usage(self.pin_root)
            return {s: (getattr(caps, f), getattr(used, f)) for f, s in bpf_capacity.SETTING.items()}
        caps = self.capacities or default_capacities()
        return {s: (getattr(caps, f), 0) for f, s in bpf_capacity.SETTING.items()}

    def notices(self) -> list[str]:
        """What the driver did on its own (a layout migration), once."""
        out, self._notices = self._notices, []
        return out

    def _pin_progs(self) -> None:
        """Pin the loaded hook programs, replacing what their program pins held."""
        for hook, prog in PROGS.items():
            obj = self._progs.get(prog)
            if obj is not None:
                self._pin_prog(hook, obj)

    def _pin_prog(self, hook: str, obj: B.BpfObject) -> None:
        path = os.path.join(self.pin_root, f"prog_{hook}")
        if os.path.lexists(path):
            os.unlink(path)
        B.obj_pin(obj.prog_fd(PROGS[hook]), path)

    def prog_fd(self, hook: str) -> int:
        return self._prog(PROGS[hook])

    def map(self, name: str) -> B.Map:
        self._open(create=True)
        return self._maps[name]

    def close(self) -> None:
        self._created = frozenset()
        if self._aside is not None:  # wait for the verifier's thread; what it loaded is closed below
            progs, done = self._aside
            self._aside = None
            if done.exception() is None:
                self._progs.update(dict.fromkeys(progs, done.result()))
        for fd in self._own_fds:
            os.close(fd)
        self._own_fds = []
        for m in self._maps.values():
            self._base_writes += m.writes
        self._maps = {}
        self._limits = {}
        self._index = None
        self._pins = None
        self._map_ids = None
        for obj in {id(o): o for o in (*self._progs.values(), *([self._obj] if self._obj else []))}.values():
            obj.close()
        self._obj = None
        self._progs = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
