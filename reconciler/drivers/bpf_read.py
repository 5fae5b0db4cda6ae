"""The bpf driver's live read of services and endpoint sets.

Why this exists: the plan compares desired records with what the maps hold, so
this part decodes every entry lbctl owns (lb_conf, the active lb_backends list
and its lb_sel table, lb_svc/lb_range) into records, with ``faults`` for
anything the records cannot show, and builds the index apply starts from.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from reconciler.drivers import bpf_layout as L
from reconciler.drivers.bpf_attach import BpfAttach
from reconciler.drivers.bpf_codec import (
    _PROTO_NAMES,
    _ZERO12,
    ChunkGetter,
    _addr_str,
    _addr_str6,
    _addr_words,
    _Conf,
    _dupes_fault,
    _Index,
    _List,
    _pack_addr,
    _proto_num,
    _range_entries,
    _set_words,
    _stray_fault,
    _weighted_chunks,
    _zero_from,
)
from reconciler.drivers.bpf_layout import (
    BE,
    BE_KEY,
    F_HAS_ENDPOINTS,
    F_HAS_SERVICE,
    LIST_HDR,
    MAX_ENDPOINTS,
    MAX_RANGES,
    MAX_SEL_LEN,
    RANGE_KEY,
    SEL_CHUNK,
    SEL_KEY,
    SVC_KEY_SIZE,
    SVC_KEY_TAIL,
    U32,
)
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import (
    Backend,
    EndpointSet,
    Record,
    ServiceEntry,
    ServiceKey,
)


class BpfRead(BpfAttach):
    """read(), read_keys() and the index of service and stat ids."""

    @staticmethod
    def _table_raw(get: ChunkGetter, svc_id: int, slot: int, length: int) -> tuple[bytes, list[str]]:
        """The selection table of (service, slot) in the ``EndpointSet.maglev`` format, and its faults."""
        if length > MAX_SEL_LEN:
            return b"", [f"lb_backends: selection table length {length} (at most {MAX_SEL_LEN})"]
        parts = []
        for c in range(-(-length // SEL_CHUNK)):
            v = get(SEL_KEY.pack(svc_id, slot, c))
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
            got = get(SEL_KEY.pack(svc_id, slot, c))
            if got is None:
                return [f"lb_sel: chunk {c} of the selection table (slot {slot}) is missing"]
            if got != chunk:
                return [f"lb_sel: chunk {c} of the selection table (slot {slot}) differs from what the "
                        "endpoint weights give"]
        return []

    def _parse_list(self, conf: _Conf, raw: bytes | None) -> _List:
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
        count, sel_len, sel_kind, hpad = LIST_HDR.unpack_from(raw)
        if count > MAX_ENDPOINTS or sel_kind not in (L.SELTAB_WEIGHTED, L.SELTAB_MAGLEV) or hpad:
            faults.append(f"lb_backends: bad list header (count {count}, table kind {sel_kind}, pad {hpad})")
        n = min(count, MAX_ENDPOINTS)
        end = LIST_HDR.size + BE.size * n
        ntohs, ntop, inet4 = socket.ntohs, socket.inet_ntop, socket.AF_INET
        bad = 0
        for a, port_n, fam, pad, weight, sid in BE.iter_unpack(raw[LIST_HDR.size : end]):
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
        if stat_ids and max(stat_ids) >= self.map_limit("lb_be_stats"):
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
            if lst.sel_len != length or len(want) > 1 or (want and get(SEL_KEY.pack(svc_id, lst.slot, 0))
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
            svc_id = U32.unpack(kb)[0]
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
                lists[svc_id] = self._parse_list(conf, lm.lookup_raw(BE_KEY.pack(svc_id, conf.active & 1)))
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
                if eps.faults and stat_ids and max(stat_ids) >= (limit := self.map_limit("lb_be_stats")):
                    idx.bad_stats[svc_id] = {s for s in stat_ids if s >= limit}
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
            for c in range(-(-min(lst.sel_len, MAX_SEL_LEN) // SEL_CHUNK)):
                want[SEL_KEY.pack(svc_id, lst.slot, c)] = expected[c] if c < len(expected) else None
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
        out: dict[str, dict[str, Record]] = {"service": {}, "endpoints": {}, "attach": {}, "firewall": {}}
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
        out["firewall"] = self.read_firewall()
        return out

    def read_firewall(self) -> dict[str, Record]:  # BpfFirewall's
        return {}

    def apply_firewall(self, changes: Sequence[Change]) -> None:  # BpfFirewall's
        raise LbctlError("this driver cannot apply record kind 'firewall'")

    def _conf_of(self, svc_id: int) -> _Conf | None:
        """The kernel's lb_conf value of ``svc_id`` (a point lookup)."""
        raw = self._maps["lb_conf"].lookup_raw(U32.pack(svc_id))
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
                exact[idx.raw[svc_id][:SVC_KEY_SIZE]] = svc_id
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
            got = U32.unpack(vb)[0]
            if want is None:
                addr, (port_n, proto, family) = kb[:16], SVC_KEY_TAIL.unpack_from(kb, 16)
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
            addr, proto, family = RANGE_KEY.unpack(kb)
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
        if record.key.proto == "sctp" and record.source_address and (
                ":" in record.source_address) != (":" in record.key.vip):
            return "SCTP is not translated between IPv4 and IPv6 (NAT64/NAT46): its packets are dropped"
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
        if kind in ("attach", "firewall"):
            return {k: v for k, v in self.read()[kind].items() if k in keys}
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
            raw = None if svc_id is None else self._maps["lb_conf"].lookup_raw(U32.pack(svc_id))
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
                lst = self._maps["lb_backends"].lookup_raw(BE_KEY.pack(svc_id, conf.active & 1))
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
        raw = self._maps["lb_range"].lookup_raw(RANGE_KEY.pack(addr, _proto_num(key.proto), family))
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
            raw = self._maps["lb_range"].lookup_raw(RANGE_KEY.pack(addr, _proto_num(key.proto), family))
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
        for r in found.r[0 : min(int(found.count), MAX_RANGES)]:
            if (int(r.start), int(r.end)) == (key.port, key.port_end):
                return int(r.svc_id)
        return None

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
