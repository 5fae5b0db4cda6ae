"""In-memory drivers and resource builders for the pure-core tests.

Why this exists: the planner, apply and the CLI must be testable without root,
libbpf or namespaces.  ``FakeDriver`` follows the ``Driver`` protocol: it keeps
records in a dict, applies changes idempotently and counts a write only when a
change actually alters its state (as a real map driver does when it skips
identical values).  The fakes own exactly the kinds the real drivers own, and
``tests/reconciler/drivers/test_contract.py`` runs the same contract on both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.driver import DriverSpec, has_kind
from reconciler.errors import ConfigError
from reconciler.model import (
    BGPConfigSpec,
    BGPPeerSpec,
    DatapathInterface,
    DatapathSpec,
    Endpoint,
    FirewallMatch,
    FirewallRuleSpec,
    Location,
    Metadata,
    PoolSpec,
    Resource,
    ServicePort,
    ServiceSpec,
)
from reconciler.plan import Change
from reconciler.records import Backend, BgpPeer, Record


@dataclass(frozen=True)
class Loaded:
    """A loaded configuration as ``reconcile(loaded=...)`` takes it (no files)."""

    resources: tuple[Resource, ...]
    errors: tuple[ConfigError, ...] = ()
    digest: str = "sha256:test"


class DriverFailure(RuntimeError):
    pass


class FakeDriver:
    """A driver over a dict; ``fail_at`` makes the n-th change (0-based, over all calls) raise."""

    def __init__(self, kinds: Iterable[str], initial: Mapping[str, Mapping[str, Record]] | None = None,
                 fail_at: int | None = None, name: str = "fake") -> None:
        self.kinds = frozenset(kinds)
        self.writes = 0
        self.calls: list[list[Change]] = []
        self.name = name
        self.fail_at = fail_at
        self._seen = 0
        self.state: dict[str, dict[str, Record]] = {k: {} for k in self.kinds}
        for kind, records in (initial or {}).items():
            if kind in self.kinds:
                self.state[kind].update(records)
        self.downed = False

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        return {k: dict(v) for k, v in self.state.items()}

    def apply(self, changes: Sequence[Change]) -> None:
        self.calls.append(list(changes))
        for c in changes:
            if c.kind not in self.kinds:
                raise ValueError(f"{self.name}: kind {c.kind!r} is not mine")
            if self.fail_at is not None and self._seen == self.fail_at:
                self._seen += 1
                raise DriverFailure(f"{self.name}: injected failure at {c.kind} {c.key}")
            self._seen += 1
            bucket = self.state[c.kind]
            if c.after is None:
                if bucket.pop(c.key, None) is not None:
                    self.writes += 1
            elif bucket.get(c.key) != c.after:
                bucket[c.key] = c.after
                self.writes += 1

    def down(self) -> None:
        for bucket in self.state.values():
            self.writes += len(bucket)
            bucket.clear()
        self.downed = True


BPF_KINDS = frozenset({"service", "endpoints", "attach", "firewall"})
NETLINK_KINDS = frozenset({"vip"})
SYSCTL_KINDS = frozenset({"sysctl"})
BGP_KINDS = frozenset({"bgp-global", "bgp-peer", "announce"})


def fake_drivers(initial: Mapping[str, Mapping[str, Record]] | None = None
                 ) -> tuple[FakeDriver, FakeDriver, FakeDriver]:
    """A 'bpf', a 'netlink' and a 'sysctl' fake, owning the kinds the real ones own."""
    return (FakeDriver(BPF_KINDS, initial, name="bpf"),
            FakeDriver(NETLINK_KINDS, initial, name="netlink"),
            FakeDriver(SYSCTL_KINDS, initial, name="sysctl"))


class FakeBgp(FakeDriver):
    """The BGP driver's stand-in: its records, and every session up since ``up_since``."""

    up_since = 1_000_000_000

    def sessions(self) -> Mapping[str, Any]:
        peers = [{"address": p.address, "remote_as": p.remote_as, "state": "established",
                  "uptime": self.up_since, "received": 0, "accepted": 0,
                  "advertised": len(self.state["announce"])}
                 for p in sorted(self.state["bgp-peer"].values(), key=lambda p: getattr(p, "address", ""))
                 if isinstance(p, BgpPeer)]
        return {"running": bool(self.state["bgp-global"]), "global": None, "peers": peers,
                "announced": sorted(self.state["announce"])}


