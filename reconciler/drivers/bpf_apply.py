"""The bpf driver's writes: services and endpoint sets into the maps, and ending removed flows.

Why this exists: apply turns plan changes into buffered batch writes in an order
that never shows a packet a half-written service, allocates service and stat
ids, and ends the flows of removed services and endpoints in one pass over the
conntrack and affinity maps per apply (``_end_flows``).
"""

from __future__ import annotations

import socket
from collections.abc import Container, Iterable, Sequence
from dataclasses import replace
from typing import Any

from reconciler import maglev
from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_addrset
from reconciler.drivers import bpf_layout as L
from reconciler.drivers.bpf_codec import (
    _addr_str,
    _addr_words,
    _allowed_region,
    _canon,
    _Conf,
    _Index,
    _pack_addr,
    _proto_num,
    _range_entries,
    _set_words,
    _weighted_bytes,
    sctp_peers_bytes,
    sctp_peers_decode,
    snat_bytes,
)
from reconciler.drivers.bpf_layout import (
    BE,
    BE_KEY,
    CIDR,
    CT_STAT_OFF,
    CT_SVC_OFF,
    F_HAS_ENDPOINTS,
    F_HAS_SERVICE,
    LIST_HDR,
    LIST_SIZE,
    MAX_ENDPOINTS,
    MAX_SEL_LEN,
    MODES,
    NO_BACKEND,
    SEL_BYTES,
    SEL_CHUNK,
    SEL_KEY,
    SELECTIONS,
    SVC_KEY_TAIL,
    U32,
    ZERO_COUNTERS,
)
from reconciler.drivers.bpf_read import BpfRead
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import (
    Attachment,
    EndpointSet,
    ServiceEntry,
    ServiceKey,
)

# Order in which buffered writes reach the kernel (see BpfDriver.apply); the address
# set's new bits (bpf_addrset) go before all of them.
_FLUSH_ORDER = ("lb_svc_stats", "lb_rr", "lb_be_stats", "lb_be_conns", "lb_sel", "lb_backends", "lb_conf",
                "lb_svc")
FLUSH_BYTES = 8 << 20
# Counters a fresh service or stat id starts from: zeroed when the id is allocated, unless
# the map was created by this apply's load (arrays, which the kernel creates zeroed; an id
# is never handed out twice within one apply). In a cold 10,000 x 10 apply these are
# 220,000 of the 280,000 map writes.
_COUNTERS = {"lb_svc_stats": ZERO_COUNTERS, "lb_rr": L.ZERO_RR, "lb_be_stats": ZERO_COUNTERS,
             "lb_be_conns": L.ZERO_CONNS}


def _lookup_raw_key(m: B.Map, k: Any) -> bytes:
    """The bytes of a cffi key of map ``m``."""
    return bytes(m.ffi.buffer(k, m.key_size))



def _first_free(start: int, limit: int, *taken: Container[int]) -> int:
    """The first id from ``start`` below ``limit`` in none of ``taken`` (``limit`` if none is)."""
    n = start
    while n < limit and any(n in t for t in taken):
        n += 1
    return n

def _no_addrset(pending: dict[int, int], addr16: bytes) -> None:
    """bpf_addrset.add's stand-in when the object has no lb_addrset."""


