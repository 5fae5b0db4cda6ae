"""bpf_addrset: the hash the datapath shares, and merges that only ever add bits.

The packet tests (tests/bpf/test_addrset_packets.py) show the hash agrees with the
datapath's; these pin down the pure parts against a map stand-in.
"""

from __future__ import annotations

import socket
import struct

from reconciler.drivers import bpf_addrset

U32, U64 = struct.Struct("<I"), struct.Struct("<Q")


class _Words:
    """The three calls merge() makes on a map, over a dict (word -> value)."""

    def __init__(self, words: dict[int, int]) -> None:
        self.words = dict(words)
        self.lookups = 0

    def lookup_raw(self, key: bytes) -> bytes | None:
        self.lookups += 1
        w = U32.unpack(key)[0]
        return U64.pack(self.words.get(w, 0)) if w <= bpf_addrset.shape().words else None

    def items_raw(self, chunk: int = 1024) -> list[tuple[bytes, bytes]]:
        return [(U32.pack(w), U64.pack(self.words.get(w, 0))) for w in range(bpf_addrset.shape().words + 1)]

    def update_batch_raw(self, items: list[tuple[bytes, bytes]]) -> None:
        for k, v in items:
            self.words[U32.unpack(k)[0]] = U64.unpack(v)[0]


def _v4(a: str) -> bytes:
    return socket.inet_aton(a) + bytes(12)


def test_the_bit_is_the_folded_address_times_the_constant() -> None:
    raw = _v4("10.97.0.1")
    x = struct.unpack("=I", raw[:4])[0]
    shape = bpf_addrset.shape()
    assert bpf_addrset.bit(raw) == ((x * shape.mult) & 0xFFFFFFFF) >> (32 - shape.log2)
    v6 = socket.inet_pton(socket.AF_INET6, "fd00:97::1")
    assert 0 <= bpf_addrset.bit(v6) < shape.words * 64
    assert shape.words * 64 == 1 << shape.log2 and shape.armed == shape.words


def test_addresses_spread_over_the_set() -> None:
    """10,000 VIPs and 100,000 endpoints of consecutive addresses: few share a bit."""
    addrs = [_v4(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(110_000)]
    bits = {bpf_addrset.bit(a) for a in addrs}
    assert len(bits) > 0.9 * len(addrs)


def test_merge_only_adds_bits_and_reads_the_live_words() -> None:
    m = _Words({5: 0b1000})  # a bit another process set after this one last looked
    pend = bpf_addrset.words([_v4("10.0.0.1")])
    (w, bits), = pend.items()
    m.words[w] = m.words.get(w, 0) | (1 << 62)
    assert bpf_addrset.merge(m, pend | {5: 0b1}) == 2  # type: ignore[arg-type]
    assert m.words[5] == 0b1001 and m.words[w] == bits | (1 << 62)
    assert bpf_addrset.merge(m, {5: 0b1}) == 0  # type: ignore[arg-type]  # nothing new: no write


def test_a_large_merge_reads_the_set_in_one_pass() -> None:
    m = _Words({})
    pend = {w: 1 for w in range(1000)}
    assert bpf_addrset.merge(m, pend) == 1000  # type: ignore[arg-type]
    assert m.lookups == 0


def test_arming() -> None:
    m = _Words({})
    assert not bpf_addrset.armed(m)  # type: ignore[arg-type]
    m.update_raw = lambda k, v: m.update_batch_raw([(k, v)])  # type: ignore[attr-defined]
    bpf_addrset.arm(m)  # type: ignore[arg-type]
    assert bpf_addrset.armed(m)  # type: ignore[arg-type]
