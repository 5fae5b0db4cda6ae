"""The bpf driver: services, endpoint sets and attachments as eBPF maps and programs.

Why this exists: it is the only code that turns ``service``, ``endpoints`` and
``attach`` records into kernel state (and back).  It loads ``lb_kern.o`` through
the small libbpf binding, pins every map and program under a pin root
(``/sys/fs/bpf/lbctl`` or ``/sys/fs/bpf/lbctl/NETNS``) and reuses pinned maps
on restart, so flows and counters survive lbctl restarts and traffic keeps
flowing while no lbctl process runs.

Kernel-internal ids are this module's business and are always derived from the
maps, so a restarted process finds them:

* service id: key of ``lb_conf`` (an ``lb_service`` that remembers its natural
  key); allocated lowest-free when a service or endpoint set first appears;
* endpoint stat id: ``lb_backend.stat_id``, index of ``lb_be_stats`` /
  ``lb_be_conns``; kept for an endpoint (address, port) across updates;
* slot: each endpoint set is written to the *inactive* slot of ``lb_backends``
  / ``lb_sel`` and then published by replacing ``lb_conf`` (one RCU swap), so a
  packet never sees a half-written list.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler import maglev
from reconciler.constants import BPFFS, DATAPATH_OBJECT, DEFAULT_PIN_ROOT, PROTO_NAMES, PROTO_NUMBERS
from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_layout as L
from reconciler.drivers.datapath_files import datapath_file
from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import (
    Attachment,
    Backend,
    EndpointSet,
    Record,
    ServiceEntry,
    ServiceKey,
)

PROGS = {"tc": "lb_tc", "xdp": "lb_xdp"}
SELECTIONS = L.SELECTIONS
MODES = L.MODES
HOOKS = L.HOOKS
CT_STATES = L.CT_STATES
WEIGHTED_TABLE_MAX = 4096  # lbctl's choice: weights are scaled down to a table this long
F_HAS_SERVICE = L.F_HAS_SERVICE
F_HAS_ENDPOINTS = L.F_HAS_ENDPOINTS


def pin_root_for(netns: str | None, root: str = DEFAULT_PIN_ROOT) -> str:
    return os.path.join(root, netns) if netns else root


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
_HOOK_NAMES = {v: k for k, v in HOOKS.items()}
_PROG_TYPES = {"tc": B.BPF_PROG_TYPE_SCHED_CLS, "xdp": B.BPF_PROG_TYPE_XDP}
_ZERO12 = bytes(12)
_ZEROS = bytes(8192)  # longer than any value whose tail must be zero
_SELECTION_NAMES = {v: k for k, v in SELECTIONS.items()}
_MODE_NAMES = {v: k for k, v in MODES.items()}


# The layout of lb_shared.h, derived from cffi (checked against the object's BTF): bpf_layout.
_U32, _BE_KEY, _SEL_KEY, _SVC_KEY_TAIL = L.U32, L.BE_KEY, L.SEL_KEY, L.SVC_KEY_TAIL
_LIST_HDR, _BE, _SVC_HDR, _CIDR = L.LIST_HDR, L.BE, L.SVC_HDR, L.CIDR
_RANGE_HDR, _RANGE, _ATTACH, _RANGE_KEY = L.RANGE_HDR, L.RANGE, L.ATTACH, L.RANGE_KEY
_SVC_KEY_SIZE, _LIST_SIZE, _SEL_BYTES = L.SVC_KEY_SIZE, L.LIST_SIZE, L.SEL_BYTES
_MAX_ENDPOINTS, _MAX_ALLOWED, _NAME_LEN, _SEL_CHUNK = L.MAX_ENDPOINTS, L.MAX_ALLOWED, L.NAME_LEN, L.SEL_CHUNK
_MAX_RANGES, _MAX_SEL_LEN, _MAX_STATS, _IFNAME_LEN = L.MAX_RANGES, L.MAX_SEL_LEN, L.MAX_STATS, L.IFNAME_LEN
_CT_SVC_OFF, _CT_STAT_OFF = L.CT_SVC_OFF, L.CT_STAT_OFF
_ZERO_COUNTERS = L.ZERO_COUNTERS
# Order in which buffered writes reach the kernel (see BpfDriver.apply).
_FLUSH_ORDER = ("lb_svc_stats", "lb_rr", "lb_be_stats", "lb_be_conns", "lb_sel", "lb_backends", "lb_conf",
                "lb_svc")
FLUSH_BYTES = 8 << 20


def _lookup_raw_key(m: B.Map, k: Any) -> bytes:
    """The bytes of a cffi key of map ``m``."""
    return bytes(m.ffi.buffer(k, m.key_size))


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
    count, pad = _RANGE_HDR.unpack_from(raw)
    n = min(count, _MAX_RANGES)
    entries = [_RANGE.unpack_from(raw, _RANGE_HDR.size + i * _RANGE.size) for i in range(n)]
    end = _RANGE_HDR.size + n * _RANGE.size
    if count > _MAX_RANGES:
        return entries, f"lb_range: the list of its VIP holds {count} entries (at most {_MAX_RANGES})"
    if pad or not _zero_from(raw, end):
        return entries, "lb_range: padding or bytes after the last entry of its VIP's list are not zero"
    return entries, None


@functools.lru_cache(maxsize=1024)
def _weighted_chunks(weights: tuple[int, ...]) -> tuple[int, tuple[bytes, ...]]:
    """(table length, the ``lb_sel`` chunk values) lbctl writes for a weighted table (zero padded)."""
    table = _weighted_bytes(weights)
    chunks = tuple(table[c : c + _SEL_BYTES].ljust(_SEL_BYTES, b"\0")
                   for c in range(0, len(table), _SEL_BYTES))
    return len(table) // 2, chunks


def _zero_from(raw: bytes, start: int) -> bool:
    """Whether every byte of ``raw`` from ``start`` on is zero (a slice compare: ~10x ``count``)."""
    return raw.endswith(_ZEROS[: len(raw) - start])


@functools.lru_cache(maxsize=4096)
def _allowed_region(sources: tuple[str, ...]) -> bytes:
    """``lb_service.allowed[]`` as lbctl writes it for ``sources`` (masked address, mask, zero padded)."""
    if len(sources) > _MAX_ALLOWED:
        raise ValueError(f"more than {_MAX_ALLOWED} allowed sources")
    parts = []
    for cidr in sources:
        net = ipaddress.ip_network(cidr, strict=False)
        fam, addr = _pack_addr(str(net.network_address))
        _, mask = _pack_addr(str(net.netmask))
        parts.append(_CIDR.pack(addr, mask, net.prefixlen, fam))
    return b"".join(parts).ljust(_MAX_ALLOWED * _CIDR.size, b"\0")


def _canon(address: str) -> str:
    return _addr_str(*_pack_addr(address))


def _addr_str(family: int, raw: bytes) -> str:
    """Canonical text (as ``ipaddress``) of a 16-byte addr[4]."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return _addr_str6(raw[:16])


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

    @classmethod
    def decode(cls, raw: bytes) -> _Conf:
        addr, port_n, proto, family, port_end, sel, mode, flags, st, pt, active, n_allowed = (
            _SVC_HDR.unpack_from(raw))
        na = _SVC_HDR.size + _MAX_ALLOWED * _CIDR.size
        return cls(addr, port_n, proto, family, port_end, sel, mode, flags, st, pt, active, n_allowed,
                   allowed=raw[_SVC_HDR.size : na], name=raw[na : na + _NAME_LEN])

    def encode(self) -> bytes:
        hdr = _SVC_HDR.pack(self.addr, self.port_n, self.proto, self.family, self.port_end, self.selection,
                            self.mode, self.flags, self.session_timeout, self.persist_timeout, self.active,
                            self.n_allowed)
        allowed = self.allowed + bytes(_MAX_ALLOWED * _CIDR.size - len(self.allowed))
        return hdr + allowed + self.name + bytes(_NAME_LEN - len(self.name))

    def service_key(self) -> ServiceKey:
        return ServiceKey(_addr_str(self.family, self.addr), _PROTO_NAMES.get(self.proto, str(self.proto)),
                          socket.ntohs(self.port_n), self.port_end)

    @property
    def exact(self) -> bool:
        """Published in ``lb_svc`` (one port, or ICMP) rather than in ``lb_range``."""
        return self.proto == 1 or socket.ntohs(self.port_n) == self.port_end

    def range_key(self) -> bytes:
        """The ``lb_range`` key of this service's (VIP, protocol)."""
        return _RANGE_KEY.pack(self.addr, self.proto, self.family)

    def service_record(self, key: ServiceKey, faults: Sequence[str] = ()) -> ServiceEntry:
        """The record; values lbctl never writes decode as ``unknown(N)`` (and differ from any config)."""
        allowed = []
        for i in range(min(self.n_allowed, _MAX_ALLOWED)):
            addr, _, plen, fam = _CIDR.unpack_from(self.allowed, i * _CIDR.size)
            allowed.append(f"{_addr_str(fam, addr)}/{plen}")
        return ServiceEntry(
            key=key, name=self.name.split(b"\0", 1)[0].decode(errors="replace"),
            mode=_MODE_NAMES.get(self.mode, f"unknown({self.mode})"),
            selection=_SELECTION_NAMES.get(self.selection, f"unknown({self.selection})"),
            session_timeout=self.session_timeout, persist_timeout=self.persist_timeout,
            allowed_sources=tuple(allowed), faults=tuple(faults),
        )

    def service_faults(self, raw: bytes, record: ServiceEntry) -> list[str]:
        """What in the ``lb_conf`` value ``raw`` differs from what lbctl writes for ``record``
        and the record's fields cannot show (flag bits, masks, padding, bytes after the name)."""
        faults = []
        if self.flags & ~(F_HAS_SERVICE | F_HAS_ENDPOINTS):
            faults.append(f"lb_conf: unknown flag bits {self.flags:#x}")
        if self.n_allowed > _MAX_ALLOWED:
            faults.append(f"lb_conf: {self.n_allowed} allowed sources (at most {_MAX_ALLOWED})")
        try:
            want = _allowed_region(record.allowed_sources) + record.name.encode().ljust(_NAME_LEN, b"\0")
        except ValueError:
            want = b""
        if raw[_SVC_HDR.size:] != want:
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


