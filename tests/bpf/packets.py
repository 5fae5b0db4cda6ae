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
    seq: int = 1000  # TCP sequence and acknowledgement numbers
    ack: int = 2000

    @property
    def v6(self) -> bool:
        return ":" in self.src

    def l4(self) -> bytes:
        if self.proto == TCP:
            ack = self.ack if self.flags & ACK else 0
            hdr = struct.pack("!HHIIBBHHH", self.sport, self.dport, self.seq, ack, 5 << 4, self.flags,
                              65535, 0, 0)
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


# --- fragments and ICMP errors (issue 14) ---

def fragments(frame: bytes, size: int, frag_id: int = 0x4321) -> list[bytes]:
    """Split an unfragmented IPv4/IPv6 frame into IP fragments of at most ``size`` payload
    bytes each (a multiple of 8), as a sending host does (IPv6: a fragment header)."""
    eth, et = frame[:14], struct.unpack("!H", frame[12:14])[0]
    out = []
    if et == ETH_IP:
        ihl = (frame[14] & 0xF) * 4
        hdr, data = frame[14 : 14 + ihl], frame[14 + ihl :]
        for off in range(0, len(data), size):
            part = data[off : off + size]
            mf = 0x2000 if off + size < len(data) else 0
            h = (hdr[:2] + struct.pack("!HHH", ihl + len(part), frag_id & 0xFFFF, mf | off // 8) + hdr[8:10]
                 + b"\0\0" + hdr[12:])
            h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
            out.append(eth + h + part)
        return out
    hdr, data = frame[14:54], frame[54:]
    for off in range(0, len(data), size):
        part = data[off : off + size]
        m = 1 if off + size < len(data) else 0
        fh = struct.pack("!BBHI", hdr[6], 0, off | m, frag_id)
        h = hdr[:4] + struct.pack("!H", 8 + len(part)) + bytes([44]) + hdr[7:]
        out.append(eth + h + fh + part)
    return out


@dataclass
class Frag:
    src: str
    dst: str
    ttl: int
    offset: int  # bytes
    more: bool
    ip_csum_ok: bool
    data: bytes  # the fragment's payload


def parse_fragment(frame: bytes) -> Frag:
    et = struct.unpack("!H", frame[12:14])[0]
    if et == ETH_IP:
        ihl = (frame[14] & 0xF) * 4
        ip = frame[14 : 14 + ihl]
        tot, fo = struct.unpack("!H", ip[2:4])[0], struct.unpack("!H", ip[6:8])[0]
        return Frag(str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20])), ip[8],
                    (fo & 0x1FFF) * 8, bool(fo & 0x2000), csum(ip) == 0, frame[14 + ihl : 14 + tot])
    ip = frame[14:54]
    assert ip[6] == 44, "not an IPv6 fragment"
    plen = struct.unpack("!H", ip[4:6])[0]
    fo = struct.unpack("!H", frame[56:58])[0]
    return Frag(str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40])), ip[7],
                fo & 0xFFF8, bool(fo & 1), True, frame[62 : 54 + plen])


def reassemble(frames: list[bytes]) -> bytes:
    """The L4 datagram (header and payload) the fragments carry."""
    parts = sorted((parse_fragment(f) for f in frames), key=lambda f: f.offset)
    data = b""
    for f in parts:
        assert f.offset == len(data), "fragments must be contiguous"
        data += f.data
    assert not parts[-1].more
    return data


def l4_csum_ok(src: str, dst: str, proto: int, l4: bytes) -> bool:
    return csum(_pseudo(src, dst, proto, len(l4)) + l4) == 0


def icmp_error(src: str, dst: str, quoted: bytes, *, type_: int | None = None, code: int = 4,
               mtu: int = 1400, ttl: int = 64) -> bytes:
    """An ICMP error (v4: fragmentation needed; v6: packet too big by default) from ``src`` to
    ``dst`` quoting ``quoted`` (an IP packet, without Ethernet)."""
    v6 = ":" in src
    if type_ is None:
        type_ = 2 if v6 else 3
    if v6:
        code = 0 if type_ == 2 else code
        rest = struct.pack("!I", mtu) if type_ == 2 else b"\0\0\0\0"
    else:
        rest = struct.pack("!HH", 0, mtu) if (type_, code) == (3, 4) else b"\0\0\0\0"
    body = struct.pack("!BBH", type_, code, 0) + rest + quoted
    if v6:
        c = csum(_pseudo(src, dst, ICMP6, len(body)) + body)
        pkt = Pkt(src, dst, ICMP6, ttl=ttl)
    else:
        c = csum(body)
        pkt = Pkt(src, dst, ICMP, ttl=ttl)
    body = body[:2] + struct.pack("!H", c) + body[4:]
    frame = pkt.but(payload=b"").bytes()
    hl = 40 if v6 else 20
    ip = bytearray(frame[14 : 14 + hl])
    if v6:
        ip[4:6] = struct.pack("!H", len(body))
    else:
        ip[2:4] = struct.pack("!H", hl + len(body))
        ip[10:12] = b"\0\0"
        ip[10:12] = struct.pack("!H", csum(bytes(ip)))
    return frame[:14] + bytes(ip) + body


@dataclass
class IcmpErr:
    src: str
    dst: str
    ttl: int
    type: int
    csum_ok: bool  # the outer IP header (v4) and the ICMP checksum (v6: with its pseudo header)
    quoted: bytes  # the quoted IP packet


def parse_icmp_error(frame: bytes) -> IcmpErr:
    et = struct.unpack("!H", frame[12:14])[0]
    if et == ETH_IP:
        ip = frame[14:34]
        tot = struct.unpack("!H", ip[2:4])[0]
        body = frame[34 : 14 + tot]
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        ok = csum(ip) == 0 and csum(body) == 0
        return IcmpErr(src, dst, ip[8], body[0], ok, body[8:])
    ip = frame[14:54]
    plen = struct.unpack("!H", ip[4:6])[0]
    body = frame[54 : 54 + plen]
    src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
    ok = csum(_pseudo(src, dst, ICMP6, len(body)) + body) == 0
    return IcmpErr(src, dst, ip[7], body[0], ok, body[8:])
