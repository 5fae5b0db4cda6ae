"""``lbctl down``: remove everything lbctl installed on this box.

Why this exists: the datapath deliberately outlives lbctl (pinned maps and
programs, VIP addresses) so traffic survives restarts; ``down`` is the one
way to take it all away: programs detached, maps and pins removed, the VIP
interface and its addresses deleted, the kernel settings lbctl changed
(forwarding, rp_filter) given back the values they had before, and lbctl's files
in the state dir (allocations, applied-configuration record, lock, parse cache)
removed.  Idempotent: running it twice is fine.  It must always work, also on
pins of an lbctl whose map layout differs (the layout check's hint sends the
operator here): a driver whose live state cannot be read is still torn down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from reconciler.applied import AppliedStore
from reconciler.apply import read_live
from reconciler.commands.common import drivers_for
from reconciler.config.persist import FILE_NAME as PARSE_CACHE
from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.driver import Teardown
from reconciler.drivers.registry import vip_interface_of
from reconciler.drivers.sysctl import STORE_NAME as KERNEL_SETTINGS
from reconciler.errors import LbctlError
from reconciler.ipam_store import STORE_NAME
from reconciler.lock import LOCK_NAME, StateLock
from reconciler.plan import diff


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vip-interface", metavar="IF",
                        help="interface the VIPs' local routes go through (default: the Datapath's "
                             f"vipInterface of the last applied configuration, else {DEFAULT_VIP_INTERFACE})")


def _vip_interface(args: argparse.Namespace, state_dir: Path) -> str:
    """``--vip-interface``, else what the last verified apply used, else the default."""
    if args.vip_interface:
        return str(args.vip_interface)
    recorded = AppliedStore(state_dir).load()
    if recorded is not None and recorded.problem is None:
        return vip_interface_of(recorded.resources)
    return DEFAULT_VIP_INTERFACE


def _rmdir_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def run(args: argparse.Namespace, ctx: Any) -> int:
    state_dir = Path(ctx.state_dir)
    removed: dict[str, int] = {}
    pin_root = Path(ctx.pin_root)
    had_files = _has_files(pin_root) or any((state_dir / n).exists()
                                            for n in (STORE_NAME, PARSE_CACHE, KERNEL_SETTINGS))
    unreadable: list[str] = []
    with StateLock(state_dir, purpose="lbctl down"):
        drivers = drivers_for(ctx, _vip_interface(args, state_dir), read_only=True)
        for drv in drivers:
            try:
                live = read_live([drv])
            except LbctlError as exc:  # e.g. pins of another layout: removed all the same
                if not isinstance(drv, Teardown):
                    raise
                unreadable.append(str(exc.args[0]))
                live = {}
            for kind, recs in live.items():
                removed[kind] = removed.get(kind, 0) + len(recs)
            if isinstance(drv, Teardown):
                drv.down()  # everything the driver owns: programs, maps, pins, the interface
            else:
                plan = diff({}, live)
                if plan:
                    drv.apply(plan.changes)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_dir / STORE_NAME)
        AppliedStore(state_dir).remove()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / LOCK_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / PARSE_CACHE)
    _rmdir_if_empty(state_dir)
    _rmdir_if_empty(pin_root)
    if ctx.netns:  # the box's own subdirectories are gone: so is the base, when nothing else is in it
        _rmdir_if_empty(state_dir.parent)
        _rmdir_if_empty(pin_root.parent)
    restored = removed.pop("sysctl", 0)
    what = ", ".join(f"{n} {kind}" for kind, n in sorted(removed.items()) if n)
    cleaned = f"pins under {pin_root} and state in {state_dir} cleaned up"
    if unreadable:
        message = (f"removed {what + ' and ' if what else ''}a datapath this lbctl cannot read "
                   f"({'; '.join(unreadable)}); {cleaned}")
    elif what:
        message = f"removed {what}; {cleaned}"
    elif had_files:
        message = f"no services, endpoints, VIPs or attachments were live; {cleaned}"
    else:
        message = "nothing was installed, so nothing was removed"
    if restored:
        plural = "s" if restored != 1 else ""
        message += f"; restored {restored} kernel setting{plural} to their earlier values"
    print(f"lbctl is down: {message}.", file=sys.stderr if ctx.output in ("json", "yaml") else sys.stdout)
    return 0


def _has_files(directory: Path) -> bool:
    """Anything but subdirectories (other boxes' pin roots) in ``directory``."""
    try:
        return any(not entry.is_dir() for entry in directory.iterdir())
    except OSError:
        return False