def _ensure_bpffs() -> None:
    with open("/proc/mounts", encoding="ascii") as fh:
        if any(ln.split()[1] == BPFFS and ln.split()[2] == "bpf" for ln in fh if len(ln.split()) > 2):
            return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise LbctlError(
            f"bpffs is not mounted at {BPFFS} and mounting it failed: {os.strerror(err)}",
            f"mount it: mount -t bpf bpf {BPFFS} (needs root)",
        )


@dataclass
class Counters:
    packets: int = 0
    bytes: int = 0
    reply_packets: int = 0
    reply_bytes: int = 0
    new_flows: int = 0
    drops: int = 0


@dataclass
class Flow:
    proto: str
    client: str
    client_port: int
    vip: str
    vip_port: int
    backend: str
    backend_port: int
    service: str
    state: str
    age_s: float
    idle_s: float
    expired: bool


class BpfDriver:
    """Driver for record kinds ``service``, ``endpoints`` and ``attach``."""

    kinds = frozenset({"service", "endpoints", "attach"})

    def __init__(
        self, pin_root: str | None = None, netns: str | None = None, obj_path: str | None = None
    ) -> None:
        self.netns = netns
        self.pin_root = pin_root or pin_root_for(netns)
        self.obj_path = obj_path or datapath_file(DATAPATH_OBJECT)
        self._obj: B.BpfObject | None = None
        self._maps: dict[str, B.Map] = {}
        self._own_fds: list[int] = []
        self._base_writes = 0
        self._checked = False
        self._index: _Index | None = None
        self._pend: dict[str, dict[bytes, bytes]] = {}
        self._pend_bytes = 0
        self._touched: set[int] = set()
        self._purge: dict[int, set[int] | None] = {}  # service id -> stat ids whose flows end (None: all)
        self._held_stats: set[int] = set()  # released this apply: not reused before their flows end
        self._pins: tuple[tuple[int, int], ...] | None = None  # (dev, inode) of each map pin opened
        self._map_ids: frozenset[int] | None = None
        self.reopened = 0  # times the handles were dropped because the pins had been replaced

    # ----------------------------------------------------------------- plumbing

    @property
    def writes(self) -> int:
        return self._base_writes + sum(m.writes for m in self._maps.values())

    def _count_write(self, n: int = 1) -> None:
        self._base_writes += n

    def _pins_exist(self) -> bool:
        return all(os.path.exists(os.path.join(self.pin_root, n)) for n in B.MAPS)

    def _pin_inodes(self) -> tuple[tuple[int, int], ...] | None:
        """(device, inode) of every map pin; None when one is missing.  A pin removed and
        made again (``lbctl down`` then ``lbctl apply``) is a new inode on bpffs."""
        out = []
        for name in B.MAPS:
            try:
                st = os.stat(os.path.join(self.pin_root, name))
            except OSError:
                return None
            out.append((st.st_dev, st.st_ino))
        return tuple(out)

    def revalidate(self) -> bool:
        """Drop the map handles if the pins are no longer the maps they were opened from.

        Another process may have removed the pins and made new ones (``lbctl down``
        then ``lbctl apply`` while the daemon runs): writes through the old handles
        would go to orphaned maps the datapath no longer uses.  Returns True when
        the handles were dropped (the next call reopens the pins, or finds none).
        Costs one ``stat`` per map; ``read``, ``read_keys`` and ``apply`` call it.
        """
        if not self._maps or self._pin_inodes() == self._pins:
            return False
        self.close()
        self.reopened += 1
        return True

    def _check_layout(self) -> dict[str, tuple[int, int, int, int]]:
        """Check the object against lb_shared.h; its map definitions (for the pins)."""
        obj = B.BpfObject(self.obj_path)
        try:
            if not self._checked:
                obj.check_layout()
            defs = {name: obj.map_def(name) for name in B.MAPS}
        finally:
            obj.close()
        if not self._checked:
            self._checked = True
        return defs

    def _open(self, create: bool) -> bool:
        """Make map handles available; False when nothing is installed and not create."""
        if self._maps:
            return True
        for _attempt in range(3):
            before = self._pin_inodes()
            if before is None:
                break
            defs = self._check_layout()
            try:
                for name, spec in B.MAPS.items():
                    path = os.path.join(self.pin_root, name)
                    fd = B.obj_get(path)
                    self._own_fds.append(fd)
                    B.check_pinned_map(name, path, fd, defs[name])
                    self._maps[name] = B.Map(name, fd, spec)
            except BaseException:
                self.close()
                raise
            if self._pin_inodes() == before:
                self._pins = before
                return True
            self.close()  # the pins changed while we opened them: open them again
        if not create:
            return False
        self.load()
        return True

    def load(self) -> None:
        """Load the object (reusing pinned maps), pin maps and programs."""
        if self._obj is not None:
            return
        _ensure_bpffs()
        os.makedirs(self.pin_root, exist_ok=True)
        obj = B.BpfObject(self.obj_path)
        try:
            obj.check_layout()
            self._checked = True
            obj.check_pins(self.pin_root)
            obj.set_pin_root(self.pin_root)
            obj.load(tuple(PROGS.values()))
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        for m in self._maps.values():
            self._base_writes += m.writes
        for fd in self._own_fds:
            os.close(fd)
        self._own_fds = []
        self._maps = {name: B.Map(name, obj.map_fd(name), spec) for name, spec in B.MAPS.items()}
        self._pins = self._pin_inodes()
        self._map_ids = None
        self._pin_progs()

    def _pin_progs(self) -> None:
        """Pin the loaded object's programs, replacing what the program pins held."""
        assert self._obj is not None
        for hook, prog in PROGS.items():
            path = os.path.join(self.pin_root, f"prog_{hook}")
            if os.path.lexists(path):
                os.unlink(path)
            B.obj_pin(self._obj.prog_fd(prog), path)

    def prog_fd(self, hook: str) -> int:
        self.load()
        assert self._obj is not None
        return self._obj.prog_fd(PROGS[hook])

    def map(self, name: str) -> B.Map:
        self._open(create=True)
        return self._maps[name]

    def close(self) -> None:
        for fd in self._own_fds:
            os.close(fd)
        self._own_fds = []
        for m in self._maps.values():
            self._base_writes += m.writes
        self._maps = {}
        self._index = None
        self._pins = None
        self._map_ids = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> BpfDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


    def _confs(self) -> dict[int, Any]:
        return {int(k): v for k, v in self._maps["lb_conf"].items()}

    @staticmethod
    def _conf_key(conf: Any) -> ServiceKey:
        k = conf.key
        family = int(k.family)
        port = socket.ntohs(int(k.port))
        return ServiceKey(_words_addr(family, k.addr), _PROTO_NAMES.get(int(k.proto), str(int(k.proto))),
                          port, int(conf.port_end))

    def _list(self, svc_id: int, slot: int) -> Any | None:
        bk = self._maps["lb_backends"].key(svc_id=svc_id, slot=slot)
        return self._maps["lb_backends"].lookup(bk)

    @staticmethod
    def _table_raw(get: ChunkGetter, svc_id: int, slot: int, length: int) -> tuple[bytes, list[str]]:
        """The selection table of (service, slot) in the ``EndpointSet.maglev`` format, and its faults."""
        if length > _MAX_SEL_LEN:
            return b"", [f"lb_backends: selection table length {length} (at most {_MAX_SEL_LEN})"]
        parts = []
        for c in range(-(-length // _SEL_CHUNK)):
            v = get(_SEL_KEY.pack(svc_id, slot, c))
            if v is None:
                return b"", [f"lb_sel: chunk {c} of the selection table (slot {slot}) is missing"]
            parts.append(v)
        table = b"".join(parts)
        used = 2 * length
        if not _zero_from(table, used):
            return table[:used], ["lb_sel: bytes after the end of the selection table are not zero"]
        return table[:used], []

    @staticmethod
    def _check_weighted(get: ChunkGetter, svc_id: int, slot: int, sel_len: int,
                        weights: tuple[int, ...]) -> list[str]:
        """Faults of a weighted selection table: it must be exactly what the weights give."""
        length, want = _weighted_chunks(weights)
        if sel_len != length:
            return [f"lb_backends: selection table length {sel_len}, the weights give {length}"]
        for c, chunk in enumerate(want):
            got = get(_SEL_KEY.pack(svc_id, slot, c))
            if got is None:
                return [f"lb_sel: chunk {c} of the selection table (slot {slot}) is missing"]
            if got != chunk:
                return [f"lb_sel: chunk {c} of the selection table (slot {slot}) differs from what the "
                        "endpoint weights give"]
        return []

    @staticmethod
    def _parse_list(conf: _Conf, raw: bytes | None) -> _List:
        """The active endpoint list ``raw`` decoded, with what is wrong in it (its table not read yet)."""
        backends: list[Backend] = []
        stat_ids: list[int] = []
        weights: list[int] = []
        faults: list[str] = []
        slot = conf.active & 1
        if conf.active > 1:
            faults.append(f"lb_conf: active slot {conf.active} (0 or 1; the datapath reads {slot})")
        if raw is None:
            faults.append(f"lb_backends: the active endpoint list (slot {slot}) is missing")
            return _List((), (), (), slot, 0, -1, faults)
        count, sel_len, sel_kind, hpad = _LIST_HDR.unpack_from(raw)
        if count > _MAX_ENDPOINTS or sel_kind not in (L.SELTAB_WEIGHTED, L.SELTAB_MAGLEV) or hpad:
            faults.append(f"lb_backends: bad list header (count {count}, table kind {sel_kind}, pad {hpad})")
        n = min(count, _MAX_ENDPOINTS)
        end = _LIST_HDR.size + _BE.size * n
        ntohs, ntop, inet4 = socket.ntohs, socket.inet_ntop, socket.AF_INET
        bad = 0
        for a, port_n, fam, pad, weight, sid in _BE.iter_unpack(raw[_LIST_HDR.size : end]):
            if fam == 4:
                addr = ntop(inet4, a[:4])
                bad += pad != 0 or not a.endswith(_ZERO12)
            else:
                addr = _addr_str6(a)
                bad += pad != 0 or fam != 6
            backends.append(Backend(addr, ntohs(port_n), weight))
            stat_ids.append(sid)
            weights.append(weight)
        if bad:
            faults.append(f"lb_backends: {bad} endpoint(s) with a bad address family or padding")
        if not _zero_from(raw, end):
            faults.append("lb_backends: bytes after the last endpoint are not zero")
        if stat_ids and max(stat_ids) >= _MAX_STATS:
            faults.append(f"lb_backends: counter slot {max(stat_ids)} is out of range")
        return _List(tuple(backends), tuple(stat_ids), tuple(weights), slot, sel_len, sel_kind, faults)

    def _finish_list(self, svc_id: int, key: ServiceKey, lst: _List, get: ChunkGetter) -> EndpointSet:
        """The record of a parsed list, once its selection table is read (``get``: lb_sel by key)."""
        table = b""
        faults = lst.faults
        if lst.sel_kind == L.SELTAB_MAGLEV:
            table, bad_table = self._table_raw(get, svc_id, lst.slot, lst.sel_len)
            faults = faults + bad_table
        elif lst.sel_kind == L.SELTAB_WEIGHTED:
            length, want = _weighted_chunks(lst.weights)
            if lst.sel_len != length or len(want) > 1 or (want and get(_SEL_KEY.pack(svc_id, lst.slot, 0))
                                                          != want[0]):  # one chunk: no call
                faults = faults + self._check_weighted(get, svc_id, lst.slot, lst.sel_len, lst.weights)
        return EndpointSet(key=key, backends=lst.backends, maglev=table, faults=tuple(faults))

    def _decode_list(self, svc_id: int, conf: _Conf, key: ServiceKey,
                     raw: bytes | None) -> tuple[EndpointSet, tuple[int, ...]]:
        """The active endpoint list ``raw`` as a record, its table read by point lookups."""
        lst = self._parse_list(conf, raw)
        return self._finish_list(svc_id, key, lst, self._maps["lb_sel"].lookup_raw), lst.stat_ids

    def _build_index(self) -> _Index:
        """One pass over the maps: every service, its active endpoint list and stat ids.

        Also finds what is wrong behind the records (``faults``): bytes of lb_conf,
        lb_backends and lb_sel that differ from what lbctl writes, two ids claiming
        one key, counter slots out of range or shared between services.
        """
        idx = _Index()
        lm = self._maps["lb_backends"]
        counted = 0
        lists: dict[int, _List] = {}
        for kb, vb in self._maps["lb_conf"].items_raw():
            svc_id = _U32.unpack(kb)[0]
            conf = _Conf.decode(vb)
            key = conf.service_key()
            skey = str(key)
            if skey in idx.ids:  # corrupt: a second id claims a key (resolved below)
                idx.dupes.setdefault(skey, []).append(svc_id)
            idx.confs[svc_id] = conf
            idx.raw[svc_id] = vb
            idx.keys[svc_id] = key
            idx.ids.setdefault(skey, svc_id)
            if conf.flags & F_HAS_ENDPOINTS:
                lists[svc_id] = self._parse_list(conf, lm.lookup_raw(_BE_KEY.pack(svc_id, conf.active & 1)))
        for skey, extra in idx.dupes.items():
            # The id the lookup entry points at stays (its flows go on), else the lowest.
            claims = sorted([idx.ids[skey], *extra])
            published = self._published_id(idx.keys[claims[0]])
            keep = published if published in claims else claims[0]
            idx.dupes[skey] = [i for i in claims if i != keep]
            for svc_id in idx.dupes[skey]:
                self._forget(idx, svc_id)
            idx.ids[skey] = keep
        chunks = self._active_chunks(lists)
        for svc_id, lst in lists.items():
            if svc_id in idx.confs:
                eps = self._finish_list(svc_id, idx.keys[svc_id], lst, chunks.get)
                stat_ids = lst.stat_ids
                idx.eps[svc_id] = eps
                idx.stat[svc_id] = stat_ids
                counted += len(stat_ids)
                idx.used_stats.update(stat_ids)
                if eps.faults and stat_ids and max(stat_ids) >= _MAX_STATS:
                    idx.bad_stats[svc_id] = {s for s in stat_ids if s >= _MAX_STATS}
        if counted != len(idx.used_stats):  # some slot is listed twice: shared, or one endpoint twice
            self._shared_stats(idx)
        while idx.svc_hint in idx.confs:
            idx.svc_hint += 1
        while idx.stat_hint in idx.used_stats:
            idx.stat_hint += 1
        return idx

    @staticmethod
    def _shared_stats(idx: _Index) -> None:
        """Fault the endpoint sets whose counter slots another endpoint uses too (lbctl gives
        each (service, address, port) its own; an endpoint listed twice shares its one)."""
        owners: dict[int, set[tuple[int, str, int]]] = {}
        for svc_id, stat_ids in idx.stat.items():
            for b, sid in zip(idx.eps[svc_id].backends, stat_ids, strict=True):
                owners.setdefault(sid, set()).add((svc_id, b.address, b.port))
        shared: dict[int, set[int]] = {}
        for sid, users in owners.items():
            if len(users) > 1:
                for svc_id, _, _ in users:
                    shared.setdefault(svc_id, set()).add(sid)
        for svc_id, sids in shared.items():
            idx.bad_stats.setdefault(svc_id, set()).update(sids)
            eps = idx.eps[svc_id]
            idx.eps[svc_id] = replace(eps, faults=eps.faults + (
                f"lb_backends: counter slot(s) {', '.join(map(str, sorted(sids)))} shared with another "
                "endpoint",))

    def _active_chunks(self, lists: Mapping[int, _List]) -> dict[bytes, bytes]:
        """The lb_sel chunks of the active tables of ``lists`` (service id -> its active list).

        One batch dump of lb_sel, keeping only those chunks: on the development VM a
        point lookup per chunk cost ~10 us, a dumped entry ~1 us.  A weighted chunk
        equal to what lbctl writes is kept as the shared expected value, so the
        dump adds no memory per service (10,000 tables would be 10 MB).
        """
        want: dict[bytes, bytes | None] = {}  # key -> the expected chunk, None: keep what is there
        for svc_id, lst in lists.items():
            if lst.sel_kind < 0:
                continue
            expected = _weighted_chunks(lst.weights)[1] if lst.sel_kind == L.SELTAB_WEIGHTED else ()
            for c in range(-(-min(lst.sel_len, _MAX_SEL_LEN) // _SEL_CHUNK)):
                want[_SEL_KEY.pack(svc_id, lst.slot, c)] = expected[c] if c < len(expected) else None
        out: dict[bytes, bytes] = {}
        if want:
            for k, v in self._maps["lb_sel"].items_raw():
                if k in want:
                    e = want[k]
                    out[k] = e if e is not None and e == v else v
        return out

    @staticmethod
    def _forget(idx: _Index, svc_id: int) -> None:
        idx.confs.pop(svc_id, None)
        idx.raw.pop(svc_id, None)
        idx.keys.pop(svc_id, None)
        idx.eps.pop(svc_id, None)
        idx.stat.pop(svc_id, None)

    # -------------------------------------------------------------------- read
    #
    # The live read covers every entry lbctl owns, so that any difference from
    # what lbctl wrote shows in the plan: lb_conf (decoded into the records; other
    # bytes compared with lbctl's encoding), the active lb_backends list and its
    # lb_sel table (Maglev tables in the record, weighted tables compared with
    # what the weights give), lb_svc/lb_range (every entry must be the one that
    # publishes its service; others are strays), lb_attach and the program on
    # each hook.  What the records cannot show becomes ``faults``.  Not covered:
    # counters, conntrack and affinities (the datapath's own state), the idle
    # slot (rewritten whole before it is published) and entries under ids no
    # lookup reaches (they cannot affect traffic).

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        out: dict[str, dict[str, Record]] = {"service": {}, "endpoints": {}, "attach": {}}
        self.revalidate()
        if not self._open(create=False):
            self._index = None
            return out
        # The index this read builds is what the next apply() starts from (no second dump).
        idx = self._index = self._build_index()
        services: dict[str, ServiceEntry] = {}
        faults: dict[str, list[str]] = {}
        for svc_id, conf in idx.confs.items():
            key = idx.keys[svc_id]
            skey = str(key)
            if conf.flags & F_HAS_SERVICE:
                rec = conf.service_record(key)
                services[skey] = rec
                found = conf.service_faults(idx.raw[svc_id], rec)
                if skey in idx.dupes:
                    found.append(_dupes_fault([svc_id, *idx.dupes[skey]]))
                if found:
                    faults[skey] = found
            if conf.flags & F_HAS_ENDPOINTS:
                out["endpoints"][skey] = idx.eps[svc_id]
        strays = self._audit_lookups(idx, services, faults)
        for skey, rec in services.items():
            out["service"][skey] = replace(rec, faults=tuple(faults[skey])) if skey in faults else rec
        out["service"].update(strays)
        out["attach"] = self._read_attach()
        return out

    def _conf_of(self, svc_id: int) -> _Conf | None:
        """The kernel's lb_conf value of ``svc_id`` (a point lookup)."""
        raw = self._maps["lb_conf"].lookup_raw(_U32.pack(svc_id))
        return None if raw is None else _Conf.decode(raw)

    @staticmethod
    def _stray(key: ServiceKey, conf: _Conf | None, why: str) -> ServiceEntry:
        """A lookup entry no service owns, as a record of its key (with the settings of the
        service it points at, if any); its fault makes it differ from any configuration."""
        if conf is not None:
            return conf.service_record(key, (why,))
        return ServiceEntry(key, "", "default", "rr", 0, 0, faults=(why,))

    def _audit_lookups(self, idx: _Index, services: Mapping[str, ServiceEntry],
                       faults: dict[str, list[str]]) -> dict[str, ServiceEntry]:
        """Check lb_svc and lb_range against the services (two batch dumps, no per-service call).

        Every published service must have its entry, pointing at its id; every
        other entry is a stray, returned as a record of its key.  Faults of
        published services are added to ``faults``.
        """
        exact: dict[bytes, int] = {}
        ranged: dict[tuple[bytes, int, int], int] = {}
        for skey in services:
            svc_id = idx.ids[skey]
            conf = idx.confs[svc_id]
            if conf.exact:
                exact[idx.raw[svc_id][:_SVC_KEY_SIZE]] = svc_id
            else:
                ranged[(conf.range_key(), socket.ntohs(conf.port_n), conf.port_end)] = svc_id
        strays: dict[str, ServiceEntry] = {}

        def stray(key: ServiceKey, svc_id: int, where: str) -> None:
            skey = str(key)
            if skey in services:
                faults.setdefault(skey, []).append(f"{where}: another entry for its ports points at service "
                                                   f"id {svc_id}")
            elif skey in strays:
                more = f"{where}: another entry points at service id {svc_id}"
                if _stray_fault(where, svc_id) not in strays[skey].faults and more not in strays[skey].faults:
                    strays[skey] = replace(strays[skey], faults=strays[skey].faults + (more,))
            else:
                strays[skey] = self._stray(key, self._conf_of(svc_id), _stray_fault(where, svc_id))

        for kb, vb in self._maps["lb_svc"].items_raw():
            want = exact.pop(kb, None)
            got = _U32.unpack(vb)[0]
            if want is None:
                addr, (port_n, proto, family) = kb[:16], _SVC_KEY_TAIL.unpack_from(kb, 16)
                port = socket.ntohs(port_n)
                key = ServiceKey(_addr_str(family, addr), _PROTO_NAMES.get(proto, str(proto)), port, port)
                stray(key, got, "lb_svc")
            elif got != want:
                faults.setdefault(str(idx.keys[want]), []).append(
                    f"lb_svc: its entry points at service id {got}, not {want}")
        for svc_id in exact.values():
            faults.setdefault(str(idx.keys[svc_id]), []).append(
                "lb_svc: no entry for it (its packets are not balanced)")
        for kb, vb in self._maps["lb_range"].items_raw():
            addr, proto, family = _RANGE_KEY.unpack(kb)
            entries, bad = _range_entries(vb)
            owners = []
            for start, end, got in entries:
                key = ServiceKey(_addr_str(family, addr), _PROTO_NAMES.get(proto, str(proto)), start, end)
                want = ranged.pop((kb, start, end), None)
                if want is None:
                    stray(key, got, "lb_range")
                elif got != want:
                    faults.setdefault(str(key), []).append(
                        f"lb_range: its entry points at service id {got}, not {want}")
                else:
                    owners.append(str(key))
            if bad is not None:
                for skey in owners:
                    faults.setdefault(skey, []).append(bad)
        for svc_id in ranged.values():
            faults.setdefault(str(idx.keys[svc_id]), []).append(
                "lb_range: no entry for its ports (its packets are not balanced)")
        return strays

    @staticmethod
    def unsupported(record: Record) -> str | None:
        """What this datapath does not (yet) carry out of ``record``, for the operator's warnings."""
        if not isinstance(record, ServiceEntry):
            return None
        if record.key.proto == "sctp":
            return "SCTP is not balanced yet: its packets go to the kernel untouched"
        if record.mode != "default":
            return f"mode {record.mode} is not implemented yet: forwarded as plain DNAT"
        return None

    def read_keys(self, kind: str, keys: Collection[str]) -> Mapping[str, Record]:
        """Live records of just ``keys``, by point lookups (the daemon's incremental verify).

        Service ids come from the driver's index (kept current by its own writes) or,
        for a key the index does not know, from the published lookup entry; every
        record is then decoded from the kernel's ``lb_conf`` and ``lb_backends``
        values, so what was written is checked, not what the driver believes.  The
        faults are those ``read()`` finds for the key, except counter slots shared
        with other services (that needs every list).  Orphans under ids nobody
        points at are left to the full ``read()``.
        """
        if kind == "attach":
            return {k: v for k, v in self.read()["attach"].items() if k in keys}
        if kind not in ("service", "endpoints"):
            raise ValueError(f"bpf driver does not own record kind {kind!r}")
        out: dict[str, Record] = {}
        self.revalidate()
        if not keys or not self._open(create=False):
            return out
        if self._index is None:
            self._index = self._build_index()
        flag = F_HAS_SERVICE if kind == "service" else F_HAS_ENDPOINTS
        for skey in keys:
            key = ServiceKey.parse(skey)
            svc_id = self._index.ids.get(skey)
            published = self._published_id(key)
            if svc_id is None:
                svc_id = published
            raw = None if svc_id is None else self._maps["lb_conf"].lookup_raw(_U32.pack(svc_id))
            conf = None if raw is None else _Conf.decode(raw)
            if conf is None or svc_id is None or conf.service_key() != key or not conf.flags & flag:
                stray = self._stray_entry(key, published) if kind == "service" else None
                if stray is not None:
                    where, target_id = stray
                    out[skey] = self._stray(key, self._conf_of(target_id), _stray_fault(where, target_id))
                continue
            if kind == "service":
                rec = conf.service_record(key)
                found = conf.service_faults(raw or b"", rec)
                if skey in self._index.dupes:
                    found.append(_dupes_fault([svc_id, *self._index.dupes[skey]]))
                found += self._publish_faults(key, svc_id, published)
                out[skey] = replace(rec, faults=tuple(found)) if found else rec
            else:
                lst = self._maps["lb_backends"].lookup_raw(_BE_KEY.pack(svc_id, conf.active & 1))
                out[skey] = self._decode_list(svc_id, conf, key, lst)[0]
        return out

    def _stray_entry(self, key: ServiceKey, published: int | None) -> tuple[str, int] | None:
        """(map, service id) of a lookup entry for ``key``: its own map's, else a range entry
        for exactly its one port (``read()`` finds both kinds of stray)."""
        where = self._lookup_entries(key)[0]
        if published is not None:
            return where, published
        if where != "lb_svc" or key.proto in ("icmp", "icmpv6"):
            return None
        family, addr = _pack_addr(key.vip)
        raw = self._maps["lb_range"].lookup_raw(_RANGE_KEY.pack(addr, _proto_num(key.proto), family))
        for start, end, svc_id in _range_entries(raw or b"")[0]:
            if (start, end) == (key.port, key.port_end):
                return "lb_range", svc_id
        return None

    def _publish_faults(self, key: ServiceKey, svc_id: int, published: int | None) -> list[str]:
        """``read()``'s faults of one service's lookup entry (by point lookups)."""
        name, k, exact = self._lookup_entries(key)
        if published is None:
            return [f"{name}: no entry for {'it' if exact else 'its ports'} (its packets are not balanced)"]
        found = []
        if published != svc_id:
            found.append(f"{name}: its entry points at service id {published}, not {svc_id}")
        if not exact:
            family, addr = _pack_addr(key.vip)
            raw = self._maps["lb_range"].lookup_raw(_RANGE_KEY.pack(addr, _proto_num(key.proto), family))
            entries, bad = _range_entries(raw or b"")
            if bad:
                found.append(bad)
            others = [sid for start, end, sid in entries if (start, end) == (key.port, key.port_end)]
            if len(others) > 1:
                found += [f"lb_range: another entry for its ports points at service id {sid}"
                          for sid in others[1:]]
        return found

    def _published_id(self, key: ServiceKey) -> int | None:
        """The service id the datapath's lookup maps give ``key``, if published."""
        name, k, exact = self._lookup_entries(key)
        found = self._maps[name].lookup(k)
        if found is None:
            return None
        if exact:
            return int(found)
        for r in found.r[0 : min(int(found.count), _MAX_RANGES)]:
            if (int(r.start), int(r.end)) == (key.port, key.port_end):
                return int(r.svc_id)
        return None

    # ------------------------------------------------------------ attachments

    def _our_map_ids(self) -> frozenset[int]:
        if self._map_ids is None:
            self._map_ids = frozenset(B.map_id(m.fd) for m in self._maps.values())
        return self._map_ids

    def _pinned_prog(self, hook: str) -> tuple[int, B.ProgInfo] | str:
        """An fd of lbctl's pinned program for ``hook`` (the caller closes it) and who it is;
        or why there is none: the pin is missing, or holds a program that is not lbctl's
        ``lb_tc``/``lb_xdp`` on this pin root's maps."""
        path = os.path.join(self.pin_root, f"prog_{hook}")
        try:
            fd = B.obj_get(path)
        except B.BpfError as exc:
            return f"lbctl's pinned program {path} cannot be opened ({os.strerror(exc.errno)})"
        try:
            info = B.prog_info(fd)
        except B.BpfError:
            os.close(fd)
            return f"{path} is not a program"
        if (info.type, info.name) != (_PROG_TYPES[hook], PROGS[hook]) or not info.map_ids \
                or not info.map_ids <= self._our_map_ids():
            os.close(fd)
            return (f"{path} holds {info.name or 'a program'} (id {info.id}), not lbctl's {PROGS[hook]} "
                    "on its maps")
        return fd, info

    @staticmethod
    def _program_fault(hook: str, attached: int, ref: B.ProgInfo | str) -> str | None:
        """Why the program ``attached`` on ``hook`` is not lbctl's, or None when it is.

        lbctl's program is the pinned one; another load of the same code on the same
        maps (same tag, name and map ids: an older lbctl attach) counts as lbctl's.
        """
        if isinstance(ref, str):
            return ref
        if attached == ref.id:
            return None
        info = B.prog_info_by_id(attached)
        if info is not None and info.same_code_and_maps(ref):
            return None
        if info is None:
            what = f"program id {attached}, which is gone"
        elif (info.name, info.tag) == (ref.name, ref.tag):
            what = f"a {info.name} (id {info.id}) on other maps than lbctl's pins"
        else:
            what = f"{info.name or 'a program without a name'} (id {info.id}, tag {info.tag})"
        return f"the {hook} hook runs {what}, not lbctl's {ref.name} (id {ref.id}, tag {ref.tag})"

    def _read_attach(self) -> dict[str, Record]:
        """Attachments recorded in lb_attach whose hook holds a program, with their faults."""
        out: dict[str, Record] = {}
        refs: dict[str, B.ProgInfo | str] = {}
        for kb, vb in self._maps["lb_attach"].items_raw():
            rec = self._attachment(kb.split(b"\0", 1)[0].decode(errors="replace"), kb, vb, refs)
            if rec is not None:
                out[rec.ifname] = rec
        return out

    def _attachment(self, ifname: str, kb: bytes, vb: bytes,
                    refs: dict[str, B.ProgInfo | str] | None = None) -> Attachment | None:
        """The live attachment of one lb_attach entry: None when its hook holds no program;
        faults when the hook runs another program or the entry disagrees with the hook.
        ``refs`` caches lbctl's pinned programs across calls."""
        ifindex, hook_n, prog_id, pad = _ATTACH.unpack(vb)
        faults = []
        with in_netns(self.netns):
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                return None
            hook = _HOOK_NAMES.get(hook_n)
            if hook is None:
                faults.append(f"lb_attach: unknown hook {hook_n}")
                hook = "tc" if B.tc_query(idx) else "xdp"
            attached = B.tc_query(idx) if hook == "tc" else B.xdp_query(idx)
        if not attached:
            return None
        if ifindex != idx:
            faults.append(f"lb_attach: records ifindex {ifindex}, {ifname} is {idx}")
        if prog_id != attached:
            faults.append(f"lb_attach: records program id {prog_id}, the hook runs {attached}")
        name_len = len(ifname.encode())
        if pad or not _zero_from(kb, name_len):
            faults.append("lb_attach: padding is not zero")
        refs = {} if refs is None else refs
        if hook not in refs:
            got = self._pinned_prog(hook)
            if isinstance(got, str):
                refs[hook] = got
            else:
                os.close(got[0])
                refs[hook] = got[1]
        bad = self._program_fault(hook, attached, refs[hook])
        if bad is not None:
            faults.append(bad)
        return Attachment(ifname, hook, tuple(faults))

    def _attached_prog(self, ifname: str, hook: str) -> int:
        with in_netns(self.netns):
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                return 0
            return B.tc_query(idx) if hook == "tc" else B.xdp_query(idx)

    # ------------------------------------------------------------------- apply
    #
    # Writes are buffered per map and flushed with BPF_MAP_UPDATE_BATCH in a fixed
    # order (counters, then inactive-slot lists and tables, then lb_conf swaps, then
    # lookup entries), which keeps every service's own order: a packet never finds a
    # service whose configuration, list or table is not written yet.  Anything that
    # deletes or must read back first flushes the buffer.  The service/stat-id state
    # comes from the index of the last read() (or one dump); touched services are
    # checked against lb_conf, and the index is dropped on any failure.

    def apply(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        self._open(create=True)
        if self._index is None:
            self._index = self._build_index()
        self._pend = {}
        self._pend_bytes = 0
        self._touched = set()
        self._purge = {}
        self._held_stats = set()
        ok = False
        try:
            for ch in changes:
                if ch.kind == "service":
                    self._apply_service(ch)
                elif ch.kind == "endpoints":
                    self._apply_endpoints(ch)
                elif ch.kind == "attach":
                    self._flush()
                    self._apply_attach(ch)
                else:
                    raise LbctlError(f"bpf driver cannot apply record kind {ch.kind!r}")
                if self._pend_bytes > FLUSH_BYTES:
                    self._flush()
            ok = True
        finally:
            try:
                self._flush()
                self._end_flows()
            finally:
                if not ok:
                    self._index = None

    @property
    def _idx(self) -> _Index:
        assert self._index is not None
        return self._index

    def _put(self, name: str, key: bytes, value: bytes) -> None:
        self._pend.setdefault(name, {})[key] = value
        self._pend_bytes += len(key) + len(value)

    def _flush(self) -> None:
        pend, self._pend, self._pend_bytes = self._pend, {}, 0
        try:
            for name in _FLUSH_ORDER:
                items = pend.get(name)
                if items:
                    self._maps[name].update_batch_raw(list(items.items()))
        except Exception:
            self._index = None
            raise

    def _validate(self, svc_id: int) -> None:
        """Check one service of the index against lb_conf; rebuild the index if it drifted."""
        if svc_id in self._touched:
            return
        self._touched.add(svc_id)
        if self._maps["lb_conf"].lookup_raw(_U32.pack(svc_id)) != self._idx.raw.get(svc_id):
            self._flush()
            self._index = self._build_index()
            self._touched = set()

    def _service_id(self, key: ServiceKey) -> int | None:
        skey = str(key)
        svc_id = self._idx.ids.get(skey)
        if svc_id is not None:
            self._validate(svc_id)
            svc_id = self._idx.ids.get(skey)
        if skey in self._idx.dupes:
            self._drop_dupes(skey)
        return svc_id

    def _drop_dupes(self, skey: str) -> None:
        """Remove the further ids whose lb_conf claims ``skey`` (found by a read; lbctl never writes them)."""
        self._flush()
        for svc_id in self._idx.dupes.pop(skey, []):
            if svc_id in self._idx.confs:  # it became a live service of its own meanwhile
                continue
            self._maps["lb_conf"].delete_raw(_U32.pack(svc_id))
            for slot in (0, 1):
                self._delete_slot(svc_id, slot)
            self._purge_flows(svc_id, None)

    def _alloc_service(self, key: ServiceKey) -> int:
        svc_id = self._service_id(key)
        if svc_id is not None:
            return svc_id
        idx = self._idx
        limit = L.MAX_SERVICES
        svc_id = idx.svc_hint
        while svc_id < limit and (svc_id in idx.confs or svc_id in self._purge):
            svc_id += 1
        if svc_id >= limit:
            raise LbctlError(f"no free service id (limit {limit})")
        family, addr = _pack_addr(key.vip)
        conf = _Conf(addr=addr, port_n=socket.htons(key.port), proto=_proto_num(key.proto),
                     family=family, port_end=key.port_end)
        # Fresh counters for a fresh id.
        k = _U32.pack(svc_id)
        self._put("lb_svc_stats", k, _ZERO_COUNTERS)
        self._put("lb_rr", k, L.ZERO_RR)
        idx.confs[svc_id] = conf
        idx.keys[svc_id] = key
        idx.ids[str(key)] = svc_id
        idx.svc_hint = svc_id + 1
        self._touched.add(svc_id)
        return svc_id

    def _alloc_stat(self) -> int:
        idx = self._idx
        limit = L.MAX_STATS
        sid = idx.stat_hint
        while sid < limit and (sid in idx.used_stats or sid in self._held_stats):
            sid += 1
        if sid >= limit:
            raise LbctlError("no free endpoint counter slot")
        idx.used_stats.add(sid)
        idx.stat_hint = sid + 1
        k = _U32.pack(sid)
        self._put("lb_be_stats", k, _ZERO_COUNTERS)
        self._put("lb_be_conns", k, L.ZERO_CONNS)
        return sid

    def _release_stats(self, stat_ids: Iterable[int]) -> None:
        idx = self._idx
        for sid in stat_ids:
            idx.used_stats.discard(sid)
            self._held_stats.add(sid)
            idx.stat_hint = min(idx.stat_hint, sid)

    def _write_conf(self, svc_id: int, conf: _Conf) -> None:
        idx = self._idx
        if conf.flags & ~(F_HAS_SERVICE | F_HAS_ENDPOINTS) or conf.active > 1:  # repairing a corrupt value
            conf = replace(conf, flags=conf.flags & (F_HAS_SERVICE | F_HAS_ENDPOINTS), active=conf.active & 1)
        raw = conf.encode()
        idx.confs[svc_id] = conf
        if idx.raw.get(svc_id) == raw:
            return
        idx.raw[svc_id] = raw
        self._put("lb_conf", _U32.pack(svc_id), raw)

    def _drop_conf_if_empty(self, svc_id: int, conf: _Conf) -> None:
        if conf.flags & (F_HAS_SERVICE | F_HAS_ENDPOINTS):
            self._write_conf(svc_id, conf)
            return
        idx = self._idx
        self._flush()
        self._maps["lb_conf"].delete_raw(_U32.pack(svc_id))
        idx.confs.pop(svc_id, None)
        idx.raw.pop(svc_id, None)
        key = idx.keys.pop(svc_id, None)
        if key is not None:
            idx.ids.pop(str(key), None)
        idx.svc_hint = min(idx.svc_hint, svc_id)
        self._purge_flows(svc_id, None)

    def _lookup_entries(self, key: ServiceKey) -> tuple[Any, Any, bool]:
        family, words = _addr_words(key.vip)
        if key.port == key.port_end or key.proto in ("icmp", "icmpv6"):
            k = self._maps["lb_svc"].key(
                port=socket.htons(key.port), proto=_proto_num(key.proto), family=family)
            _set_words(k.addr, words)
            return "lb_svc", k, True
        k = self._maps["lb_range"].key(proto=_proto_num(key.proto), family=family)
        _set_words(k.addr, words)
        return "lb_range", k, False

    def _publish(self, key: ServiceKey, svc_id: int, was_published: bool, repair: bool = False) -> None:
        """Make the lookup entry of ``key`` point at ``svc_id``.  ``repair``: the read found the
        entry faulty: rewrite the range list whole and drop other entries for the same ports."""
        if key.port == key.port_end or key.proto in ("icmp", "icmpv6"):
            family, addr = _pack_addr(key.vip)
            k = addr + _SVC_KEY_TAIL.pack(socket.htons(key.port), _proto_num(key.proto), family)
            v = _U32.pack(svc_id)
            if not was_published or repair or self._maps["lb_svc"].lookup_raw(k) != v:
                self._put("lb_svc", k, v)
            if repair and key.proto not in ("icmp", "icmpv6"):
                self._flush()
                self._unpublish_range(key, None)  # a stray range entry for exactly this port
            return
        self._flush()
        name, k, _ = self._lookup_entries(key)
        m = self._maps[name]
        entries, bad = _range_entries(m.lookup_raw(_lookup_raw_key(m, k)) or b"")
        if (key.port, key.port_end, svc_id) in entries and not repair and bad is None:
            return
        ranges = [r for r in entries if r[2] != svc_id and (r[0], r[1]) != (key.port, key.port_end)]
        if repair or bad is not None:  # keep only the entries of other live services
            ranges = [r for r in ranges if self._owns_range(key, r)]
        self._write_ranges(m, k, ranges + [(key.port, key.port_end, svc_id)])

    def _owns_range(self, key: ServiceKey, entry: tuple[int, int, int]) -> bool:
        """Whether ``entry`` of ``key``'s range list publishes a service of the index."""
        start, end, svc_id = entry
        conf = self._idx.confs.get(svc_id)
        return conf is not None and bool(conf.flags & F_HAS_SERVICE) and not conf.exact \
            and self._idx.ids.get(str(ServiceKey(key.vip, key.proto, start, end))) == svc_id

    def _write_ranges(self, m: B.Map, k: Any, ranges: list[tuple[int, int, int]]) -> None:
        if not ranges:
            m.delete(k)
            return
        limit = B.const("LB_MAX_RANGES")
        if len(ranges) > limit:
            raise LbctlError(f"more than {limit} port-range services on one VIP and protocol")
        v = m.value()
        v.count = len(ranges)
        for i, (a, b, sid) in enumerate(sorted(ranges)):
            v.r[i].start, v.r[i].end, v.r[i].svc_id = a, b, sid
        m.update(k, v)

    def _unpublish(self, key: ServiceKey, svc_id: int | None) -> None:
        """Remove the lookup entry of ``key`` (whatever it points at: the key is this service's)."""
        self._flush()
        name, k, exact = self._lookup_entries(key)
        if exact:
            self._maps[name].delete(k)
            return
        self._unpublish_range(key, svc_id)

    def _unpublish_range(self, key: ServiceKey, svc_id: int | None) -> None:
        """Drop the ``lb_range`` entries for exactly ``key``'s ports and those of ``svc_id``."""
        family, words = _addr_words(key.vip)
        m = self._maps["lb_range"]
        k = m.key(proto=_proto_num(key.proto), family=family)
        _set_words(k.addr, words)
        entries, bad = _range_entries(m.lookup_raw(_lookup_raw_key(m, k)) or b"")
        kept = [r for r in entries if r[2] != svc_id and (r[0], r[1]) != (key.port, key.port_end)]
        if bad is not None:
            kept = [r for r in kept if self._owns_range(key, r)]
        if kept != entries or bad is not None:
            self._write_ranges(m, k, kept)

    def _apply_service(self, ch: Change) -> None:
        after = ch.after
        key = after.key if isinstance(after, ServiceEntry) else ServiceKey.parse(ch.key)
        if ch.action == "delete" or after is None:
            svc_id = self._service_id(key)
            if svc_id is None:  # stray lookup entries (no service holds the key): remove them all
                self._unpublish(key, None)
                if key.proto not in ("icmp", "icmpv6"):
                    self._unpublish_range(key, None)
                return
            conf = self._idx.confs[svc_id]
            self._unpublish(key, svc_id)
            self._drop_conf_if_empty(svc_id, replace(conf, flags=conf.flags & ~F_HAS_SERVICE))
            return
        assert isinstance(after, ServiceEntry)
        name = after.name.encode()
        if len(name) >= B.const("LB_NAME_LEN"):
            raise LbctlError(f"service name {after.name!r} is longer than {B.const('LB_NAME_LEN') - 1} bytes")
        limit = B.const("LB_MAX_ALLOWED_SOURCES")
        if len(after.allowed_sources) > limit:
            raise LbctlError(f"service {after.name}: more than {limit} allowed sources")
        n_allowed = len(after.allowed_sources)
        allowed = _allowed_region(after.allowed_sources)[: n_allowed * _CIDR.size]
        svc_id = self._alloc_service(key)
        old = self._idx.confs[svc_id]
        new = replace(
            old, flags=old.flags | F_HAS_SERVICE, selection=SELECTIONS[after.selection],
            mode=MODES[after.mode], session_timeout=after.session_timeout,
            persist_timeout=after.persist_timeout, n_allowed=n_allowed, allowed=allowed,
            name=name,
        )
        # Configuration first, then the lookup entry that makes it reachable.
        self._write_conf(svc_id, new)
        repair = isinstance(ch.before, ServiceEntry) and bool(ch.before.faults)
        self._publish(key, svc_id, bool(old.flags & F_HAS_SERVICE), repair)

    def _apply_endpoints(self, ch: Change) -> None:
        after = ch.after
        key = after.key if isinstance(after, EndpointSet) else ServiceKey.parse(ch.key)
        idx = self._idx
        if ch.action == "delete" or after is None:
            svc_id = self._service_id(key)
            if svc_id is None:
                return
            conf = replace(idx.confs[svc_id], flags=idx.confs[svc_id].flags & ~F_HAS_ENDPOINTS)
            self._write_conf(svc_id, conf)
            self._flush()
            for slot in (0, 1):
                self._delete_slot(svc_id, slot)
            idx.eps.pop(svc_id, None)
            freed = idx.stat.pop(svc_id, ())
            self._drop_conf_if_empty(svc_id, conf)
            self._purge_flows(svc_id, None)
            self._release_stats(freed)
            return
        assert isinstance(after, EndpointSet)
        if len(after.backends) > _MAX_ENDPOINTS:
            raise LbctlError(f"{key}: more than {_MAX_ENDPOINTS} endpoints")
        if after.maglev:
            table = after.maglev
            if max(maglev.unpack(table)) >= len(after.backends):
                raise LbctlError(f"{key}: maglev table points past the endpoint list")
            sel_kind = L.SELTAB_MAGLEV
        else:
            table = _weighted_bytes(tuple(b.weight for b in after.backends))
            sel_kind = L.SELTAB_WEIGHTED
        svc_id = self._alloc_service(key)
        conf = idx.confs[svc_id]
        had = bool(conf.flags & F_HAS_ENDPOINTS)
        if had and idx.eps.get(svc_id) == after:
            return
        old_ids: dict[tuple[str, int], int] = {}
        if had:
            old = idx.eps[svc_id].backends
            bad = idx.bad_stats.pop(svc_id, set())
            for b, old_sid in zip(old, idx.stat[svc_id], strict=True):
                if old_sid not in bad:
                    old_ids[(_canon(b.address), b.port)] = old_sid
        stat_ids: dict[tuple[str, int], int] = {}
        parts = [_LIST_HDR.pack(len(after.backends), len(table) // 2, sel_kind, 0)]
        for be in after.backends:
            fam, addr = _pack_addr(be.address)
            ident = (_addr_str(fam, addr), be.port)
            sid = stat_ids.get(ident, old_ids.get(ident, -1))
            if sid < 0:
                sid = self._alloc_stat()
            stat_ids[ident] = sid
            parts.append(_BE.pack(addr, socket.htons(be.port), fam, 0, be.weight, sid))
        lst = b"".join(parts)
        lst += bytes(_LIST_SIZE - len(lst))
        slot = 1 - (conf.active & 1) if had else conf.active & 1
        # Write the inactive slot completely, then publish it with one lb_conf swap.
        n = -(-len(table) // _SEL_BYTES)
        if had:
            prev = self._maps["lb_backends"].lookup_raw(_BE_KEY.pack(svc_id, slot))
            if prev is not None:
                old_n = -(-min(_LIST_HDR.unpack_from(prev)[1], _MAX_SEL_LEN) // _SEL_CHUNK)
                for c in range(n, old_n):
                    self._maps["lb_sel"].delete_raw(_SEL_KEY.pack(svc_id, slot, c))
        for c in range(n):
            part = table[c * _SEL_BYTES : (c + 1) * _SEL_BYTES]
            self._put("lb_sel", _SEL_KEY.pack(svc_id, slot, c), part + bytes(_SEL_BYTES - len(part)))
        self._put("lb_backends", _BE_KEY.pack(svc_id, slot), lst)
        self._write_conf(svc_id, replace(conf, active=slot, flags=conf.flags | F_HAS_ENDPOINTS))
        idx.eps[svc_id] = after
        idx.stat[svc_id] = tuple(stat_ids[(_canon(b.address), b.port)] for b in after.backends)
        gone = {sid for ident, sid in old_ids.items() if ident not in stat_ids}
        if gone:
            self._flush()
            self._purge_flows(svc_id, gone)
            self._release_stats(gone)

    def _delete_slot(self, svc_id: int, slot: int) -> None:
        lm = self._maps["lb_backends"]
        k = _BE_KEY.pack(svc_id, slot)
        prev = lm.lookup_raw(k)
        if prev is None:
            return
        m = self._maps["lb_sel"]
        for c in range(-(-min(_LIST_HDR.unpack_from(prev)[1], _MAX_SEL_LEN) // _SEL_CHUNK)):
            m.delete_raw(_SEL_KEY.pack(svc_id, slot, c))
        lm.delete_raw(k)

    def _purge_flows(self, svc_id: int, stat_ids: set[int] | None) -> None:
        """End the flows of service ``svc_id`` to ``stat_ids`` (None: all its flows) when this
        apply ends (``_end_flows``).  Until then the service id and the stat ids are not
        given to anything else, so no new flow can be taken for one that must end."""
        if stat_ids is None or (svc_id in self._purge and self._purge[svc_id] is None):
            self._purge[svc_id] = None
        else:
            self._purge[svc_id] = (self._purge.get(svc_id) or set()) | stat_ids

    def _end_flows(self) -> None:
        """End flows (both directions) and affinities of the removed endpoints and services of
        this apply: one pass over lb_ct and one over lb_persist, whatever their number.

        The next packet of such a flow is a new flow: it goes to a live endpoint,
        which answers a stray TCP segment with RST, so the client sees the flow end.
        """
        purge, self._purge = self._purge, {}
        held, self._held_stats = self._held_stats, set()
        if self._index is not None:  # the ids held back may be given out again
            self._index.svc_hint = min([self._index.svc_hint, *purge])
            self._index.stat_hint = min([self._index.stat_hint, *held])
        if not purge:
            return
        whole = {svc for svc, stats in purge.items() if stats is None}
        part = {svc: stats for svc, stats in purge.items() if stats is not None}
        unpack = _U32.unpack_from
        for name, id_off, stat_off, id_in_key in (
                ("lb_ct", _CT_SVC_OFF, _CT_STAT_OFF, False),
                ("lb_persist", L.PERSIST_SVC_OFF, L.PERSIST_STAT_OFF, True)):
            m = self._maps[name]
            doomed = []
            for k, v in m.items_raw():
                svc = unpack(k if id_in_key else v, id_off)[0]
                if svc in whole:
                    doomed.append(k)
                elif svc in part and unpack(v, stat_off)[0] in part[svc]:
                    doomed.append(k)
            m.delete_batch_raw(doomed)

    # ------------------------------------------------------------------ attach

    def _apply_attach(self, ch: Change) -> None:
        before, after = ch.before, ch.after
        ifname = ch.key
        if len(ifname.encode()) >= B.const("LB_IFNAME_LEN"):
            raise LbctlError(f"interface name {ifname!r} too long")
        kb = ifname.encode().ljust(_IFNAME_LEN, b"\0")
        cur = self._maps["lb_attach"].lookup_raw(kb)
        cur_hook = _HOOK_NAMES.get(_ATTACH.unpack(cur)[1], "") if cur is not None else ""
        if before is not None:
            assert isinstance(before, Attachment)
            cur_hook = cur_hook or before.hook
        if ch.action == "delete" or after is None:
            self._detach(ifname, cur_hook or "tc")
            self._detach(ifname, "xdp" if cur_hook == "tc" else "tc", quiet=True)
            if cur is not None:
                self._maps["lb_attach"].delete_raw(kb)
            return
        assert isinstance(after, Attachment)
        if after.hook not in HOOKS:
            raise LbctlError(f"unknown hook {after.hook!r} for {ifname}")
        if cur is not None and self._attachment(ifname, kb, cur) == Attachment(ifname, after.hook):
            return  # already live, lbctl's program, bookkeeping right: idempotent
        if cur_hook and cur_hook != after.hook:
            self._detach(ifname, cur_hook, quiet=True)
        fd, owned = self._attach_fd(after.hook)
        try:
            with in_netns(self.netns):
                try:
                    idx = socket.if_nametoindex(ifname)
                except OSError:
                    where = f" in netns {self.netns}" if self.netns else ""
                    raise LbctlError(f"interface {ifname} not found{where}",
                                     "check the Datapath resource's interfaces") from None
                if after.hook == "tc":
                    pid = B.tc_attach(idx, ifname, fd)
                else:
                    old = B.xdp_query(idx)
                    old_fd = B.prog_fd_by_id(old) if old else -1
                    try:
                        B.xdp_attach(idx, ifname, fd, old_fd)
                    finally:
                        if old_fd >= 0:
                            os.close(old_fd)
                    pid = B.xdp_query(idx)
        finally:
            if owned:
                os.close(fd)
        self._count_write()
        # Fetched only now: loading the object (_attach_fd) replaces the map handles.
        am = self._maps["lb_attach"]
        ak = am.key()
        ak.ifname = ifname.encode()
        v = am.value()
        v.ifindex, v.hook, v.prog_id = idx, HOOKS[after.hook], pid
        am.update(ak, v)

    def _attach_fd(self, hook: str) -> tuple[int, bool]:
        """An fd of lbctl's program for ``hook``, and whether the caller closes it.

        The pinned program when it is lbctl's (nothing is loaded, and every
        interface runs the same program); else this process's loaded object,
        whose programs are pinned again (the pins are what reads compare hooks
        with); else the object is loaded now (reusing the pinned maps) and pinned.
        """
        got = self._pinned_prog(hook)
        if not isinstance(got, str):
            return got[0], True
        if self._obj is None:
            self.load()
        else:
            self._pin_progs()
        assert self._obj is not None
        return self._obj.prog_fd(PROGS[hook]), False

    def _detach(self, ifname: str, hook: str, quiet: bool = False) -> None:
        with in_netns(self.netns):
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                return
            try:
                if hook == "tc":
                    if B.tc_query(idx):
                        B.tc_detach(idx, ifname)
                        self._count_write()
                elif B.xdp_query(idx):
                    B.xdp_detach(idx, ifname)
                    self._count_write()
            except B.BpfError:
                if not quiet:
                    raise

    # ---------------------------------------------------------- for lbctl get

    def stats(self) -> dict[str, int]:
        """Global datapath counters (enum lb_stat), summed over CPUs."""
        if not self._open(create=False):
            return {}
        ffi = B.lib().ffi
        names = [n for n in dir(B.lib().lib) if n.startswith("LB_STAT_") and n != "LB_STAT_MAX"]
        out = {}
        m = self._maps["lb_stats"]
        for n in names:
            vals = m.lookup(B.const(n)) or []
            out[n[len("LB_STAT_"):].lower()] = sum(int(v) for v in vals)
        del ffi
        return out

    @staticmethod
    def _sum(vals: Iterable[Any]) -> Counters:
        c = Counters()
        for v in vals:
            c.packets += int(v.packets)
            c.bytes += int(v.bytes)
            c.reply_packets += int(v.reply_packets)
            c.reply_bytes += int(v.reply_bytes)
            c.new_flows += int(v.new_flows)
            c.drops += int(v.drops)
        return c

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per service key: {"service": Counters, "endpoints": {"addr:port": Counters}}."""
        out: dict[str, dict[str, Any]] = {}
        if not self._open(create=False):
            return out
        for svc_id, conf in self._confs().items():
            entry: dict[str, Any] = {"service": self._sum(self._maps["lb_svc_stats"].lookup(svc_id) or []),
                                     "endpoints": {}}
            if int(conf.flags) & F_HAS_ENDPOINTS:
                lst = self._list(svc_id, int(conf.active))
                for b in lst.be[0 : int(lst.count)] if lst is not None else []:
                    addr = _words_addr(int(b.family), b.addr)
                    host = f"[{addr}]" if ":" in addr else addr
                    c = self._sum(self._maps["lb_be_stats"].lookup(int(b.stat_id)) or [])
                    entry["endpoints"][f"{host}:{socket.ntohs(int(b.port))}"] = c
            out[str(self._conf_key(conf))] = entry
        return out

    def conntrack(self) -> list[Flow]:
        """Forward conntrack entries (one per flow) with state and ages."""
        flows: list[Flow] = []
        if not self._open(create=False):
            return flows
        confs = self._confs()
        now = time.monotonic_ns()
        closing = L.CT_CLOSING_TIMEOUT
        for k, v in self._maps["lb_ct"].items():
            if int(v.dir) != L.CT_FORWARD:
                continue
            fam = int(k.family)
            conf = confs.get(int(v.svc_id))
            timeout = int(v.timeout)
            if int(v.state) >= L.CT_FIN_WAIT:
                timeout = min(timeout, closing)
            idle = max(0, now - int(v.seen_ns)) / 1e9
            flows.append(Flow(
                proto=_PROTO_NAMES.get(int(k.proto), str(int(k.proto))),
                client=_words_addr(fam, k.saddr), client_port=socket.ntohs(int(k.sport)),
                vip=_words_addr(fam, k.daddr), vip_port=socket.ntohs(int(k.dport)),
                backend=_words_addr(fam, v.nat_addr), backend_port=socket.ntohs(int(v.nat_port)),
                service=str(self._conf_key(conf)) if conf is not None else "?",
                state=CT_STATES.get(int(v.state), "?"),
                age_s=max(0, now - int(v.created_ns)) / 1e9, idle_s=idle, expired=idle > timeout,
            ))
        return flows

    def sync_conn_counts(self) -> None:
        """Recompute least-connection counts from live conntrack (fixes LRU-evicted drift)."""
        if not self._open(create=False):
            return
        counts: dict[int, int] = {}
        now = time.monotonic_ns()
        for _, v in self._maps["lb_ct"].items():
            live = now - int(v.seen_ns) <= int(v.timeout) * 10**9
            if int(v.dir) == L.CT_FORWARD and int(v.state) < L.CT_FIN_WAIT and live:
                counts[int(v.stat_id)] = counts.get(int(v.stat_id), 0) + 1
        m = self._maps["lb_be_conns"]
        idx = self._index if self._index is not None else self._build_index()
        for sid in sorted(idx.used_stats):
            if (m.lookup(sid) or 0) != counts.get(sid, 0):
                m.update(sid, counts.get(sid, 0))

    # -------------------------------------------------------------------- down

    def down(self) -> None:
        """Detach lbctl's programs and remove lbctl's pins under this pin root, whatever their layout.

        Neither the object file nor the pinned maps' layout is consulted (pins of an lbctl with
        another layout must still come off): every interface of the namespace is asked which
        program sits in lbctl's tc slot and on its XDP hook, and one of lbctl's (a pinned
        program, or one named after an entry point) is detached.
        """
        self.close()
        ours: set[int] = set()
        for hook in PROGS:
            path = os.path.join(self.pin_root, f"prog_{hook}")
            if not os.path.exists(path):
                continue
            try:
                fd = B.obj_get(path)
            except B.BpfError:
                continue  # not a program: nothing of ours to recognise by id
            try:
                ours.add(B.prog_id(fd))
            finally:
                os.close(fd)

        def is_ours(pid: int) -> bool:
            return pid in ours or B.prog_name(pid) in PROGS.values()

        with in_netns(self.netns):
            for ifindex, ifname in socket.if_nameindex():
                if (pid := B.tc_query(ifindex)) and is_ours(pid):
                    B.tc_detach(ifindex, ifname)
                    self._count_write()
                if (pid := B.xdp_query(ifindex)) and is_ours(pid):
                    B.xdp_detach(ifindex, ifname)
                    self._count_write()
        if os.path.isdir(self.pin_root):
            for name in os.listdir(self.pin_root):
                path = os.path.join(self.pin_root, name)
                # lbctl's names, of this layout or another; directories are other boxes' pin roots
                if name.startswith(("lb_", "prog_")) and not os.path.isdir(path):
                    os.unlink(path)
            try:
                os.rmdir(self.pin_root)
            except OSError:
                pass  # other boxes' subdirectories live here
