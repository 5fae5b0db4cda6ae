"""End to end: real traffic through the attached datapath in namespaces, tc and XDP hooks.

Each test builds its own testbed (client, LB, three backends) and pin root,
sends traffic only to addresses inside those namespaces, and removes it all.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from reconciler.drivers.bpf import BpfDriver
from reconciler.drivers.netns import in_netns
from reconciler.plan import Change
from reconciler.records import Attachment, Backend, EndpointSet, ServiceEntry, ServiceKey
from tests.testbed import ECHO_PORT, HTTP_PORT, UDP_PORT, VIP4, Testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

TCP_KEY = ServiceKey(VIP4, "tcp", 80, 80)
UDP_KEY = ServiceKey(VIP4, "udp", 53, 53)
ECHO_KEY = ServiceKey(VIP4, "tcp", 7000, 7000)


class Box:
    def __init__(self, tb: Testbed, hook: str) -> None:
        self.tb = tb
        self.hook = hook
        self.pin_root = f"/sys/fs/bpf/lbctl-e2e-{uuid.uuid4().hex[:8]}"
        self.driver = BpfDriver(pin_root=self.pin_root, netns=tb.lb)

    def backends(self, port: int, which: range | list[int] | None = None) -> tuple[Backend, ...]:
        idx = range(self.tb.n_backends) if which is None else which
        return tuple(Backend(self.tb.backend4(i), port) for i in idx)

    def changes(self) -> list[Change]:
        ch = [Change("attach", i, "create", None, Attachment(i, self.hook)) for i in self.tb.lb_interfaces]
        for key, port in ((TCP_KEY, HTTP_PORT), (UDP_KEY, UDP_PORT), (ECHO_KEY, ECHO_PORT)):
            ch.append(Change("endpoints", str(key), "create", None, EndpointSet(key, self.backends(port))))
            ch.append(Change("service", str(key), "create", None,
                             ServiceEntry(key, "svc", "default", "rr",
                                          240 if key.proto == "tcp" else 20, 10800)))
        return ch

    def set_echo_backends(self, which: list[int]) -> None:
        cur = self.driver.read()["endpoints"][str(ECHO_KEY)]
        self.driver.apply([Change("endpoints", str(ECHO_KEY), "update", cur,
                                  EndpointSet(ECHO_KEY, self.backends(ECHO_PORT, which)))])

    def connect(self, port: int) -> socket.socket:
        with in_netns(self.tb.client):
            return socket.create_connection((VIP4, port), timeout=5)


@pytest.fixture(params=["tc", "xdp"])
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    tb = Testbed(n_backends=3).setup()
    b = Box(tb, request.param)
    try:
        if request.param == "xdp":
            tb.xdp_workarounds()
        yield b
    finally:
        try:
            b.driver.down()
        finally:
            tb.teardown()


def http_get(tb: Testbed) -> str:
    r = subprocess.run(["ip", "netns", "exec", tb.client, "curl", "-s", "-m", "5", f"http://{VIP4}/"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_http_and_udp_reach_every_backend_and_return_from_vip(box: Box) -> None:
    box.driver.apply(box.changes())
    assert set(box.driver.read()["attach"]) == set(box.tb.lb_interfaces)
    names = {http_get(box.tb) for _ in range(30)}
    assert names == {box.tb.backend_name(i) for i in range(3)}
    seen = set()
    for _ in range(30):
        with in_netns(box.tb.client):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            s.settimeout(3)
            s.sendto(b"ping", (VIP4, 53))
            data, peer = s.recvfrom(100)
        assert peer == (VIP4, 53)  # reverse NAT: the reply comes from the VIP
        seen.add(data.split()[0].decode())
    assert seen == {box.tb.backend_name(i) for i in range(3)}


def _echo(s: socket.socket, line: bytes) -> bytes:
    s.sendall(line + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_established_stream_survives_other_endpoint_changes(box: Box) -> None:
    box.driver.apply(box.changes())
    s = box.connect(ECHO_PORT)
    with s:
        owner = _echo(s, b"one").split(b":")[0].decode()
        i = int(owner.removeprefix("backend"))
        others = [j for j in range(3) if j != i]
        box.set_echo_backends([i, others[0]])  # remove another endpoint
        assert _echo(s, b"two") == f"{owner}: two\n".encode()
        box.set_echo_backends([i, others[0], others[1], ])  # add it back
        assert _echo(s, b"three") == f"{owner}: three\n".encode()
        box.set_echo_backends([others[1], i])  # reorder, and drop one more
        assert _echo(s, b"four") == f"{owner}: four\n".encode()


def test_flow_to_removed_endpoint_is_ended(box: Box) -> None:
    box.driver.apply(box.changes())
    # As on a box lbctl runs (the netlink driver puts each VIP on its interface): the next
    # segment of the ended flow matches no flow and goes to the box's own stack, whose RST
    # ends the connection (lb_expire.h); without a local VIP nothing would answer.
    subprocess.run(["ip", "-n", box.tb.lb, "addr", "add", f"{VIP4}/32", "dev", "lo"], check=True)
    s = box.connect(ECHO_PORT)
    with s:
        owner = int(_echo(s, b"one").split(b":")[0].decode().removeprefix("backend"))
        box.set_echo_backends([j for j in range(3) if j != owner])
        s.settimeout(5)
        with pytest.raises((ConnectionError, OSError)) as exc:
            for _ in range(3):
                _echo(s, b"two")
        assert not isinstance(exc.value, socket.timeout), "the flow hung instead of being ended"


def test_traffic_flows_without_lbctl_and_state_is_reopened(box: Box) -> None:
    # Apply from a separate process that exits: nothing of lbctl runs afterwards.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('os').getcwd())!r})
        from tests.reconciler.drivers.test_bpf_e2e import Box
        from reconciler.drivers.bpf import BpfDriver
        from tests.testbed import Testbed
        tb = Testbed(n_backends={box.tb.n_backends}, prefix={box.tb.prefix!r}, servers=False)
        b = Box(tb, {box.hook!r})
        b.driver = BpfDriver(pin_root={box.pin_root!r}, netns=tb.lb)
        b.driver.apply(b.changes())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)
    names = {http_get(box.tb) for _ in range(12)}
    assert len(names) == 3
    fresh = BpfDriver(pin_root=box.pin_root, netns=box.tb.lb)
    try:
        live = fresh.read()
        assert set(live["attach"]) == set(box.tb.lb_interfaces)
        assert str(TCP_KEY) in live["service"] and str(TCP_KEY) in live["endpoints"]
        c = fresh.counters()[str(TCP_KEY)]
        assert c["service"].new_flows >= 12 and c["service"].packets > 0
        assert sum(e.new_flows for e in c["endpoints"].values()) == c["service"].new_flows
        assert any(f.service == str(TCP_KEY) for f in fresh.conntrack())
        # A no-op apply of the same state writes nothing.
        before = fresh.writes
        fresh.apply([Change(ch.kind, ch.key, "create", None, ch.after) for ch in box.changes()])
        assert fresh.writes == before
    finally:
        fresh.close()
