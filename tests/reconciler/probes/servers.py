"""Probe targets for the health-probe tests and bench, run inside a backend namespace.

Why this exists: the testbed's backend server answers HTTP, UDP and a TCP echo; the
probe tests also need an HTTPS server that demands a client certificate (mTLS), an
SCTP responder on a raw socket (this kernel has no SCTP module), and a UDP responder
that answers only every other datagram (a backend failing every other probe).

    python servers.py NAME https PORT CERT KEY CA
    python servers.py NAME sctp PORT
    python servers.py NAME udp-alternate PORT

Prints ``ready`` once listening; runs until killed.
"""

from __future__ import annotations

import random
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from reconciler.probes import sctp  # noqa: E402


def https(name: str, port: int, cert: str, key: str, ca: str) -> None:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = f"{name} healthy\n".encode()
            self.send_response(200 if self.path == "/healthz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("0.0.0.0", port), H)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: a probe without the client certificate fails
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


def sctp_responder(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, sctp.PROTO)
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(65535)
        data = data[(data[0] & 0x0F) * 4:]
        got = sctp.parse(data)
        if got is None:
            continue
        sport, dport, _vtag, ctype, itag = got
        if ctype == sctp.INIT and dport == port:
            s.sendto(sctp.init_ack(dport, sport, itag, random.randrange(1, 1 << 32), 1), (peer[0], 0))


def udp_alternate(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    n = 0
    while True:
        data, peer = s.recvfrom(65535)
        n += 1
        if n % 2:
            s.sendto(b"pong " + data, peer)


def main() -> None:
    name, kind, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "https":
        https(name, port, *sys.argv[4:7])
    elif kind == "sctp":
        sctp_responder(port)
    elif kind == "udp-alternate":
        udp_alternate(port)
    else:
        raise SystemExit(f"unknown kind {kind}")
    threading.Event().wait()


if __name__ == "__main__":
    main()
