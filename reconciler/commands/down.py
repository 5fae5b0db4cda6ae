"""``lbctl down``: remove everything lbctl installed on this box.

Why this exists: the datapath deliberately outlives lbctl (pinned maps and
programs, VIP addresses) so traffic survives restarts; ``down`` is the one
way to take it all away: programs detached, maps and pins removed, the VIP
interface and its addresses deleted, the kernel settings lbctl changed
(forwarding, rp_filter) given back the values they had before, and lbctl's files
in the state dir (allocations, lock, parse cache) removed.  Idempotent: running
it twice is fine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from reconciler.apply import read_live
from reconciler.commands.common import drivers_for
from reconciler.config.persist import FILE_NAME as PARSE_CACHE
from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.ipam_store import STORE_NAME
from reconciler.lock import LOCK_NAME, StateLock
from reconciler.plan import diff


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vip-interface", default=DEFAULT_VIP_INTERFACE, metavar="IF",
                        help=f"interface holding the VIP addresses (default: {DEFAULT_VIP_INTERFACE})")


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def run(args: argparse.Namespace, ctx: Any) -> int:
    state_dir = Path(ctx.state_dir)
    removed: dict[str, int] = {}
    with StateLock(state_dir, purpose="lbctl down"):
        drivers = drivers_for(ctx, args.vip_interface)
        for drv in drivers:
            live = read_live([drv])
            for kind, recs in live.items():
                removed[kind] = removed.get(kind, 0) + len(recs)
            teardown = getattr(drv, "down", None)
            if callable(teardown):
                teardown()  # everything the driver owns: programs, maps, pins, the interface
            else:
                plan = diff({}, live)
                if plan:
                    drv.apply(plan.changes)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_dir / STORE_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / LOCK_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / PARSE_CACHE)
    _rmdir_if_empty(state_dir)
    _rmdir_if_empty(Path(ctx.pin_root))
    restored = removed.pop("sysctl", 0)
    what = ", ".join(f"{n} {kind}" for kind, n in sorted(removed.items()) if n) or "nothing was live"
    if restored:
        what += f"; restored {restored} kernel setting{'s' if restored != 1 else ''} to their earlier values"
    print(f"lbctl is down: removed {what}; pins under {ctx.pin_root} and state in {state_dir} cleaned up.",
          file=sys.stderr if ctx.output in ("json", "yaml") else sys.stdout)
    return 0
