"""Live migration of the pinned maps to the layout of the installed datapath object.

Why this exists: every feature that changes a map key or value (conntrack's
source-NAT side for fullnat, firewall maps, ...) would otherwise need ``lbctl
down``, which drops every flow; a package upgrade must not cut traffic.  The
kernel keeps the BTF of each pinned map, so the old layout is read from the pins
themselves, field by field, and compared with the object's; when they differ:

1. every map is checked for a conversion before anything is touched: same map
   type, same key layout, no fewer entries, and a value whose old fields all
   exist under the same name with the same kind (integers of the same size,
   arrays no shorter, structs recursively); new fields are zero.  Anything else
   is refused with a ``LayoutError`` naming the map and field (nothing changed);
2. the object is loaded with its maps pinned in ``PIN_ROOT/lb_migrate`` (new, empty);
3. every entry is copied and converted (pass 1);
4. the new pins are renamed over the old ones (one atomic rename each on bpffs)
   and the new programs pinned;
5. every hook running a program on the old maps gets the new program in place:
   tc by replacing lbctl's filter in its slot, XDP with XDP_FLAGS_REPLACE;
6. pass 2: entries of the maps the datapath writes (conntrack, persistence,
   round-robin positions, connection counts) that the old program changed or
   created after pass 1 are copied again, unless the new program has written
   them since (its entry is newer); so flows opened during the window survive;
7. the lb_attach records get the new program ids; old pins of maps the object
   no longer has, and the staging directory, are removed.

A map the object has and the pins lack (a map a new version adds) is created
empty the same way, since the running program cannot use it.

Per-CPU counters incremented by the old program between pass 1 and the swap
(a few milliseconds) are not carried over.  A failure before step 4 removes the
staging pins and leaves the old datapath as it was; after it, the pins are the
new maps and the next reconcile repairs any hook still on the old program.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.drivers import _libbpf as B
from reconciler.drivers.netns import in_netns

_U32 = struct.Struct("<I")  # array keys
STAGING = "lb_migrate"  # bpffs refuses names with a dot; no netns box is named so
_ARRAY_TYPES = frozenset({2, 6})  # BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY
_PERCPU_TYPES = frozenset({5, 6, 10})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
# Maps the datapath itself writes (the others change only under the control plane's lock,
# which the migrating process holds); per-CPU counters are left out (see the module doc).
DATAPATH_WRITTEN = ("lb_ct", "lb_persist", "lb_rr", "lb_be_conns")


class Refused(Exception):
    """A map cannot be converted; the message says which field and why."""


@dataclass(frozen=True)
class Conversion:
    """How to turn one map's old entries into new ones."""

    name: str
    old: B.MapLayout
    new: B.MapLayout
    copies: tuple[tuple[int, int, int], ...]  # (old offset, new offset, bytes) of one value

    def value(self, old: bytes) -> bytes:
        """The new value bytes of an old value (every CPU of a per-CPU map)."""
        if self.old == self.new:
            return old
        ostride, nstride = _stride(self.old), _stride(self.new)
        out = bytearray(len(old) // ostride * nstride)
        for cpu in range(len(old) // ostride):
            o, n = cpu * ostride, cpu * nstride
            for src, dst, size in self.copies:
                out[n + dst : n + dst + size] = old[o + src : o + src + size]
        return bytes(out)


@dataclass
class Migration:
    """What a migration did (for logs and tests)."""

    maps: dict[str, int] = field(default_factory=dict)  # entries copied per map
    changed: tuple[str, ...] = ()  # maps whose layout changed or that were not pinned
    hooks: list[tuple[str, str, int]] = field(default_factory=list)  # (ifname, hook, new program id)
    second_pass: int = 0  # entries copied again after the swap
    removed: list[str] = field(default_factory=list)  # old pins of maps the object no longer has
    resized: dict[str, tuple[int, int]] = field(default_factory=dict)  # map -> (old, new) max_entries
    pending: bool = False  # a dry run: only sizes change, nothing was done


def _stride(layout: B.MapLayout) -> int:
    return (layout.value_size + 7) // 8 * 8 if layout.type in _PERCPU_TYPES else layout.value_size


def _size(shape: B.Shape) -> int:
    return int(shape[2] if shape[0] == "other" else shape[1])


def _copies(old: B.Shape, new: B.Shape, where: str, so: int, do: int,
            out: list[tuple[int, int, int]]) -> None:
    if old == new:
        out.append((so, do, _size(old)))
        return
    if old[0] == "unknown" or new[0] == "unknown":
        raise Refused(f"{where}: the pinned or the new layout is not known (a map without BTF)")
    if old[0] != new[0]:
        raise Refused(f"{where}: {old[0]} became {new[0]}")
    if old[0] == "int":
        raise Refused(f"{where}: a {old[1]}-byte integer became {new[1]} bytes")
    if old[0] == "array":
        if new[3] < old[3]:
            raise Refused(f"{where}: the array shrank from {old[3]} to {new[3]} elements")
        oe, ne = old[2], new[2]
        for i in range(old[3]):
            _copies(oe, ne, f"{where}[{i}]", so + i * _size(oe), do + i * _size(ne), out)
        return
    if old[0] == "struct":
        members = {name: (off, shape) for name, off, shape in new[2]}
        for name, off, shape in old[2]:
            if name not in members:
                raise Refused(f"{where}.{name}: the field is gone (a field whose meaning changed "
                              "must be renamed, so it is never misread)")
            noff, nshape = members[name]
            _copies(shape, nshape, f"{where}.{name}", so + off, do + noff, out)
        return
    raise Refused(f"{where}: a {old[0]} changed")


def _merged(copies: list[tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
    out: list[tuple[int, int, int]] = []
    for src, dst, n in sorted(copies):
        if out and out[-1][0] + out[-1][2] == src and out[-1][1] + out[-1][2] == dst:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + n)
        else:
            out.append((src, dst, n))
    return tuple(out)


def conversion(name: str, old: B.MapLayout, new: B.MapLayout, *, shrink: bool = False) -> Conversion:
    """How map ``name`` converts from ``old`` to ``new``; ``Refused`` when it cannot.
    ``shrink``: a smaller map is wanted, the caller checked its entries in use fit."""
    if old.type != new.type:
        raise Refused(f"{name}: the map type changed ({old.type} -> {new.type})")
    if new.max_entries < old.max_entries and not shrink:
        raise Refused(f"{name}: holds {new.max_entries} entries, the pinned map {old.max_entries}")
    if (old.key, old.key_size) != (new.key, new.key_size):
        raise Refused(f"{name}: the key changed, so old entries cannot be matched to new ones")
    out: list[tuple[int, int, int]] = []
    _copies(old.value, new.value, f"{name} value", 0, 0, out)
    return Conversion(name, old, new, _merged(out))


def _all_zero(b: bytes) -> bool:
    return not b.strip(b"\0")


class _Pins:
    """Open fds and layouts of the maps pinned under a pin root (closed by ``close``)."""

    def __init__(self, pin_root: str, names: list[str]) -> None:
        self.fds: dict[str, int] = {}
        self.layouts: dict[str, B.MapLayout] = {}
        try:
            for name in names:
                path = os.path.join(pin_root, name)
                if os.path.exists(path):
                    self.fds[name] = B.obj_get(path)
                    self.layouts[name] = B.pinned_map_layout(self.fds[name])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def migrate_if_needed(pin_root: str, obj_path: str, netns: str | None,
                      progs: dict[str, str], *, dry_run: bool = False,
                      sizes: Mapping[str, int] | None = None,
                      check: Callable[[], None] | None = None) -> Migration | None:
    """Migrate the maps pinned under ``pin_root`` to the layout of ``obj_path`` when they differ.

    None when nothing is pinned or every pinned map already has the object's layout.
    ``progs``: entry point per hook (``{"tc": "lb_tc", "xdp": "lb_xdp"}``).  ``sizes``:
    max_entries of maps whose size is a setting (the Datapath's capacities, ``bpf_capacity``);
    a size that differs from the pin's is a migration too, and may be smaller: ``check``
    (called under the lock, before anything changes) refuses one below what is in use.
    Raises ``LayoutError`` (nothing changed) when a map cannot be converted, and with
    ``dry_run`` also when it could be (a command that only looks says so and changes
    nothing), except when only sizes change: then it returns the pending migration
    (``Migration.pending``) for the plan to show.
    """
    if not os.path.isdir(pin_root):
        return None
    # Two lbctl processes (a `get` beside the daemon) must not migrate at once: the pin
    # root is locked, and the second one finds the layouts equal once it gets the lock.
    dir_fd = os.open(pin_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        return _migrate_locked(pin_root, obj_path, netns, progs, dry_run, sizes or {}, check)
    finally:
        os.close(dir_fd)  # releases the lock


def _migrate_locked(pin_root: str, obj_path: str, netns: str | None, progs: dict[str, str],
                    dry_run: bool, sizes: Mapping[str, int],
                    check: Callable[[], None] | None) -> Migration | None:
    obj = B.BpfObject(obj_path)
    try:
        names = obj.map_names()
        obj.set_max_entries({n: size for n, size in sizes.items() if n in names})
        pins = _Pins(pin_root, names)
        try:
            if not pins.layouts:
                return None  # nothing installed
            new = {name: B.object_map_layout(obj, name) for name in pins.layouts}
            # A map the pins lack (one this object adds, or a pin removed by hand) is created
            # empty, and the programs are swapped so the datapath uses it.
            changed = tuple(n for n in names if n not in pins.layouts or pins.layouts[n] != new[n])
            if not changed:
                return None
            convs: dict[str, Conversion] = {}
            refused = []
            for name in pins.layouts:
                try:
                    convs[name] = conversion(name, pins.layouts[name], new[name], shrink=name in sizes)
                except Refused as exc:
                    refused.append(str(exc))
            if refused:
                raise B.LayoutError(
                    f"the maps pinned under {pin_root} have a layout this lbctl (layout "
                    f"v{B.const('LB_LAYOUT_VERSION')}) cannot convert: " + "; ".join(refused)
                    + "; nothing was changed", B.PIN_MISMATCH_HINT)
            resized = {n: (pins.layouts[n].max_entries, new[n].max_entries) for n in changed
                       if n in sizes and n in pins.layouts
                       and pins.layouts[n].max_entries != new[n].max_entries}
            if check is not None and resized:
                check()
            if dry_run and all(n in resized and replace(pins.layouts[n], max_entries=new[n].max_entries)
                               == new[n] for n in changed):
                return Migration(changed=changed, resized=resized, pending=True)
            if dry_run:
                raise B.LayoutError(
                    f"the maps pinned under {pin_root} have another layout than this lbctl's (layout "
                    f"v{B.const('LB_LAYOUT_VERSION')}; changed: {', '.join(changed)}); this command "
                    "changes nothing", "run 'lbctl apply' (or let 'lbctl watch' reconcile): it migrates "
                    "the pinned datapath live, keeping established flows")
            done = _migrate(pin_root, obj, names, pins, convs, changed, netns, progs)
            done.resized = resized
            return done
        finally:
            pins.close()
    finally:
        obj.close()


def clear_staging(pin_root: str) -> None:
    """Remove the staging pins of a migration under ``pin_root`` (``lbctl down``)."""
    _clear_staging(os.path.join(pin_root, STAGING))


def _clear_staging(staging: str) -> None:
    if os.path.isdir(staging):
        for name in os.listdir(staging):
            os.unlink(os.path.join(staging, name))
        os.rmdir(staging)


def _migrate(pin_root: str, obj: B.BpfObject, names: list[str], pins: _Pins, convs: dict[str, Conversion],
             changed: tuple[str, ...], netns: str | None, progs: dict[str, str]) -> Migration:
    staging = os.path.join(pin_root, STAGING)
    _clear_staging(staging)  # left by a migration that died before its swap
    os.makedirs(staging)
    report = Migration(changed=changed)
    old_maps: dict[str, B.Map] = {}
    new_maps: dict[str, B.Map] = {}
    first: dict[str, dict[bytes, bytes]] = {}
    try:
        obj.set_pin_root(staging, names)
        obj.load(tuple(progs.values()))
        for name, conv in convs.items():
            o, n = conv.old, conv.new
            old_maps[name] = B.raw_map(name, pins.fds[name], o.key_size, o.value_size,
                                       o.type in _PERCPU_TYPES)
            new_maps[name] = B.raw_map(name, obj.map_fd(name), n.key_size, n.value_size,
                                       n.type in _PERCPU_TYPES)
            items = [(k, conv.value(v)) for k, v in old_maps[name].items_raw()
                     if not (o.type in _ARRAY_TYPES and (_all_zero(v) or _U32.unpack(k)[0] >= n.max_entries))]
            if len(items) > n.max_entries:  # a shrink the caller's check let through
                raise B.LayoutError(f"{name}: {len(items)} entries do not fit in {n.max_entries}; "
                                    "nothing was changed")
            B.write_raw_all_cpus(new_maps[name], items)
            report.maps[name] = len(items)
            if name in DATAPATH_WRITTEN:
                first[name] = dict(items)
        for hook, prog in progs.items():
            B.obj_pin(obj.prog_fd(prog), os.path.join(staging, f"prog_{hook}"))
    except BaseException:
        _clear_staging(staging)
        raise
    # The swap: from here on the pins are the new maps (see the module doc on failures).
    for name in [*names, *(f"prog_{hook}" for hook in progs)]:
        os.rename(os.path.join(staging, name), os.path.join(pin_root, name))
    old_ids = frozenset(B.map_id(fd) for fd in pins.fds.values())
    report.hooks = _replace_programs(obj, old_ids, netns, progs)
    for name, before in first.items():
        report.second_pass += _second_pass(convs[name], old_maps[name], new_maps[name], before)
    _record_attach(obj.map_fd("lb_attach"), report.hooks)
    for name in sorted(os.listdir(pin_root)):
        path = os.path.join(pin_root, name)
        if name.startswith("lb_") and name not in names and not os.path.isdir(path):
            os.unlink(path)
            report.removed.append(name)
    _clear_staging(staging)
    return report


def _replace_programs(obj: B.BpfObject, old_ids: frozenset[int], netns: str | None,
                      progs: dict[str, str]) -> list[tuple[str, str, int]]:
    """Put the new program on every hook whose program uses the old maps."""
    def on_old_maps(pid: int) -> bool:
        info = B.prog_info_by_id(pid)
        return info is not None and bool(info.map_ids & old_ids)

    done = []
    with in_netns(netns):
        for ifindex, ifname in socket.if_nameindex():
            if (pid := B.tc_query(ifindex)) and on_old_maps(pid):
                done.append((ifname, "tc", B.tc_attach(ifindex, ifname, obj.prog_fd(progs["tc"]))))
            if (pid := B.xdp_query(ifindex)) and on_old_maps(pid):
                old_fd = B.prog_fd_by_id(pid)
                try:
                    B.xdp_attach(ifindex, ifname, obj.prog_fd(progs["xdp"]), old_fd)
                finally:
                    os.close(old_fd)
                done.append((ifname, "xdp", B.xdp_query(ifindex)))
    return done


def _second_pass(conv: Conversion, old: B.Map, new: B.Map, before: dict[bytes, bytes]) -> int:
    """Copy again what the old program wrote after pass 1 and the new one has not touched."""
    n = 0
    zero = conv.value(bytes(old.buf_size)) if conv.old.type in _ARRAY_TYPES else None
    for k, v in old.items_raw():
        val = conv.value(v)
        was = before.get(k, zero)  # pass 1 skipped zero array entries: the new map has zeros there
        if was is None:
            n += B.update_raw_all_cpus(new, k, val, B.BPF_NOEXIST)
        elif val != was and new.lookup_raw(k) == was:
            n += B.update_raw_all_cpus(new, k, val, B.BPF_EXIST)
    return n


def _record_attach(fd: int, hooks: list[tuple[str, str, int]]) -> None:
    """Write the new program ids into lb_attach (the layout of this lbctl: cffi knows it)."""
    m = B.Map("lb_attach", fd, B.MAPS["lb_attach"])
    for ifname, _hook, pid in hooks:
        k = m.key()
        k.ifname = ifname.encode()
        cur: Any = m.lookup(k)
        if cur is not None:
            cur.prog_id = pid
            m.update(k, cur)
