"""Integration tests of the netlink driver in a network namespace the test creates.

Why this exists: the driver must behave the same with Debian bookworm's
pyroute2 0.7 and the newest one, on the real kernel, without touching the
host's interfaces.  ``make test`` runs this file under both interpreters.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from reconciler.drivers.netlink import (
    LINK_KINDS,
    NetlinkDriver,
    NetlinkDriverError,
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


# -- bulk programming through the raw rtnetlink socket ----------------------------


def v4s(n: int, prefix: str = "198.18") -> list[VipAddress]:
    return [VipAddress(f"{prefix}.{i // 250}.{i % 250 + 1}", 32, "lbctl0") for i in range(n)]


def v6s(n: int) -> list[VipAddress]:
    return [VipAddress(f"2001:db8:1::{i + 1:x}", 128, "lbctl0") for i in range(n)]


def as_live(vips: list[VipAddress]) -> dict[str, dict[str, VipAddress]]:
    return {"vip": {v.address: v for v in sorted(vips, key=lambda v: v.address)}}


def live_lines(netns: str, *extra: str) -> list[str]:
    return ip("-n", netns, "-o", *extra, "addr", "show", "dev", "lbctl0", "scope", "global").splitlines()


def test_bad_records_are_refused_before_anything_changes() -> None:
    driver = NetlinkDriver(netns="lbt-nl-never-created")  # entering it would raise NetnsError
    for bad in (VipAddress("198.51.100.300", 32, "lbctl0"), VipAddress("198.51.100.1", 33, "lbctl0"),
                VipAddress("2001:db8::1", 129, "lbctl0"), VipAddress("0.0.0.0", 32, "lbctl0")):
        with pytest.raises(ValueError, match="198.51.100|2001:db8::1|0.0.0.0"):
            driver.apply([create(V4), create(bad)])
    assert driver.writes == 0


@pytest.mark.root
def test_bulk_add_read_back_and_idempotent(netns: str) -> None:
    vips = v4s(2000) + v6s(500)
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(v) for v in vips])
    assert driver.writes == 2 + len(vips)  # link created + set up, then one per address
    assert driver.read() == as_live(vips)
    assert len(live_lines(netns)) == len(vips)
    assert ",UP" in ip("-n", netns, "-o", "link", "show", "lbctl0")
    assert not [line for line in live_lines(netns, "-6") if "tentative" in line]
    # Usable at once: the kernel holds a local route for every VIP.
    assert len(ip("-n", netns, "route", "show", "table", "local", "dev", "lbctl0").splitlines()) == 2000

    writes = driver.writes
    driver.apply([create(v) for v in vips])  # everything already there
    assert driver.writes == writes
    driver.apply([delete(v) for v in v4s(300, "198.19") + v6s(600)[500:]])  # nothing of it there
    assert driver.writes == writes
    assert NetlinkDriver(netns=netns).read() == as_live(vips)


@pytest.mark.root
def test_mixed_batch_counts_only_real_changes(netns: str) -> None:
    old = v4s(1000)
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(v) for v in old])
    writes = driver.writes
    new = v4s(700, "198.19") + v6s(50)
    wider = [VipAddress(v.address, 31, v.ifname) for v in old[:20:2]]  # .1/31, .3/31, ...
    changes = ([create(v) for v in old[500:]]  # 500 already there
               + [delete(v) for v in old[:10] if v.address.endswith((".2", ".4", ".6", ".8", ".10"))]
               + [Change("vip", o.address, "update", o, w) for o, w in zip(old[:20:2], wider, strict=True)]
               + [delete(v) for v in v4s(400, "198.20")]  # never there
               + [create(v) for v in new])
    driver.apply(changes)
    # 5 deletes + 10 updates (delete + add each) + the new addresses
    assert driver.writes == writes + 5 + 2 * 10 + len(new)
    gone = {v.address for v in old[:10] if v.address.endswith((".2", ".4", ".6", ".8", ".10"))}
    expected = [v for v in old[20:]] + [v for v in old[1:20:2] if v.address not in gone] + wider + new
    assert driver.read() == as_live(expected)


@pytest.mark.root
@pytest.mark.parametrize("refused", ["ff02::1", "::1"])
def test_kernel_error_mid_batch_names_the_address_and_the_next_apply_converges(netns: str,
                                                                               refused: str) -> None:
    good = v4s(1500) + v6s(100)
    bad = VipAddress(refused, 128, "lbctl0")  # the kernel refuses multicast/loopback (EADDRNOTAVAIL)
    driver = NetlinkDriver(netns=netns)
    order = good[:100] + [bad] + good[100:]
    with pytest.raises(NetlinkDriverError) as info:
        driver.apply([create(v) for v in order])
    message = str(info.value)
    assert f"add {refused}/128 to lbctl0" in message and "errno 99" in message
    assert netns in message and "kernel says" in message
    assert "fix the VIP in the configuration" in message  # the hint
    live = driver.read()["vip"]
    # The batch holding the bad address was carried out around it; later ones were not sent.
    sent = [v for v in order if v.address in live]
    assert sent == good[:len(sent)] and 100 < len(sent) < len(good)
    assert driver.writes == 2 + len(sent)

    # The next run (without the bad VIP) converges and adds only what is missing.
    driver.apply([create(v) for v in good])
    assert driver.writes == 2 + len(good)
    assert driver.read() == as_live(good)


@pytest.mark.root
def test_drift_and_foreign_addresses(netns: str) -> None:
    vips = v4s(600) + v6s(20)
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(v) for v in vips])
    # Behind lbctl's back: two VIPs removed, a VIP put back with host scope, an
    # address on another interface.
    ip("-n", netns, "addr", "del", f"{vips[7].address}/32", "dev", "lbctl0")
    ip("-n", netns, "addr", "del", f"{vips[-1].address}/128", "dev", "lbctl0")
    ip("-n", netns, "addr", "del", f"{vips[9].address}/32", "dev", "lbctl0")
    ip("-n", netns, "addr", "add", f"{vips[9].address}/32", "dev", "lbctl0", "scope", "host")
    ip("-n", netns, "link", "add", "other0", "type", "ifb")
    ip("-n", netns, "addr", "add", "203.0.113.2/32", "dev", "other0")
    hosted = replace(vips[9], faults=("scope host, not global",))
    drifted = [hosted if v == vips[9] else v for v in vips if v not in (vips[7], vips[-1])]
    assert driver.read() == as_live(drifted)
    assert driver.read_keys("vip", [vips[7].address, vips[8].address]) == {vips[8].address: vips[8]}
    writes = driver.writes
    driver.apply([create(v) for v in vips if v != vips[9]]
                 + [Change("vip", vips[9].address, "update", hosted, vips[9], ("faults",))])
    assert driver.writes == writes + 4  # two adds, and the host-scope one deleted and added
    assert driver.read() == as_live(vips)


# -- wire format (no root) --------------------------------------------------------


def addr_msg(family: int, raw: bytes, prefixlen: int, index: int, scope: int = 0,
             peer: bytes | None = None) -> bytes:
    from reconciler.drivers import netlink as nl

    attrs = nl._rta(nl.IFA_ADDRESS, peer or raw)
    if peer is not None or family == socket.AF_INET:
        attrs += nl._rta(nl.IFA_LOCAL, raw)
    attrs += nl._rta(3, b"lbctl0\0")  # IFA_LABEL, skipped
    body = nl.IFADDRMSG.pack(family, prefixlen, 0, scope, index) + attrs
    return nl.NLMSGHDR.pack(nl.NLMSGHDR.size + len(body), nl.RTM_NEWADDR, 2, 1, 0) + body


def test_parse_addrs_filters_and_spells_like_ipaddress() -> None:
    from reconciler.drivers.netlink import _parse_addrs

    v4 = socket.inet_pton(socket.AF_INET, "198.51.100.10")
    peer = socket.inet_pton(socket.AF_INET, "198.51.100.99")
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:198.51.100.11")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8:0:0:0:0:0:10")
    msgs = [addr_msg(socket.AF_INET, v4, 32, 7),
            addr_msg(socket.AF_INET, socket.inet_pton(socket.AF_INET, "198.51.100.12"), 24, 7, peer=peer),
            addr_msg(socket.AF_INET6, mapped, 128, 7),
            addr_msg(socket.AF_INET6, v6, 128, 7),
            addr_msg(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "fe80::1"), 64, 7, scope=253),
            addr_msg(socket.AF_INET, socket.inet_pton(socket.AF_INET, "203.0.113.1"), 32, 8),
            addr_msg(socket.AF_INET, socket.inet_pton(socket.AF_INET, "198.51.100.13"), 32, 7, scope=254)]
    got = _parse_addrs(msgs, 7, "lbctl0")
    assert got == {
        "198.51.100.10": VipAddress("198.51.100.10", 32, "lbctl0"),
        "198.51.100.12": VipAddress("198.51.100.12", 24, "lbctl0"),  # IFA_LOCAL, not the peer
        "::ffff:c633:640b": VipAddress("::ffff:c633:640b", 128, "lbctl0"),
        "2001:db8::10": VipAddress("2001:db8::10", 128, "lbctl0"),
        # not what lbctl adds: shown, with what is wrong (the link-local fe80::1 is the kernel's)
        "198.51.100.13": VipAddress("198.51.100.13", 32, "lbctl0", ("scope host, not global",)),
    }
    assert str(ipaddress.ip_address("::ffff:198.51.100.11")) in got


def test_error_ack_with_extended_message() -> None:
    from reconciler.drivers import netlink as nl

    inner = nl.NLMSGHDR.pack(60, nl.RTM_NEWADDR, 0x605, 42, 0)
    text = b"ipv6: Cannot assign multicast address\0"
    tlv = nl._rta(nl.NLMSGERR_ATTR_MSG, text)
    payload = nl.ERRNO.pack(-22) + inner + tlv
    flags = nl.NLM_F_CAPPED | nl.NLM_F_ACK_TLVS
    msg = nl.NLMSGHDR.pack(nl.NLMSGHDR.size + len(payload), nl.NLMSG_ERROR, flags, 42, 0) + payload
    ack = nl._RtnlSocket._error(memoryview(msg), 0, len(msg), flags)
    assert ack == (22, "ipv6: Cannot assign multicast address")
    # Not capped: the whole request is echoed before the TLVs.
    request = nl.NLMSGHDR.pack(24, nl.RTM_NEWADDR, 0x605, 43, 0) + b"\1" * 8
    payload = nl.ERRNO.pack(-17) + request + tlv
    flags = nl.NLM_F_ACK_TLVS
    msg = nl.NLMSGHDR.pack(nl.NLMSGHDR.size + len(payload), nl.NLMSG_ERROR, flags, 43, 0) + payload
    assert nl._RtnlSocket._error(memoryview(msg), 0, len(msg), flags) == (
        17, "ipv6: Cannot assign multicast address")


@pytest.mark.root
def test_box_addresses_are_every_interfaces_but_link_local(netns: str) -> None:
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "addr", "add", "192.0.2.7/32", "dev", "lo")
    ip("-n", netns, "addr", "add", "2001:db8::7/128", "dev", "lo")
    got = NetlinkDriver(netns=netns).box_addresses()
    assert {"127.0.0.1", "::1", "192.0.2.7", "2001:db8::7"} <= got
    assert not any(a.startswith("fe80") for a in got)
