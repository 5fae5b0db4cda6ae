"""Issue 13, end to end: the NAT modes with real traffic through the attached datapath.

Each test builds its own testbed (tests/testbed.py: client, LB, backends) and pin
root and removes both.  What each mode promises is checked from the endpoints'
side (a TCP server on each reports the source address it saw) and from the
client's (answers come from the VIP):

- default and dsr: the endpoint sees the client; onearm: the LB's own address
  towards it; fullnat: the configured source.  For onearm and fullnat the
  endpoints have no route to the client network at all;
- L3 DSR: an endpoint behind a router receives the client's packet inside
  IP-in-IP (this kernel has no ipip module: a raw socket captures it, and the
  test answers from the VIP as the decapsulated packet asks);
- hairpin: a client that is itself an endpoint gets every answer;
- two VIPs, one client address and source port, one backend: both flows at once.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from reconciler.drivers.bpf import BpfDriver
from reconciler.drivers.netns import in_netns
from reconciler.plan import Change
from reconciler.records import Attachment, Backend, EndpointSet, ServiceEntry, ServiceKey
from tests.testbed import CLIENT4, ECHO_PORT, HTTP_PORT, PEER_PORT, UDP_PORT, VIP4, VIP6, Testbed, _ip

pytestmark = [pytest.mark.root, pytest.mark.slow]

FULLNAT_SOURCE = "10.202.0.1"  # an address of the LB box (on its loopback), not of any arm


class Box:
    """A testbed with the datapath attached on every LB interface (tc)."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.driver = BpfDriver(pin_root=f"/sys/fs/bpf/lbctl-nat-{uuid.uuid4().hex[:8]}", netns=tb.lb)
        attach = [Change("attach", i, "create", None, Attachment(i, "tc")) for i in tb.lb_interfaces]
        self.driver.apply(attach)

    def service(self, vip: str, proto: str, port: int, addresses: list[str], mode: str, *,
                selection: str = "rr", source: str = "") -> None:
        key = ServiceKey(vip, proto, port, port)
        eps = EndpointSet(key, tuple(Backend(a, port) for a in addresses))
        svc = ServiceEntry(key, "svc", mode, selection, 240 if proto == "tcp" else 20, 10800, (), source)
        self.driver.apply([Change("endpoints", str(key), "create", None, eps),
                           Change("service", str(key), "create", None, svc)])

    def close(self) -> None:
        try:
            self.driver.down()
        finally:
            self.tb.teardown()


@pytest.fixture
def tb() -> Iterator[Testbed]:
    t = Testbed(n_backends=3).setup()
    try:
        yield t
    finally:
        t.teardown()


def http_get(tb: Testbed, vip: str = VIP4) -> str:
    r = subprocess.run(["ip", "netns", "exec", tb.client, "curl", "-s", "-m", "5",
                        f"http://{vip}:{HTTP_PORT}/"], capture_output=True, text=True)
    assert r.returncode == 0, f"curl exit {r.returncode} {r.stderr}"
    return r.stdout.strip()


def udp_ask(tb: Testbed) -> str:
    with in_netns(tb.client):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(3)
        s.sendto(b"ping", (VIP4, UDP_PORT))
        data, peer = s.recvfrom(100)
    assert peer == (VIP4, UDP_PORT), "the reply must come from the VIP"
    return data.split()[0].decode()


def seen_source(tb: Testbed) -> tuple[str, str]:
    """(endpoint name, the source address it saw) of one connection to the VIP's peer port."""
    with in_netns(tb.client):
        s = socket.create_connection((VIP4, PEER_PORT), timeout=5)
    with s:
        assert s.getpeername() == (VIP4, PEER_PORT)
        name, addr = s.makefile("r").readline().split()
    return name, addr


def _no_route_back(tb: Testbed) -> None:
    for i in range(tb.n_backends):
        _ip("-n", tb.backend_ns(i), "route", "del", "default")
        _ip("-n", tb.backend_ns(i), "-6", "route", "del", "default")


@pytest.mark.parametrize("mode", ["default", "onearm", "fullnat", "dsr"])
def test_mode_http_udp_and_the_source_endpoints_see(tb: Testbed, mode: str) -> None:
    names = {tb.backend_name(i) for i in range(tb.n_backends)}
    source = ""
    if mode in ("onearm", "fullnat"):
        _no_route_back(tb)
    if mode == "fullnat":
        source = FULLNAT_SOURCE
        _ip("-n", tb.lb, "addr", "add", f"{source}/32", "dev", "lo")
        for i in range(tb.n_backends):  # a route to the source address only, not to the clients
            _ip("-n", tb.backend_ns(i), "route", "add", f"{source}/32", "via", f"10.201.{i}.1")
    if mode == "dsr":
        for i in range(tb.n_backends):  # the endpoints hold the VIP on a loopback
            _ip("-n", tb.backend_ns(i), "addr", "add", f"{VIP4}/32", "dev", "lo")
    box = Box(tb)
    try:
        selection = "hash" if mode == "dsr" else "rr"
        for proto, port in (("tcp", HTTP_PORT), ("udp", UDP_PORT), ("tcp", PEER_PORT)):
            box.service(VIP4, proto, port, [tb.backend4(i) for i in range(tb.n_backends)], mode,
                        selection=selection, source=source)
        assert {http_get(tb) for _ in range(30)} == names
        assert {udp_ask(tb) for _ in range(30)} == names
        seen = dict(seen_source(tb) for _ in range(30))
        assert set(seen) == names
        for i in range(tb.n_backends):
            want = {"default": CLIENT4, "dsr": CLIENT4, "onearm": f"10.201.{i}.1",
                    "fullnat": FULLNAT_SOURCE}[mode]
            assert seen[tb.backend_name(i)] == want, f"{mode}: backend{i} saw {seen[tb.backend_name(i)]}"
    finally:
        box.driver.down()


