"""The bpf driver's codec: map values as lbctl writes and reads them, and pure helpers.

Why this exists: encoding and decoding map entries (``lb_service`` as ``_Conf``,
endpoint lists, range lists, selection tables, allowed sources, addresses) is
pure and shared by the read, apply and observe parts of the driver; it uses
only the layout of ``bpf_layout`` (derived from lb_shared.h), no map handle.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.constants import PROTO_NAMES, PROTO_NUMBERS
from reconciler.drivers.bpf_layout import (
    CIDR,
    CONF_SIZE,
    F_HAS_ENDPOINTS,
    F_HAS_SERVICE,
    MAX_ALLOWED,
    MAX_RANGES,
    MODES,
    NAME_LEN,
    NO_BACKEND,
    RANGE,
    RANGE_HDR,
    RANGE_KEY,
    SEL_BYTES,
    SELECTIONS,
    SVC_HDR,
)
from reconciler.limits import WEIGHTED_TABLE_MAX
from reconciler.records import (
    Backend,
    EndpointSet,
    ServiceEntry,
    ServiceKey,
)


def weighted_table(weights: Sequence[int]) -> list[int]:
    """Smooth weighted round-robin order of endpoint indexes (weight 0: never).

    Used by rr, hash, persist and priority; its length is sum(weights)/gcd,
    scaled down to at most WEIGHTED_TABLE_MAX entries.
    """
    live = [(i, w) for i, w in enumerate(weights) if w > 0]
    if not live:
        return []
    g = 0
    for _, w in live:
        g = math.gcd(g, w)
    ws = [(i, w // g) for i, w in live]
    total = sum(w for _, w in ws)
    if total > WEIGHTED_TABLE_MAX:
        # Largest remainder apportionment onto WEIGHTED_TABLE_MAX slots, at least one each.
        exact = [(i, w * WEIGHTED_TABLE_MAX / total) for i, w in ws]
        base = [(i, max(1, int(x))) for i, x in exact]
        left = WEIGHTED_TABLE_MAX - sum(b for _, b in base)
        order = sorted(range(len(exact)), key=lambda k: exact[k][1] - int(exact[k][1]), reverse=True)
        base_l = [b for _, b in base]
        for k in order[: max(0, left)]:
            base_l[k] += 1
        ws = [(exact[k][0], base_l[k]) for k in range(len(exact))]
        total = sum(w for _, w in ws)
    current = [0] * len(ws)
    out = []
    for _ in range(total):
        best = 0
        for k, (_, w) in enumerate(ws):
            current[k] += w
            if current[k] > current[best]:
                best = k
        current[best] -= total
        out.append(ws[best][0])
    return out


def _addr_words(address: str) -> tuple[int, list[int]]:
    ip = ipaddress.ip_address(address)
    raw = ip.packed
    if ip.version == 4:
        return 4, [int.from_bytes(raw, "little"), 0, 0, 0]
    return 6, [int.from_bytes(raw[i : i + 4], "little") for i in range(0, 16, 4)]


def _words_addr(family: int, words: Any) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(int(words[0]).to_bytes(4, "little")))
    raw = b"".join(int(words[i]).to_bytes(4, "little") for i in range(4))
    return str(ipaddress.IPv6Address(raw))


def _set_words(dst: Any, words: Sequence[int]) -> None:
    for i in range(4):
        dst[i] = words[i]


def _proto_num(proto: str) -> int:
    if proto in ("icmp", "icmpv6"):
        return 1
    return PROTO_NUMBERS[proto]


_PROTO_NAMES = {n: p for n, p in PROTO_NAMES.items() if p != "icmpv6"}  # ICMPv6 is keyed as 1 too
_ZERO12 = bytes(12)
_ZEROS = bytes(8192)  # longer than any value whose tail must be zero
_SELECTION_NAMES = {v: k for k, v in SELECTIONS.items()}
_MODE_NAMES = {v: k for k, v in MODES.items()}
_NO_BACKEND_NAMES = {v: k for k, v in NO_BACKEND.items()}


def _pack_addr(address: str) -> tuple[int, bytes]:
    """(family, the 16 bytes of lb_* addr[4]) of an address."""
    if ":" in address:
        return 6, socket.inet_pton(socket.AF_INET6, address)
    return 4, socket.inet_pton(socket.AF_INET, address) + bytes(12)


@functools.lru_cache(maxsize=1 << 16)
def _addr_str6(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


@functools.lru_cache(maxsize=1024)
def _weighted_bytes(weights: tuple[int, ...]) -> bytes:
    """weighted_table() packed like ``EndpointSet.maglev`` (cached: most services share weights)."""
    t = weighted_table(weights)
    return struct.pack(f"<{len(t)}H", *t)


def _stray_fault(where: str, svc_id: int) -> str:
    return f"{where}: an entry no service of lbctl's owns points at service id {svc_id}"


def _dupes_fault(ids: Sequence[int]) -> str:
    return f"lb_conf: service ids {', '.join(map(str, ids))} all claim this key"


ChunkGetter = Callable[[bytes], "bytes | None"]  # lb_sel key -> value


def _range_entries(raw: bytes) -> tuple[list[tuple[int, int, int]], str | None]:
    """The (start, end, service id) entries of an ``lb_range_list`` value, and what is wrong with it."""
    if not raw:
        return [], None
    count, pad = RANGE_HDR.unpack_from(raw)
    n = min(count, MAX_RANGES)
    entries = [RANGE.unpack_from(raw, RANGE_HDR.size + i * RANGE.size) for i in range(n)]
    end = RANGE_HDR.size + n * RANGE.size
    if count > MAX_RANGES:
        return entries, f"lb_range: the list of its VIP holds {count} entries (at most {MAX_RANGES})"
    if pad or not _zero_from(raw, end):
        return entries, "lb_range: padding or bytes after the last entry of its VIP's list are not zero"
    return entries, None


@functools.lru_cache(maxsize=1024)
def _weighted_chunks(weights: tuple[int, ...]) -> tuple[int, tuple[bytes, ...]]:
    """(table length, the ``lb_sel`` chunk values) lbctl writes for a weighted table (zero padded)."""
    table = _weighted_bytes(weights)
    chunks = tuple(table[c : c + SEL_BYTES].ljust(SEL_BYTES, b"\0")
                   for c in range(0, len(table), SEL_BYTES))
    return len(table) // 2, chunks


def _zero_from(raw: bytes, start: int) -> bool:
    """Whether every byte of ``raw`` from ``start`` on is zero (a slice compare: ~10x ``count``)."""
    return raw.endswith(_ZEROS[: len(raw) - start])


@functools.lru_cache(maxsize=4096)
def _allowed_region(sources: tuple[str, ...]) -> bytes:
    """``lb_service.allowed[]`` as lbctl writes it for ``sources`` (masked address, mask, zero padded)."""
    if len(sources) > MAX_ALLOWED:
        raise ValueError(f"more than {MAX_ALLOWED} allowed sources")
    parts = []
    for cidr in sources:
        net = ipaddress.ip_network(cidr, strict=False)
        fam, addr = _pack_addr(str(net.network_address))
        _, mask = _pack_addr(str(net.netmask))
        parts.append(CIDR.pack(addr, mask, net.prefixlen, fam))
    return b"".join(parts).ljust(MAX_ALLOWED * CIDR.size, b"\0")


def _canon(address: str) -> str:
    return _addr_str(*_pack_addr(address))


def _addr_str(family: int, raw: bytes) -> str:
    """Canonical text (as ``ipaddress``) of a 16-byte addr[4]."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return _addr_str6(raw[:16])


