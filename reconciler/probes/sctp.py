"""SCTP INIT and INIT-ACK packets for the sctp health probe.  Pure.

Why this exists: this kernel has no SCTP module, so the probe cannot open an SCTP
socket; it sends an INIT on a raw IP socket (protocol 132) and counts an INIT-ACK
carrying its initiate tag as "the endpoint's SCTP stack is listening" (an ABORT,
or nothing within the timeout, is a failure).  The probe never completes the
association (the endpoint keeps no state before COOKIE-ECHO, RFC 9260 5.1).
"""

from __future__ import annotations

import struct

PROTO = 132
INIT, INIT_ACK, ABORT = 1, 2, 6

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def _table() -> list[int]:
    out = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        out.append(c)
    return out


_TABLE = _table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def with_checksum(packet: bytes) -> bytes:
    """``packet`` (common header + chunks, checksum field zero) with its CRC-32C filled in
    (stored little-endian, as Linux and the RFC's reference code do)."""
    body = packet[:8] + b"\0\0\0\0" + packet[12:]
    return body[:8] + struct.pack("<I", crc32c(body)) + body[12:]


def checksum_ok(packet: bytes) -> bool:
    return len(packet) >= 12 and with_checksum(packet) == packet


def init(src_port: int, dst_port: int, tag: int, tsn: int) -> bytes:
    """An INIT (verification tag 0) asking for ``tag`` as the peer's tag towards us."""
    chunk = struct.pack("!BBHIIHHI", INIT, 0, 20, tag, 65536, 1, 1, tsn)
    return with_checksum(struct.pack("!HHII", src_port, dst_port, 0, 0) + chunk)


def init_ack(src_port: int, dst_port: int, peer_tag: int, tag: int, tsn: int,
             cookie: bytes = b"lbctl") -> bytes:
    """An INIT-ACK answering an INIT whose initiate tag was ``peer_tag`` (test responders)."""
    param = struct.pack("!HH", 7, 4 + len(cookie)) + cookie  # State Cookie
    param += b"\0" * (-len(param) % 4)
    chunk = struct.pack("!BBHIIHHI", INIT_ACK, 0, 20 + len(param), tag, 65536, 1, 1, tsn) + param
    return with_checksum(struct.pack("!HHII", src_port, dst_port, peer_tag, 0) + chunk)


def parse(packet: bytes) -> tuple[int, int, int, int, int] | None:
    """(src port, dst port, verification tag, first chunk type, INIT/INIT-ACK initiate tag or 0);
    None for a packet too short or with a bad checksum."""
    if len(packet) < 16 or not checksum_ok(packet):
        return None
    sport, dport, vtag = struct.unpack_from("!HHI", packet)
    ctype = packet[12]
    itag = struct.unpack_from("!I", packet, 16)[0] if ctype in (INIT, INIT_ACK) and len(packet) >= 20 else 0
    return sport, dport, vtag, ctype, itag
