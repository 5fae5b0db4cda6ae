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
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler import maglev
from reconciler.constants import BPFFS, DATAPATH_OBJECT, DEFAULT_PIN_ROOT, PROTO_NAMES, PROTO_NUMBERS
from reconciler.drivers import _libbpf as B
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
SELECTIONS = {"rr": 0, "hash": 1, "persist": 2, "lc": 3, "maglev": 4, "priority": 5}
MODES = {"default": 0, "onearm": 1, "fullnat": 2, "dsr": 3}
HOOKS = {"tc": 1, "xdp": 2}
CT_STATES = {0: "active", 1: "syn-sent", 2: "established", 3: "fin-wait", 4: "closed"}
WEIGHTED_TABLE_MAX = 4096
F_HAS_SERVICE = 1
F_HAS_ENDPOINTS = 2


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
_SELECTION_NAMES = {v: k for k, v in SELECTIONS.items()}
_MODE_NAMES = {v: k for k, v in MODES.items()}


# Raw layouts of lb_shared.h used on the hot paths (checked against cffi, and so
# against the object's BTF, by _check_raw_layout()).
_U32 = struct.Struct("<I")
_BE_KEY = struct.Struct("<II")  # struct lb_be_key
_SEL_KEY = struct.Struct("<IHH")  # struct lb_sel_key
_SVC_KEY_TAIL = struct.Struct("<HBB")  # struct lb_svc_key after addr[4]
_LIST_HDR = struct.Struct("<IIII")  # struct lb_backend_list before be[]
_BE = struct.Struct("<16sHBxII")  # struct lb_backend
_SVC_HDR = struct.Struct("<16sHBBHBBIIIII")  # struct lb_service up to allowed[]
_CIDR = struct.Struct("<16s16sBBxx")  # struct lb_cidr
_MAX_ENDPOINTS = 256
_MAX_ALLOWED = 16
_NAME_LEN = 64
_SEL_CHUNK = 512
_SEL_BYTES = 2 * _SEL_CHUNK
_LIST_SIZE = _LIST_HDR.size + _MAX_ENDPOINTS * _BE.size
_CONF_SIZE = _SVC_HDR.size + _MAX_ALLOWED * _CIDR.size + _NAME_LEN
_CT_SVC_OFF, _CT_STAT_OFF, _BE_STAT_OFF = 20, 24, 24  # lb_ct.svc_id, lb_ct.stat_id, lb_backend.stat_id
_ZERO_COUNTERS = bytes(48)  # struct lb_counters
# Order in which buffered writes reach the kernel (see BpfDriver.apply).
_FLUSH_ORDER = ("lb_svc_stats", "lb_rr", "lb_be_stats", "lb_be_conns", "lb_sel", "lb_backends", "lb_conf",
                "lb_svc")
FLUSH_BYTES = 8 << 20


def _check_raw_layout() -> None:
    ffi = B.lib().ffi
    want = {
        ("struct lb_be_key", None): _BE_KEY.size, ("struct lb_sel_key", None): _SEL_KEY.size,
        ("struct lb_svc_key", None): 16 + _SVC_KEY_TAIL.size, ("struct lb_backend", None): _BE.size,
        ("struct lb_backend_list", None): _LIST_SIZE, ("struct lb_backend_list", "be"): _LIST_HDR.size,
        ("struct lb_service", None): _CONF_SIZE, ("struct lb_service", "allowed"): _SVC_HDR.size,
        ("struct lb_service", "name"): _SVC_HDR.size + _MAX_ALLOWED * _CIDR.size,
        ("struct lb_cidr", None): _CIDR.size, ("struct lb_sel_chunk", None): _SEL_BYTES,
        ("struct lb_ct", "svc_id"): _CT_SVC_OFF, ("struct lb_ct", "stat_id"): _CT_STAT_OFF,
        ("struct lb_backend", "stat_id"): _BE_STAT_OFF, ("struct lb_persist", "be"): 0,
        ("struct lb_persist_key", "svc_id"): 0, ("struct lb_counters", None): len(_ZERO_COUNTERS),
        ("struct lb_backend", "port"): 16, ("struct lb_backend", "weight"): 20,
        ("struct lb_service", "active"): 36, ("struct lb_service", "n_allowed"): 40,
    }
    bad = []
    for (st, member), n in want.items():
        got = ffi.sizeof(st) if member is None else ffi.offsetof(st, member)
        if got != n:
            bad.append(f"{st}{'.' + member if member else ''}: {got}, driver assumes {n}")
    consts = {"LB_MAX_ENDPOINTS": _MAX_ENDPOINTS, "LB_MAX_ALLOWED_SOURCES": _MAX_ALLOWED,
              "LB_NAME_LEN": _NAME_LEN, "LB_SEL_CHUNK": _SEL_CHUNK}
    bad += [f"{c}: {B.const(c)}, driver assumes {v}" for c, v in consts.items() if B.const(c) != v]
    if bad:
        raise B.LayoutError("bpf driver raw layout disagrees with lb_shared.h: " + "; ".join(bad))


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


