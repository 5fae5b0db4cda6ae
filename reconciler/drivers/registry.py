"""The table of the real drivers, and the box's ``DriverSet`` built from it.

Why this exists: the commands and the daemon need "the drivers of this box"
without knowing their constructors, and ``validate`` and the unit tests must
not import libbpf/cffi or pyroute2 at all.  So each driver module is imported
here, lazily, when a driver is actually built.  Adding a driver is one entry in
``SPECS``: its name, the record kinds it owns, its factory, and when the
desired state needs it (``reconciler.driver.DriverSpec``; the BGP driver is
``needed=has_kind("BGPConfig")``).  The order of ``SPECS`` is the order
``lbctl down`` takes the box apart: BGP announcements withdrawn first, then
programs, kernel settings given back last.  Tests replace ``SPECS`` with in-memory drivers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.driver import Driver, DriverSet, DriverSpec, has_kind
from reconciler.errors import LbctlError
from reconciler.limits import box_memory
from reconciler.model import DatapathCapacities, DatapathSpec, Resource


class BoxContext(Protocol):
    """What the registry needs from ``reconciler.cli.Context``."""

    @property
    def netns(self) -> str | None: ...

    @property
    def pin_root(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def read_only(self) -> bool: ...


def vip_interface_of(resources: Iterable[Resource]) -> str:
    """The Datapath's ``vipInterface`` (default ``lbctl0``)."""
    for res in resources:
        if isinstance(res.spec, DatapathSpec):
            return res.spec.vip_interface
    return DEFAULT_VIP_INTERFACE


def _module(name: str, ctx: BoxContext) -> Any:
    check_netns(ctx)
    try:
        return importlib.import_module(f"reconciler.drivers.{name}")
    except ImportError as exc:
        raise LbctlError(f"the {name} driver cannot be loaded: {exc}",
                         hint="install lbctl's runtime dependencies (make setup) and build the datapath "
                              "(make build)") from exc


def capacities_of(resources: Iterable[Resource]) -> DatapathCapacities:
    """The bpf driver's setting: the Datapath's capacities, this box's defaults filled in."""
    own = next((r.spec.capacities for r in resources if isinstance(r.spec, DatapathSpec)),
               DatapathCapacities())
    return own.resolved(box_memory())


def bpf_driver(ctx: BoxContext, settings: object = None) -> Driver:
    """``settings``: the capacities (``capacities_of``); None (down, get, export): the pinned ones."""
    mod = _module("bpf", ctx)
    caps = settings if isinstance(settings, DatapathCapacities) else None
    driver: Driver = mod.BpfDriver(pin_root=ctx.pin_root, netns=ctx.netns, migrate=not ctx.read_only,
                                   capacities=caps)
    return driver


def netlink_driver(ctx: BoxContext, vip_interface: str = DEFAULT_VIP_INTERFACE) -> Driver:
    mod = _module("netlink", ctx)
    driver: Driver = mod.NetlinkDriver(ifname=vip_interface, netns=ctx.netns)
    return driver


def bgp_needs_speaker(resources: Iterable[Resource]) -> bool:
    """The BGP driver's setting: a BGPConfig exists, so gobgpd must be there (else: an error naming
    the package); without one the driver is only built to read or take down what is up."""
    return any(r.kind == "BGPConfig" for r in resources)


def bgp_driver(ctx: BoxContext, required: object = False) -> Driver:
    mod = _module("bgp", ctx)
    driver: Driver = mod.BgpDriver(state_dir=ctx.state_dir, netns=ctx.netns, required=bool(required))
    return driver


def sysctl_driver(ctx: BoxContext, settings: object = None) -> Driver:
    mod = _module("sysctl", ctx)
    driver: Driver = mod.SysctlDriver(state_dir=ctx.state_dir, netns=ctx.netns)
    return driver


SPECS: tuple[DriverSpec, ...] = (
    # First, so lbctl down withdraws the VIPs from the routers before the datapath goes.
    DriverSpec("bgp", frozenset({"bgp-global", "bgp-peer", "announce"}), bgp_driver,
               needed=has_kind("BGPConfig"), settings=bgp_needs_speaker),
    DriverSpec("bpf", frozenset({"service", "endpoints", "attach", "firewall"}), bpf_driver,
               settings=capacities_of),
    DriverSpec("netlink", frozenset({"vip"}), netlink_driver, settings=vip_interface_of),
    DriverSpec("sysctl", frozenset({"sysctl"}), sysctl_driver),
)


def check_netns(ctx: BoxContext) -> None:
    """A missing ``--netns`` is the operator's typo, not an internal error: say so up front."""
    if ctx.netns is None:
        return
    from reconciler.drivers.netns import netns_path

    path = netns_path(ctx.netns)
    if not os.path.exists(path):
        raise LbctlError(f"network namespace {ctx.netns!r} does not exist (no {path})",
                         hint=f"check the name ('ip netns list'), or create it: ip netns add {ctx.netns}")


def driver_set(ctx: BoxContext) -> DriverSet:
    """The box's drivers, chosen per desired state (``plan``, ``apply``, the daemon)."""
    return DriverSet(SPECS, ctx)


def build_drivers(ctx: BoxContext, *, vip_interface: str = DEFAULT_VIP_INTERFACE) -> list[Driver]:
    """Every registered driver of the box, in ``SPECS`` order (``down``, ``get``, ``export``)."""
    # the bpf driver without capacities: it keeps the pinned sizes (only reconcile changes them)
    return driver_set(ctx).every({"netlink": vip_interface, "bpf": None})
