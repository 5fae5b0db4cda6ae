"""The bpf driver's observations: counters, conntrack, connection counts, the scrape snapshot.

Why this exists: reading the datapath's own state (per-CPU counters, flows) is
not part of the reconcile loop; it only reads, except ``sync_conn_counts``.
``datapath_snapshot()`` (the ``telemetry.DatapathSource`` of ``/metrics``,
``lbctl top`` and ``lbctl get endpoints``) reads lb_conf, the counter arrays,
lb_ct and lb_stats with one batch dump each per scrape and sums per-CPU values a
whole chunk at a time; an endpoint list is read (one lookup) only when its
service's lb_conf entry changed.  What it decodes (addresses as text, names) is
kept between scrapes and reused while the bytes it came from are unchanged.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from operator import add, ne, or_
from typing import Any

from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_layout as L
from reconciler.drivers.bpf_codec import (
    _MODE_NAMES,
    _PROTO_NAMES,
    _addr_str,
    _words_addr,
)
from reconciler.drivers.bpf_layout import (
    BE,
    BE_KEY,
    CT_STATES,
    F_HAS_ENDPOINTS,
    LIST_HDR,
    MAX_ENDPOINTS,
    NAME_LEN,
    NAME_OFF,
    STATS,
    SVC_HDR,
)
from reconciler.drivers.bpf_read import BpfRead
from reconciler.records import ServiceKey
from reconciler.telemetry import DatapathSnapshot, EndpointStats, ServiceStats, Traffic

CT_KEY = L.fmt("struct lb_ct_key")
CT_VALUE = L.fmt("struct lb_ct")
_COUNTER_FIELDS = 6  # struct lb_counters: packets, bytes, reply_packets, reply_bytes, new_flows, drops
_STAT_NAMES = {v: k.replace("-", "_") for k, v in STATS.items()}
_CHUNK = 4096  # entries per batch call over the counter arrays (and per kept chunk of sums)


@dataclass(frozen=True, slots=True)
class _SvcLabels:
    """What a scrape decodes of one lb_conf entry (kept while its bytes stay the same)."""

    hdr: bytes
    name_raw: bytes
    key: ServiceKey
    name: str
    slot: int
    has_endpoints: bool


@dataclass(frozen=True, slots=True)
class _ListLabels:
    """What a scrape decodes of one active endpoint list (kept while its lb_conf entry is the same)."""

    conf: _SvcLabels  # read under this lb_conf entry
    endpoints: tuple[str, ...]
    stat_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Built:
    """A service's stats as the last scrape built them, with what they were built from."""

    conf: _SvcLabels
    lst: _ListLabels | None
    stats: ServiceStats


@dataclass
class Flow:
    proto: str
    client: str
    client_port: int
    vip: str
    vip_port: int
    backend: str
    backend_port: int
    source: str  # the source the endpoint sees (the client's, or the box's under source NAT)
    source_port: int
    mode: str
    service: str
    state: str
    age_s: float
    idle_s: float
    expired: bool
    name: str = ""  # the Service resource's name


_ConfChunk = tuple[bytes, bytes, list[tuple[int, _SvcLabels]]]  # keys, values, decoded entries


def _moved(old: dict[int, int], new: dict[int, int]) -> set[int]:
    """The keys whose count differs between two scrapes (absent counts as 0)."""
    if old == new:
        return set()
    return {k for k in old.keys() | new.keys() if old.get(k, 0) != new.get(k, 0)}


