"""The driver contract, and the set of drivers a desired state needs.

Why this exists: the reconcile loop talks to drivers (the only code with side
effects on the box) through this module alone, so the core never imports the
``reconciler.drivers`` package (which pulls in libbpf and pyroute2).

* ``Driver`` is what every driver is: the record kinds it owns, a write
  counter, ``read()`` and ``apply(changes)``.
* Optional abilities are small ``runtime_checkable`` protocols a driver may
  also follow (``Teardown``, ``PartialSupport``, ``KeyReader``,
  ``CounterReader``, ``ConntrackReader``, ``ConnCountSync``, ``SessionReader``); callers test for
  them with ``isinstance``, never by probing attribute names.
* ``DriverSpec`` registers a driver: its name, the kinds it owns, how to build
  it and when the desired state needs it.  ``DriverSet`` keeps the drivers of
  one box and, for each full reconcile, ``select``s the ones the resources
  need; a driver whose condition no longer holds but that is still up is
  *leaving*: its records are planned as deletes and, once that apply verified,
  it is ``retire``d (``down()``).  The real table is
  ``reconciler.drivers.registry.SPECS``; tests pass in-memory drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from reconciler.errors import LbctlError
from reconciler.model import Resource
from reconciler.plan import Change
from reconciler.records import Record


class Driver(Protocol):
    """A part of the live system.

    ``kinds`` names the record kinds it owns.  ``read()`` returns the live
    records of those kinds (and of no other kind) and changes nothing;
    ``apply()`` carries out changes of those kinds, in the order given,
    idempotently (applying a change whose effect is already live is not an
    error and writes nothing).  ``writes`` counts the kernel writes made so
    far, so tests can prove a no-op apply writes nothing.  Building a driver
    changes nothing on the box either.  ``tests/reconciler/drivers/test_contract.py``
    checks all of this against every real and every in-memory driver.
    """

    kinds: frozenset[str]
    writes: int

    def read(self) -> Mapping[str, Mapping[str, Record]]: ...

    def apply(self, changes: Sequence[Change]) -> None: ...


@runtime_checkable
class Teardown(Protocol):
    """Can remove everything it installed (``lbctl down``); ``read()`` is empty afterwards."""

    def down(self) -> object: ...


@runtime_checkable
class PartialSupport(Protocol):
    """Applies some records only in part: says what it leaves out, for the operator's warnings."""

    def unsupported(self, record: Record) -> str | None: ...


@runtime_checkable
class BoxAddresses(Protocol):
    """Knows the addresses assigned on the box (a fullnat source must be one, or a Pool's)."""

    def box_addresses(self) -> frozenset[str]: ...


@runtime_checkable
class KeyReader(Protocol):
    """Reads the live records of just some keys (the daemon's incremental verify)."""

    def read_keys(self, kind: str, keys: Collection[str]) -> Mapping[str, Record]: ...


@runtime_checkable
class CounterReader(Protocol):
    """Traffic counters per service key: ``{"service": counters, "endpoints": {"addr:port": counters}}``."""

    def counters(self) -> Mapping[str, Mapping[str, Any]]: ...


@runtime_checkable
class FirewallCounterReader(Protocol):
    """Per firewall rule name: ``packets``, ``bytes`` matched and ``limited`` (over a rateLimit, dropped)."""

    def firewall_counters(self) -> Mapping[str, Mapping[str, int]]: ...


@runtime_checkable
class ConntrackReader(Protocol):
    """The datapath's flow table, one entry per flow (``lbctl get conntrack``)."""

    def conntrack(self) -> Sequence[Any]: ...


@runtime_checkable
class CapacityReader(Protocol):
    """The datapath's capacities (``lbctl get capacities``): setting -> (size, in use); the
    defaults it would be created with when nothing is installed (in use 0)."""

    def capacity_use(self) -> Mapping[str, tuple[int, int]]: ...


@runtime_checkable
class ConnCountSync(Protocol):
    """Keeps per-endpoint open-connection counts (least-connection selection) in step with conntrack."""

    def sync_conn_counts(self) -> None: ...


@runtime_checkable
class NextHopCache(Protocol):
    """Caches next hops for established flows (the bpf driver): told when routes or neighbours changed."""

    def bump_nexthop_generation(self) -> None: ...


@runtime_checkable
class SessionReader(Protocol):
    """Routing sessions as plain data (the BGP driver: ``lbctl get bgp``, metrics):
    ``{"running", "global", "peers": [{address, remote_as, state, uptime, received, accepted,
    advertised, flops}], "announced": [prefix]}``."""

    def sessions(self) -> Mapping[str, Any]: ...


@runtime_checkable
class Notices(Protocol):
    """Says what it did on its own while it was used (e.g. migrated the pinned datapath to a
    new layout): one line each, handed out once (``notices()`` empties the list)."""

    def notices(self) -> list[str]: ...


@runtime_checkable
class Revalidate(Protocol):
    """Holds handles to live objects another process may replace (pinned maps).

    ``revalidate()`` drops them when they are no longer the live ones and says
    so (True), so callers stop trusting state derived from them (the daemon's
    incremental index).
    """

    def revalidate(self) -> bool: ...


# --- registration ------------------------------------------------------------------------------


def always(resources: Sequence[Resource]) -> bool:
    """The condition of a driver every box needs."""
    return True


def no_settings(resources: Sequence[Resource]) -> Hashable:
    return None


def has_kind(kind: str) -> Callable[[Sequence[Resource]], bool]:
    """The condition "a resource of ``kind`` exists" (e.g. a BGP driver: ``has_kind("BGPConfig")``)."""

    def needed(resources: Sequence[Resource]) -> bool:
        return any(r.kind == kind for r in resources)

    return needed