ROUTED = "10.203.0.2"  # backend0's address behind itself as a router: L3 DSR


def test_l3_dsr_ipip_reaches_the_endpoint_and_it_answers_the_client_directly() -> None:
    tb = Testbed(n_backends=1, servers=False).setup()
    box = None
    try:
        ns = tb.backend_ns(0)
        _ip("-n", ns, "addr", "add", f"{ROUTED}/32", "dev", "lo")
        _ip("-n", ns, "addr", "add", f"{VIP4}/32", "dev", "lo")
        _ip("-n", tb.lb, "route", "add", "10.203.0.0/24", "via", tb.backend4(0))
        box = Box(tb)
        box.service(VIP4, "udp", UDP_PORT, [ROUTED], "dsr", selection="maglev")
        with in_netns(ns):
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)  # IPPROTO_IPIP
            answer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            answer.bind((VIP4, UDP_PORT))
        with in_netns(tb.client):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with raw, answer, client:
            raw.settimeout(5)
            client.settimeout(5)
            client.sendto(b"ping", (VIP4, UDP_PORT))
            pkt = raw.recv(2048)
            outer, inner = pkt[:20], pkt[20:]
            assert outer[9] == 4 and socket.inet_ntoa(outer[12:16]) == "10.201.0.1"
            assert socket.inet_ntoa(outer[16:20]) == ROUTED
            ihl = (inner[0] & 0xF) * 4
            assert inner[9] == socket.IPPROTO_UDP
            src, dst = socket.inet_ntoa(inner[12:16]), socket.inet_ntoa(inner[16:20])
            sport, dport = struct.unpack("!HH", inner[ihl : ihl + 4])
            assert (src, dst, dport) == (CLIENT4, VIP4, UDP_PORT)
            assert inner[ihl + 8 :] == b"ping"
            # The endpoint answers as the VIP, straight to the client (through its own route).
            answer.sendto(b"pong", (src, sport))
            data, peer = client.recvfrom(100)
            assert (data, peer) == (b"pong", (VIP4, UDP_PORT))
    finally:
        if box is not None:
            box.driver.down()
        tb.teardown()


def test_hairpin_client_that_is_an_endpoint_gets_every_answer() -> None:
    tb = Testbed(n_backends=2).setup()
    box = None
    try:
        tb.start_server(tb.client, "client")
        box = Box(tb)
        box.service(VIP4, "tcp", HTTP_PORT, [tb.backend4(0), tb.backend4(1), CLIENT4], "default")
        answers = [http_get(tb) for _ in range(12)]
        assert sorted(answers) == sorted(["backend0", "backend1", "client"] * 4)
    finally:
        if box is not None:
            box.driver.down()
        tb.teardown()


def test_two_vips_same_client_port_same_backend_both_flows_work(tb: Testbed) -> None:
    vip2 = "10.250.0.2"
    box = Box(tb)
    try:
        for vip in (VIP4, vip2):
            box.service(vip, "tcp", ECHO_PORT, [tb.backend4(0)], "default")
        socks = []
        for vip in (VIP4, vip2):
            with in_netns(tb.client):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.settimeout(5)
            s.bind((CLIENT4, 45000))
            s.connect((vip, ECHO_PORT))
            socks.append(s)
        try:
            for n in range(5):
                for i, s in enumerate(socks):
                    s.sendall(b"%d-%d\n" % (i, n))
                for i, s in enumerate(socks):
                    assert s.recv(100) == b"backend0: %d-%d\n" % (i, n)
        finally:
            for s in socks:
                s.close()
    finally:
        box.driver.down()


def test_nat64_ipv6_only_client_fetches_from_ipv4_endpoints(tb: Testbed) -> None:
    """fullnat between families: an IPv6 VIP in front of IPv4-only endpoints."""
    _ip("-n", tb.client, "addr", "del", f"{CLIENT4}/24", "dev", "eth0")  # the client is IPv6 only
    for i in range(tb.n_backends):  # and the endpoints IPv4 only, with no route to the clients
        _ip("-n", tb.backend_ns(i), "addr", "del", f"{tb.backend6(i)}/64", "dev", "eth0")
    _no_route_back(tb)
    box = Box(tb)
    try:
        box.service(VIP6, "tcp", HTTP_PORT, [tb.backend4(i) for i in range(tb.n_backends)], "fullnat")
        box.service(VIP6, "tcp", PEER_PORT, [tb.backend4(i) for i in range(tb.n_backends)], "fullnat")
        names = set()
        for _ in range(12):
            r = subprocess.run(["ip", "netns", "exec", tb.client, "curl", "-s", "-m", "5",
                                f"http://[{VIP6}]:{HTTP_PORT}/"], capture_output=True, text=True)
            assert r.returncode == 0, f"curl exit {r.returncode} {r.stderr}"
            names.add(r.stdout.strip())
        assert names == {tb.backend_name(i) for i in range(tb.n_backends)}
        with in_netns(tb.client):
            s = socket.create_connection((VIP6, PEER_PORT), timeout=5)
        with s:
            assert s.getpeername()[:2] == (VIP6, PEER_PORT)
            name, addr = s.makefile("r").readline().split()
        assert addr == f"10.201.{name.removeprefix('backend')}.1"  # the LB's IPv4 address on that arm
    finally:
        box.driver.down()
