"""A load-balancer topology in network namespaces for tests, demos and benches.

Why this exists: end-to-end tests of the datapath need a client, the LB box and
a few backends wired by veth pairs with routes, forwarding and simple servers,
and they must run in parallel without colliding and leave nothing behind.  It
is test code, not part of the installed package: the tests, the benches and the
demo import it as ``tests.testbed`` from the repository root.
Everything lives in namespaces named with a per-instance prefix and uses
private addresses that exist only inside them::

    client (10.200.0.2) --- cl0 [LB, ip_forward=1, rp_filter=0] be<i> --- backend i (10.201.<i>.2)
                                          VIP 10.250.0.1 (routed to the LB)

Backends run a tiny Python server per namespace: HTTP on 8080 answering its
name, a UDP echo on 5353 answering ``name`` + payload, a TCP line echo on 7000
answering ``name: line``, and on 7001 a TCP server that says ``name ADDRESS`` (the
source address it saw) and closes.  ``teardown()`` is idempotent and also ends any
process still running inside the namespaces.

The demo (``examples/demo/``) builds one with a fixed prefix from one process
and removes it from another: ``Testbed.existing(prefix)`` adopts the
namespaces of a topology built earlier so ``teardown()`` can remove them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

VIP4 = "10.250.0.1"
VIP6 = "fd00:250::1"
CLIENT4 = "10.200.0.2"
CLIENT6 = "fd00:200::2"
HTTP_PORT, UDP_PORT, ECHO_PORT, PEER_PORT = 8080, 5353, 7000, 7001

_SERVER = r"""
import socket, socketserver, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name = sys.argv[1]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (name + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class Srv(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 1024
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    s.bind(("::", %(udp)d))
    while True:
        # Answer from the address asked (a VIP a DSR endpoint holds on its loopback).
        data, anc, _, peer = s.recvmsg(65535, 256)
        info = [(l, t, d[:16] + bytes(4)) for l, t, d in anc if t == socket.IPV6_PKTINFO]
        s.sendmsg([name.encode() + b" " + data], info, 0, peer)
class E(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(name.encode() + b": " + line)
class ESrv(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
class Peer(socketserver.StreamRequestHandler):
    def handle(self):
        host = self.client_address[0]
        self.wfile.write(("%s %s\n" % (name, host.removeprefix("::ffff:"))).encode())
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=ESrv(("::", %(echo)d), E).serve_forever, daemon=True).start()
threading.Thread(target=ESrv(("::", %(peer)d), Peer).serve_forever, daemon=True).start()
print("ready", flush=True)
Srv(("::", %(http)d), H).serve_forever()
"""
_SERVER = _SERVER.replace("%(udp)d", str(UDP_PORT)).replace("%(echo)d", str(ECHO_PORT))
_SERVER = _SERVER.replace("%(peer)d", str(PEER_PORT))
_SERVER = _SERVER.replace("%(http)d", str(HTTP_PORT))


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def vip_routes(netns: str, ifname: str = "lbctl0") -> str:
    """The local routes through lbctl's VIP interface (how lbctl makes VIPs local), as ``ip`` lists them."""
    return _ip("-n", netns, "route", "show", "table", "local", "dev", ifname).stdout


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _nsexec(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], check=check, capture_output=True, text=True)


@dataclass
class Testbed:
    """Client, LB and ``n_backends`` backends; call ``setup()`` then ``teardown()``."""

    __test__ = False  # not a pytest test class

    n_backends: int = 3
    prefix: str = field(default_factory=lambda: "lbtb" + uuid.uuid4().hex[:6])
    servers: bool = True
    # True: the LB namespace gets forwarding on and rp_filter off here (tests of the
    # datapath alone). False: it starts like a hardened fresh box (forwarding off,
    # strict rp_filter everywhere), and only ``lbctl apply`` can make it forward.
    forwarding: bool = True
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    @property
    def lb(self) -> str:
        return f"{self.prefix}-lb"

    @property
    def client(self) -> str:
        return f"{self.prefix}-cl"

    def backend_ns(self, i: int) -> str:
        return f"{self.prefix}-b{i}"

    @staticmethod
    def backend4(i: int) -> str:
        return f"10.201.{i}.2"

    @staticmethod
    def backend6(i: int) -> str:
        return f"fd00:201:{i}::2"

    def backend_name(self, i: int) -> str:
        return f"backend{i}"

    @property
    def lb_interfaces(self) -> list[str]:
        return ["cl0"] + [f"be{i}" for i in range(self.n_backends)]

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _veth(self, ns_a: str, a: str, ns_b: str, b: str) -> None:
        _ip("link", "add", f"{self.prefix}t", "type", "veth", "peer", "name", f"{self.prefix}u")
        _ip("link", "set", f"{self.prefix}t", "netns", ns_a, "name", a)
        _ip("link", "set", f"{self.prefix}u", "netns", ns_b, "name", b)
        _ip("-n", ns_a, "link", "set", a, "up")
        _ip("-n", ns_b, "link", "set", b, "up")

    def setup(self) -> Testbed:
        try:
            self._setup()
        except Exception:
            self.teardown()
            raise
        return self

    def _setup(self) -> None:
        self._add_ns(self.lb)
        self._add_ns(self.client)
        self._veth(self.client, "eth0", self.lb, "cl0")
        _ip("-n", self.client, "addr", "add", f"{CLIENT4}/24", "dev", "eth0")
        _ip("-n", self.client, "addr", "add", f"{CLIENT6}/64", "dev", "eth0", "nodad")
        _ip("-n", self.lb, "addr", "add", "10.200.0.1/24", "dev", "cl0")
        _ip("-n", self.lb, "addr", "add", "fd00:200::1/64", "dev", "cl0", "nodad")
        _ip("-n", self.client, "route", "add", "default", "via", "10.200.0.1")
        _ip("-n", self.client, "-6", "route", "add", "default", "via", "fd00:200::1")
        for i in range(self.n_backends):
            ns = self.backend_ns(i)
            self._add_ns(ns)
            self._veth(self.lb, f"be{i}", ns, "eth0")
            _ip("-n", ns, "addr", "add", f"{self.backend4(i)}/24", "dev", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.backend6(i)}/64", "dev", "eth0", "nodad")
            _ip("-n", self.lb, "addr", "add", f"10.201.{i}.1/24", "dev", f"be{i}")
            _ip("-n", self.lb, "addr", "add", f"fd00:201:{i}::1/64", "dev", f"be{i}", "nodad")
            _ip("-n", ns, "route", "add", "default", "via", f"10.201.{i}.1")
            _ip("-n", ns, "-6", "route", "add", "default", "via", f"fd00:201:{i}::1")
        on, rpf = ("1", "0") if self.forwarding else ("0", "1")
        settings = [f"net.ipv4.ip_forward={on}", f"net.ipv6.conf.all.forwarding={on}",
                    f"net.ipv4.conf.all.rp_filter={rpf}", f"net.ipv4.conf.default.rp_filter={rpf}"]
        for ifname in self.lb_interfaces:
            settings += [f"net.ipv4.conf.{ifname}.forwarding={on}", f"net.ipv4.conf.{ifname}.rp_filter={rpf}",
                         f"net.ipv6.conf.{ifname}.forwarding={on}"]
        _nsexec(self.lb, "sysctl", "-qw", *settings)
        if self.servers:
            for i in range(self.n_backends):
                self._start_server(i)

    def _start_server(self, i: int) -> None:
        self.start_server(self.backend_ns(i), self.backend_name(i))

    def start_server(self, ns: str, name: str) -> None:
        """The backend servers (HTTP, UDP echo, TCP echo, peer report) answering ``name``, in ``ns``."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER, name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError(f"backend server {name} did not start")

    def xdp_workarounds(self) -> None:
        """Make XDP redirect work on veth (pitfalls 9, 10, 18): GRO on at the
        receiving peers, tx checksum offload off at the senders, a root qdisc
        on the senders."""
        for ns in [self.client] + [self.backend_ns(i) for i in range(self.n_backends)]:
            _nsexec(ns, "ethtool", "-K", "eth0", "tx", "off", "gro", "on", check=False)
            _ip("-n", ns, "qdisc", "replace", "dev", "eth0", "root", "pfifo_fast", check=False)
        for ifname in self.lb_interfaces:
            _nsexec(self.lb, "ethtool", "-K", ifname, "tx", "off", "gro", "on", check=False)

    def teardown(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self.procs = []
        for ns in self.namespaces:
            self._kill_netns_pids(ns)
        for ns in reversed(self.namespaces):
            _ip("netns", "del", ns, check=False)
        self.namespaces = []

    @staticmethod
    def _kill_netns_pids(ns: str) -> None:
        """End processes left in ``ns`` (servers started by another process, e.g. the demo's)."""
        out = _ip("netns", "pids", ns, check=False).stdout.split()
        pids = [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not _zombie(p)]
                if pids:
                    time.sleep(0.02)
            if not pids:
                return

    def all_namespaces(self) -> list[str]:
        """Every namespace name this topology uses (whether it exists or not)."""
        return [self.lb, self.client] + [self.backend_ns(i) for i in range(self.n_backends)]

    @classmethod
    def existing(cls, prefix: str, n_backends: int = 3) -> Testbed:
        """Adopt the namespaces of a topology with ``prefix`` built by another process
        (only those that exist), so that ``teardown()`` removes them and their processes."""
        tb = cls(n_backends=n_backends, prefix=prefix, servers=False)
        listed = {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()}
        tb.namespaces = [ns for ns in tb.all_namespaces() if ns in listed]
        return tb

    def __enter__(self) -> Testbed:
        return self.setup()

    def __exit__(self, *exc: object) -> None:
        self.teardown()
