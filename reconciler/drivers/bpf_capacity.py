"""The Datapath's capacities as map sizes, and what of them is in use.

Why this exists: a capacity (``model.DatapathCapacities``, the Datapath's
``spec.capacities``) is the ``max_entries`` of one or more maps; the loader sizes
the maps from it before the object is loaded, the live read turns the pinned
sizes back into capacities, and a change re-creates the maps at the new size
(``bpf_migrate``), which is refused when less than what is in use now.  This
table and those conversions live here, once.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_layout as L
from reconciler.errors import LbctlError
from reconciler.model import DatapathCapacities

# map -> (the capacity sizing it, entries per unit): every map whose size is a setting.
CAPACITY_MAPS: Mapping[str, tuple[str, int]] = {
    "lb_svc": ("services", 1), "lb_range": ("services", 1), "lb_conf": ("services", 1),
    "lb_backends": ("services", 2),  # two slots per service
    "lb_svc_stats": ("services", 1), "lb_rr": ("services", 1),
    "lb_be_stats": ("endpoints", 1), "lb_be_conns": ("endpoints", 1),
    "lb_sel": ("selection_chunks", 1),
    "lb_ct": ("conntrack_flows", 2),  # one entry per direction
    "lb_persist": ("persist_entries", 1),
}
# The map a capacity is read back from (the others of the same capacity follow it).
_READ_FROM = {"services": "lb_conf", "endpoints": "lb_be_stats", "selection_chunks": "lb_sel",
              "conntrack_flows": "lb_ct", "persist_entries": "lb_persist"}
SETTING = {"services": "services", "endpoints": "endpoints", "selection_chunks": "selectionChunks",
           "conntrack_flows": "conntrackFlows", "persist_entries": "persistEntries"}
_U32 = struct.Struct("<I")


def map_sizes(caps: DatapathCapacities) -> dict[str, int]:
    """``max_entries`` of every capacity map for resolved capacities ``caps``."""
    return {name: int(getattr(caps, field)) * per for name, (field, per) in CAPACITY_MAPS.items()}


def capacities_of(sizes: Mapping[str, int]) -> DatapathCapacities:
    """The capacities the maps of ``sizes`` (map -> max_entries) hold."""
    return DatapathCapacities(**{field: sizes[name] // CAPACITY_MAPS[name][1]
                                 for field, name in _READ_FROM.items() if name in sizes})


def pinned_sizes(pin_root: str) -> dict[str, int]:
    """``max_entries`` of the capacity maps pinned under ``pin_root`` (those that are)."""
    out = {}
    for name in CAPACITY_MAPS:
        path = os.path.join(pin_root, name)
        if os.path.exists(path):
            fd = B.obj_get(path)
            try:
                out[name] = B.map_info(fd)[3]
            finally:
                os.close(fd)
    return out


@dataclass(frozen=True)
class Usage:
    """What of each capacity the live maps use (ids: the highest in use + 1)."""

    services: int
    endpoints: int
    selection_chunks: int
    conntrack_flows: int
    persist_entries: int


def usage(pin_root: str) -> Usage:
    """What the maps pinned under ``pin_root`` hold now (one batch read of each map counted)."""
    fds = {name: B.obj_get(os.path.join(pin_root, name))
           for name in ("lb_conf", "lb_backends", "lb_sel", "lb_ct", "lb_persist")}
    try:
        maps = {}
        for name, fd in fds.items():
            _typ, ks, vs, _n = B.map_info(fd)
            maps[name] = B.raw_map(name, fd, ks, vs, False)
        svc_ids = [_U32.unpack_from(k)[0] for k, _v in maps["lb_conf"].items_raw()]
        stat_ids = [-1]
        be_off = L.LIST_SIZE - L.MAX_ENDPOINTS * L.BE.size
        for _k, v in maps["lb_backends"].items_raw():
            n = min(L.LIST_HDR.unpack_from(v)[0], L.MAX_ENDPOINTS)
            stat_ids += (L.BE.unpack_from(v, be_off + i * L.BE.size)[-1] for i in range(n))
        flows = sum(1 for _ in maps["lb_ct"].items_raw())
        return Usage(services=max(svc_ids, default=-1) + 1, endpoints=max(stat_ids) + 1,
                     selection_chunks=sum(1 for _ in maps["lb_sel"].items_raw()),
                     conntrack_flows=-(-flows // 2),
                     persist_entries=sum(1 for _ in maps["lb_persist"].items_raw()))
    finally:
        for fd in fds.values():
            os.close(fd)


def check_shrink(now: DatapathCapacities, want: DatapathCapacities, used: Usage) -> None:
    """Refuse (``LbctlError``, nothing changed) a capacity lowered below what is in use."""
    problems = []
    for field, setting in SETTING.items():
        new, old, n = getattr(want, field), getattr(now, field), getattr(used, field)
        if new is not None and old is not None and new < old and n > new:
            what = {"services": f"service ids up to {n:,} are in use",
                    "endpoints": f"endpoint counter slots up to {n:,} are in use",
                    "conntrack_flows": f"conntrack holds {n:,} flows now"}.get(field, f"{n:,} are in use")
            problems.append(f"spec.capacities.{setting} {new:,} is below what the datapath uses: {what}")
    if problems:
        raise LbctlError("cannot lower a capacity of the live datapath: " + "; ".join(problems)
                         + "; nothing was changed",
                         "keep the capacity until fewer are in use (remove services or endpoints and apply "
                         "first, or let flows end), or lower it less")