def snat_bytes(address: str) -> bytes:
    """``lb_service.snat_addr`` of a record's source address ("" -> zeros)."""
    return _pack_addr(address)[1] if address else bytes(16)


_MAX_SCTP_PEERS = 3  # LB_MAX_SCTP_PEER_VIPS (layout v4)
_SCTP_PEERS_SIZE = _MAX_SCTP_PEERS * 16 + _MAX_SCTP_PEERS + 1


def sctp_peers_bytes(vips: Sequence[str]) -> bytes:
    """``lb_service.sctp_peer_vips``, ``sctp_peer_family`` and ``n_sctp_peer_vips`` of a record."""
    if len(vips) > _MAX_SCTP_PEERS:
        raise ValueError(f"more than {_MAX_SCTP_PEERS} other VIPs")
    packed = [_pack_addr(v) for v in vips]
    return (b"".join(raw for _, raw in packed).ljust(_MAX_SCTP_PEERS * 16, b"\0")
            + bytes(fam for fam, _ in packed).ljust(_MAX_SCTP_PEERS, b"\0") + bytes([len(vips)]))


def sctp_peers_decode(raw: bytes) -> tuple[str, ...]:
    if len(raw) < _SCTP_PEERS_SIZE:
        return ()
    n = min(raw[-1], _MAX_SCTP_PEERS)
    return tuple(_addr_str(raw[_MAX_SCTP_PEERS * 16 + i], raw[i * 16 : i * 16 + 16]) for i in range(n))


