"""End to end: SCTP associations through the attached datapath in namespaces (issue 14).

Client and servers speak SCTP on raw IP sockets (tests/sctp_peer.py; this kernel has
no SCTP module): an association through the VIP with DATA and a shutdown, the
conntrack state at each step, DATA to a secondary VIP learned from the INIT-ACK
reaching the same association on the same endpoint, round robin of 12 associations
over 3 endpoints, and a valid CRC32c on every packet either side received.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from reconciler.drivers.bpf import BpfDriver
from reconciler.plan import Change
from reconciler.records import Attachment, Backend, EndpointSet, ServiceEntry, ServiceKey
from tests.sctp_peer import Client, Server
from tests.testbed import CLIENT4, VIP4, Testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

VIPS = (VIP4, "10.250.0.2", "10.250.0.3")  # primary and secondary VIPs (routed to the LB)
PORT, TARGET = 3868, 3869


class Box:
    def __init__(self, hook: str) -> None:
        self.tb = Testbed(n_backends=3, servers=False).setup()
        self.pin_root = f"/sys/fs/bpf/lbctl-sc-{uuid.uuid4().hex[:8]}"
        self.driver = BpfDriver(pin_root=self.pin_root, netns=self.tb.lb)
        self.servers: list[Server] = []
        if hook == "xdp":
            self.tb.xdp_workarounds()
        bes = tuple(Backend(self.tb.backend4(i), TARGET) for i in range(3))
        ch = [Change("attach", i, "create", None, Attachment(i, hook)) for i in self.tb.lb_interfaces]
        for vip in VIPS:
            key = ServiceKey(vip, "sctp", PORT, PORT)
            ch.append(Change("endpoints", str(key), "create", None, EndpointSet(key, bes)))
            ch.append(Change("service", str(key), "create", None, ServiceEntry(
                key, "diameter", "default", "rr", 240, 10800,
                sctp_peer_vips=tuple(v for v in VIPS if v != vip))))
        self.driver.apply(ch)
        for i in range(3):
            own = self.tb.backend4(i)
            # A multihomed endpoint tells its peer all its addresses (two of them not routed here).
            self.servers.append(Server(self.tb.backend_ns(i), f"backend{i}", TARGET,
                                       (own, f"10.201.{i}.3", f"10.201.{i}.4")))

    def states(self, sport: int) -> list[str]:
        return [f.state for f in self.driver.conntrack() if f.client_port == sport]

    def close(self) -> None:
        try:
            for s in self.servers:
                s.close()
            self.driver.down()
        finally:
            self.tb.teardown()


@pytest.fixture(params=["tc", "xdp"])
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    b = Box(request.param)
    try:
        yield b
    finally:
        b.close()


def test_association_data_secondary_vip_and_shutdown(box: Box) -> None:
    c = Client(box.tb.client, VIP4, PORT, 40000)
    try:
        c.init()
        # The client learns the service's secondary VIPs (then the VIP), not the endpoint's addresses.
        assert c.learned == [VIPS[1], VIPS[2], VIP4]
        assert box.states(40000) == ["sctp-init-ack"]
        c.establish()
        assert box.states(40000) == ["sctp-established"]
        sack = c.data(b"hello over the primary")
        assert sack.src == VIP4
        # DATA to a secondary VIP reaches the same association on the same endpoint.
        c.data(b"hello over a secondary", to=VIPS[1])
        c.data(b"and the third", to=VIPS[2])
        server = next(s for s in box.servers if s.name == c.server_name)
        (tag,) = [t for t, d in server.data.items() if d]
        assert server.data[tag] == [b"hello over the primary", b"hello over a secondary", b"and the third"]
        assert server.peers[tag] == {CLIENT4}  # default mode: the endpoint sees the client itself
        c.shutdown()
        assert box.states(40000) == ["sctp-shutdown-ack"]
        c.complete()
        done = threading.Event()
        for _ in range(50):  # the server thread records the SHUTDOWN-COMPLETE
            if tag in server.closed or done.wait(0.1):
                break
        assert tag in server.closed
        assert box.states(40000) == ["sctp-shutdown-complete"]
        assert c.bad == 0 and all(s.bad == 0 for s in box.servers), "CRC32c valid on every packet"
    finally:
        c.close()


def test_round_robin_of_12_associations_over_3_endpoints(box: Box) -> None:
    seen: dict[str, int] = {}
    for i in range(12):
        c = Client(box.tb.client, VIP4, PORT, 41000 + i)
        try:
            c.init()
            c.establish()
            seen[c.server_name] = seen.get(c.server_name, 0) + 1
            assert c.bad == 0
        finally:
            c.close()
    assert seen == {"backend0": 4, "backend1": 4, "backend2": 4}
    assert all(s.bad == 0 for s in box.servers)
    assert sorted(box.states(41000 + i)[0] for i in range(12)) == ["sctp-established"] * 12
