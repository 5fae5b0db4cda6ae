"""The IPAM allocation store: ``allocations.json`` in the state dir.

Why this exists: pool VIPs must not move between runs, so what
``reconciler.ipam.allocate`` decided is kept on disk and handed back to it as
``previous`` on the next run.  The allocator stays pure; this module is the only
IPAM code that touches files.  The file is replaced atomically and durably
(``reconciler.statefile``), so a crash leaves the old or the new allocations,
never a torn file; a damaged file is an ``LbctlError`` saying how to recover.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from reconciler import statedir
from reconciler.ipam import Allocation
from reconciler.statefile import read_json_state, replace_file

STORE_NAME = "allocations.json"
STORE_FORMAT = 1


class AllocationStore:
    """``allocations.json`` in the state dir: load, and replace atomically."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / STORE_NAME

    def load(self) -> dict[str, Allocation]:
        allocations = read_json_state(
            self.path, STORE_FORMAT,
            lambda data: {name: Allocation(str(a["pool"]), str(a["vip"]))
                          for name, a in data["allocations"].items()},
            what="allocation store",
            hint="restore it from a backup, or remove it: lbctl then keeps the VIPs it finds live and "
                 "allocates the rest anew")
        return allocations if allocations is not None else {}

    def save(self, allocations: Mapping[str, Allocation]) -> None:
        """Replace the store atomically and durably (``reconciler.statefile``) in a safe state dir."""
        statedir.ensure(self.path.parent)
        data = {"format_version": STORE_FORMAT,
                "allocations": {n: {"pool": a.pool, "vip": a.vip} for n, a in sorted(allocations.items())}}
        replace_file(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))