@dataclass
class _Conf:
    """A ``struct lb_service`` as Python values (decoded from / encoded to map bytes)."""

    addr: bytes
    port_n: int  # network order
    proto: int
    family: int
    port_end: int
    selection: int = 0
    mode: int = 0
    flags: int = 0
    session_timeout: int = 0
    persist_timeout: int = 0
    active: int = 0
    n_allowed: int = 0
    allowed: bytes = b""  # n_allowed packed lb_cidr (zero padded on encode)
    name: bytes = b""  # zero padded on encode
    snat_addr: bytes = bytes(16)  # fullnat source (layout v3); zero: the egress address
    fw_mark: int = 0  # balance only packets marked so by a firewall rule (layout v3); 0: all
    no_backend: int = 0  # enum lb_no_backend (layout v3)
    sctp_peers: bytes = b""  # sctp_peer_vips, sctp_peer_family, n_sctp_peer_vips (layout v4); zero padded

    @classmethod
    def decode(cls, raw: bytes) -> _Conf:
        addr, port_n, proto, family, port_end, sel, mode, flags, st, pt, active, n_allowed = (
            SVC_HDR.unpack_from(raw))
        na = SVC_HDR.size + MAX_ALLOWED * CIDR.size
        return cls(addr, port_n, proto, family, port_end, sel, mode, flags, st, pt, active, n_allowed,
                   allowed=raw[SVC_HDR.size : na], name=raw[na : na + NAME_LEN],
                   snat_addr=raw[na + NAME_LEN : na + NAME_LEN + 16],
                   fw_mark=int.from_bytes(raw[na + NAME_LEN + 16 : na + NAME_LEN + 20] or b"\0", "little"),
                   no_backend=raw[na + NAME_LEN + 20] if len(raw) > na + NAME_LEN + 20 else 0,
                   sctp_peers=raw[na + NAME_LEN + 24 : na + NAME_LEN + 24 + _SCTP_PEERS_SIZE])

    def encode(self) -> bytes:
        hdr = SVC_HDR.pack(self.addr, self.port_n, self.proto, self.family, self.port_end, self.selection,
                            self.mode, self.flags, self.session_timeout, self.persist_timeout, self.active,
                            self.n_allowed)
        allowed = self.allowed + bytes(MAX_ALLOWED * CIDR.size - len(self.allowed))
        raw = (hdr + allowed + self.name + bytes(NAME_LEN - len(self.name)) + self.snat_addr
               + self.fw_mark.to_bytes(4, "little") + bytes([self.no_backend]) + bytes(3)
               + self.sctp_peers.ljust(_SCTP_PEERS_SIZE, b"\0"))
        return raw[:CONF_SIZE]  # a header without snat_addr (layout v2 and older, in tests) ends before it

    def service_key(self) -> ServiceKey:
        return ServiceKey(_addr_str(self.family, self.addr), _PROTO_NAMES.get(self.proto, str(self.proto)),
                          socket.ntohs(self.port_n), self.port_end)

    @property
    def exact(self) -> bool:
        """Published in ``lb_svc`` (one port, or ICMP) rather than in ``lb_range``."""
        return self.proto == 1 or socket.ntohs(self.port_n) == self.port_end

    def range_key(self) -> bytes:
        """The ``lb_range`` key of this service's (VIP, protocol)."""
        return RANGE_KEY.pack(self.addr, self.proto, self.family)

    def service_record(self, key: ServiceKey, faults: Sequence[str] = ()) -> ServiceEntry:
        """The record; values lbctl never writes decode as ``unknown(N)`` (and differ from any config)."""
        allowed = []
        for i in range(min(self.n_allowed, MAX_ALLOWED)):
            addr, _, plen, fam = CIDR.unpack_from(self.allowed, i * CIDR.size)
            allowed.append(f"{_addr_str(fam, addr)}/{plen}")
        return ServiceEntry(
            key=key, name=self.name.split(b"\0", 1)[0].decode(errors="replace"),
            mode=_MODE_NAMES.get(self.mode, f"unknown({self.mode})"),
            selection=_SELECTION_NAMES.get(self.selection, f"unknown({self.selection})"),
            session_timeout=self.session_timeout, persist_timeout=self.persist_timeout,
            allowed_sources=tuple(allowed),
            source_address=_addr_str(self.family, self.snat_addr) if any(self.snat_addr) else "",
            firewall_mark=self.fw_mark,
            no_endpoints=_NO_BACKEND_NAMES.get(self.no_backend, f"unknown({self.no_backend})"),
            sctp_peer_vips=sctp_peers_decode(self.sctp_peers),
            faults=tuple(faults),
        )

    def service_faults(self, raw: bytes, record: ServiceEntry) -> list[str]:
        """What in the ``lb_conf`` value ``raw`` differs from what lbctl writes for ``record``
        and the record's fields cannot show (flag bits, masks, padding, bytes after the name)."""
        faults = []
        if self.flags & ~(F_HAS_SERVICE | F_HAS_ENDPOINTS):
            faults.append(f"lb_conf: unknown flag bits {self.flags:#x}")
        if self.n_allowed > MAX_ALLOWED:
            faults.append(f"lb_conf: {self.n_allowed} allowed sources (at most {MAX_ALLOWED})")
        try:
            want = (_allowed_region(record.allowed_sources) + record.name.encode().ljust(NAME_LEN, b"\0")
                    + snat_bytes(record.source_address) + record.firewall_mark.to_bytes(4, "little")
                    + bytes([NO_BACKEND.get(record.no_endpoints, 0)]) + bytes(3)
                    + sctp_peers_bytes(record.sctp_peer_vips))
        except ValueError:
            want = b""
        if raw[SVC_HDR.size:] != want[: CONF_SIZE - SVC_HDR.size]:
            faults.append("lb_conf: the allowed sources or the name differ from what lbctl writes")
        return faults


