"""Idle expiry of flows: which conntrack entries to end, and the TCP resets an ended flow gets.

Why this exists: an idle client sends nothing, so the datapath never learns that its
flow timed out; silently forgetting it leaves the client to find out on its next
segment (issue 14).  The daemon sweeps conntrack instead (``IdleSweeper.sweep``, on
its own timer): every entry idle past its timeout is ended by the datapath
(``IdleExpiry.expire``: decided with the datapath's own clock, connection count
closed, both directions removed), and an *established TCP* flow gets a RST towards
the client (from the VIP) and towards the endpoint (from the source the endpoint
sees; not in DSR, whose replies bypass the box).  Linux accepts a RST only with
``seq == rcv_nxt`` (RFC 5961), so each reset carries the next sequence number the
datapath noted for the other side.  UDP and ICMP flows end silently.  Pure: the
driver supplies entries, expiry and sending; tests use a fake clock and driver.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

IPPROTO_TCP = 6
TCP_RST = 0x04

Direction = Literal["client", "endpoint"]


@dataclass(frozen=True, slots=True)
class IdleEntry:
    """A conntrack entry idle past its timeout, as the driver's scan found it."""

    key: bytes  # the driver's own key (opaque here)
    forward: bool  # client -> VIP entry (ended first: it names the flow's other entry)


@dataclass(frozen=True, slots=True)
class Sender:
    """What the datapath noted of one direction's TCP sender (None: not seen yet)."""

    seq_next: int | None = None  # the next sequence number it will send
    ack: int | None = None  # the last it acknowledged: its receive next


@dataclass(frozen=True, slots=True)
class ExpiredFlow:
    """A flow the datapath ended, from its entries as they were."""

    proto: int  # IPPROTO_*
    state: str  # TCP state of the forward entry ("established", ...); "" when only the reply entry was left
    dsr: bool
    family: int  # 4 or 6: the client side
    client: str
    client_port: int
    vip: str
    vip_port: int
    endpoint_family: int  # differs under NAT64/NAT46
    endpoint: str
    endpoint_port: int
    source: str  # the source the endpoint sees (the client, or the box under source NAT)
    source_port: int
    client_sends: Sender = field(default_factory=Sender)  # from the forward entry
    endpoint_sends: Sender = field(default_factory=Sender)  # from the reply entry


@dataclass(frozen=True, slots=True)
class Reset:
    """One TCP RST to send from the LB's namespace."""

    to: Direction
    family: int
    src: str
    sport: int
    dst: str
    dport: int
    seq: int


@runtime_checkable
class IdleExpiry(Protocol):
    """A driver that can end idle flows and send the resets (the bpf driver)."""

    def idle_entries(self, now_ns: int) -> list[IdleEntry]:
        """Entries idle past their timeout at ``now_ns`` (CLOCK_MONOTONIC, the datapath's clock)."""
        ...

    def expire(self, key: bytes) -> ExpiredFlow | None:
        """End the flow of ``key`` if it is still idle; None when it is gone or live again."""
        ...

    def send_reset(self, reset: Reset) -> None:
        """Send one RST (raises OSError when the kernel refuses it)."""
        ...


def resets_for(flow: ExpiredFlow) -> list[Reset]:
    """The RSTs an ended flow gets: none unless it was an established TCP connection.

    Towards the client, from the VIP, with the endpoint's next sequence number (what the
    client expects next), else the client's last acknowledgement (DSR: the box sees only
    the client's side).  Towards the endpoint (not DSR), from the source it sees, with
    the client's next sequence number, else the endpoint's last acknowledgement.  A side
    whose numbers the datapath never saw (a flow from before layout v4) gets none.
    """
    if flow.proto != IPPROTO_TCP or flow.state != "established":
        return []
    out = []
    seq = flow.endpoint_sends.seq_next
    if seq is None:
        seq = flow.client_sends.ack
    if seq is not None:
        out.append(Reset("client", flow.family, flow.vip, flow.vip_port, flow.client, flow.client_port, seq))
    if not flow.dsr:
        seq = flow.client_sends.seq_next
        if seq is None:
            seq = flow.endpoint_sends.ack
        if seq is not None:
            out.append(Reset("endpoint", flow.endpoint_family, flow.source, flow.source_port,
                             flow.endpoint, flow.endpoint_port, seq))
    return out


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def rst_packet(r: Reset) -> bytes:
    """The IP packet of a RST (header included, checksums computed): for a raw IP socket."""
    src = ipaddress.ip_address(r.src).packed
    dst = ipaddress.ip_address(r.dst).packed
    tcp = struct.pack("!HHIIBBHHH", r.sport, r.dport, r.seq & 0xFFFFFFFF, 0, 5 << 4, TCP_RST, 0, 0, 0)
    if r.family == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    if r.family == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, IPPROTO_TCP, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        return ip + tcp
    return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), IPPROTO_TCP, 64, src, dst) + tcp


@dataclass
class SweepTotals:
    """What the sweeps did so far (the daemon's metrics and ``/status``)."""

    sweeps: int = 0
    expired: int = 0
    resets: dict[str, int] = field(default_factory=lambda: {"client": 0, "endpoint": 0})
    send_errors: int = 0

    def add(self, other: SweepTotals) -> None:
        self.sweeps += other.sweeps
        self.expired += other.expired
        self.send_errors += other.send_errors
        for k, v in other.resets.items():
            self.resets[k] = self.resets.get(k, 0) + v


class IdleSweeper:
    """Ends idle flows of a driver and resets the established TCP ones."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.clock = clock
        self.totals = SweepTotals()

    def sweep(self, driver: IdleExpiry) -> SweepTotals:
        """One pass; returns what this pass did (``totals`` accumulates)."""
        done = SweepTotals(sweeps=1)
        entries = driver.idle_entries(self.clock())
        # Forward entries first: ending one removes its reply entry too, so the
        # reply entries left after them are those whose flow had lost its other half.
        for entry in sorted(entries, key=lambda e: not e.forward):
            flow = driver.expire(entry.key)
            if flow is None:
                continue
            done.expired += 1
            for r in resets_for(flow):
                try:
                    driver.send_reset(r)
                except OSError:
                    done.send_errors += 1
                    continue
                done.resets[r.to] += 1
        self.totals.add(done)
        return done
