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
import ipaddress
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler import maglev
from reconciler.drivers import _libbpf as B
from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import (
    PROTO_NUMBERS,
    Attachment,
    Backend,
    EndpointSet,
    Record,
    ServiceEntry,
    ServiceKey,
)

DEFAULT_PIN_ROOT = "/sys/fs/bpf/lbctl"
BPFFS = "/sys/fs/bpf"
PROGS = {"tc": "lb_tc", "xdp": "lb_xdp"}
SELECTIONS = {"rr": 0, "hash": 1, "persist": 2, "lc": 3, "maglev": 4, "priority": 5}
MODES = {"default": 0, "onearm": 1, "fullnat": 2, "dsr": 3}
HOOKS = {"tc": 1, "xdp": 2}
CT_STATES = {0: "active", 1: "syn-sent", 2: "established", 3: "fin-wait", 4: "closed"}
WEIGHTED_TABLE_MAX = 4096
F_HAS_SERVICE = 1
F_HAS_ENDPOINTS = 2


def default_object_path() -> str:
    env = os.environ.get("LBCTL_BPF_OBJECT")
    if env:
        return env
    for cand in (os.path.join(B.REPO, "build", "bpf", "lb_kern.o"), "/usr/lib/lbctl/lb_kern.o"):
        if os.path.exists(cand):
            return cand
    return os.path.join(B.REPO, "build", "bpf", "lb_kern.o")


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


_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp"}


