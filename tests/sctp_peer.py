"""A minimal SCTP endpoint on raw IP sockets (protocol 132), for tests.

Why this exists: this kernel has no SCTP module, so the end-to-end tests of SCTP
balancing speak SCTP themselves: a client that sets up an association (INIT,
COOKIE-ECHO), sends DATA and shuts it down, and a server that answers (INIT-ACK
with a state cookie and its address parameters, COOKIE-ACK, SACK, SHUTDOWN-ACK)
and records each association's DATA.  No retransmission, one stream, one chunk
per packet: enough for a loss-free veth path.  Every packet received is checked
for its CRC32c (``bad`` counts those that fail); packets are built with
``reconciler.probes.sctp``.  Sockets are opened inside a namespace
(``reconciler.drivers.netns.in_netns``) and then used from this thread.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from reconciler.drivers.netns import in_netns
from reconciler.probes import sctp as S


@dataclass(frozen=True)
class Received:
    src: str
    sport: int
    dport: int
    vtag: int
    ctype: int
    packet: bytes


def _open(ns: str) -> socket.socket:
    with in_netns(ns):
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, S.PROTO)


def _recv(sock: socket.socket, timeout: float) -> Received | None:
    """The next SCTP packet (IPv4 header stripped); None when none came in time."""
    poller = select.poll()  # not select(): the test process may hold over 1,024 descriptors
    poller.register(sock, select.POLLIN)
    if not poller.poll(timeout * 1000):
        return None
    data, _ = sock.recvfrom(65535)
    ihl = (data[0] & 0xF) * 4
    src = str(ipaddress.IPv4Address(data[12:16]))
    pkt = data[ihl:]
    sport, dport, vtag = struct.unpack_from("!HHI", pkt)
    return Received(src, sport, dport, vtag, pkt[12] if len(pkt) > 12 else -1, pkt)


@dataclass
class Server:
    """Answers associations on ``port`` in namespace ``ns``; names itself in its cookies."""

    ns: str
    name: str
    port: int
    addresses: tuple[str, ...]  # told to the peer in the INIT-ACK
    bad: int = 0  # packets received with a bad CRC32c
    data: dict[int, list[bytes]] = field(default_factory=dict)  # own tag -> DATA payloads
    peers: dict[int, set[str]] = field(default_factory=dict)  # own tag -> source addresses seen
    closed: set[int] = field(default_factory=set)
    tags: dict[int, int] = field(default_factory=dict)  # own tag -> the peer's tag

    def __post_init__(self) -> None:
        self.sock = _open(self.ns)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _send(self, to: str, packet: bytes) -> None:
        self.sock.sendto(packet, (to, 0))

    def _run(self) -> None:
        while not self._stop.is_set():
            r = _recv(self.sock, 0.1)
            if r is None or r.dport != self.port:
                continue
            if not S.checksum_ok(r.packet):
                self.bad += 1
                continue
            self._answer(r)

    def _answer(self, r: Received) -> None:
        p = r.packet
        if r.ctype == S.INIT:
            peer_tag = struct.unpack_from("!I", p, 16)[0]
            own = random.randrange(1, 1 << 32)
            cookie = struct.pack("!II", peer_tag, own) + self.name.encode()
            self._send(r.src, S.init_ack(self.port, r.sport, peer_tag, own, 1, cookie=cookie,
                                         addresses=self.addresses))
            return
        own = r.vtag
        if r.ctype == S.COOKIE_ECHO:
            peer_tag, own = struct.unpack_from("!II", p, 16)
            if own != r.vtag:
                return
            self.data[own] = []
            self.peers[own] = {r.src}
            self.tags[own] = peer_tag
            self._send(r.src, S.packet(self.port, r.sport, peer_tag, S.COOKIE_ACK))
            return
        if own not in self.tags:
            return
        peer_tag = self.tags[own]
        self.peers[own].add(r.src)
        if r.ctype == S.DATA:
            tsn = struct.unpack_from("!I", p, 16)[0]
            ln = struct.unpack_from("!H", p, 14)[0]
            self.data[own].append(p[28 : 12 + ln])
            sack = struct.pack("!IIHH", tsn, 65536, 0, 0)
            self._send(r.src, S.packet(self.port, r.sport, peer_tag, S.SACK, sack))
        elif r.ctype == S.SHUTDOWN:
            self._send(r.src, S.packet(self.port, r.sport, peer_tag, S.SHUTDOWN_ACK))
        elif r.ctype == S.SHUTDOWN_COMPLETE:
            self.closed.add(own)


class Client:
    """One association from namespace ``ns`` to ``vip``:``port`` from source port ``sport``."""

    def __init__(self, ns: str, vip: str, port: int, sport: int) -> None:
        self.sock = _open(ns)
        self.vip, self.port, self.sport = vip, port, sport
        self.tag = random.randrange(1, 1 << 32)
        self.peer_tag = 0
        self.tsn = 100
        self.bad = 0
        self.learned: list[str] = []  # addresses the INIT-ACK told of
        self.cookie = b""

    def close(self) -> None:
        self.sock.close()

    def expect(self, ctype: int, timeout: float = 5.0) -> Received:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            r = _recv(self.sock, left)
            if r is None:
                break
            if (r.sport, r.dport) != (self.port, self.sport):
                continue
            if not S.checksum_ok(r.packet):
                self.bad += 1
                continue
            if r.ctype == ctype:
                return r
        raise AssertionError(f"no SCTP chunk {ctype} from {self.vip}:{self.port} to port {self.sport}")

    def send(self, ctype: int, body: bytes = b"", to: str | None = None) -> None:
        self.sock.sendto(S.packet(self.sport, self.port, self.peer_tag, ctype, body), (to or self.vip, 0))

    def init(self) -> Received:
        """INIT, then the INIT-ACK: its tag, cookie and addresses are kept."""
        self.sock.sendto(S.init(self.sport, self.port, self.tag, self.tsn), (self.vip, 0))
        r = self.expect(S.INIT_ACK)
        assert r.vtag == self.tag
        self.peer_tag = struct.unpack_from("!I", r.packet, 16)[0]
        params = S.chunk_params(r.packet)
        self.cookie = next(v for t, v in params if t == S.PARAM_COOKIE)
        self.learned = S.addresses(r.packet)
        return r

    def establish(self) -> None:
        self.send(S.COOKIE_ECHO, self.cookie)
        self.expect(S.COOKIE_ACK)

    def data(self, payload: bytes, to: str | None = None) -> Received:
        body = struct.pack("!IHHI", self.tsn, 0, 0, 0) + payload
        self.tsn += 1
        self.send(S.DATA, body, to)
        return self.expect(S.SACK)

    def shutdown(self) -> None:
        self.send(S.SHUTDOWN, struct.pack("!I", self.tsn - 1))
        self.expect(S.SHUTDOWN_ACK)

    def complete(self) -> None:
        self.send(S.SHUTDOWN_COMPLETE)

    @property
    def server_name(self) -> str:
        return self.cookie[8:].decode()
