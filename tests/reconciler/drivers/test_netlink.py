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

from reconciler.drivers import netlink as nl
from reconciler.drivers.netlink import (
    ADDRESS_FAULT,
    LINK_KINDS,
    NetlinkDriver,
    NetlinkDriverError,
)
from reconciler.drivers.netns import NetnsError, in_netns
from reconciler.plan import Change, diff
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


def routes(netns: str, family: str = "-4", *extra: str) -> list[str]:
    """lbctl's local routes through lbctl0, as ``ip route`` lists them."""
    return ip("-n", netns, family, "route", "show", "table", "local", "dev", "lbctl0", "proto",
              str(nl.RTPROT_LBCTL), *extra).splitlines()


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
    # created + set up + two routes
    assert driver.writes == 4
    assert driver.read() == {"vip": {V4.address: V4, V6.address: V6}}
    assert routes(netns) == ["local 198.51.100.10 scope host "]
    assert [r.split()[:2] for r in routes(netns, "-6")] == [["local", "2001:db8::10"]]
    # The VIPs are routes, not addresses: the link holds only the kernel's IPv6 link-local one.
    assert "198.51.100.10" not in ip("-n", netns, "-o", "addr", "show", "dev", "lbctl0")

    driver.apply([delete(V4)])
    assert driver.read() == {"vip": {V6.address: V6}}
    assert driver.writes == 5


@pytest.mark.root
def test_read_keys_returns_only_the_asked_live_addresses(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4), create(V6)])
    assert driver.read_keys("vip", [V4.address, "203.0.113.99"]) == {V4.address: V4}
    ip("-n", netns, "-6", "route", "del", "local", "2001:db8::10/128", "dev", "lbctl0", "table", "local")
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
def test_replace_moves_a_vip_to_another_interface(netns: str) -> None:
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4), create(V6)])
    moved = [replace(v, ifname="vips1") for v in (V4, V6)]
    driver.apply([Change("vip", o.address, "replace", o, m) for o, m in zip((V4, V6), moved, strict=True)])
    assert driver.read() == {"vip": {}}
    assert NetlinkDriver(ifname="vips1", netns=netns).read() == as_live(moved)


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


def test_bad_records_are_refused_before_anything_changes() -> None:
    driver = NetlinkDriver(netns="lbt-nl-never-created")  # entering it would raise NetnsError
    bad = [("198.51.100.300", 32, "not an IP address"), ("198.51.100.1", 33, "out of range"),
           ("2001:db8::1", 129, "out of range"), ("198.51.100.1", 31, "one address"),
           ("2001:db8::1", 64, "one address"),
           # The kernel takes all of these as local routes without a word; none is a VIP.
           ("0.0.0.0", 32, "unspecified"), ("255.255.255.255", 32, "broadcast"),
           ("224.0.0.5", 32, "multicast"), ("127.0.0.9", 32, "loopback"), ("169.254.1.1", 32, "link-local"),
           ("::", 128, "unspecified"), ("::1", 128, "loopback"), ("ff02::1", 128, "multicast"),
           ("fe80::5", 128, "link-local"), ("::ffff:192.0.2.1", 128, "IPv4-mapped")]
    for address, prefixlen, why in bad:
        with pytest.raises(ValueError, match=why):
            driver.apply([create(V4), create(VipAddress(address, prefixlen, "lbctl0"))])
    assert driver.writes == 0
    # A delete takes what a read can return (a prefix someone routed through lbctl0): still no entry.
    with pytest.raises(NetnsError):
        driver.apply([delete(VipAddress("198.51.100.0", 31, "lbctl0"))])


