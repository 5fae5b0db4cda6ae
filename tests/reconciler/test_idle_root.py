"""Honest idle timeouts end to end (issue 14): real namespaces, the real datapath and daemon.

An idle TCP connection through the VIP with ``sessionTimeout: 30`` is alive at 10 s and
reset (client and endpoint) by 40 s by ``lbctl watch``'s sweep; a data segment sent after
expiry reaches no endpoint; an idle UDP flow expires without a packet.  Without the
daemon (``lbctl apply`` only) the next segment of an expired connection gets the
kernel's RST and reaches no endpoint either.  Packets are counted by captures in the
backends' and the client's namespaces.
"""

from __future__ import annotations

import contextlib
import io
import json
import select
import shutil
import socket
import struct
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.drivers.bpf import BpfDriver, pin_root_for
from reconciler.drivers.netns import in_netns
from tests.reconciler.test_watch_root import HEADER, Box
from tests.testbed import CLIENT4, ECHO_PORT, UDP_PORT, VIP4, Testbed

pytestmark = pytest.mark.root

TIMEOUT = 30
TCP, UDP = 6, 17
RST, ACK, PSH = 0x04, 0x10, 0x08


@dataclass(frozen=True)
class Seen:
    proto: int
    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    payload: int


@dataclass
class Capture:
    """Every IPv4 TCP/UDP packet arriving in (or leaving) a namespace, from an AF_PACKET socket."""

    ns: str
    seen: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        with in_netns(self.ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            ip = frame[14:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] not in (TCP, UDP):
                continue
            hl = (ip[0] & 0xF) * 4
            l4 = ip[hl:]
            sport, dport = struct.unpack("!HH", l4[:4])
            total = struct.unpack("!H", ip[2:4])[0]
            if ip[9] == TCP:
                flags, payload = l4[13], total - hl - (l4[12] >> 4) * 4
            else:
                flags, payload = 0, total - hl - 8
            src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            self.seen.append(Seen(ip[9], src, sport, dst, dport, flags, payload))

    def stop(self) -> list[Seen]:
        time.sleep(0.2)  # what is in flight arrives
        self._stop.set()
        self.thread.join()
        self.sock.close()
        return list(self.seen)


@dataclass
class IdleBox:
    tb: Testbed
    box: Box
    conf: Path

    def backends(self) -> list[str]:
        return [self.tb.backend_ns(i) for i in range(self.tb.n_backends)]

    def lbctl(self, *args: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main([*args, *self.box.common]) == 0
        return out.getvalue()

    def connect(self) -> socket.socket:
        with in_netns(self.tb.client):
            s = socket.create_connection((VIP4, ECHO_PORT), timeout=5)
        s.sendall(b"hello\n")
        assert s.recv(256).endswith(b": hello\n")
        return s

    def udp(self) -> tuple[socket.socket, int]:
        with in_netns(self.tb.client):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(5)
        u.connect((VIP4, UDP_PORT))
        u.send(b"ping")
        assert u.recv(256).endswith(b" ping")
        return u, u.getsockname()[1]

    def age(self) -> None:
        """Make every flow idle past its timeout now (the datapath's clock is CLOCK_MONOTONIC)."""
        with contextlib.closing(BpfDriver(pin_root=pin_root_for(self.tb.lb, str(self.box.pin_root)),
                                             netns=self.tb.lb)) as d:
            flows = d.map("lb_ct")
            for key, ct in list(flows.items()):
                ct.seen_ns = (int(ct.seen_ns) - (int(ct.timeout) + 1) * 1_000_000_000) % 2**64
                flows.update(key, ct)

    def stats(self) -> dict[str, int]:
        with contextlib.closing(BpfDriver(pin_root=pin_root_for(self.tb.lb, str(self.box.pin_root)),
                                             netns=self.tb.lb)) as d:
            return d.stats()


@pytest.fixture
def idle(tmp_path: Path) -> Iterator[IdleBox]:
    with Testbed(n_backends=2, prefix="lbti" + uuid.uuid4().hex[:6]) as tb:
        box = Box(tb.lb, tmp_path / "state", Path("/sys/fs/bpf") / f"lbctl-test-{tb.prefix}", tmp_path)
        try:
            conf = tmp_path / "conf.d"
            conf.mkdir()
            ifaces = ", ".join(tb.lb_interfaces)
            (conf / "00-datapath.yaml").write_text(
                f"{HEADER}kind: Datapath\nmetadata: {{name: box}}\nspec: {{interfaces: [{ifaces}]}}\n")
            eps = ", ".join(f"{{address: {tb.backend4(i)}}}" for i in range(tb.n_backends))
            (conf / "idle.yaml").write_text(
                f"{HEADER}kind: Service\nmetadata: {{name: idle}}\nspec:\n  vip: {VIP4}\n"
                f"  ports: [{{port: {ECHO_PORT}, protocol: TCP}}, {{port: {UDP_PORT}, protocol: UDP}}]\n"
                f"  sessionTimeout: {TIMEOUT}\n  endpoints: [{eps}]\n")
            yield IdleBox(tb, box, conf)
        finally:
            if box.proc is not None and box.proc.poll() is None:
                box.stop()
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(["down", *box.common])
            shutil.rmtree(box.pin_root, ignore_errors=True)


def _metric(box: Box, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{box.port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name))


def test_without_the_daemon_the_next_segment_after_expiry_is_reset_and_reaches_no_endpoint(
        idle: IdleBox) -> None:
    idle.lbctl("apply", str(idle.conf))
    s = idle.connect()
    cport = s.getsockname()[1]
    idle.age()
    rows = json.loads(idle.lbctl("get", "conntrack", "-o", "json"))
    assert [r["state"] for r in rows] == ["expired"], rows
    caps = [Capture(ns) for ns in idle.backends()]
    s.sendall(b"after expiry\n")
    with pytest.raises(ConnectionResetError):
        s.recv(256)  # the kernel's RST from the VIP (the segment went to the box's own stack)
    s.close()
    seen = [p for c in caps for p in c.stop() if p.sport == cport]
    assert seen == [], "a mid-stream segment of an expired flow reached an endpoint"
    assert idle.stats()["pass_no_flow"] >= 1


def _send_raw_segment(ns: str, sport: int, seq: int) -> None:
    """A data segment of the old connection, sent as the client's kernel would (its socket is gone)."""
    payload = b"late data\n"
    tcp = struct.pack("!HHIIBBHHH", sport, ECHO_PORT, seq, 1, 5 << 4, ACK | PSH, 512, 0, 0) + payload
    data = socket.inet_aton(CLIENT4) + socket.inet_aton(VIP4) + struct.pack("!BBH", 0, TCP, len(tcp)) + tcp
    data += b"\0" * (len(data) % 2)
    c = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while c >> 16:
        c = (c & 0xFFFF) + (c >> 16)
    tcp = tcp[:16] + struct.pack("!H", ~c & 0xFFFF) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, TCP, 0,
                     socket.inet_aton(CLIENT4), socket.inet_aton(VIP4))
    with in_netns(ns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with raw:
        raw.sendto(ip + tcp, (VIP4, 0))


def test_the_daemon_resets_an_idle_tcp_connection_and_udp_expires_silently(idle: IdleBox) -> None:
    idle.box.start(idle.conf, "--sweep", "1s", "--resync", "1h")
    idle.box.wait_ready()
    client_cap = Capture(idle.tb.client)
    backend_caps = [Capture(ns) for ns in idle.backends()]
    s = idle.connect()
    u, uport = idle.udp()
    cport = s.getsockname()[1]
    last = time.monotonic()

    time.sleep(max(0.0, last + 10 - time.monotonic()))
    poller = select.poll()  # not select(): the test process may hold over 1,024 descriptors
    poller.register(s, select.POLLIN)
    assert poller.poll(0) == [], "no RST at 10 s"
    rows = json.loads(idle.lbctl("get", "conntrack", "-o", "json"))
    assert sorted(r["state"] for r in rows) == ["active", "established"], rows

    s.settimeout(max(0.1, last + 40 - time.monotonic()))
    with pytest.raises(ConnectionResetError):
        s.recv(256)  # by 40 s since the last packet
    print(f"client reset {time.monotonic() - last:.1f} s after the last packet (sessionTimeout {TIMEOUT})")
    s.close()
    # the endpoint's side was reset too: a RST from the client's address and port
    idle.box.wait("the endpoint's RST", lambda: any(
        p.proto == TCP and p.sport == cport and p.dport == ECHO_PORT and p.flags & RST
        for c in backend_caps for p in c.seen), timeout=5)
    idle.box.wait("both flows ended", lambda: json.loads(idle.lbctl("get", "conntrack", "-o", "json")) == [],
                  timeout=5)

    # a data segment of the reset connection: the kernel answers RST, no endpoint sees it
    mark = [len(c.seen) for c in backend_caps]
    _send_raw_segment(idle.tb.client, cport, 12345)
    idle.box.wait("the kernel's RST to the late segment", lambda: any(
        p.proto == TCP and p.src == VIP4 and p.dport == cport and p.flags & RST and p.sport == ECHO_PORT
        for p in client_cap.seen[-20:]), timeout=5)
    late = [p for c, n in zip(backend_caps, mark, strict=True) for p in c.stop()[n:] if p.sport == cport]
    assert late == [], "a segment sent after expiry reached an endpoint"

    # UDP: expired without a packet to the client (after its echo) or to the endpoint
    seen = client_cap.stop()
    u.close()
    udp_after = [p for p in seen if p.proto == UDP and p.dport == uport and p.payload and p.src == VIP4]
    assert len(udp_after) == 1, "only the echo: the UDP flow's expiry sent nothing"
    client_resets = [p for p in seen
                     if p.proto == TCP and p.src == VIP4 and p.dport == cport and p.flags & RST]
    assert len(client_resets) == 2, "the sweep's RST, then the kernel's answer to the late segment"
    assert _metric(idle.box, 'lbctl_idle_resets_total{to="client"}') == 1
    assert _metric(idle.box, 'lbctl_idle_resets_total{to="endpoint"}') == 1
    assert _metric(idle.box, "lbctl_idle_flows_expired_total") == 2
