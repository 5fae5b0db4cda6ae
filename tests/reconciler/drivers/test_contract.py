"""One contract, every driver: the real ones (in a namespace the test creates) and the in-memory fakes.

Why this exists: the pure-core tests trust the fakes to behave like the real
drivers, so the same checks run against both.  For each record kind a driver
owns: create, then read back equal; update, then read back equal; delete, then
gone; applying any of those again is not an error and writes nothing; an empty
apply writes nothing; ``read()`` returns only owned kinds; ``read_keys`` (when
offered) agrees with ``read()``; ``down()`` (when offered) leaves ``read()``
empty.  The real drivers are built through their registry entries, so an entry
whose kinds differ from its driver's fails here, and a registered driver
without a case here fails ``test_every_registered_driver_and_its_fake_are_covered``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.cli import Context
from reconciler.driver import Driver, DriverSet, KeyReader, Teardown
from reconciler.drivers import registry
from reconciler.plan import Change
from reconciler.records import (
    Announcement,
    Attachment,
    Backend,
    BgpGlobal,
    BgpPeer,
    EndpointSet,
    FirewallEntry,
    KernelSetting,
    Record,
    ServiceEntry,
    ServiceKey,
    VipAddress,
)
from tests.reconciler.fakes import FakeDriver, fake_bgp, fake_drivers

KEY = ServiceKey("10.97.0.1", "tcp", 80, 80)
IFACE = "v0"  # the interface the test namespace has (a veth)

# kind -> (record, the same key with other values, or None when the key is the whole record)
SAMPLES: dict[str, tuple[Record, Record | None]] = {
    "service": (ServiceEntry(KEY, "web", "default", "rr", 240, 10800),
                ServiceEntry(KEY, "web", "default", "hash", 120, 10800, ("10.0.0.0/8",))),
    "endpoints": (EndpointSet(KEY, (Backend("10.99.0.10", 8080), Backend("10.99.0.11", 8080))),
                  EndpointSet(KEY, (Backend("10.99.0.10", 8080, 2), Backend("10.99.0.12", 0)))),
    "attach": (Attachment(IFACE, "tc"), Attachment(IFACE, "xdp")),
    # A VIP has nothing to update in place: another prefix or interface is a replace, and the
    # driver adds host routes only (its faults are live-only).
    "vip": (VipAddress("198.51.100.10", 32, "lbctl0"), None),
    "sysctl": (KernelSetting(f"net.ipv4.conf.{IFACE}.rp_filter", "0"),  # 2 in the test namespace
               KernelSetting(f"net.ipv4.conf.{IFACE}.rp_filter", "1")),
    "bgp-global": (BgpGlobal(65001, "192.0.2.1", 1790), BgpGlobal(65002, "192.0.2.2", 1791, ("127.0.0.1",))),
    "bgp-peer": (BgpPeer("192.0.2.254", 65000, 179, 90, 30, 0, "s3cret", "upstream"),
                 BgpPeer("192.0.2.254", 65010, 1179, 9, 3, 2)),
    "announce": (Announcement("198.51.100.10/32"),
                 Announcement("198.51.100.10/32", "self", ("65001:100",), 200, 5)),
    "firewall": (FirewallEntry("block", 10, "10.0.0.0/8", None, None, (80, 80), "tcp", None, "drop"),
                 FirewallEntry("block", 20, "10.0.0.0/8", "10.97.0.1/32", (1024, 65535), None, "udp", IFACE,
                               "rateLimit", rate_pps=100, rate_burst=10)),
}

# What a kind needs live before its records can exist (gobgpd has no peer or path without a
# running speaker); created first and not part of that kind's checks.
NEEDS: dict[str, tuple[str, ...]] = {"bgp-peer": ("bgp-global",), "announce": ("bgp-global",)}

# Order in which a driver's kinds are created when all are wanted at once (as the plan orders them).
CREATE_ORDER = ("sysctl", "attach", "firewall", "endpoints", "service", "vip", "bgp-global", "bgp-peer",
                "announce")


def key_of(record: Record) -> str:
    if isinstance(record, (ServiceEntry, EndpointSet)):
        return str(record.key)
    if isinstance(record, Attachment):
        return record.ifname
    if isinstance(record, (VipAddress, BgpPeer)):
        return record.address
    if isinstance(record, Announcement):
        return record.prefix
    if isinstance(record, BgpGlobal):
        return "global"
    if isinstance(record, (KernelSetting, FirewallEntry)):
        return record.name
    raise AssertionError(f"no sample key for {record!r}")


def create(r: Record, kind: str) -> Change:
    return Change(kind, key_of(r), "create", None, r)


def update(before: Record, after: Record, kind: str) -> Change:
    return Change(kind, key_of(after), "update", before, after)


def delete(r: Record, kind: str) -> Change:
    return Change(kind, key_of(r), "delete", r, None)


# --- the drivers ---------------------------------------------------------------------------------

FAKES: dict[str, Callable[[], FakeDriver]] = {
    "bpf": lambda: fake_drivers()[0],
    "netlink": lambda: fake_drivers()[1],
    "sysctl": lambda: fake_drivers()[2],
    "bgp": fake_bgp,
}
REAL = ("bgp", "bpf", "netlink", "sysctl")


def kill_recorded(pid_file: Path) -> None:
    """Kill the process a pid file names (``PID STARTTIME``), if it is still that process."""
    try:
        pid, start = pid_file.read_text().split()[:2]
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[19] == start:
                os.kill(int(pid), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass


def stop_gobgpd(state_dir: Path, netns: str) -> None:
    """Stop the gobgpd lbctl runs for a box (if any) and remove its socket and pid file."""
    from reconciler.drivers.bgp import BgpDriver

    kill_recorded(state_dir / "gobgpd.pid")
    BgpDriver(state_dir, netns).down()


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def real_box(tmp_path: Path) -> Iterator[Context]:
    """A namespace with a veth ``v0`` (loose reverse-path filter), its own pin root and state dir."""
    tag = uuid.uuid4().hex[:8]
    ns, pins = f"lbt-ct-{tag}", Path(f"/sys/fs/bpf/lbctl-test-ct-{tag}")
    state = tmp_path / "state"
    state.mkdir()
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", IFACE, "type", "veth", "peer", "name", "v1")
        for dev in ("lo", IFACE, "v1"):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{IFACE}.rp_filter=2")
        yield Context(netns=ns, state_dir=state, pin_root=pins, output="text", verbose=False)
    finally:
        stop_gobgpd(state, ns)  # the bgp driver's gobgpd, if a failure left it running
        if pins.is_dir():
            for f in pins.iterdir():
                f.unlink()
            pins.rmdir()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


SUBJECTS = [f"fake-{n}" for n in FAKES] + [pytest.param(n, marks=pytest.mark.root) for n in REAL]


@pytest.fixture(params=SUBJECTS)
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    name: str = request.param
    if name.startswith("fake-"):
        yield FAKES[name.removeprefix("fake-")]()
        return
    box: Context = request.getfixturevalue("real_box")
    spec = next(s for s in registry.SPECS if s.name == name)
    (drv,) = DriverSet([spec], box).every()  # through the entry: its kinds are checked
    try:
        yield drv
    finally:
        if isinstance(drv, Teardown):
            drv.down()  # the bpf driver also closes its map handles


def live(drv: Driver) -> dict[str, dict[str, Record]]:
    return {kind: dict(recs) for kind, recs in drv.read().items()}


def assert_applies_once(drv: Driver, change: Change) -> None:
    """``change`` takes effect; applied again it is not an error and writes nothing."""
    before = drv.writes
    drv.apply([change])
    assert drv.writes > before, f"{change.symbol} {change.kind} {change.key} counted no write"
    after = drv.writes
    drv.apply([change])
    assert drv.writes == after, f"{change.symbol} {change.kind} {change.key} again wrote"


# --- the contract --------------------------------------------------------------------------------


def test_read_returns_only_owned_kinds_and_starts_empty(driver: Driver) -> None:
    state = live(driver)
    assert set(state) <= driver.kinds
    assert all(not recs for recs in state.values())
    before = driver.writes
    driver.apply([])
    assert driver.writes == before


def test_create_update_delete_read_back_and_idempotence(driver: Driver) -> None:
    for kind in sorted(driver.kinds):
        record, changed = SAMPLES[kind]
        key = key_of(record)
        needs = NEEDS.get(kind, ())
        driver.apply([create(SAMPLES[k][0], k) for k in needs])
        assert_applies_once(driver, create(record, kind))
        state = live(driver)
        assert state[kind] == {key: record}, kind
        assert set(state) <= driver.kinds
        assert all(not recs for k, recs in state.items() if k != kind and k not in needs)
        current = record
        if changed is not None:
            assert_applies_once(driver, update(record, changed, kind))
            assert live(driver)[kind] == {key: changed}, kind
            current = changed
        writes = driver.writes
        driver.apply([])
        assert driver.writes == writes
        assert_applies_once(driver, delete(current, kind))
        assert live(driver).get(kind, {}) == {}, kind
        driver.apply([delete(SAMPLES[k][0], k) for k in reversed(needs)])


def test_read_keys_agrees_with_read(driver: Driver) -> None:
    if not isinstance(driver, KeyReader):
        return  # nothing to agree (no skip: a skipped root test fails the run)
    for kind in sorted(driver.kinds):
        record, _ = SAMPLES[kind]
        driver.apply([create(SAMPLES[k][0], k) for k in NEEDS.get(kind, ())] + [create(record, kind)])
        missing = "198.51.100.99" if kind == "vip" else "tcp/10.97.9.9:80"
        got = driver.read_keys(kind, [key_of(record), missing])
        assert got == {key_of(record): record}
        assert got == {k: v for k, v in live(driver)[kind].items() if k == key_of(record)}


def test_down_leaves_read_empty(driver: Driver) -> None:
    if not isinstance(driver, Teardown):
        return  # nothing to take down
    changes = [create(SAMPLES[kind][0], kind) for kind in CREATE_ORDER if kind in driver.kinds]
    driver.apply(changes)
    assert all(live(driver)[c.kind] for c in changes)
    driver.down()
    assert all(not recs for recs in live(driver).values())
    driver.down()  # idempotent
    assert all(not recs for recs in live(driver).values())


def test_every_registered_driver_and_its_fake_are_covered() -> None:
    """A driver added to the registry needs its case here, and its fake must own exactly its kinds."""
    assert {s.name for s in registry.SPECS} == set(REAL)
    for spec in registry.SPECS:
        assert FAKES[spec.name]().kinds == spec.kinds, spec.name
        assert spec.kinds <= SAMPLES.keys(), spec.name
    owned = {kind for s in registry.SPECS for kind in s.kinds}
    assert {kind for d in (*fake_drivers(), fake_bgp()) for kind in d.kinds} == owned


def test_driver_modules_are_imported_only_when_a_driver_is_built() -> None:
    """``validate`` and the unit tests need no libbpf: the registry imports no driver module itself."""
    code = ("import sys, reconciler.drivers.registry as r, reconciler.apply, reconciler.watch_engine; "
            "print(sorted(m for m in sys.modules if m.startswith('reconciler.drivers.')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[3]).stdout
    assert out.strip() == "['reconciler.drivers.registry']"