@pytest.mark.root
def test_bulk_add_read_back_and_idempotent(netns: str) -> None:
    vips = v4s(2000) + v6s(500)
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(v) for v in vips])
    assert driver.writes == 2 + len(vips)  # link created + set up, then one per address
    assert driver.read() == as_live(vips)
    assert len(routes(netns)) == 2000 and len(routes(netns, "-6")) == 500
    assert ",UP" in ip("-n", netns, "-o", "link", "show", "lbctl0")

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
    moved = [replace(v, ifname="vips1") for v in old[:20:2]]  # .1, .3, ... to another interface
    changes = ([create(v) for v in old[500:]]  # 500 already there
               + [delete(v) for v in old[:10] if v.address.endswith((".2", ".4", ".6", ".8", ".10"))]
               + [Change("vip", o.address, "replace", o, m) for o, m in zip(old[:20:2], moved, strict=True)]
               + [delete(v) for v in v4s(400, "198.20")]  # never there
               + [create(v) for v in new])
    driver.apply(changes)
    # vips1 created + set up, 5 deletes, 10 moves (delete + add each), the new routes
    assert driver.writes == writes + 2 + 5 + 2 * 10 + len(new)
    gone = {v.address for v in old[:10] if v.address.endswith((".2", ".4", ".6", ".8", ".10"))}
    expected = [v for v in old[20:]] + [v for v in old[1:20:2] if v.address not in gone] + new
    assert driver.read() == as_live(expected)
    assert NetlinkDriver(ifname="vips1", netns=netns).read() == as_live(moved)


@pytest.mark.root
def test_kernel_error_mid_batch_names_the_vip_and_the_next_apply_converges(
        netns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    good = v4s(1500) + v6s(100)
    bad = VipAddress("198.18.200.1", 32, "lbctl0")
    # Nothing a check lets through makes the kernel refuse a local route, so the
    # bad VIP's message is spoiled on its way out: a /31 with a host bit set,
    # which the kernel refuses with EINVAL and an extended-ack message.
    body = nl._route_body

    def spoiled(kind: int, vip: VipAddress, index: int) -> bytes:
        out = bytearray(body(kind, vip, index))
        if vip == bad:
            out[1] = 31  # rtmsg.rtm_dst_len
        return bytes(out)

    monkeypatch.setattr(nl, "_route_body", spoiled)
    driver = NetlinkDriver(netns=netns)
    order = good[:100] + [bad] + good[100:]
    with pytest.raises(NetlinkDriverError) as info:
        driver.apply([create(v) for v in order])
    message = str(info.value)
    assert "add local route 198.18.200.1/32 via lbctl0" in message and "errno 22" in message
    assert netns in message and "kernel says 'Invalid prefix" in message
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


def unroute(netns: str, vip: VipAddress) -> None:
    ip("-n", netns, "route", "del", "local", f"{vip.address}/{vip.prefixlen}", "dev", vip.ifname,
       "table", "local")


@pytest.mark.root
def test_drift_and_foreign_routes_and_addresses(netns: str) -> None:
    vips = v4s(600) + v6s(20)
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(v) for v in vips])
    # Behind lbctl's back: two VIPs removed, one made an address, one routed by
    # another protocol, an address and a local route elsewhere, a local prefix on lbctl0.
    unroute(netns, vips[7])
    unroute(netns, vips[-1])
    unroute(netns, vips[9])
    ip("-n", netns, "addr", "add", f"{vips[9].address}/32", "dev", "lbctl0", "scope", "host")
    unroute(netns, vips[11])
    ip("-n", netns, "route", "add", "local", f"{vips[11].address}/32", "dev", "lbctl0", "table", "local",
       "proto", "static")
    ip("-n", netns, "link", "add", "other0", "type", "ifb")
    ip("-n", netns, "addr", "add", "203.0.113.2/32", "dev", "other0")
    ip("-n", netns, "route", "add", "local", "203.0.113.3/32", "dev", "other0", "table", "local")
    ip("-n", netns, "route", "add", "local", "203.0.113.8/30", "dev", "lbctl0", "table", "local")
    held = replace(vips[9], faults=(ADDRESS_FAULT,))
    static = replace(vips[11], faults=("a local route of protocol 4, not lbctl's (108)",))
    prefix = VipAddress("203.0.113.8", 30, "lbctl0", ("a local route of protocol 3, not lbctl's (108)",
                                                      "a local route to /30, not to one address"))
    drifted = [{vips[9]: held, vips[11]: static}.get(v, v) for v in vips if v not in (vips[7], vips[-1])]
    assert driver.read() == as_live([*drifted, prefix])
    assert driver.read_keys("vip", [vips[7].address, vips[8].address]) == {vips[8].address: vips[8]}
    # The plan of the desired VIPs against that: two creates, two updates, one delete.
    plan = diff({"vip": {v.address: v for v in vips}}, driver.read())
    writes = driver.writes
    driver.apply(plan.changes)
    # Deleting the held VIP's address (the link's last IPv4 one) makes the kernel flush every
    # IPv4 route through lbctl0: lbctl's 597 are put back, the foreign two are gone before
    # their deletes.  So: the address deleted, 597 restored, two added, two replaced by lbctl's.
    assert driver.writes == writes + 1 + 597 + 2 + 2
    assert driver.read() == as_live(vips)
    assert "203.0.113.3" in ip("-n", netns, "route", "show", "table", "local", "dev", "other0")
    assert vips[9].address not in ip("-n", netns, "-o", "addr", "show", "dev", "lbctl0")


