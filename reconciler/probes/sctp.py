"""SCTP packets: CRC-32C, INIT and INIT-ACK for the sctp health probe, chunks.  Pure.

Why this exists: this kernel has no SCTP module, so the probe cannot open an SCTP
socket; it sends an INIT on a raw IP socket (protocol 132) and counts an INIT-ACK
carrying its initiate tag as "the endpoint's SCTP stack is listening" (an ABORT,
or nothing within the timeout, is a failure).  The probe never completes the
association (the endpoint keeps no state before COOKIE-ECHO, RFC 9260 5.1).
The tests' SCTP endpoints (tests/sctp_peer.py) build and check every packet with
the same functions.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

PROTO = 132
DATA, INIT, INIT_ACK, SACK, HEARTBEAT, HEARTBEAT_ACK, ABORT = 0, 1, 2, 3, 4, 5, 6
SHUTDOWN, SHUTDOWN_ACK, COOKIE_ECHO, COOKIE_ACK, SHUTDOWN_COMPLETE = 7, 8, 10, 11, 14
PARAM_IPV4, PARAM_IPV6, PARAM_COOKIE = 5, 6, 7

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


def address_params(addresses: Sequence[str]) -> bytes:
    """IPv4 (type 5) / IPv6 (type 6) address parameters of an INIT or INIT-ACK."""
    out = b""
    for text in addresses:
        raw = ipaddress.ip_address(text).packed
        out += struct.pack("!HH", PARAM_IPV4 if len(raw) == 4 else PARAM_IPV6, 4 + len(raw)) + raw
    return out


def init(src_port: int, dst_port: int, tag: int, tsn: int, addresses: Sequence[str] = ()) -> bytes:
    """An INIT (verification tag 0) asking for ``tag`` as the peer's tag towards us."""
    params = address_params(addresses)
    chunk = struct.pack("!BBHIIHHI", INIT, 0, 20 + len(params), tag, 65536, 1, 1, tsn) + params
    return with_checksum(struct.pack("!HHII", src_port, dst_port, 0, 0) + chunk)


def init_ack(src_port: int, dst_port: int, peer_tag: int, tag: int, tsn: int,
             cookie: bytes = b"lbctl", addresses: Sequence[str] = ()) -> bytes:
    """An INIT-ACK answering an INIT whose initiate tag was ``peer_tag`` (test responders)."""
    param = struct.pack("!HH", PARAM_COOKIE, 4 + len(cookie)) + cookie  # State Cookie
    param += b"\0" * (-len(param) % 4)
    param += address_params(addresses)
    chunk = struct.pack("!BBHIIHHI", INIT_ACK, 0, 20 + len(param), tag, 65536, 1, 1, tsn) + param
    return with_checksum(struct.pack("!HHII", src_port, dst_port, peer_tag, 0) + chunk)


def packet(src_port: int, dst_port: int, vtag: int, ctype: int, body: bytes = b"", flags: int = 0) -> bytes:
    """A packet of one chunk of type ``ctype`` (value ``body``, padded), with its CRC-32C."""
    chunk = struct.pack("!BBH", ctype, flags, 4 + len(body)) + body
    chunk += b"\0" * (-len(chunk) % 4)
    return with_checksum(struct.pack("!HHII", src_port, dst_port, vtag, 0) + chunk)


def chunk_params(packet: bytes) -> list[tuple[int, bytes]]:
    """(type, value) of the parameters of the INIT / INIT-ACK chunk first in ``packet``."""
    out = []
    end = min(len(packet), 12 + struct.unpack_from("!H", packet, 14)[0])
    off = 12 + 20
    while off + 4 <= end:
        ptype, plen = struct.unpack_from("!HH", packet, off)
        if plen < 4 or off + plen > end:
            break
        out.append((ptype, packet[off + 4 : off + plen]))
        off += (plen + 3) & ~3
    return out


def addresses(packet: bytes) -> list[str]:
    """The addresses an INIT / INIT-ACK tells its peer of."""
    return [str(ipaddress.ip_address(v)) for t, v in chunk_params(packet) if t in (PARAM_IPV4, PARAM_IPV6)]


def parse(packet: bytes) -> tuple[int, int, int, int, int] | None:
    """(src port, dst port, verification tag, first chunk type, INIT/INIT-ACK initiate tag or 0);
    None for a packet too short or with a bad checksum."""
    if len(packet) < 16 or not checksum_ok(packet):
        return None
    sport, dport, vtag = struct.unpack_from("!HHI", packet)
    ctype = packet[12]
    itag = struct.unpack_from("!I", packet, 16)[0] if ctype in (INIT, INIT_ACK) and len(packet) >= 20 else 0
    return sport, dport, vtag, ctype, itag