@dataclass(slots=True)
class _List:
    """An active endpoint list, decoded; its selection table is read afterwards (in batch)."""

    backends: tuple[Backend, ...]
    stat_ids: tuple[int, ...]
    weights: tuple[int, ...]
    slot: int
    sel_len: int
    sel_kind: int  # enum lb_sel_kind; -1: no list
    faults: list[str]


@dataclass
class _Index:
    """What the driver knows about the maps: built by one pass, kept current by its writes."""

    confs: dict[int, _Conf] = field(default_factory=dict)
    raw: dict[int, bytes] = field(default_factory=dict)  # lb_conf value bytes as in the map
    keys: dict[int, ServiceKey] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)  # str(ServiceKey) -> service id
    eps: dict[int, EndpointSet] = field(default_factory=dict)  # active endpoint set
    stat: dict[int, tuple[int, ...]] = field(default_factory=dict)  # stat id of each backend in eps
    used_stats: set[int] = field(default_factory=set)
    bad_stats: dict[int, set[int]] = field(default_factory=dict)  # stat ids a rewrite must not reuse
    dupes: dict[str, list[int]] = field(default_factory=dict)  # key -> further ids whose lb_conf claims it
    svc_hint: int = 0  # no free service id below this
    stat_hint: int = 0  # no free stat id below this