def fake_bgp(initial: Mapping[str, Mapping[str, Record]] | None = None) -> FakeBgp:
    """A 'bgp' fake, for the driver the registry brings up when a BGPConfig exists."""
    return FakeBgp(BGP_KINDS, initial, name="bgp")


def fake_specs(drivers: Sequence[FakeDriver]) -> tuple[DriverSpec, ...]:
    """A registry (``reconciler.drivers.registry.SPECS``) of already built fakes.

    Every fake is always needed, except one named 'bgp': only when a BGPConfig exists.
    """
    def given(drv: FakeDriver) -> Any:
        return lambda box, settings: drv

    return tuple(DriverSpec(d.name, d.kinds, given(d), needed=has_kind("BGPConfig")) if d.name == "bgp"
                 else DriverSpec(d.name, d.kinds, given(d)) for d in drivers)


def fake_table(backends: Sequence[Backend], size: int) -> bytes:
    """Deterministic stand-in for the Maglev builder: slot i -> i % n."""
    n = len(backends)
    return b"".join((i % n).to_bytes(2, "little") for i in range(size))


LOC = Location("test.yaml", 1, 1)


def _res(kind: str, name: str, spec: Any, file: str = "test.yaml") -> Resource:
    return Resource(kind=kind, metadata=Metadata(name), spec=spec, location=Location(file, 1, 1))


def service(name: str, vip: str | None = "198.51.100.10", ports: Sequence[Any] = (80,),
            endpoints: Sequence[Any] = ("10.0.1.10", "10.0.1.11"), file: str = "test.yaml",
            **kw: Any) -> Resource:
    """A Service; ports are ints, (port, proto[, target]) tuples or ServicePorts;
    endpoints are addresses or Endpoints."""
    ps: list[ServicePort] = []
    for p in ports:
        if isinstance(p, ServicePort):
            ps.append(p)
        elif isinstance(p, int):
            ps.append(ServicePort(p))
        else:
            ps.append(ServicePort(p[0], p[1], target_port=p[2] if len(p) > 2 else None))
    eps = tuple(e if isinstance(e, Endpoint) else Endpoint(e) for e in endpoints)
    return _res("Service", name, ServiceSpec(ports=tuple(ps), vip=vip, endpoints=eps, **kw), file)


def pool(name: str, *addresses: str, sharing: str = "shared") -> Resource:
    return _res("Pool", name, PoolSpec(addresses=tuple(addresses), sharing=sharing))  # type: ignore[arg-type]


def datapath(*ifaces: str, hook: str = "tc", vip_interface: str = "lbctl0") -> Resource:
    return _res("Datapath", "box", DatapathSpec(
        interfaces=tuple(DatapathInterface(i, hook) for i in ifaces),  # type: ignore[arg-type]
        hook=hook, vip_interface=vip_interface))  # type: ignore[arg-type]


def firewall(name: str, priority: int, source: str | None = None, action: str = "drop") -> Resource:
    return _res("FirewallRule", name, FirewallRuleSpec(
        priority=priority, match=FirewallMatch(source=source), action=action))  # type: ignore[arg-type]


def bgp_config() -> Resource:
    return _res("BGPConfig", "bgp", BGPConfigSpec(local_as=65001, router_id="192.0.2.1"))


def bgp_peer(name: str, address: str, remote_as: int = 65000) -> Resource:
    return _res("BGPPeer", name, BGPPeerSpec(address=address, remote_as=remote_as))