@pytest.mark.root
def test_a_box_holding_vips_as_addresses_converts_in_one_apply(netns: str) -> None:
    """What an older lbctl left (the VIPs as addresses on lbctl0) becomes local routes."""
    vips = v4s(300) + v6s(30)
    ip("-n", netns, "link", "add", "lbctl0", "type", "ifb")
    batch = "".join(f"addr add {v.address}/{v.prefixlen} dev lbctl0{' nodad' if ':' in v.address else ''}\n"
                    for v in vips)
    subprocess.run(["ip", "-n", netns, "-batch", "-"], input=batch, text=True, check=True)
    ip("-n", netns, "link", "set", "lbctl0", "up")
    driver = NetlinkDriver(netns=netns)
    assert driver.read() == as_live([replace(v, faults=(ADDRESS_FAULT,)) for v in vips])
    plan = diff({"vip": {v.address: v for v in vips}}, driver.read())
    assert {c.action for c in plan.changes} == {"update"} and len(plan.changes) == len(vips)
    driver.apply(plan.changes)
    assert driver.writes == 2 * len(vips)
    assert driver.read() == as_live(vips)
    assert len(routes(netns)) == 300 and len(routes(netns, "-6")) == 30
    assert "198.18" not in ip("-n", netns, "-o", "addr", "show", "dev", "lbctl0")