@dataclass(frozen=True)
class DriverSpec:
    """One registered driver.

    ``build(box, settings)`` makes the driver for a box (whatever the
    registry's box is: the CLI context) with ``settings(resources)``, the part
    of the desired state the driver is built with (the VIP interface, say); a
    driver whose settings change is built again.  ``needed(resources)`` says
    whether the desired state needs it.  ``kinds`` must equal the built
    driver's ``kinds`` (checked when it is built).
    """

    name: str
    kinds: frozenset[str]
    build: Callable[[Any, Any], Driver]
    needed: Callable[[Sequence[Resource]], bool] = always
    settings: Callable[[Sequence[Resource]], Hashable] = no_settings


def _given(drv: Driver) -> Callable[[Any, Any], Driver]:
    def build(box: Any, settings: Any) -> Driver:
        return drv

    return build


@dataclass(frozen=True)
class Selection:
    """The drivers of one desired state: ``active`` carry it out; ``leaving`` are taken away."""

    active: tuple[Driver, ...]
    leaving: tuple[Driver, ...] = ()

    @property
    def all(self) -> tuple[Driver, ...]:
        return self.active + self.leaving


class DriverSet:
    """The drivers of one box, built on demand from ``specs`` (in their order) and kept.

    The daemon keeps one ``DriverSet`` for its lifetime; a CLI command makes one.
    """

    def __init__(self, specs: Sequence[DriverSpec], box: Any = None) -> None:
        claimed: dict[str, str] = {}
        for spec in specs:
            for kind in spec.kinds:
                if kind in claimed:
                    raise LbctlError(f"two drivers claim record kind {kind!r}: "
                                     f"{claimed[kind]} and {spec.name}")
                claimed[kind] = spec.name
        self.specs = tuple(specs)
        self.box = box
        self._built: dict[str, tuple[Hashable, Driver]] = {}
        self._up: dict[str, Driver] = {}  # selected and not retired since
        self.active: tuple[Driver, ...] = ()
        self._active_key: tuple[tuple[str, Hashable], ...] | None = None

    @classmethod
    def of(cls, drivers: Iterable[Driver]) -> DriverSet:
        """A fixed set of already built drivers, all always needed (tests, benches)."""
        return cls([DriverSpec(f"{type(drv).__name__}#{i}", frozenset(drv.kinds), _given(drv))
                    for i, drv in enumerate(drivers)])

    # --- choosing -------------------------------------------------------------------------------

    def _key(self, resources: Sequence[Resource]) -> tuple[tuple[str, Hashable], ...]:
        return tuple((s.name, s.settings(resources)) for s in self.specs if s.needed(resources))

    def current_for(self, resources: Sequence[Resource]) -> bool:
        """True when the active drivers are exactly those ``resources`` need, built the same way."""
        return self._active_key is not None and self._key(resources) == self._active_key

    def _get(self, spec: DriverSpec, settings: Hashable) -> Driver:
        built = self._built.get(spec.name)
        if built is not None and built[0] == settings:
            return built[1]
        close = getattr(built[1], "close", None) if built is not None else None
        if callable(close):  # its handles (the bpf driver's: maps a capacity change replaced) go now
            close()
        drv = spec.build(self.box, settings)
        if frozenset(drv.kinds) != spec.kinds:
            raise LbctlError(f"driver {spec.name!r} owns {sorted(drv.kinds)} but is registered for "
                             f"{sorted(spec.kinds)}", hint="fix its entry in the driver registry")
        self._built[spec.name] = (settings, drv)
        return drv

    def _leftover(self, spec: DriverSpec, resources: Sequence[Resource]) -> Driver | None:
        """The driver of a spec the desired state does not need, if it is still up on the box.

        Up: selected by this set and not retired since, or (a fresh process) showing live records.
        """
        drv = self._up.get(spec.name)
        if drv is not None:
            return drv
        try:
            drv = self._get(spec, spec.settings(resources))
        except LbctlError:
            return None  # it cannot even be built here, so nothing of it can be running
        state = drv.read()
        if any(state.get(kind) for kind in spec.kinds):
            return drv
        self._built.pop(spec.name, None)
        return None

    def select(self, resources: Sequence[Resource]) -> Selection:
        """The drivers ``resources`` need (built or reused), and those leaving."""
        active: list[Driver] = []
        leaving: list[Driver] = []
        up: dict[str, Driver] = {}
        for spec in self.specs:
            if spec.needed(resources):
                drv = self._get(spec, spec.settings(resources))
                active.append(drv)
            else:
                found = self._leftover(spec, resources)
                if found is None:
                    continue
                drv = found
                leaving.append(drv)
            up[spec.name] = drv
        self._up = up
        self.active = tuple(active)
        self._active_key = self._key(resources)
        return Selection(tuple(active), tuple(leaving))

    def retire(self, leaving: Iterable[Driver]) -> None:
        """Take leaving drivers away (``down()`` when they offer it) and forget them."""
        for drv in leaving:
            name = next((n for n, d in self._up.items() if d is drv), None)
            if isinstance(drv, Teardown):
                try:
                    drv.down()
                except LbctlError as exc:
                    raise LbctlError(f"taking the {name or 'leaving'} driver away failed: {exc.args[0]}",
                                     hint=exc.hint) from exc
            if name is not None:
                self._up.pop(name, None)
                self._built.pop(name, None)

    def every(self, settings: Mapping[str, Hashable] | None = None) -> list[Driver]:
        """Every registered driver, in registry order (``lbctl down``, ``get``, ``export``).

        ``settings`` gives some drivers their settings by name; the others are
        built with the settings of an empty desired state.
        """
        settings = settings or {}
        return [self._get(s, settings.get(s.name, s.settings(()))) for s in self.specs]