@functools.cache
def _limit(name: str) -> int:
    return B.const(name)


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

    def service_record(self, key: ServiceKey) -> ServiceEntry:
        allowed = []
        for i in range(self.n_allowed):
            addr, _, plen, fam = _CIDR.unpack_from(self.allowed, i * _CIDR.size)
            allowed.append(f"{_addr_str(fam, addr)}/{plen}")
        return ServiceEntry(
            key=key, name=self.name.split(b"\0", 1)[0].decode(), mode=_MODE_NAMES[self.mode],
            selection=_SELECTION_NAMES[self.selection], session_timeout=self.session_timeout,
            persist_timeout=self.persist_timeout, allowed_sources=tuple(allowed),
        )


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

    # ----------------------------------------------------------------- plumbing

    @property
    def writes(self) -> int:
        return self._base_writes + sum(m.writes for m in self._maps.values())

    def _count_write(self, n: int = 1) -> None:
        self._base_writes += n

    def _pins_exist(self) -> bool:
        return all(os.path.exists(os.path.join(self.pin_root, n)) for n in B.MAPS)

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
            _check_raw_layout()
            self._checked = True
        return defs

    def _open(self, create: bool) -> bool:
        """Make map handles available; False when nothing is installed and not create."""
        if self._maps:
            return True
        if self._pins_exist():
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
            return True
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
            _check_raw_layout()
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
        for hook, prog in PROGS.items():
            path = os.path.join(self.pin_root, f"prog_{hook}")
            if os.path.exists(path):
                os.unlink(path)
            B.obj_pin(obj.prog_fd(prog), path)

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

    def _table_raw(self, svc_id: int, slot: int, length: int) -> bytes:
        """The selection table of (service, slot) in the ``EndpointSet.maglev`` format."""
        m = self._maps["lb_sel"]
        parts = []
        for c in range(-(-length // _SEL_CHUNK)):
            v = m.lookup_raw(_SEL_KEY.pack(svc_id, slot, c))
            if v is None:
                raise LbctlError(f"lb_sel chunk {c} of service {svc_id} slot {slot} is missing")
            parts.append(v)
        return b"".join(parts)[: 2 * length]

    def _decode_list(self, svc_id: int, conf: _Conf, key: ServiceKey,
                     raw: bytes | None) -> tuple[EndpointSet, tuple[int, ...]]:
        backends: list[Backend] = []
        stat_ids: list[int] = []
        table = b""
        if raw is not None:
            count, sel_len, sel_kind, _ = _LIST_HDR.unpack_from(raw)
            ntohs, unpack, size = socket.ntohs, _BE.unpack_from, _BE.size
            for i in range(min(count, _MAX_ENDPOINTS)):
                a, port_n, fam, weight, sid = unpack(raw, _LIST_HDR.size + size * i)
                backends.append(Backend(_addr_str(fam, a), ntohs(port_n), weight))
                stat_ids.append(sid)
            if sel_kind == 1:
                table = self._table_raw(svc_id, conf.active, sel_len)
        return EndpointSet(key=key, backends=tuple(backends), maglev=table), tuple(stat_ids)

    def _build_index(self) -> _Index:
        """One pass over the maps: every service, its active endpoint list and stat ids."""
        idx = _Index()
        lm = self._maps["lb_backends"]
        for kb, vb in self._maps["lb_conf"].items_raw():
            svc_id = _U32.unpack(kb)[0]
            conf = _Conf.decode(vb)
            key = conf.service_key()
            idx.confs[svc_id] = conf
            idx.raw[svc_id] = vb
            idx.keys[svc_id] = key
            idx.ids[str(key)] = svc_id
            if conf.flags & F_HAS_ENDPOINTS:
                eps, stat_ids = self._decode_list(svc_id, conf, key,
                                                  lm.lookup_raw(_BE_KEY.pack(svc_id, conf.active)))
                idx.eps[svc_id] = eps
                idx.stat[svc_id] = stat_ids
                idx.used_stats.update(stat_ids)
        while idx.svc_hint in idx.confs:
            idx.svc_hint += 1
        while idx.stat_hint in idx.used_stats:
            idx.stat_hint += 1
        return idx

    # -------------------------------------------------------------------- read

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        out: dict[str, dict[str, Record]] = {"service": {}, "endpoints": {}, "attach": {}}
        if not self._open(create=False):
            self._index = None
            return out
        # The index this read builds is what the next apply() starts from (no second dump).
        idx = self._index = self._build_index()
        for svc_id, conf in idx.confs.items():
            key = idx.keys[svc_id]
            skey = str(key)
            if conf.flags & F_HAS_SERVICE:
                out["service"][skey] = conf.service_record(key)
            if conf.flags & F_HAS_ENDPOINTS:
                out["endpoints"][skey] = idx.eps[svc_id]
        for k, v in self._maps["lb_attach"].items():
            ifname = B.lib().ffi.string(k.ifname).decode()
            hook = {1: "tc", 2: "xdp"}.get(int(v.hook), "?")
            if self._attached_prog(ifname, hook):
                out["attach"][ifname] = Attachment(ifname, hook)
        return out

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
        values, so what was written is checked, not what the driver believes.
        Orphans under ids nobody points at are left to the full ``read()``.
        """
        if kind == "attach":
            return {k: v for k, v in self.read()["attach"].items() if k in keys}
        if kind not in ("service", "endpoints"):
            raise ValueError(f"bpf driver does not own record kind {kind!r}")
        out: dict[str, Record] = {}
        if not keys or not self._open(create=False):
            return out
        if self._index is None:
            self._index = self._build_index()
        flag = F_HAS_SERVICE if kind == "service" else F_HAS_ENDPOINTS
        for skey in keys:
            key = ServiceKey.parse(skey)
            svc_id = self._index.ids.get(skey)
            if svc_id is None:
                svc_id = self._published_id(key)
            raw = None if svc_id is None else self._maps["lb_conf"].lookup_raw(_U32.pack(svc_id))
            if svc_id is None or raw is None:
                continue
            conf = _Conf.decode(raw)
            if conf.service_key() != key or not conf.flags & flag:
                continue
            if kind == "service":
                out[skey] = conf.service_record(key)
            else:
                lst = self._maps["lb_backends"].lookup_raw(_BE_KEY.pack(svc_id, conf.active))
                out[skey] = self._decode_list(svc_id, conf, key, lst)[0]
        return out

    def _published_id(self, key: ServiceKey) -> int | None:
        """The service id the datapath's lookup maps give ``key``, if published."""
        name, k, exact = self._lookup_entries(key)
        found = self._maps[name].lookup(k)
        if found is None:
            return None
        if exact:
            return int(found)
        for r in found.r[0 : int(found.count)]:
            if (int(r.start), int(r.end)) == (key.port, key.port_end):
                return int(r.svc_id)
        return None

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
        return svc_id

    def _alloc_service(self, key: ServiceKey) -> int:
        svc_id = self._service_id(key)
        if svc_id is not None:
            return svc_id
        idx = self._idx
        limit = _limit("LB_MAX_SERVICES")
        svc_id = idx.svc_hint
        while svc_id < limit and svc_id in idx.confs:
            svc_id += 1
        if svc_id >= limit:
            raise LbctlError(f"no free service id (limit {limit})")
        family, addr = _pack_addr(key.vip)
        conf = _Conf(addr=addr, port_n=socket.htons(key.port), proto=_proto_num(key.proto),
                     family=family, port_end=key.port_end)
        # Fresh counters for a fresh id.
        k = _U32.pack(svc_id)
        self._put("lb_svc_stats", k, _ZERO_COUNTERS)
        self._put("lb_rr", k, b"\0\0\0\0")
        idx.confs[svc_id] = conf
        idx.keys[svc_id] = key
        idx.ids[str(key)] = svc_id
        idx.svc_hint = svc_id + 1
        self._touched.add(svc_id)
        return svc_id

    def _alloc_stat(self) -> int:
        idx = self._idx
        limit = _limit("LB_MAX_BACKEND_STATS")
        sid = idx.stat_hint
        while sid < limit and sid in idx.used_stats:
            sid += 1
        if sid >= limit:
            raise LbctlError("no free endpoint counter slot")
        idx.used_stats.add(sid)
        idx.stat_hint = sid + 1
        k = _U32.pack(sid)
        self._put("lb_be_stats", k, _ZERO_COUNTERS)
        self._put("lb_be_conns", k, b"\0" * 8)
        return sid

    def _release_stats(self, stat_ids: Iterable[int]) -> None:
        idx = self._idx
        for sid in stat_ids:
            idx.used_stats.discard(sid)
            idx.stat_hint = min(idx.stat_hint, sid)

    def _write_conf(self, svc_id: int, conf: _Conf) -> None:
        idx = self._idx
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

    def _publish(self, key: ServiceKey, svc_id: int, was_published: bool) -> None:
        if key.port == key.port_end or key.proto in ("icmp", "icmpv6"):
            family, addr = _pack_addr(key.vip)
            k = addr + _SVC_KEY_TAIL.pack(socket.htons(key.port), _proto_num(key.proto), family)
            v = _U32.pack(svc_id)
            if not was_published or self._maps["lb_svc"].lookup_raw(k) != v:
                self._put("lb_svc", k, v)
            return
        self._flush()
        name, k, _ = self._lookup_entries(key)
        m = self._maps[name]
        lst = m.lookup(k)
        ranges = [] if lst is None else [
            (int(lst.r[i].start), int(lst.r[i].end), int(lst.r[i].svc_id)) for i in range(int(lst.count))]
        if (key.port, key.port_end, svc_id) in ranges:
            return
        ranges = [r for r in ranges if r[2] != svc_id] + [(key.port, key.port_end, svc_id)]
        self._write_ranges(m, k, ranges)

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

    def _unpublish(self, key: ServiceKey, svc_id: int) -> None:
        self._flush()
        name, k, exact = self._lookup_entries(key)
        m = self._maps[name]
        if exact:
            if m.lookup(k) == svc_id:
                m.delete(k)
            return
        lst = m.lookup(k)
        if lst is None:
            return
        ranges = [(int(r.start), int(r.end), int(r.svc_id)) for r in lst.r[0 : int(lst.count)]]
        kept = [r for r in ranges if r[2] != svc_id]
        if kept != ranges:
            self._write_ranges(m, k, kept)

    def _apply_service(self, ch: Change) -> None:
        after = ch.after
        key = after.key if isinstance(after, ServiceEntry) else ServiceKey.parse(ch.key)
        if ch.action == "delete" or after is None:
            svc_id = self._service_id(key)
            if svc_id is None:
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
        allowed = []
        for cidr in after.allowed_sources:
            net = ipaddress.ip_network(cidr, strict=False)
            fam, addr = _pack_addr(str(net.network_address))
            _, mask = _pack_addr(str(net.netmask))
            allowed.append(_CIDR.pack(addr, mask, net.prefixlen, fam))
        svc_id = self._alloc_service(key)
        old = self._idx.confs[svc_id]
        new = replace(
            old, flags=old.flags | F_HAS_SERVICE, selection=SELECTIONS[after.selection],
            mode=MODES[after.mode], session_timeout=after.session_timeout,
            persist_timeout=after.persist_timeout, n_allowed=len(allowed), allowed=b"".join(allowed),
            name=name,
        )
        # Configuration first, then the lookup entry that makes it reachable.
        self._write_conf(svc_id, new)
        self._publish(key, svc_id, bool(old.flags & F_HAS_SERVICE))

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
            sel_kind = 1
        else:
            table = _weighted_bytes(tuple(b.weight for b in after.backends))
            sel_kind = 0
        svc_id = self._alloc_service(key)
        conf = idx.confs[svc_id]
        had = bool(conf.flags & F_HAS_ENDPOINTS)
        if had and idx.eps.get(svc_id) == after:
            return
        old_ids: dict[tuple[str, int], int] = {}
        if had:
            old = idx.eps[svc_id].backends
            for b, old_sid in zip(old, idx.stat[svc_id], strict=True):
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
            parts.append(_BE.pack(addr, socket.htons(be.port), fam, be.weight, sid))
        lst = b"".join(parts)
        lst += bytes(_LIST_SIZE - len(lst))
        slot = 1 - conf.active if had else conf.active
        # Write the inactive slot completely, then publish it with one lb_conf swap.
        n = -(-len(table) // _SEL_BYTES)
        if had:
            prev = self._maps["lb_backends"].lookup_raw(_BE_KEY.pack(svc_id, slot))
            if prev is not None:
                old_n = -(-_LIST_HDR.unpack_from(prev)[1] // _SEL_CHUNK)
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
        for c in range(-(-_LIST_HDR.unpack_from(prev)[1] // _SEL_CHUNK)):
            m.delete_raw(_SEL_KEY.pack(svc_id, slot, c))
        lm.delete_raw(k)

    def _purge_flows(self, svc_id: int, stat_ids: set[int] | None) -> None:
        """End flows (both directions) and affinities of removed endpoints or services.

        The next packet of such a flow is a new flow: it goes to a live endpoint,
        which answers a stray TCP segment with RST, so the client sees the flow end.
        """
        for name, id_off, stat_off, id_in_key in (("lb_ct", _CT_SVC_OFF, _CT_STAT_OFF, False),
                                                  ("lb_persist", 0, _BE_STAT_OFF, True)):
            m = self._maps[name]
            doomed = []
            for k, v in m.items_raw():
                sid = _U32.unpack_from(k if id_in_key else v, id_off)[0]
                if sid != svc_id:
                    continue
                if stat_ids is None or _U32.unpack_from(v, stat_off)[0] in stat_ids:
                    doomed.append(k)
            for k in doomed:
                m.delete_raw(k)

    # ------------------------------------------------------------------ attach

    def _apply_attach(self, ch: Change) -> None:
        before, after = ch.before, ch.after
        am = self._maps["lb_attach"]
        ak = am.key()
        ifname = ch.key
        if len(ifname.encode()) >= B.const("LB_IFNAME_LEN"):
            raise LbctlError(f"interface name {ifname!r} too long")
        ak.ifname = ifname.encode()
        cur = am.lookup(ak)
        cur_hook = {1: "tc", 2: "xdp"}.get(int(cur.hook), "") if cur is not None else ""
        if before is not None:
            assert isinstance(before, Attachment)
            cur_hook = cur_hook or before.hook
        if ch.action == "delete" or after is None:
            self._detach(ifname, cur_hook or "tc")
            self._detach(ifname, "xdp" if cur_hook == "tc" else "tc", quiet=True)
            if cur is not None:
                am.delete(ak)
            return
        assert isinstance(after, Attachment)
        if after.hook not in HOOKS:
            raise LbctlError(f"unknown hook {after.hook!r} for {ifname}")
        if cur is not None and cur_hook == after.hook and self._attached_prog(ifname, after.hook):
            return  # already live: idempotent
        if cur_hook and cur_hook != after.hook:
            self._detach(ifname, cur_hook, quiet=True)
        fd = self.prog_fd(after.hook)
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
        self._count_write()
        v = am.value()
        v.ifindex, v.hook, v.prog_id = idx, HOOKS[after.hook], pid
        am.update(ak, v)

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
        closing = B.const("LB_CT_CLOSING_TIMEOUT")
        for k, v in self._maps["lb_ct"].items():
            if int(v.dir) != 0:
                continue
            fam = int(k.family)
            conf = confs.get(int(v.svc_id))
            timeout = int(v.timeout)
            if int(v.state) >= 3:
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
            if int(v.dir) == 0 and int(v.state) < 3 and now - int(v.seen_ns) <= int(v.timeout) * 10**9:
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