class BpfApply(BpfRead):
    """apply() of service, endpoints and attach changes."""

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
        hooks = sorted({ch.after.hook for ch in changes if isinstance(ch.after, Attachment)})
        if hooks and self._obj is None:
            self.load_hooks = tuple(hooks)  # a first load verifies only the programs the box attaches
        had_object = self._obj is not None
        self.verify_aside = True  # a first load verifies the hook programs while the maps fill
        try:
            self._open(create=True)
        finally:
            self.verify_aside = False
        if had_object or self._obj is None:  # only an apply whose own load created maps takes them as zero
            self._created = frozenset()
        # Programs are attached after the map writes (the verifier is still at work while
        # those run); a program attached last starts on complete maps.
        changes = sorted(changes, key=lambda ch: ch.kind == "attach")  # stable: each part keeps its order
        if self._index is None:
            self._index = self._build_index()
        self._pend = {}
        self._pend_bytes = 0
        self._touched = set()
        self._purge = {}
        self._held_stats = set()
        # None: an object from before the address set (the migration tests' old layouts)
        self._addr_pend = {} if "lb_addrset" in self._maps else None
        empty_before = not self._idx.confs  # then this apply's own adds are every address
        ok = False
        writes = self.writes
        try:
            fw_done = False
            for ch in changes:
                if ch.kind == "firewall":
                    if not fw_done:  # the whole rule set at once (plan order keeps a kind together)
                        self._flush()
                        self.apply_firewall([c for c in changes if c.kind == "firewall"])
                        fw_done = True
                elif ch.kind == "service":
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
                if ok and self._addr_pend is not None:
                    self._arm_addrset(empty_before)
                self._end_flows()
                if self.writes != writes:  # an apply that wrote nothing changed no route either
                    self.bump_nexthop_generation()
                if ok:
                    self.settle()  # the programs verified aside are pinned by the apply that loaded them
            finally:
                self._created = frozenset()  # ids freed from now on may be reused: zero them
                if not ok:
                    self._index = None

    def bump_nexthop_generation(self) -> None:
        """Invalidate every flow's cached next hop (bpf/lb_nexthop.h): the next packet looks it up again.

        Called after every apply that wrote anything, and by ``lbctl watch`` when a route or
        neighbour of the box changed (``route_events.RouteEvents``); without the daemon the
        cache's 2 s age bound covers such changes.
        """
        m = self._maps.get("lb_nh_gen")
        if m is None:
            return
        key = (0).to_bytes(4, "little")
        raw = m.lookup_raw(key) or bytes(8)
        gen = (int.from_bytes(raw[:4], "little") + 1) & 0xFFFFFFFF
        m.update_raw(key, gen.to_bytes(4, "little") + raw[4:8])

    def _open(self, create: bool) -> bool:
        """BpfPins._open, and after a layout migration (maps from before the address set
        included) the set armed at once, not at the next apply that changes something."""
        was = self.migration
        ok = super()._open(create)
        if ok and self.migration is not None and self.migration is not was and "lb_addrset" in self._maps:
            if self._index is None:
                self._index = self._build_index()
            self._addr_pend = {}
            self._arm_addrset(all_added=False)
        return ok

    def _arm_addrset(self, all_added: bool) -> None:
        """Arm the datapath's early exit (bpf/lb_addrset.h) once: every VIP and endpoint
        address of the maps into the set, then the armed word.  Until then (fresh maps,
        maps migrated from before the set) every packet takes the full path.
        ``all_added``: the maps held no service before this apply, whose writes added
        every address already."""
        m = self._maps["lb_addrset"]
        if bpf_addrset.armed(m):
            return
        idx = self._idx
        pend = self._addr_pend
        assert pend is not None
        for svc_id, key in () if all_added else idx.keys.items():
            bpf_addrset.add(pend, _pack_addr(key.vip)[1])
            for vip in sctp_peers_decode(idx.confs[svc_id].sctp_peers):
                bpf_addrset.add(pend, _pack_addr(vip)[1])
        for eps in () if all_added else idx.eps.values():
            for be in eps.backends:
                bpf_addrset.add(pend, _pack_addr(be.address)[1])
        self._flush()
        bpf_addrset.arm(m)

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
            if self._addr_pend:  # before anything that makes the addresses reachable
                addrs, self._addr_pend = self._addr_pend, {}
                bpf_addrset.merge(self._maps["lb_addrset"], addrs)
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
        if self._maps["lb_conf"].lookup_raw(U32.pack(svc_id)) != self._idx.raw.get(svc_id):
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
            self._maps["lb_conf"].delete_raw(U32.pack(svc_id))
            for slot in (0, 1):
                self._delete_slot(svc_id, slot)
            self._purge_flows(svc_id, None)

    def _alloc_service(self, key: ServiceKey) -> int:
        svc_id = self._service_id(key)
        if svc_id is not None:
            return svc_id
        idx = self._idx
        limit = self.map_limit("lb_conf")
        svc_id = _first_free(idx.svc_hint, limit, idx.confs, self._purge)
        if svc_id >= limit:
            raise LbctlError(f"no free service id (the datapath holds {limit:,} services)",
                             "raise spec.capacities.services of the Datapath")
        family, addr = _pack_addr(key.vip)
        conf = _Conf(addr=addr, port_n=socket.htons(key.port), proto=_proto_num(key.proto),
                     family=family, port_end=key.port_end)
        if self._addr_pend is not None:
            bpf_addrset.add(self._addr_pend, addr)
        self._zero(svc_id, "lb_svc_stats", "lb_rr")  # fresh counters for a fresh id
        idx.confs[svc_id] = conf
        idx.keys[svc_id] = key
        idx.ids[str(key)] = svc_id
        idx.svc_hint = svc_id + 1
        self._touched.add(svc_id)
        return svc_id

    def _alloc_stat(self) -> int:
        idx = self._idx
        limit = self.map_limit("lb_be_stats")
        sid = idx.stat_hint
        used, held = idx.used_stats, self._held_stats
        if sid in used or sid in held:
            sid = _first_free(sid, limit, used, held)
        if sid >= limit:
            raise LbctlError(f"no free endpoint counter slot (the datapath holds {limit:,})",
                             "raise spec.capacities.endpoints of the Datapath")
        idx.used_stats.add(sid)
        idx.stat_hint = sid + 1
        self._zero(sid, "lb_be_stats", "lb_be_conns")
        return sid

    def _zero(self, slot: int, *maps: str) -> None:
        """Zero ``slot`` of counter ``maps`` (not of a map this apply's load created: all zero)."""
        k = U32.pack(slot)
        for name in maps:
            if name not in self._created:
                self._put(name, k, _COUNTERS[name])

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
        self._put("lb_conf", U32.pack(svc_id), raw)

    def _drop_conf_if_empty(self, svc_id: int, conf: _Conf) -> None:
        if conf.flags & (F_HAS_SERVICE | F_HAS_ENDPOINTS):
            self._write_conf(svc_id, conf)
            return
        idx = self._idx
        self._flush()
        self._maps["lb_conf"].delete_raw(U32.pack(svc_id))
        idx.confs.pop(svc_id, None)
        idx.raw.pop(svc_id, None)
        key = idx.keys.pop(svc_id, None)
        if key is not None:
            idx.ids.pop(str(key), None)
        idx.svc_hint = min(idx.svc_hint, svc_id)
        self._purge_flows(svc_id, None)

    def _publish(self, key: ServiceKey, svc_id: int, was_published: bool, repair: bool = False) -> None:
        """Make the lookup entry of ``key`` point at ``svc_id``.  ``repair``: the read found the
        entry faulty: rewrite the range list whole and drop other entries for the same ports."""
        if key.port == key.port_end or key.proto in ("icmp", "icmpv6"):
            family, addr = _pack_addr(key.vip)
            k = addr + SVC_KEY_TAIL.pack(socket.htons(key.port), _proto_num(key.proto), family)
            v = U32.pack(svc_id)
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
        allowed = _allowed_region(after.allowed_sources)[: n_allowed * CIDR.size]
        svc_id = self._alloc_service(key)
        old = self._idx.confs[svc_id]
        new = replace(
            old, flags=old.flags | F_HAS_SERVICE, selection=SELECTIONS[after.selection],
            mode=MODES[after.mode], session_timeout=after.session_timeout,
            persist_timeout=after.persist_timeout, n_allowed=n_allowed, allowed=allowed,
            name=name, snat_addr=snat_bytes(after.source_address), fw_mark=after.firewall_mark,
            no_backend=NO_BACKEND[after.no_endpoints], sctp_peers=sctp_peers_bytes(after.sctp_peer_vips),
        )
        pend = self._addr_pend
        if pend is not None:
            for vip in after.sctp_peer_vips:
                bpf_addrset.add(pend, _pack_addr(vip)[1])
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
        if len(after.backends) > MAX_ENDPOINTS:
            raise LbctlError(f"{key}: more than {MAX_ENDPOINTS} endpoints")
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
        order: list[int] = []
        parts = [LIST_HDR.pack(len(after.backends), len(table) // 2, sel_kind, 0)]
        pack, htons = BE.pack, socket.htons
        pend_addrs = self._addr_pend if self._addr_pend is not None else {}
        add_addr = bpf_addrset.add if self._addr_pend is not None else _no_addrset
        for be in after.backends:
            fam, addr = _pack_addr(be.address)
            add_addr(pend_addrs, addr)
            ident = (_addr_str(fam, addr), be.port)
            sid = stat_ids.get(ident, old_ids.get(ident, -1))
            if sid < 0:
                sid = self._alloc_stat()
            stat_ids[ident] = sid
            order.append(sid)
            parts.append(pack(addr, htons(be.port), fam, 0, be.weight, sid))
        lst = b"".join(parts)
        lst += bytes(LIST_SIZE - len(lst))
        slot = 1 - (conf.active & 1) if had else conf.active & 1
        # Write the inactive slot completely, then publish it with one lb_conf swap.
        n = -(-len(table) // SEL_BYTES)
        if had:
            prev = self._maps["lb_backends"].lookup_raw(BE_KEY.pack(svc_id, slot))
            if prev is not None:
                old_n = -(-min(LIST_HDR.unpack_from(prev)[1], MAX_SEL_LEN) // SEL_CHUNK)
                for c in range(n, old_n):
                    self._maps["lb_sel"].delete_raw(SEL_KEY.pack(svc_id, slot, c))
        for c in range(n):
            part = table[c * SEL_BYTES : (c + 1) * SEL_BYTES]
            self._put("lb_sel", SEL_KEY.pack(svc_id, slot, c), part + bytes(SEL_BYTES - len(part)))
        self._put("lb_backends", BE_KEY.pack(svc_id, slot), lst)
        self._write_conf(svc_id, replace(conf, active=slot, flags=conf.flags | F_HAS_ENDPOINTS))
        idx.eps[svc_id] = after
        idx.stat[svc_id] = tuple(order)
        gone = {sid for ident, sid in old_ids.items() if ident not in stat_ids}
        if gone:  # their flows end after the last write of this apply (_end_flows)
            self._purge_flows(svc_id, gone)
            self._release_stats(gone)

    def _delete_slot(self, svc_id: int, slot: int) -> None:
        lm = self._maps["lb_backends"]
        k = BE_KEY.pack(svc_id, slot)
        prev = lm.lookup_raw(k)
        if prev is None:
            return
        m = self._maps["lb_sel"]
        for c in range(-(-min(LIST_HDR.unpack_from(prev)[1], MAX_SEL_LEN) // SEL_CHUNK)):
            m.delete_raw(SEL_KEY.pack(svc_id, slot, c))
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
        unpack = U32.unpack_from
        for name, id_off, stat_off, id_in_key in (
                ("lb_ct", CT_SVC_OFF, CT_STAT_OFF, False),
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