class BpfObserve(BpfRead):
    """Counters, flows and least-connection counts."""

    _obs_confs: dict[int, _SvcLabels]
    _obs_lists: dict[int, _ListLabels]
    _obs_built: dict[int, _Built]
    _obs_svc_active: dict[int, int]
    _obs_conf_chunks: list[_ConfChunk]
    _obs_be_active: dict[int, int]


    def _confs(self) -> dict[int, Any]:
        return {int(k): v for k, v in self._maps["lb_conf"].items()}

    @staticmethod
    def _conf_key(conf: Any) -> ServiceKey:
        k = conf.key
        family = int(k.family)
        port = socket.ntohs(int(k.port))
        return ServiceKey(_words_addr(family, k.addr), _PROTO_NAMES.get(int(k.proto), str(int(k.proto))),
                          port, int(conf.port_end))

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

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per service key: {"service": Traffic, "endpoints": {"addr:port": Traffic}} (from the snapshot)."""
        snap = self.datapath_snapshot()
        if snap is None:
            return {}
        return {str(s.key): {"service": s.traffic, "endpoints": {e.endpoint: e.traffic for e in s.endpoints}}
                for s in snap.services}

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
            bfam = int(v.nat_family) or fam  # NAT64/NAT46: the endpoint's family
            snat = any(int(w) for w in v.snat_addr)
            conf = confs.get(int(v.svc_id))
            timeout = int(v.timeout)
            if L.ct_closing(int(v.state)):
                timeout = min(timeout, closing)
            idle = max(0, now - int(v.seen_ns)) / 1e9
            flows.append(Flow(
                proto=_PROTO_NAMES.get(int(k.proto), str(int(k.proto))),
                client=_words_addr(fam, k.saddr), client_port=socket.ntohs(int(k.sport)),
                vip=_words_addr(fam, k.daddr), vip_port=socket.ntohs(int(k.dport)),
                backend=_words_addr(bfam, v.nat_addr), backend_port=socket.ntohs(int(v.nat_port)),
                source=_words_addr(bfam, v.snat_addr) if snat else _words_addr(fam, k.saddr),
                source_port=socket.ntohs(int(v.snat_port if snat else k.sport)),
                mode=_MODE_NAMES.get(int(v.mode), str(int(v.mode))),
                service=str(self._conf_key(conf)) if conf is not None else "?",
                name=B.lib().ffi.string(conf.name).decode(errors="replace") if conf is not None else "",
                state=CT_STATES.get(int(v.state), "?"),
                age_s=max(0, now - int(v.created_ns)) / 1e9, idle_s=idle, expired=idle > timeout,
            ))
        return flows

    # ------------------------------------------------------- the scrape snapshot

    def datapath_snapshot(self) -> DatapathSnapshot | None:
        """Every counter of the datapath now: one batch dump of each counter map and lb_conf.

        What changes rarely is decoded once and kept: a service's labels while its
        lb_conf bytes stay the same, its active endpoint list while its lb_conf entry
        does (lbctl publishes every endpoint change by flipping the active slot
        there, so a changed list always comes with a changed lb_conf entry; the
        list is then read with one lookup), per-CPU sums of a chunk of a counter
        array while its bytes do, and a service's whole ``ServiceStats`` while
        none of its inputs changed (so the exporter can keep its text too).
        """
        if not self._open(create=False):
            return None
        confs = self._scan_confs()
        lists = self._scan_lists(confs)
        # Only as far as the highest id in use: the arrays are sized for the datapath's limits.
        svc, svc_dirty = self._percpu_sums("lb_svc_stats", _COUNTER_FIELDS, max(confs, default=-1) + 1)
        be, be_dirty = self._percpu_sums("lb_be_stats", _COUNTER_FIELDS,
                                         max((max(lst.stat_ids, default=-1) for lst in lists.values()),
                                             default=-1) + 1)
        by_state, svc_active, be_active = self._scan_conntrack()
        (stats,), _ = self._percpu_sums("lb_stats", 1)
        n_svc, n_be, zero = len(svc[0]), len(be[0]), (0,) * _COUNTER_FIELDS
        prev: dict[int, _Built] = getattr(self, "_obs_built", {})
        # Live-flow counts that moved since the last scrape (proportional to the flows, not services).
        svc_moved = _moved(getattr(self, "_obs_svc_active", {}), svc_active)
        be_moved = _moved(getattr(self, "_obs_be_active", {}), be_active) | be_dirty
        self._obs_svc_active, self._obs_be_active = svc_active, be_active
        built: dict[int, _Built] = {}
        make = Traffic._make
        bp, bb, brp, brb, bnf, bd = be
        services = []
        for svc_id, c in confs.items():
            lst = lists.get(svc_id)
            sids = lst.stat_ids if lst is not None else ()
            p = prev.get(svc_id)
            if (p is not None and p.conf is c and p.lst is lst and svc_id not in svc_dirty
                    and svc_id not in svc_moved and not (be_moved and any(sid in be_moved for sid in sids))):
                built[svc_id] = p
                services.append(p.stats)
                continue
            eps = tuple(EndpointStats(ep, make((bp[sid], bb[sid], brp[sid], brb[sid], bnf[sid], bd[sid],
                                                be_active.get(sid, 0))
                                               if sid < n_be else (*zero, be_active.get(sid, 0))))
                        for ep, sid in zip(lst.endpoints if lst else (), sids, strict=True))
            row = tuple(f[svc_id] for f in svc) if svc_id < n_svc else zero
            stats_ = ServiceStats(c.key, c.name, make((*row, svc_active.get(svc_id, 0))), eps)
            built[svc_id] = _Built(c, lst, stats_)
            services.append(stats_)
        self._obs_built = built
        counters = {_STAT_NAMES[i]: v for i, v in enumerate(stats) if i in _STAT_NAMES}
        drops = {k[len("drop_"):]: v for k, v in counters.items() if k.startswith("drop_")}
        return DatapathSnapshot(services=tuple(services), conntrack=by_state,
                                conntrack_capacity=self.map_limit("lb_ct"), counters=counters, drops=drops)

    def _scan_confs(self) -> dict[int, _SvcLabels]:
        """lb_conf (one dump), decoded where its bytes changed since the last scrape (a chunk of
        the dump equal to the last one's is taken whole)."""
        old: dict[int, _SvcLabels] = getattr(self, "_obs_confs", {})
        old_chunks: list[_ConfChunk] = getattr(self, "_obs_conf_chunks", [])
        chunks: list[_ConfChunk] = []
        new: dict[int, _SvcLabels] = {}
        m = self._maps["lb_conf"]
        hs, vs = SVC_HDR.size, m.buf_size
        for k, (n, kv, vv) in enumerate(m.chunks_raw(1024)):
            if k < len(old_chunks) and old_chunks[k][0] == kv and old_chunks[k][1] == vv:
                chunks.append(old_chunks[k])
                new.update(old_chunks[k][2])
                continue
            ids = kv.cast("I").tolist()
            raw = vv.tobytes()  # one copy per chunk: slices of bytes are cheaper than of a view
            entries: list[tuple[int, _SvcLabels]] = []
            for i in range(n):
                svc_id, off = ids[i], i * vs
                hdr = raw[off : off + hs]
                name_raw = raw[off + NAME_OFF : off + NAME_OFF + NAME_LEN]
                c = old.get(svc_id)
                if c is None or c.hdr != hdr or c.name_raw != name_raw:
                    addr, port_n, proto, family, port_end, _, _, flags, _, _, active, _ = SVC_HDR.unpack(hdr)
                    key = ServiceKey(_addr_str(family, addr), _PROTO_NAMES.get(proto, str(proto)),
                                     socket.ntohs(port_n), port_end)
                    c = _SvcLabels(hdr, name_raw, key, name_raw.split(b"\0", 1)[0].decode(errors="replace"),
                                   active & 1, bool(flags & F_HAS_ENDPOINTS))
                entries.append((svc_id, c))
            new.update(entries)
            chunks.append((kv.tobytes(), raw, entries))
        self._obs_confs = new
        self._obs_conf_chunks = chunks
        return new

    def _scan_lists(self, confs: dict[int, _SvcLabels]) -> dict[int, _ListLabels]:
        """The active endpoint list of each service: kept while its lb_conf entry is unchanged,
        else read with one lookup (a dump of lb_backends is 72 MB at 10,000 services)."""
        old: dict[int, _ListLabels] = getattr(self, "_obs_lists", {})
        new: dict[int, _ListLabels] = {}
        m = self._maps["lb_backends"]
        hdr, bes = LIST_HDR.size, BE.size
        for svc_id, c in confs.items():
            if not c.has_endpoints:
                continue
            lst = old.get(svc_id)
            if lst is None or lst.conf is not c:
                raw = m.lookup_raw(BE_KEY.pack(svc_id, c.slot))
                if raw is None:
                    continue
                count = min(L.U32.unpack_from(raw, 0)[0], MAX_ENDPOINTS)
                eps, sids = [], []
                for addr, port_n, family, _, _, sid in BE.iter_unpack(raw[hdr : hdr + count * bes]):
                    host = _addr_str(family, addr)
                    host = f"[{host}]" if family == 6 else host
                    eps.append(f"{host}:{socket.ntohs(port_n) or c.key.port}")
                    sids.append(sid)
                lst = _ListLabels(c, tuple(eps), tuple(sids))
            new[svc_id] = lst
        self._obs_lists = new
        return new

    def _percpu_sums(self, name: str, fields: int,
                     upto: int | None = None) -> tuple[list[list[int]], set[int]]:
        """Per field, the values of a per-CPU array by index (the first ``upto`` at least, all if
        None), summed over CPUs; and the indexes whose sums changed since the last call.

        One batch dump, stopped after the chunk holding index ``upto - 1``; an array's
        comes in index order, so the lists are indexed by key.  A chunk's sums are kept
        while its bytes stay the same.
        """
        m = self._maps[name]
        per_cpu = m.stride // 8
        per_entry = per_cpu * m.ncpus
        cache: dict[str, list[tuple[bytes, list[list[int]]]]] = self.__dict__.setdefault("_obs_sums", {})
        old = cache.get(name, [])
        new: list[tuple[bytes, list[list[int]]]] = []
        dirty: set[int] = set()
        out: list[list[int]] = [[] for _ in range(fields)]
        for k, (_, _, vv) in enumerate(m.chunks_raw(_CHUNK)):
            if k < len(old) and vv == old[k][0]:  # compared in place: no copy of an unchanged chunk
                raw, sums = old[k]
            else:
                raw = bytes(vv)
                words = memoryview(raw).cast("Q")
                sums = []
                for f in range(fields):
                    acc = words[f::per_entry].tolist()
                    for cpu in range(1, m.ncpus):
                        acc = list(map(add, acc, words[cpu * per_cpu + f :: per_entry].tolist()))
                    sums.append(acc)
                if k < len(old) and len(old[k][1][0]) == len(sums[0]):
                    moved = list(map(ne, sums[0], old[k][1][0]))
                    for f in range(1, fields):
                        moved = list(map(or_, moved, map(ne, sums[f], old[k][1][f])))
                    base = k * _CHUNK
                    dirty.update(base + i for i, m_ in enumerate(moved) if m_)
                else:
                    dirty.update(range(k * _CHUNK, k * _CHUNK + len(sums[0])))
            new.append((raw, sums))
            for f in range(fields):
                out[f].extend(sums[f])
            if upto is not None and (k + 1) * _CHUNK >= upto:
                break
        cache[name] = new
        return out, dirty

    def _scan_conntrack(self) -> tuple[dict[tuple[str, str], int], dict[int, int], dict[int, int]]:
        """Forward entries by (protocol, state); live flows per service id and per counter slot."""
        now = time.monotonic_ns()
        closing, forward = L.CT_CLOSING_TIMEOUT, L.CT_FORWARD
        counts: dict[tuple[int, int], int] = {}
        svc_active: dict[int, int] = {}
        be_active: dict[int, int] = {}
        for _, kv, vv in self._maps["lb_ct"].chunks_raw(4096):
            for k, v in zip(CT_KEY.iter_unpack(kv), CT_VALUE.iter_unpack(vv), strict=True):
                if v[2] != forward:
                    continue
                state = v[3]
                counts[(k[4], state)] = counts.get((k[4], state), 0) + 1
                timeout = min(v[6], closing) if L.ct_closing(state) else v[6]
                if now - v[8] <= timeout * 1_000_000_000:
                    svc_active[v[4]] = svc_active.get(v[4], 0) + 1
                    be_active[v[5]] = be_active.get(v[5], 0) + 1
        by_state = {(_PROTO_NAMES.get(p, str(p)), CT_STATES.get(s, str(s)).replace("-", "_")): n
                    for (p, s), n in counts.items()}
        return by_state, svc_active, be_active

    def sync_conn_counts(self) -> None:
        """Recompute least-connection counts from live conntrack (fixes LRU-evicted drift)."""
        if not self._open(create=False):
            return
        counts: dict[int, int] = {}
        now = time.monotonic_ns()
        for _, v in self._maps["lb_ct"].items():
            live = now - int(v.seen_ns) <= int(v.timeout) * 10**9
            if int(v.dir) == L.CT_FORWARD and not L.ct_closing(int(v.state)) and live:
                counts[int(v.stat_id)] = counts.get(int(v.stat_id), 0) + 1
        m = self._maps["lb_be_conns"]
        idx = self._index if self._index is not None else self._build_index()
        for sid in sorted(idx.used_stats):
            if (m.lookup(sid) or 0) != counts.get(sid, 0):
                m.update(sid, counts.get(sid, 0))