def _ensure_bpffs() -> None:
    with open("/proc/mounts", encoding="ascii") as fh:
        if any(ln.split()[1] == BPFFS and ln.split()[2] == "bpf" for ln in fh if len(ln.split()) > 2):
            return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", BPFFS.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise LbctlError(
            f"bpffs is not mounted at {BPFFS} and mounting it failed: {os.strerror(err)}",
            "mount it: mount -t bpf bpf /sys/fs/bpf (needs root)",
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
        self.obj_path = obj_path or default_object_path()
        self._obj: B.BpfObject | None = None
        self._maps: dict[str, B.Map] = {}
        self._own_fds: list[int] = []
        self._base_writes = 0
        self._checked = False
        self._used_stats: set[int] | None = None
        self._svc_hint = 0
        self._stat_hint = 0

    # ----------------------------------------------------------------- plumbing

    @property
    def writes(self) -> int:
        return self._base_writes + sum(m.writes for m in self._maps.values())

    def _count_write(self, n: int = 1) -> None:
        self._base_writes += n

    def _pins_exist(self) -> bool:
        return all(os.path.exists(os.path.join(self.pin_root, n)) for n in B.MAPS)

    def _check_layout(self) -> None:
        if self._checked:
            return
        obj = B.BpfObject(self.obj_path)
        try:
            obj.check_layout()
        finally:
            obj.close()
        self._checked = True

    def _open(self, create: bool) -> bool:
        """Make map handles available; False when nothing is installed and not create."""
        if self._maps:
            return True
        if self._pins_exist():
            self._check_layout()
            for name, spec in B.MAPS.items():
                fd = B.obj_get(os.path.join(self.pin_root, name))
                self._own_fds.append(fd)
                self._maps[name] = B.Map(name, fd, spec)
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
        obj.check_layout()
        self._checked = True
        obj.set_pin_root(self.pin_root)
        obj.load(tuple(PROGS.values()))
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
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> BpfDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- decoding

    def _confs(self) -> dict[int, Any]:
        return {int(k): v for k, v in self._maps["lb_conf"].items()}

    @staticmethod
    def _conf_key(conf: Any) -> ServiceKey:
        k = conf.key
        family = int(k.family)
        port = socket.ntohs(int(k.port))
        return ServiceKey(_words_addr(family, k.addr), _PROTO_NAMES.get(int(k.proto), str(int(k.proto))),
                          port, int(conf.port_end))

    def _service_record(self, conf: Any) -> ServiceEntry:
        ffi = B.lib().ffi
        sel = {v: k for k, v in SELECTIONS.items()}[int(conf.selection)]
        mode = {v: k for k, v in MODES.items()}[int(conf.mode)]
        allowed = []
        for i in range(int(conf.n_allowed)):
            c = conf.allowed[i]
            allowed.append(f"{_words_addr(int(c.family), c.addr)}/{int(c.prefixlen)}")
        return ServiceEntry(
            key=self._conf_key(conf),
            name=ffi.string(conf.name).decode(),
            mode=mode,
            selection=sel,
            session_timeout=int(conf.session_timeout),
            persist_timeout=int(conf.persist_timeout),
            allowed_sources=tuple(allowed),
        )

    def _list(self, svc_id: int, slot: int) -> Any | None:
        bk = self._maps["lb_backends"].key(svc_id=svc_id, slot=slot)
        return self._maps["lb_backends"].lookup(bk)

    def _table(self, svc_id: int, slot: int, length: int) -> list[int]:
        chunk = B.const("LB_SEL_CHUNK")
        out: list[int] = []
        m = self._maps["lb_sel"]
        for c in range(-(-length // chunk)):
            v = m.lookup(m.key(svc_id=svc_id, slot=slot, chunk=c))
            if v is None:
                raise LbctlError(f"lb_sel chunk {c} of service {svc_id} slot {slot} is missing")
            out.extend(int(v.idx[i]) for i in range(chunk))
        return out[:length]

    def _endpoints_record(self, svc_id: int, conf: Any) -> EndpointSet:
        key = self._conf_key(conf)
        lst = self._list(svc_id, int(conf.active))
        backends: list[Backend] = []
        table = b""
        if lst is not None:
            for i in range(int(lst.count)):
                b = lst.be[i]
                addr = _words_addr(int(b.family), b.addr)
                backends.append(Backend(addr, socket.ntohs(int(b.port)), int(b.weight)))
            if int(lst.sel_kind) == 1:
                table = maglev.pack(self._table(svc_id, int(conf.active), int(lst.sel_len)))
        return EndpointSet(key=key, backends=tuple(backends), maglev=table)

    # -------------------------------------------------------------------- read

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        out: dict[str, dict[str, Record]] = {"service": {}, "endpoints": {}, "attach": {}}
        if not self._open(create=False):
            return out
        for svc_id, conf in self._confs().items():
            key = str(self._conf_key(conf))
            if int(conf.flags) & F_HAS_SERVICE:
                out["service"][key] = self._service_record(conf)
            if int(conf.flags) & F_HAS_ENDPOINTS:
                out["endpoints"][key] = self._endpoints_record(svc_id, conf)
        for k, v in self._maps["lb_attach"].items():
            ifname = B.lib().ffi.string(k.ifname).decode()
            hook = {1: "tc", 2: "xdp"}.get(int(v.hook), "?")
            if self._attached_prog(ifname, hook):
                out["attach"][ifname] = Attachment(ifname, hook)
        return out

    def _attached_prog(self, ifname: str, hook: str) -> int:
        with in_netns(self.netns):
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                return 0
            return B.tc_query(idx) if hook == "tc" else B.xdp_query(idx)

    # ------------------------------------------------------------------- apply

    def apply(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        self._open(create=True)
        confs = self._confs()
        ids = {str(self._conf_key(c)): i for i, c in confs.items()}
        # Allocation state for this apply, computed once (keeps big applies linear).
        self._used_stats = None
        self._svc_hint = 0
        self._stat_hint = 0
        for ch in changes:
            if ch.kind == "service":
                self._apply_service(ch, confs, ids)
            elif ch.kind == "endpoints":
                self._apply_endpoints(ch, confs, ids)
            elif ch.kind == "attach":
                self._apply_attach(ch)
            else:
                raise LbctlError(f"bpf driver cannot apply record kind {ch.kind!r}")

    def _alloc_service(self, key: ServiceKey, confs: dict[int, Any], ids: dict[str, int]) -> int:
        skey = str(key)
        if skey in ids:
            return ids[skey]
        limit = B.const("LB_MAX_SERVICES")
        svc_id = next((i for i in range(self._svc_hint, limit) if i not in confs), -1)
        if svc_id < 0:
            raise LbctlError(f"no free service id (limit {limit})")
        ffi = B.lib().ffi
        conf = ffi.new("struct lb_service *")
        family, words = _addr_words(key.vip)
        _set_words(conf.key.addr, words)
        conf.key.port = socket.htons(key.port)
        conf.key.proto = _proto_num(key.proto)
        conf.key.family = family
        conf.port_end = key.port_end
        # Fresh counters for a fresh id.
        self._maps["lb_svc_stats"].update(svc_id, self._maps["lb_svc_stats"].value())
        self._maps["lb_rr"].update(svc_id, 0)
        confs[svc_id] = conf
        ids[skey] = svc_id
        self._svc_hint = svc_id + 1
        return svc_id

    def _write_conf(self, svc_id: int, conf: Any, confs: dict[int, Any]) -> None:
        m = self._maps["lb_conf"]
        old = m.lookup(svc_id)
        ffi = B.lib().ffi
        if old is not None and bytes(ffi.buffer(old)) == bytes(ffi.buffer(conf)):
            confs[svc_id] = old
            return
        m.update(svc_id, conf)
        confs[svc_id] = conf

    def _drop_conf_if_empty(self, svc_id: int, conf: Any, confs: dict[int, Any], ids: dict[str, int]) -> None:
        if int(conf.flags) & (F_HAS_SERVICE | F_HAS_ENDPOINTS):
            self._write_conf(svc_id, conf, confs)
            return
        self._maps["lb_conf"].delete(svc_id)
        confs.pop(svc_id, None)
        ids.pop(str(self._conf_key(conf)), None)
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

    def _publish(self, key: ServiceKey, svc_id: int) -> None:
        name, k, exact = self._lookup_entries(key)
        m = self._maps[name]
        if exact:
            if m.lookup(k) != svc_id:
                m.update(k, svc_id)
            return
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

    def _apply_service(self, ch: Change, confs: dict[int, Any], ids: dict[str, int]) -> None:
        key = ServiceKey.parse(ch.key)
        after = ch.after
        if ch.action == "delete" or after is None:
            svc_id = ids.get(str(key))
            if svc_id is None:
                return
            conf = confs[svc_id]
            self._unpublish(key, svc_id)
            new = self._copy(conf)
            new.flags = int(conf.flags) & ~F_HAS_SERVICE
            self._drop_conf_if_empty(svc_id, new, confs, ids)
            return
        assert isinstance(after, ServiceEntry)
        svc_id = self._alloc_service(key, confs, ids)
        new = self._copy(confs[svc_id])
        new.flags = int(new.flags) | F_HAS_SERVICE
        new.selection = SELECTIONS[after.selection]
        new.mode = MODES[after.mode]
        new.session_timeout = after.session_timeout
        new.persist_timeout = after.persist_timeout
        name = after.name.encode()
        if len(name) >= B.const("LB_NAME_LEN"):
            raise LbctlError(f"service name {after.name!r} is longer than {B.const('LB_NAME_LEN') - 1} bytes")
        new.name = name
        limit = B.const("LB_MAX_ALLOWED_SOURCES")
        if len(after.allowed_sources) > limit:
            raise LbctlError(f"service {after.name}: more than {limit} allowed sources")
        ffi = B.lib().ffi
        ffi.memmove(ffi.addressof(new, "allowed"), b"\0" * ffi.sizeof(new.allowed), ffi.sizeof(new.allowed))
        new.n_allowed = len(after.allowed_sources)
        for i, cidr in enumerate(after.allowed_sources):
            net = ipaddress.ip_network(cidr, strict=False)
            fam, words = _addr_words(str(net.network_address))
            _, mask = _addr_words(str(net.netmask))
            c = new.allowed[i]
            _set_words(c.addr, words)
            _set_words(c.mask, mask)
            c.prefixlen = net.prefixlen
            c.family = fam
        # Configuration first, then the lookup entry that makes it reachable.
        self._write_conf(svc_id, new, confs)
        self._publish(key, svc_id)

    @staticmethod
    def _copy(conf: Any) -> Any:
        ffi = B.lib().ffi
        new = ffi.new("struct lb_service *")
        ffi.memmove(new, conf, ffi.sizeof("struct lb_service"))
        return new

    def _active_stat_ids(self) -> set[int]:
        used: set[int] = set()
        for svc_id, conf in self._confs().items():
            if not int(conf.flags) & F_HAS_ENDPOINTS:
                continue
            lst = self._list(svc_id, int(conf.active))
            if lst is not None:
                used.update(int(lst.be[i].stat_id) for i in range(int(lst.count)))
        return used

    def _apply_endpoints(self, ch: Change, confs: dict[int, Any], ids: dict[str, int]) -> None:
        key = ServiceKey.parse(ch.key)
        after = ch.after
        svc_id = ids.get(str(key))
        if ch.action == "delete" or after is None:
            if svc_id is None:
                return
            conf = self._copy(confs[svc_id])
            conf.flags = int(conf.flags) & ~F_HAS_ENDPOINTS
            self._write_conf(svc_id, conf, confs)
            for slot in (0, 1):
                self._delete_slot(svc_id, slot)
            self._drop_conf_if_empty(svc_id, conf, confs, ids)
            self._purge_flows(svc_id, None)
            return
        assert isinstance(after, EndpointSet)
        if len(after.backends) > B.const("LB_MAX_ENDPOINTS"):
            raise LbctlError(f"{key}: more than {B.const('LB_MAX_ENDPOINTS')} endpoints")
        svc_id = self._alloc_service(key, confs, ids)
        conf = confs[svc_id]
        if int(conf.flags) & F_HAS_ENDPOINTS and self._endpoints_record(svc_id, conf) == after:
            return
        old_ids: dict[tuple[str, int], int] = {}
        if int(conf.flags) & F_HAS_ENDPOINTS:
            cur = self._list(svc_id, int(conf.active))
            if cur is not None:
                for i in range(int(cur.count)):
                    b = cur.be[i]
                    old_ids[(_words_addr(int(b.family), b.addr), socket.ntohs(int(b.port)))] = int(b.stat_id)
        lm = self._maps["lb_backends"]
        lst = lm.value()
        stat_ids: dict[tuple[str, int], int] = {}
        for i, be in enumerate(after.backends):
            ident = (str(ipaddress.ip_address(be.address)), be.port)
            sid = old_ids.get(ident)
            if sid is None:
                if self._used_stats is None:
                    self._used_stats = self._active_stat_ids()
                used = self._used_stats
                limit = B.const("LB_MAX_BACKEND_STATS")
                sid = next((n for n in range(self._stat_hint, limit) if n not in used), -1)
                if sid < 0:
                    raise LbctlError("no free endpoint counter slot")
                used.add(sid)
                self._stat_hint = sid + 1
                self._maps["lb_be_stats"].update(sid, self._maps["lb_be_stats"].value())
                self._maps["lb_be_conns"].update(sid, 0)
            stat_ids[ident] = sid
            fam, words = _addr_words(be.address)
            b = lst.be[i]
            _set_words(b.addr, words)
            b.port = socket.htons(be.port)
            b.family = fam
            b.weight = be.weight
            b.stat_id = sid
        lst.count = len(after.backends)
        if after.maglev:
            table = maglev.unpack(after.maglev)
            if any(t >= len(after.backends) for t in table):
                raise LbctlError(f"{key}: maglev table points past the endpoint list")
            lst.sel_kind = 1
        else:
            table = weighted_table([b.weight for b in after.backends])
            lst.sel_kind = 0
        lst.sel_len = len(table)
        slot = 1 - int(conf.active) if int(conf.flags) & F_HAS_ENDPOINTS else int(conf.active)
        # Write the inactive slot completely, then publish it with one lb_conf swap.
        old_len = 0
        prev = self._list(svc_id, slot)
        if prev is not None:
            old_len = int(prev.sel_len)
        self._write_table(svc_id, slot, table, old_len)
        lm.update(lm.key(svc_id=svc_id, slot=slot), lst)
        new = self._copy(conf)
        new.active = slot
        new.flags = int(conf.flags) | F_HAS_ENDPOINTS
        self._write_conf(svc_id, new, confs)
        gone = {sid for ident, sid in old_ids.items() if ident not in stat_ids}
        if gone:
            self._purge_flows(svc_id, gone)

    def _write_table(self, svc_id: int, slot: int, table: list[int], old_len: int) -> None:
        chunk = B.const("LB_SEL_CHUNK")
        m = self._maps["lb_sel"]
        n = -(-len(table) // chunk)
        keys, vals = [], []
        for c in range(n):
            v = m.value()
            part = table[c * chunk : (c + 1) * chunk]
            for i, x in enumerate(part):
                v.idx[i] = x
            keys.append(m.key(svc_id=svc_id, slot=slot, chunk=c))
            vals.append(v)
        m.update_batch(keys, vals)
        for c in range(n, -(-old_len // chunk)):
            m.delete(m.key(svc_id=svc_id, slot=slot, chunk=c))

    def _delete_slot(self, svc_id: int, slot: int) -> None:
        lm = self._maps["lb_backends"]
        prev = self._list(svc_id, slot)
        if prev is None:
            return
        chunk = B.const("LB_SEL_CHUNK")
        m = self._maps["lb_sel"]
        for c in range(-(-int(prev.sel_len) // chunk)):
            m.delete(m.key(svc_id=svc_id, slot=slot, chunk=c))
        lm.delete(lm.key(svc_id=svc_id, slot=slot))

    def _purge_flows(self, svc_id: int, stat_ids: set[int] | None) -> None:
        """End flows (both directions) and affinities of removed endpoints or services.

        The next packet of such a flow is a new flow: it goes to a live endpoint,
        which answers a stray TCP segment with RST, so the client sees the flow end.
        """
        for name in ("lb_ct", "lb_persist"):
            m = self._maps[name]
            doomed = []
            for k, v in m.items():
                sid = int(v.svc_id) if name == "lb_ct" else int(k.svc_id)
                st = int(v.stat_id) if name == "lb_ct" else int(v.be.stat_id)
                if sid == svc_id and (stat_ids is None or st in stat_ids):
                    doomed.append(k)
            m.delete_many(doomed)

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
        for sid in self._active_stat_ids():
            if (m.lookup(sid) or 0) != counts.get(sid, 0):
                m.update(sid, counts.get(sid, 0))

    # -------------------------------------------------------------------- down

    def down(self) -> None:
        """Detach every attachment and remove all pins of this pin root."""
        if self._open(create=False):
            for k, v in list(self._maps["lb_attach"].items()):
                ifname = B.lib().ffi.string(k.ifname).decode()
                self._detach(ifname, {1: "tc", 2: "xdp"}.get(int(v.hook), "tc"), quiet=True)
        self.close()
        if os.path.isdir(self.pin_root):
            for name in list(B.MAPS) + [f"prog_{h}" for h in PROGS]:
                path = os.path.join(self.pin_root, name)
                if os.path.exists(path):
                    os.unlink(path)
            try:
                os.rmdir(self.pin_root)
            except OSError:
                pass  # other boxes' subdirectories live here
