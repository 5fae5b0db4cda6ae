"""Integration tests of the netlink driver in a network namespace the test creates.

Why this exists: the driver must behave the same with Debian bookworm's
pyroute2 0.7 and the newest one, on the real kernel, without touching the
host's interfaces.  ``make test`` runs this file under both interpreters.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from reconciler.drivers.netlink import (
    LINK_KINDS,
    NetlinkDriver,
    NetlinkDriverError,
    _sysctl_path,
    ensure_forwarding,
    forwarding_sysctls,
    read_sysctl,
)
from reconciler.drivers.netns import NetnsError
from reconciler.plan import Change
from reconciler.records import ServiceEntry, ServiceKey, VipAddress

V4 = VipAddress("198.51.100.10", 32, "lbctl0")
V4B = VipAddress("198.51.100.11", 32, "lbctl0")
V6 = VipAddress("2001:db8::10", 128, "lbctl0")


def create(vip: VipAddress) -> Change:
    return Change("vip", vip.address, "create", None, vip)


def delete(vip: VipAddress) -> Change:
    return Change("vip", vip.address, "delete", vip, None)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def host_links() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"lbt-nl-{uuid.uuid4().hex[:8]}"
    before = host_links()
    ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        assert host_links() == before, "the test changed the host's interfaces"


# -- pure checks (no root) ----------------------------------------------------


def test_apply_rejects_other_kinds() -> None:
    driver = NetlinkDriver(netns="lbt-nl-never-created")
    key = ServiceKey("198.51.100.10", "tcp", 80, 80)
    entry = ServiceEntry(key, "web", "default", "rr", 240, 0)
    with pytest.raises(ValueError, match="only owns 'vip'"):
        driver.apply([Change("service", str(key), "create", None, entry)])
    with pytest.raises(ValueError, match="carries a ServiceEntry"):
        driver.apply([Change("vip", "198.51.100.10", "create", None, entry)])
    assert driver.writes == 0


def test_empty_apply_opens_nothing() -> None:
    NetlinkDriver(netns="lbt-nl-never-created").apply([])  # would raise NetnsError if it entered


def test_bad_interface_name() -> None:
    for bad in ("", "x" * 16, "a/b", "a b"):
        with pytest.raises(ValueError):
            NetlinkDriver(ifname=bad)


def test_sysctl_names() -> None:
    assert _sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert _sysctl_path("net.ipv4.conf.eth0/100.rp_filter") == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    with pytest.raises(ValueError):
        _sysctl_path("net..ipv4")
    wanted = forwarding_sysctls(["eth0.100"], ipv6=False)
    assert wanted["net.ipv4.conf.eth0/100.rp_filter"] == "0"
    assert "net.ipv6.conf.all.forwarding" not in wanted


# -- against the kernel ---------------------------------------------------------


@pytest.mark.root
def test_missing_namespace_is_a_clear_error() -> None:
    with pytest.raises(NetnsError, match="does not exist"):
        NetlinkDriver(netns=f"lbt-nl-missing-{uuid.uuid4().hex[:6]}").read()


@pytest.mark.root
def test_read_on_a_fresh_box_creates_nothing(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    assert driver.read() == {"vip": {}}
    assert driver.interface_kind() is None
    assert "lbctl0" not in ip("-n", netns, "-o", "link")
    assert driver.writes == 0


@pytest.mark.root
def test_create_read_delete_v4_v6(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4), create(V6)])
    assert driver.interface_kind() in LINK_KINDS
    link = ip("-n", netns, "-o", "link", "show", "lbctl0")
    assert "state UNKNOWN" in link or ",UP" in link
    # created + set up + two addresses
    assert driver.writes == 4
    assert driver.read() == {"vip": {V4.address: V4, V6.address: V6}}
    addrs = ip("-n", netns, "-o", "addr", "show", "dev", "lbctl0")
    assert "198.51.100.10/32" in addrs and "2001:db8::10/128" in addrs
    assert "tentative" not in addrs  # IPv6 VIPs are usable at once (nodad)

    driver.apply([delete(V4)])
    assert driver.read() == {"vip": {V6.address: V6}}
    assert driver.writes == 5


@pytest.mark.root
def test_read_keys_returns_only_the_asked_live_addresses(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4), create(V6)])
    assert driver.read_keys("vip", [V4.address, "203.0.113.99"]) == {V4.address: V4}
    ip("-n", netns, "addr", "del", "2001:db8::10/128", "dev", "lbctl0")  # drift behind lbctl's back
    assert driver.read_keys("vip", [V6.address]) == {}
    with pytest.raises(ValueError):
        driver.read_keys("service", ["x"])


@pytest.mark.root
def test_idempotent(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4), create(V6)])
    writes = driver.writes
    driver.apply([create(V4), create(V6)])  # already there: no error, no write
    assert driver.writes == writes
    driver.apply([delete(V4B)])  # never there: no error, no write
    assert driver.writes == writes
    driver.apply([delete(V4), delete(V4)])
    assert driver.writes == writes + 1
    # A second driver object sees the same live state and adopts the interface.
    other = NetlinkDriver(netns=netns)
    assert other.read() == {"vip": {V6.address: V6}}
    other.apply([create(V6)])
    assert other.writes == 0


@pytest.mark.root
def test_update_and_replace(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4)])
    wider = VipAddress(V4.address, 31, "lbctl0")
    driver.apply([Change("vip", V4.address, "update", V4, wider)])
    assert driver.read() == {"vip": {V4.address: wider}}
    driver.apply([Change("vip", V4.address, "replace", wider, V4)])
    assert driver.read() == {"vip": {V4.address: V4}}


@pytest.mark.root
def test_interface_brought_up_and_foreign_interface_refused(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4)])
    ip("-n", netns, "link", "set", "lbctl0", "down")
    driver.apply([create(V6)])
    assert ",UP" in ip("-n", netns, "-o", "link", "show", "lbctl0")

    ip("-n", netns, "link", "add", "lbv0", "type", "veth", "peer", "name", "lbv1")
    foreign = NetlinkDriver(ifname="lbv0", netns=netns)
    with pytest.raises(NetlinkDriverError, match="not lbctl's"):
        foreign.apply([create(VipAddress("198.51.100.20", 32, "lbv0"))])
    with pytest.raises(NetlinkDriverError, match="not lbctl's"):
        foreign.down()
    assert "lbv0" in ip("-n", netns, "-o", "link")


@pytest.mark.root
def test_down(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4), create(V6)])
    writes = driver.writes
    driver.down()
    assert driver.writes == writes + 1
    assert driver.interface_kind() is None
    assert driver.read() == {"vip": {}}
    driver.down()  # nothing left: no error, no write
    assert driver.writes == writes + 1


@pytest.mark.root
def test_works_from_another_thread(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            driver.apply([create(V4)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not errors
    assert driver.read() == {"vip": {V4.address: V4}}


@pytest.mark.root
def test_ensure_forwarding_touches_only_the_namespace(netns: str) -> None:
    host = {name: read_sysctl(name) for name in forwarding_sysctls() if "conf.lo" not in name}
    ip("-n", netns, "link", "set", "lo", "up")
    changed = ensure_forwarding(netns, interfaces=["lo", "missing0"])
    assert "net.ipv4.ip_forward=1" in changed
    assert read_sysctl("net.ipv4.ip_forward", netns) == "1"
    assert read_sysctl("net.ipv4.conf.all.rp_filter", netns) == "0"
    assert read_sysctl("net.ipv4.conf.lo.rp_filter", netns) == "0"
    assert read_sysctl("net.ipv6.conf.all.forwarding", netns) == "1"
    assert ensure_forwarding(netns, interfaces=["lo"]) == []  # idempotent
    assert {name: read_sysctl(name) for name in host} == host  # host untouched

    # From a non-main thread too: /proc/sys follows the calling thread.
    ip("netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    result: list[list[str]] = []
    t = threading.Thread(target=lambda: result.append(ensure_forwarding(netns, ipv6=False)))
    t.start()
    t.join()
    assert result == [["net.ipv4.ip_forward=1"]]
    assert read_sysctl("net.ipv4.ip_forward", netns) == "1"
    assert {name: read_sysctl(name) for name in host} == host
