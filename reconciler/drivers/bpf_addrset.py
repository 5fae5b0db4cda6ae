"""The address set of the datapath's early exit (``bpf/lb_addrset.h``), as the driver writes it.

Why this exists: a packet neither to a VIP nor from an endpoint skips the
conntrack and service lookups only if ``lb_addrset`` holds a bit for every VIP
and endpoint address the maps use.  This module owns the one hash both sides
compute (the C side is ``addrset_bit``), merges new bits into the live words
(bits are only ever added, so the set is a superset at every instant), and arms
the set once it is whole.  Pure functions plus two map helpers; the bpf driver
(``bpf_apply``) decides when.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.drivers import _libbpf as B

_WORDS4 = struct.Struct("=4I")  # lb_ct_key's __u32 addr[4] as the datapath reads them
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Above this many words to change, one batch read of the whole set beats a lookup per word.
_READ_ALL = 512


@dataclass(frozen=True)
class Shape:
    """The set's constants, from lb_shared.h (read on first use: the module is imported
    beside older layouts' headers too, e.g. by the migration tests)."""

    log2: int
    words: int  # 64-bit words of bits
    armed: int  # index of the armed word
    mult: int


@functools.cache
def shape() -> Shape:
    return Shape(B.const("LB_ADDRSET_LOG2"), B.const("LB_ADDRSET_WORDS"), B.const("LB_ADDRSET_ARMED"),
                 B.const("LB_ADDRSET_MULT"))


def bit(addr16: bytes) -> int:
    """The bit of an address packed like ``lb_*.addr[4]`` (IPv4: 4 bytes then 12 zeros)."""
    a, b, c, d = _WORDS4.unpack(addr16)
    s = shape()
    h: int = (((a ^ b ^ c ^ d) * s.mult) & 0xFFFFFFFF) >> (32 - s.log2)
    return h


def add(pending: dict[int, int], addr16: bytes) -> None:
    """Note ``addr16``'s bit in ``pending`` (word index -> bits to set)."""
    h = bit(addr16)
    w = h >> 6
    pending[w] = pending.get(w, 0) | (1 << (h & 63))


def words(addrs: Iterable[bytes]) -> dict[int, int]:
    """Word index -> bits of a set of packed addresses."""
    out: dict[int, int] = {}
    for a in addrs:
        add(out, a)
    return out


def merge(m: B.Map, pending: dict[int, int]) -> int:
    """OR ``pending`` into the live words of ``m``; the number of words written.

    Reads the live words (never a cached copy: another lbctl process may have set
    bits since), so a bit once set stays set."""
    if not pending:
        return 0
    if len(pending) > _READ_ALL:
        live = {_U32.unpack(k)[0]: _U64.unpack(v)[0] for k, v in m.items_raw(chunk=4096)}
    else:
        live = {}
        for w in pending:
            raw = m.lookup_raw(_U32.pack(w))
            live[w] = _U64.unpack(raw)[0] if raw else 0
    out = []
    for w, bits in pending.items():
        old = live.get(w, 0)
        if old | bits != old:
            out.append((_U32.pack(w), _U64.pack(old | bits)))
    if out:
        m.update_batch_raw(out)
    return len(out)


def armed(m: B.Map) -> bool:
    raw = m.lookup_raw(_U32.pack(shape().armed))
    return bool(raw and _U64.unpack(raw)[0])


def arm(m: B.Map) -> None:
    """Let the datapath skip what the set does not hold: only once every address is in it."""
    m.update_raw(_U32.pack(shape().armed), _U64.pack(1))