@pytest.mark.root
def test_a_local_route_vip_answers_arp_and_accepts_tcp(netns: str) -> None:
    """The reason for the record: a neighbour on the link resolves the VIP and connects to it."""
    client = f"{netns}-c"
    ip("netns", "add", client)
    try:
        ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", client)
        for ns, addr in ((netns, "192.0.2.1/24"), (client, "192.0.2.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", client, "route", "add", f"{V4.address}/32", "dev", "eth0")  # on-link: the client ARPs for it
        NetlinkDriver(netns=netns).apply([create(V4)])
        with in_netns(netns):
            server = socket.create_server(("0.0.0.0", 8080))
        with server:
            with in_netns(client):
                conn = socket.create_connection((V4.address, 8080), timeout=10)
            with conn:
                peer, _ = server.accept()
                with peer:
                    conn.sendall(b"vip")
                    assert peer.recv(3) == b"vip"
                    assert peer.getsockname()[0] == V4.address
        assert "lladdr" in ip("-n", client, "neigh", "show", V4.address)
    finally:
        subprocess.run(["ip", "netns", "del", client], check=False)


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
    held = (ADDRESS_FAULT,)  # every address on lbctl's interface is one to convert to a route
    assert got == {
        "198.51.100.10": VipAddress("198.51.100.10", 32, "lbctl0", held),
        "198.51.100.12": VipAddress("198.51.100.12", 24, "lbctl0", held),  # IFA_LOCAL, not the peer
        "::ffff:c633:640b": VipAddress("::ffff:c633:640b", 128, "lbctl0", held),
        "2001:db8::10": VipAddress("2001:db8::10", 128, "lbctl0", held),
        "198.51.100.13": VipAddress("198.51.100.13", 32, "lbctl0", held),
        # the link-local fe80::1 is the kernel's
    }
    assert str(ipaddress.ip_address("::ffff:198.51.100.11")) in got
    # The box's addresses (every link): no faults, no interface.
    assert _parse_addrs(msgs, None, "")["203.0.113.1"] == VipAddress("203.0.113.1", 32, "")


def route_msg(family: int, dst: str, dst_len: int, oif: int, proto: int = 108, rtype: int = 2,
              table: int = 255) -> bytes:
    raw = socket.inet_pton(family, dst)
    attrs = nl._rta(nl.RTA_TABLE, nl.U32.pack(table)) + nl._rta(nl.RTA_DST, raw)
    attrs += nl._rta(nl.RTA_OIF, nl.U32.pack(oif)) + nl._rta(6, nl.U32.pack(1024))  # RTA_PRIORITY, skipped
    body = nl.RTMSG.pack(family, dst_len, 0, 0, min(table, 252), proto, 254, rtype, 0) + attrs
    return nl.NLMSGHDR.pack(nl.NLMSGHDR.size + len(body), nl.RTM_NEWROUTE, 2, 1, 0) + body


def test_parse_routes_keeps_the_local_routes_of_the_link_and_marks_what_lbctl_would_not_add() -> None:
    from reconciler.drivers.netlink import _parse_routes

    v4, v6 = socket.AF_INET, socket.AF_INET6
    msgs = [route_msg(v4, "198.51.100.10", 32, 7),
            route_msg(v6, "2001:db8:0:0:0:0:0:10", 128, 7),
            route_msg(v6, "::ffff:198.51.100.11", 128, 7),
            route_msg(v4, "198.51.100.20", 32, 7, proto=4),  # someone else's
            route_msg(v4, "198.51.100.20", 32, 7),  # ... and lbctl's beside it: lbctl's wins
            route_msg(v4, "198.51.100.21", 32, 7),
            route_msg(v4, "198.51.100.21", 32, 7, proto=4),  # wins only over nothing
            route_msg(v4, "198.51.100.32", 28, 7),
            route_msg(v4, "198.51.100.40", 32, 7, proto=2),  # an address's: left to _parse_addrs
            route_msg(v4, "198.51.100.41", 32, 8),  # another link
            route_msg(v4, "198.51.100.42", 32, 7, rtype=1),  # unicast
            route_msg(v4, "198.51.100.43", 32, 7, table=254),  # main table
            route_msg(v4, "198.51.100.44", 32, 7, table=1000)]  # a table past 255 (RTA_TABLE)
    assert _parse_routes(msgs, 7, "lbctl0") == {
        "198.51.100.10": VipAddress("198.51.100.10", 32, "lbctl0"),
        "2001:db8::10": VipAddress("2001:db8::10", 128, "lbctl0"),
        "::ffff:c633:640b": VipAddress("::ffff:c633:640b", 128, "lbctl0"),
        "198.51.100.20": VipAddress("198.51.100.20", 32, "lbctl0"),
        "198.51.100.21": VipAddress("198.51.100.21", 32, "lbctl0"),
        "198.51.100.32": VipAddress("198.51.100.32", 28, "lbctl0",
                                    ("a local route to /28, not to one address",)),
    }


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
    driver = NetlinkDriver(netns=netns)
    driver.apply([create(V4), create(V6)])  # lbctl's VIPs are local to the box too
    got = driver.box_addresses()
    assert {"127.0.0.1", "::1", "192.0.2.7", "2001:db8::7", V4.address, V6.address} <= got
    assert not any(a.startswith("fe80") for a in got)
