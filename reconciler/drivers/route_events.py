"""Route and neighbour changes of the box, as they happen (for the datapath's next-hop cache).

Why this exists: an established flow forwards by the next hop cached in its conntrack
entry (``bpf/lb_nexthop.h``), valid while the datapath's generation (``lb_nh_gen``) is
the one it was cached under and for at most 2 s.  Every apply bumps the generation; a
route or neighbour that changes between applies (a BGP next hop moving, an interface
going down, a neighbour's MAC changing) would be followed only at the age bound.  With
this listener the daemon bumps the generation within one netlink notification instead.

One ``NETLINK_ROUTE`` socket bound to the IPv4 route, IPv6 route and neighbour multicast
groups of the box's network namespace, read on a thread of its own; any burst of
messages (or a lost one: ``ENOBUFS``) calls ``on_change`` once, on that thread, so the
caller marshals it to its own loop (``watch.Daemon`` sets a flag and wakes).  Plain
``socket`` and no message decoding: what changed does not matter, only that something
did (the bump is one map write).
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

NETLINK_ROUTE = 0
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
POLL_S = 0.5  # how often the thread looks at its stop flag
RECV_BYTES = 1 << 16

Namespace = Callable[[], AbstractContextManager[None]]


class RouteEvents:
    """Calls ``on_change`` (on its own thread) after routes or neighbours of the namespace
    changed.  ``namespace`` enters the box's network namespace on the calling thread while
    the socket is made (None: this process's)."""

    def __init__(self, on_change: Callable[[], None], namespace: Namespace | None = None) -> None:
        self.on_change = on_change
        self.namespace = namespace
        self.changes = 0  # bursts reported
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        with (self.namespace or nullcontext)():
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            sock.bind((0, GROUPS))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="lbctl-route-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        # poll, not select: a process with over 1,024 descriptors open makes select() fail
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(POLL_S * 1000):
                continue
            if self._drain(sock):
                self.changes += 1
                self.on_change()

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        """Read everything queued: a burst (a link going down withdraws many routes) is one
        change.  True when anything was read or lost (``ENOBUFS``)."""
        seen = False
        while True:
            try:
                sock.recv(RECV_BYTES)
            except BlockingIOError:
                return seen
            except OSError:
                pass  # ENOBUFS: messages were lost, so something changed
            seen = True
