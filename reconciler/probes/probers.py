"""One asyncio probe per probe type: tcp, udp, sctp, http, https, ping.

Why this exists: the runner (``reconciler.probes.runner``) schedules thousands of
probes on one event loop; each probe here is a coroutine that answers "up, or
why not" for one endpoint, using non-blocking sockets only (no thread per probe).
Sockets are created on the loop's thread, which the runner has moved into the
box's network namespace, so the kernel picks the box's own address on the route
to the endpoint as the source.

Rules of the types (the Service schema's ``probe`` documents them too):

* ``tcp``: the connect completes (closed at once with a RST, so 1,000 probes a
  second leave no TIME_WAIT behind);
* ``udp``: send ``request`` (empty if absent); a reply must contain ``response``
  when one is configured; an ICMP port unreachable is a failure; silence until the
  timeout counts as up only when no ``response`` is configured (a UDP service that
  never answers cannot be told from a live one otherwise);
* ``http``/``https``: ``GET request`` (default ``/``) over HTTP/1.0; the status must
  be ``status`` (default 200) and the body contain ``response`` when configured;
  https verifies the endpoint's certificate against ``caFile`` when given (not the
  name: endpoints are addressed by IP) and presents ``certFile``/``keyFile``;
* ``ping``: an ICMP echo reply on one shared raw socket per address family;
* ``sctp``: an INIT answered by an INIT-ACK on one shared raw IP socket (protocol
  132; this kernel has no SCTP module), see ``reconciler.probes.sctp``.

The caller bounds every probe by its timeout (``asyncio.wait_for``); what a
timeout means is ``timeout_means_up``.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable

from reconciler.probes import sctp
from reconciler.probes.targets import ProbeTarget

MAX_HTTP_RESPONSE = 65536


class ProbeFailed(Exception):
    """A probe's answer says the endpoint is not healthy; the message is the reason."""


class ProbeNotRun(Exception):
    """The probe could not be set up on this box (e.g. an unreadable ``caFile``): says
    nothing about the endpoint, so it must not take it out of selection."""


def timeout_means_up(t: ProbeTarget) -> bool:
    return t.type == "udp" and not t.response


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def describe(exc: BaseException) -> str:
    """A short reason for a failed probe."""
    if isinstance(exc, ProbeFailed):
        return str(exc)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return f"{type(exc).__name__}: {exc}"


