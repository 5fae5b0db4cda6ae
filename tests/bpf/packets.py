"""A tiny packet builder and parser for the datapath tests (stdlib only).

Why this exists: BPF_PROG_TEST_RUN takes raw frames; tests build the input
frame field by field, derive the expected output frame with the same builder,
and verify every checksum of what the program returned.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field, replace

from reconciler.probes import sctp

ETH_IP = 0x0800
ETH_IP6 = 0x86DD
ETH_ARP = 0x0806
TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!IxxxB", length, proto)


@dataclass(frozen=True)
class Pkt:
    src: str
    dst: str
    proto: int = TCP
    sport: int = 40000
    dport: int = 80
    flags: int = SYN
    ttl: int = 64
    payload: bytes = b"hello"
    icmp_type: int = 8
    icmp_id: int = 0x1234
    ip_options: bytes = b""
    frag: int = 0  # IPv4 flags+offset field (0x2000 = MF)
    v6_frag: bool = False
    smac: bytes = bytes.fromhex("020000000001")
    dmac: bytes = bytes.fromhex("020000000002")
    udp_zero_csum: bool = False
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def v6(self) -> bool:
        return ":" in self.src

    def l4(self) -> bytes:
        if self.proto == TCP:
            hdr = struct.pack("!HHIIBBHHH", self.sport, self.dport, 1000, 2000 if self.flags & ACK else 0,
                              5 << 4, self.flags, 65535, 0, 0)
            body = hdr + self.payload
            c = csum(_pseudo(self.src, self.dst, TCP, len(body)) + body)
            return body[:16] + struct.pack("!H", c) + body[18:]
        if self.proto == UDP:
            ln = 8 + len(self.payload)
            body = struct.pack("!HHHH", self.sport, self.dport, ln, 0) + self.payload
            if self.udp_zero_csum:
                return body
            c = csum(_pseudo(self.src, self.dst, UDP, ln) + body) or 0xFFFF
            return body[:6] + struct.pack("!H", c) + body[8:]
        if self.proto in (ICMP, ICMP6):
            body = struct.pack("!BBHHH", self.icmp_type, 0, 0, self.icmp_id, 1) + self.payload
            if self.proto == ICMP:
                c = csum(body)
            else:
                c = csum(_pseudo(self.src, self.dst, ICMP6, len(body)) + body)
            return body[:2] + struct.pack("!H", c) + body[4:]
        return self.payload

    def bytes(self) -> bytes:
        l4 = self.l4()
        if not self.v6:
            opts = self.ip_options
            ihl = 5 + len(opts) // 4
            hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 7, self.frag, self.ttl,
                              self.proto, 0, ipaddress.ip_address(self.src).packed,
                              ipaddress.ip_address(self.dst).packed) + opts
            hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
            return self.dmac + self.smac + struct.pack("!H", ETH_IP) + hdr + l4
        nh = self.proto
        ext = b""
        if self.v6_frag:
            ext = struct.pack("!BBHI", nh, 0, 0x0001, 99)
            nh = 44
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(l4), nh, self.ttl,
                          ipaddress.ip_address(self.src).packed, ipaddress.ip_address(self.dst).packed)
        return self.dmac + self.smac + struct.pack("!H", ETH_IP6) + hdr + ext + l4

    def but(self, **kw: object) -> Pkt:
        return replace(self, **kw)  # type: ignore[arg-type]


@dataclass
class Parsed:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    ttl: int
    csum_ok: bool
    smac: bytes
    dmac: bytes


def parse(frame: bytes) -> Parsed:
    """Parse an IPv4/IPv6 TCP/UDP/ICMP frame and verify its checksums."""
    dmac, smac, et = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    ok = True
    if et == ETH_IP:
        ihl = (frame[14] & 0xF) * 4
        ip = frame[14 : 14 + ihl]
        ok &= csum(ip) == 0
        tot = struct.unpack("!H", ip[2:4])[0]
        ttl, proto = ip[8], ip[9]
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        l4 = frame[14 + ihl : 14 + tot]
    else:
        ip = frame[14:54]
        plen = struct.unpack("!H", ip[4:6])[0]
        proto, ttl = ip[6], ip[7]
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        l4 = frame[54 : 54 + plen]
    sport = dport = 0
    if proto in (TCP, UDP):
        sport, dport = struct.unpack("!HH", l4[:4])
        if proto == UDP and l4[6:8] == b"\0\0" and et == ETH_IP:
            pass
        else:
            ok &= csum(_pseudo(src, dst, proto, len(l4)) + l4) == 0
    elif proto == ICMP:
        ok &= csum(l4) == 0
        sport = struct.unpack("!H", l4[4:6])[0]
    elif proto == ICMP6:
        ok &= csum(_pseudo(src, dst, ICMP6, len(l4)) + l4) == 0
        sport = struct.unpack("!H", l4[4:6])[0]
    elif proto == SCTP:  # the payload is the SCTP packet (reconciler.probes.sctp builds it)
        sport, dport = struct.unpack("!HH", l4[:4])
        ok &= sctp.checksum_ok(l4)
    return Parsed(src, dst, proto, sport, dport, ttl, ok, smac, dmac)
