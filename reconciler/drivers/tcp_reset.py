"""TCP resets sent from the LB's network namespace through raw IP sockets.

Why this exists: when the daemon ends an idle TCP flow (``reconciler/idle.py``) the
client and the endpoint are told with a RST whose source is the VIP (towards the
client) or the source the endpoint sees (the client's address, or the box's under
source NAT).  A raw socket with the IP header included (``IPPROTO_RAW``) sends such
a packet as built, whatever its source, and the kernel routes it like any packet
of the box; the datapath sits on ingress only, so it never sees these.  The sockets
are opened inside the box's namespace (``netns.in_netns``, this thread only) and stay
bound to it.
"""

from __future__ import annotations

import socket

from reconciler.drivers.netns import in_netns
from reconciler.idle import Reset, rst_packet


class RawResetSender:
    """An IPv4 and an IPv6 raw socket in namespace ``netns`` (None: the current one), opened on first use."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._socks: dict[int, socket.socket] = {}

    def _sock(self, family: int) -> socket.socket:
        s = self._socks.get(family)
        if s is None:
            with in_netns(self.netns):
                s = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW,
                                  socket.IPPROTO_RAW)
            self._socks[family] = s
        return s

    def send(self, r: Reset) -> None:
        self._sock(r.family).sendto(rst_packet(r), (r.dst, 0))

    def close(self) -> None:
        for s in self._socks.values():
            s.close()
        self._socks = {}