class Probers:
    """The probes of one event loop (and its shared raw sockets)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ssl: dict[tuple[str | None, str | None, str | None], ssl.SSLContext] = {}
        self._raw: dict[tuple[int, int], socket.socket] = {}
        self._waiting: dict[tuple[int, object], asyncio.Future[str | None]] = {}
        self._seq = random.randrange(0x10000)
        self._ident = os.getpid() & 0xFFFF
        self._kinds: dict[str, Callable[[ProbeTarget], Awaitable[None]]] = {
            "tcp": self.tcp, "udp": self.udp, "http": self.http, "https": self.http,
            "ping": self.ping, "sctp": self.sctp}

    def close(self) -> None:
        for (_fam, _proto), sock in self._raw.items():
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self._raw.clear()

    async def probe(self, t: ProbeTarget) -> None:
        """Return when ``t`` is healthy; raise (``ProbeFailed``, ``OSError``...) when not."""
        await self._kinds[t.type](t)

    # --- stream probes ---

    async def _connect(self, t: ProbeTarget) -> socket.socket:
        sock = socket.socket(_family(t.address), socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await self.loop.sock_connect(sock, (t.address, t.port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def tcp(self, t: ProbeTarget) -> None:
        sock = await self._connect(t)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _ssl_context(self, t: ProbeTarget) -> ssl.SSLContext:
        key = (t.ca_file, t.cert_file, t.key_file)
        ctx = self._ssl.get(key)
        if ctx is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            try:
                if t.ca_file:
                    ctx.load_verify_locations(cafile=t.ca_file)
                else:
                    ctx.verify_mode = ssl.CERT_NONE
                if t.cert_file:
                    ctx.load_cert_chain(t.cert_file, t.key_file)
            except (OSError, ssl.SSLError) as exc:
                # Not cached: a file fixed later is picked up by the next probe.
                raise ProbeNotRun(f"cannot load the TLS files of the probe: {exc}") from None
            self._ssl[key] = ctx
        return ctx

    async def http(self, t: ProbeTarget) -> None:
        path = t.request or "/"
        host = f"[{t.address}]" if ":" in t.address else t.address
        request = (f"GET {path} HTTP/1.0\r\nHost: {host}:{t.port}\r\nUser-Agent: lbctl-probe\r\n"
                   "Connection: close\r\n\r\n").encode()
        if t.type == "https":
            reader, writer = await asyncio.open_connection(t.address, t.port, ssl=self._ssl_context(t),
                                                           server_hostname="")
            try:
                writer.write(request)
                data = await reader.read(MAX_HTTP_RESPONSE)
                while len(data) < MAX_HTTP_RESPONSE:
                    more = await reader.read(MAX_HTTP_RESPONSE - len(data))
                    if not more:
                        break
                    data += more
            finally:
                writer.transport.abort()
        else:
            sock = await self._connect(t)
            try:
                await self.loop.sock_sendall(sock, request)
                data = b""
                while len(data) < MAX_HTTP_RESPONSE:
                    more = await self.loop.sock_recv(sock, MAX_HTTP_RESPONSE - len(data))
                    if not more:
                        break
                    data += more
            finally:
                sock.close()
        check_http(t, data)

    # --- udp ---

    async def udp(self, t: ProbeTarget) -> None:
        sock = socket.socket(_family(t.address), socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((t.address, t.port))
            sock.send((t.request or "").encode())
            try:
                data = await self.loop.sock_recv(sock, 65535)
            except ConnectionRefusedError:
                raise ProbeFailed("ICMP port unreachable") from None
        finally:
            sock.close()
        if t.response and t.response.encode() not in data:
            raise ProbeFailed(f"reply lacks {t.response!r}")

    # --- raw-socket probes (ping, sctp): one socket per (family, protocol), replies matched ---

    def _raw_socket(self, family: socket.AddressFamily, proto: int) -> socket.socket:
        sock = self._raw.get((family, proto))
        if sock is None:
            sock = socket.socket(family, socket.SOCK_RAW, proto)
            sock.setblocking(False)
            self._raw[(family, proto)] = sock
            self.loop.add_reader(sock.fileno(), self._on_raw, sock, family, proto)
        return sock

    def _on_raw(self, sock: socket.socket, family: socket.AddressFamily, proto: int) -> None:
        for _ in range(256):
            try:
                data, peer = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if family == socket.AF_INET and data:
                data = data[(data[0] & 0x0F) * 4:]  # IPv4 raw sockets deliver the IP header
            addr = peer[0].split("%")[0]
            if proto == sctp.PROTO:
                self._on_sctp(addr, data)
            else:
                self._on_icmp(family, addr, data)

    def _settle(self, key: tuple[int, object], failure: str | None) -> None:
        fut = self._waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(failure)

    async def _await_answer(self, key: tuple[int, object], send: Callable[[], object]) -> None:
        fut: asyncio.Future[str | None] = self.loop.create_future()
        self._waiting[key] = fut
        try:
            send()
            failure = await fut
        finally:
            self._waiting.pop(key, None)
        if failure is not None:
            raise ProbeFailed(failure)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def ping(self, t: ProbeTarget) -> None:
        family = _family(t.address)
        v6 = family == socket.AF_INET6
        sock = self._raw_socket(family, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
        seq = self._next_seq()
        payload = b"lbctl-probe-" + struct.pack("!I", seq)
        head = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, self._ident, seq)
        packet = head + payload
        if not v6:  # the kernel fills the ICMPv6 checksum, not the ICMPv4 one
            packet = packet[:2] + struct.pack("!H", _inet_checksum(packet)) + packet[4:]
        key = (1, (t.address, seq))
        await self._await_answer(key, lambda: sock.sendto(packet, (t.address, 0)))

    def _on_icmp(self, family: socket.AddressFamily, addr: str, data: bytes) -> None:
        if len(data) < 8:
            return
        typ, _code, _sum, ident, seq = struct.unpack_from("!BBHHH", data)
        if typ == (129 if family == socket.AF_INET6 else 0) and ident == self._ident:
            self._settle((1, (addr, seq)), None)

    async def sctp(self, t: ProbeTarget) -> None:
        family = _family(t.address)
        sock = self._raw_socket(family, sctp.PROTO)
        tag = random.randrange(1, 1 << 32)
        sport = random.randrange(32768, 61000)
        packet = sctp.init(sport, t.port, tag, random.randrange(1 << 32))
        key = (2, (t.address, tag))
        await self._await_answer(key, lambda: sock.sendto(packet, (t.address, 0)))

    def _on_sctp(self, addr: str, data: bytes) -> None:
        got = sctp.parse(data)
        if got is None:
            return
        _sport, _dport, vtag, ctype, _itag = got
        if ctype == sctp.INIT_ACK:
            self._settle((2, (addr, vtag)), None)
        elif ctype == sctp.ABORT:
            self._settle((2, (addr, vtag)), "SCTP ABORT")


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def check_http(t: ProbeTarget, data: bytes) -> None:
    """Raise ``ProbeFailed`` unless ``data`` is an HTTP response with ``t.status`` and ``t.response``."""
    head, _, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProbeFailed("not an HTTP response" if data else "connection closed without a response")
    if int(parts[1]) != t.status:
        raise ProbeFailed(f"HTTP {parts[1]} (want {t.status})")
    if t.response and t.response.encode() not in body:
        raise ProbeFailed(f"body lacks {t.response!r}")
