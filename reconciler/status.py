"""The daemon's local HTTP endpoint: /healthz, /readyz, /status, /metrics.

Why this exists: probes (systemd, Kubernetes), ``lbctl status`` and Prometheus
all ask the running daemon the same questions.  A stdlib ``ThreadingHTTPServer``
in a daemon thread answers them from callbacks into the daemon, so the server
knows nothing about reconciling.  It binds loopback (``127.0.0.1:11111``,
loxilb's API port) unless an operator configures another address.  Any local
user can bind that port first; the daemon then exits naming the holder (user
from ``/proc/net/tcp``, pid and command from the ``/proc/PID/fd`` holding that
socket, a few ms on the error path only) and the ``--listen`` option.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reconciler.errors import LbctlError
from reconciler.metrics import CONTENT_TYPE

DEFAULT_LISTEN = "127.0.0.1:11111"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}"


def parse_listen(text: str) -> Address:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``); the host must be an IP literal."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise LbctlError(f"--listen {text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:11111 or [::1]:11111")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise LbctlError(f"--listen {text!r} is not an IP address and port",
                         hint="e.g. 127.0.0.1:11111 or [::1]:11111") from None
    if not 0 <= port <= 65535:
        raise LbctlError(f"--listen port {port} is out of range", hint="use 1-65535 (0 picks a free port)")
    return Address(host, port)


@dataclass(frozen=True)
class Endpoints:
    """What the server asks the daemon; each is called per request."""

    ready: Callable[[], bool]
    status: Callable[[], dict[str, Any]]
    metrics: Callable[[], str | bytes | list[bytes]]  # pieces are sent as they are, not joined


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Address, endpoints: Endpoints) -> None:
        if ":" in address.host:
            import socket
            self.address_family = socket.AF_INET6
        self.endpoints = endpoints
        super().__init__((address.host, address.port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "lbctl"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # probes every few seconds would flood the daemon's log

    def _send(self, code: int, body: str | bytes | list[bytes], content_type: str) -> None:
        parts = body if isinstance(body, list) else [body if isinstance(body, bytes) else body.encode()]
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(p) for p in parts)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command == "HEAD":
            return
        batch: list[bytes] = []
        size = 0
        for part in parts:  # ~1 MB writes: few syscalls, no buffer the size of the body
            batch.append(part)
            size += len(part)
            if size >= 1 << 20:
                self.wfile.write(b"".join(batch))
                batch, size = [], 0
        if batch:
            self.wfile.write(b"".join(batch))

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        path = self.path.split("?", 1)[0]
        ep = self.server.endpoints
        try:
            if path == "/healthz":
                self._send(200, "ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                if ep.ready():
                    self._send(200, "ready\n", "text/plain; charset=utf-8")
                else:
                    self._send(503, "not ready: no reconcile has verified yet\n", "text/plain; charset=utf-8")
            elif path == "/status":
                self._send(200, json.dumps(ep.status(), indent=2, sort_keys=True) + "\n", "application/json")
            elif path == "/metrics":
                self._send(200, ep.metrics(), CONTENT_TYPE)
            else:
                self._send(404, "not found: try /healthz /readyz /status /metrics\n",
                           "text/plain; charset=utf-8")
        except Exception as exc:  # a broken callback must not kill the server thread
            self._send(500, f"internal error: {type(exc).__name__}: {exc}\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET


def _proc_addr(text: str) -> tuple[str, int]:
    """``0100007F:2B67`` of /proc/net/tcp{,6} -> (``127.0.0.1``, 11111): u32 words in host order."""
    addr, _, port = text.partition(":")
    raw = b"".join(int(addr[i:i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(addr), 8))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def _sockets_on(address: Address) -> list[tuple[int, int]]:
    """(uid, inode) of the TCP sockets bound to ``address`` or to the wildcard on its port."""
    wanted = ipaddress.ip_address(address.host)
    found: list[tuple[int, int]] = []
    for table in ("tcp", "tcp6"):
        try:  # thread-self: the network namespace of the thread that failed to bind
            with open(f"/proc/thread-self/net/{table}", encoding="ascii") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            try:
                host, port = _proc_addr(fields[1])
                uid, inode = int(fields[7]), int(fields[9])
            except (IndexError, ValueError):
                continue
            bound = ipaddress.ip_address(host)
            if port == address.port and inode and (bound == wanted or bound.is_unspecified
                                                   or wanted.is_unspecified):
                found.append((uid, inode))
    return found


def _process_with(inode: int) -> str | None:
    """``pid N (command)`` of a process holding socket ``inode`` (needs the right to read its fds)."""
    link = f"socket:[{inode}]"
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != link:
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    cmd = " ".join(fh.read().replace(b"\0", b" ").decode(errors="replace").split())
            except OSError:
                continue
            return f"pid {pid}" + (f" ({cmd[:80]})" if cmd else "")
    return None


def port_holder(address: Address) -> str | None:
    """Who holds ``address``: ``pid N (command), user NAME (uid U)``, as much as /proc tells."""
    from reconciler.statedir import owner_name

    for uid, inode in _sockets_on(address):
        process = _process_with(inode)
        user = f"user {owner_name(uid)}"
        return f"{process}, {user}" if process else user
    return None


class StatusServer:
    """Serves ``endpoints`` on ``address`` from a background thread."""

    def __init__(self, address: Address, endpoints: Endpoints) -> None:
        try:
            self._server = _Server(address, endpoints)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                holder = port_holder(address)
                raise LbctlError(
                    f"cannot listen on {address} for the status endpoint: another process holds it"
                    + (f" ({holder})" if holder else ""),
                    hint="stop that process if it should not be there, or give lbctl watch another "
                         "address with --listen HOST:PORT (--listen none disables the endpoint)") from None
            raise LbctlError(f"cannot listen on {address}: {exc.strerror or exc}",
                             hint="choose another --listen HOST:PORT") from None
        host, port = self._server.server_address[:2]
        self.address = Address(str(host), int(port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="lbctl-status",
                                        kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
