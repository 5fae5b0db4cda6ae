"""The bpf driver's firewall: FirewallRule records into the ``lb_fw_*`` maps and back.

Why this exists: the datapath classifies packets against tables compiled from the
whole rule set (``reconciler/fwclass.py``; the C side is ``bpf/lb_firewall.h``).
A change to one rule can change many table entries, and a packet must never see a
half-written rule set, so every table exists twice: apply writes the complete new
set into the slot the datapath does not read, then flips ``lb_fw_conf.active``
(one 4-byte store inside an array value).  The slot written last time is reused
next time; what a process wrote there is remembered with the flip count
(``gen``), so one flip later it writes only the entries that differ; a process
that does not know the slot (a fresh ``lbctl apply``) writes every array entry
in one batch per map and reads the slot's trie and interface keys first, to
delete the stale ones.

A live read checks the active slot's tables against what its rules compile to;
any difference is a fault on every rule, and the apply that repairs it writes
the whole idle slot.

Each rule keeps a counter slot (``stat_id``, index of ``lb_fw_stats`` and
``lb_fw_rate``) across edits of other rules; a new rule gets the lowest free one,
zeroed before the flip.  The rule table stores each rule as configured, so a live
read gives back the records the plan compares.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from reconciler import fwclass
from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_layout as L
from reconciler.drivers.bpf_read import BpfRead
from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import FirewallEntry, Record
from reconciler.telemetry import FirewallRuleStats

_U32 = struct.Struct("<I")
_PROTO_NAMES = {v: k for k, v in fwclass.PROTOCOLS.items()}
_NS = 1_000_000_000
# The maps with one entry per (slot, ...) that apply writes; hashed ones also get stale keys deleted.
_SLOT_MAPS = ("lb_fw_rules", "lb_fw_proto", "lb_fw_port", "lb_fw_portset", "lb_fw_iface", "lb_fw_cidr")
_HASHED = ("lb_fw_iface", "lb_fw_cidr")


class _Layout:
    """The firewall's part of lb_shared.h, read on first use: an lbctl driving an older datapath
    (before the firewall, e.g. while migrating its pins) must still import this module."""

    @functools.cached_property
    def MAX_RULES(self) -> int:
        return B.const("LB_FW_MAX_RULES")

    @functools.cached_property
    def WORDS(self) -> int:
        return B.const("LB_FW_WORDS")

    @functools.cached_property
    def MAX_INTERVALS(self) -> int:
        return B.const("LB_FW_MAX_INTERVALS")

    @functools.cached_property
    def PORT_CHUNK(self) -> int:
        return B.const("LB_FW_PORT_CHUNK")

    @functools.cached_property
    def SET_BYTES(self) -> int:
        return L.sizeof("struct lb_fw_set")

    @functools.cached_property
    def CONF(self) -> struct.Struct:
        # active, gen, then (words, fields, count, pad) per slot (fmt() would give slot[] as bytes)
        conf = struct.Struct("<II" + "III4x" * 2)
        if conf.size != L.sizeof("struct lb_fw_conf") or L.offsetof("struct lb_fw_conf", "slot") != 8:
            raise B.LayoutError("struct lb_fw_conf changed: update bpf_firewall._Layout.CONF")
        return conf

    @functools.cached_property
    def RULE(self) -> struct.Struct:
        return L.fmt("struct lb_fw_rule")

    @functools.cached_property
    def CIDR_KEY(self) -> struct.Struct:
        return L.fmt("struct lb_fw_cidr_key")

    @functools.cached_property
    def IFACE_KEY(self) -> struct.Struct:
        return L.fmt("struct lb_fw_iface_key")

    @functools.cached_property
    def ACTIONS(self) -> dict[str, int]:
        return {("rateLimit" if k == "ratelimit" else k): v
                for k, v in L.enum("enum lb_fw_action", "LB_FW_").items()
                if k in ("allow", "drop", "trap", "mark", "ratelimit")}

    @functools.cached_property
    def ACTION_NAMES(self) -> dict[int, str]:
        return {v: k for k, v in self.ACTIONS.items()}

    @functools.cached_property
    def USES(self) -> dict[str, int]:
        return L.enum("enum lb_fw_uses", "LB_FW_USES_")

    @functools.cached_property
    def FIELD(self) -> dict[str, int]:
        return {"src": B.const("LB_FW_SRC"), "dst": B.const("LB_FW_DST"),
                "sport": B.const("LB_FW_SPORT"), "dport": B.const("LB_FW_DPORT")}


F = _Layout()


def set_bytes(s: int) -> bytes:
    """``struct lb_fw_set`` of the rule set ``s`` (bit i: rank i)."""
    if not s:
        return bytes(F.SET_BYTES)
    lo = ((s & -s).bit_length() - 1) // 64
    hi = (s.bit_length() - 1) // 64 + 1
    return _U32.pack(lo) + _U32.pack(hi) + s.to_bytes(F.WORDS * 8, "little")


def _cidr_fields(cidr: str | None) -> tuple[bytes, bytes, int, int]:
    if cidr is None:
        return bytes(16), bytes(16), 0, 0
    net = ipaddress.ip_network(cidr, strict=False)
    return (net.network_address.packed.ljust(16, b"\0"), net.netmask.packed.ljust(16, b"\0"),
            net.prefixlen, net.version)


def _cidr_str(addr: bytes, plen: int, family: int) -> str | None:
    if not family:
        return None
    ip = ipaddress.ip_address(addr[:4] if family == 4 else addr)
    return str(ipaddress.ip_network((ip, plen), strict=False))


def rule_bytes(r: FirewallEntry, stat_id: int) -> bytes:
    proto = fwclass.PROTOCOLS[r.protocol] if r.protocol else 0
    sp, dp = r.source_ports or (0, 0), r.destination_ports or (0, 0)
    interval = _NS // r.rate_pps if r.rate_pps else 0
    src, dst = _cidr_fields(r.source), _cidr_fields(r.destination)
    return F.RULE.pack(F.ACTIONS[r.action], proto, r.source_ports is not None,
                       r.destination_ports is not None, r.mark or 0, stat_id, r.priority, interval,
                       interval * (r.rate_burst or 0), r.rate_pps or 0, r.rate_burst or 0,
                       sp[0], sp[1], dp[0], dp[1], *src, *dst,
                       (r.in_interface or "").encode(), r.name.encode())


def rule_record(raw: bytes) -> tuple[FirewallEntry, int]:
    """The record and the stat id of an ``lb_fw_rule`` value."""
    (action, proto, has_sp, has_dp, mark, stat_id, prio, _iv, _bn, pps, burst, sp0, sp1, dp0, dp1,
     sa, _sm, splen, sfam, da, _dm, dplen, dfam, ifname, name) = F.RULE.unpack(raw)
    act = F.ACTION_NAMES.get(action, f"unknown({action})")
    rec = FirewallEntry(
        name=name.rstrip(b"\0").decode(errors="replace"), priority=prio,
        source=_cidr_str(sa, splen, sfam), destination=_cidr_str(da, dplen, dfam),
        source_ports=(sp0, sp1) if has_sp else None, destination_ports=(dp0, dp1) if has_dp else None,
        protocol=_PROTO_NAMES.get(proto, f"unknown({proto})") if proto else None,
        in_interface=ifname.rstrip(b"\0").decode(errors="replace") or None, action=act,
        mark=mark if act == "mark" else None,
        rate_pps=pps if act == "rateLimit" else None, rate_burst=burst if act == "rateLimit" else None)
    return rec, stat_id


class BpfFirewall(BpfRead):
    """read and apply of ``firewall`` records."""

    _fw_cache: dict[int, tuple[int, int, dict[str, dict[bytes, bytes]]]]  # slot -> (map id, gen, entries)
    fw_timing: dict[str, float]

    # ------------------------------------------------------------------ read

    def _fw_conf(self) -> tuple[int, int, list[tuple[int, int, int]]]:
        raw = self._maps["lb_fw_conf"].lookup_raw(_U32.pack(0)) or bytes(L.sizeof("struct lb_fw_conf"))
        v = F.CONF.unpack(raw)
        return v[0] & 1, v[1], [(v[2], v[3], v[4]), (v[5], v[6], v[7])]

    def _fw_live(self) -> dict[str, tuple[FirewallEntry, int]]:
        active, _gen, slots = self._fw_conf()
        count = min(slots[active][2], F.MAX_RULES)
        if not count:
            return {}
        lo = active * F.MAX_RULES
        out: dict[str, tuple[FirewallEntry, int]] = {}
        for k, raw in self._maps["lb_fw_rules"].items_raw(chunk=2 * F.MAX_RULES):  # one batch read
            if lo <= _U32.unpack(k)[0] < lo + count:
                rec, sid = rule_record(raw)
                out[rec.name] = (rec, sid)
        return out

    def read_firewall(self) -> dict[str, Record]:
        """The rules of the active slot; each carries the faults of the slot's tables, if any."""
        if "lb_fw_conf" not in self._maps:  # nothing pinned, or a datapath from before the firewall
            return {}
        live = self._fw_live()
        faults = tuple(self._fw_audit(live))
        return {n: replace(rec, faults=faults) if faults else rec for n, (rec, _) in live.items()}

    def _fw_audit(self, live: Mapping[str, tuple[FirewallEntry, int]]) -> list[str]:
        """What in the active slot differs from what its rules compile to (drift, corruption)."""
        active, _gen, slots = self._fw_conf()
        t = fwclass.compile_rules(rec for rec, _ in live.values())
        want = self._fw_encode(t, active, {n: sid for n, (_, sid) in live.items()})
        out = []
        expect = (t.words, sum(F.USES[f] for f in t.fields), len(t.rules))
        if slots[active] != expect:
            out.append(f"lb_fw_conf: slot {active} says {slots[active]} (words, fields, rules), "
                       f"the rules need {expect}")
        for name, entries in want.items():
            if not entries and name not in _HASHED:
                continue
            have = self._fw_slot_entries(name, active, entries)
            bad = sum(1 for k, v in entries.items() if have.get(k) != v)
            bad += sum(1 for k in have if k not in entries)
            if bad:
                out.append(f"{name}: {bad} entr{'y' if bad == 1 else 'ies'} of the active slot differ from "
                           "what the rules compile to")
        return out

    def _fw_slot_entries(self, name: str, slot: int, wanted: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
        """The entries of ``slot`` in map ``name``: all of them for hashed maps, the wanted keys of arrays."""
        m = self._maps[name]
        if name == "lb_fw_cidr":
            return {k: m.lookup_raw(k) or b"" for k in m.keys_raw() if k[4] == slot}
        if name == "lb_fw_iface":
            return {k: v for k, v in m.items_raw() if F.IFACE_KEY.unpack(k)[1] == slot}
        return {k: v for k, v in m.items_raw(chunk=4096) if k in wanted}

    def firewall_counters(self) -> dict[str, dict[str, int]]:
        """Per rule name: packets and bytes matched, packets over a rateLimit (summed over CPUs)."""
        if not self._open(create=False) or "lb_fw_conf" not in self._maps:
            return {}
        return self._fw_counts(self._fw_live())

    def _fw_counts(self, live: Mapping[str, tuple[FirewallEntry, int]]) -> dict[str, dict[str, int]]:
        """The counters of ``live``'s rules: one batch read of lb_fw_stats, per-CPU values summed."""
        stats = self._maps["lb_fw_stats"]
        wanted = {_U32.pack(sid) for _, sid in live.values()}
        sums: dict[bytes, tuple[int, int, int]] = {}
        for k, raw in stats.items_raw(chunk=F.MAX_RULES):
            if k in wanted:
                per_cpu = [struct.unpack_from("<QQQ", raw, cpu * stats.stride) for cpu in range(stats.ncpus)]
                sums[k] = (sum(v[0] for v in per_cpu), sum(v[1] for v in per_cpu), sum(v[2] for v in per_cpu))
        out = {}
        for name, (_rec, sid) in live.items():
            packets, nbytes, limited = sums.get(_U32.pack(sid), (0, 0, 0))
            out[name] = {"packets": packets, "bytes": nbytes, "limited": limited}
        return out

    def firewall_stats(self) -> list[FirewallRuleStats]:
        """``telemetry.FirewallSource`` (``/metrics``): per rule, packets matched and dropped."""
        if not self._open(create=False) or "lb_fw_conf" not in self._maps:
            return []
        live = self._fw_live()
        counts = self._fw_counts(live)
        out = []
        for name, (rec, _sid) in sorted(live.items(), key=lambda i: (i[1][0].priority, i[0])):
            c = counts[name]
            out.append(FirewallRuleStats(rule=name, action=rec.action, hits=c["packets"],
                                         rate_limited=c["limited"],
                                         dropped=c["packets"] if rec.action == "drop" else c["limited"]))
        return out

    # ----------------------------------------------------------------- apply

    def _ifindexes(self, names: Sequence[str]) -> dict[str, int]:
        def look() -> dict[str, int]:
            out = {}
            for n in names:
                try:
                    out[n] = socket.if_nametoindex(n)
                except OSError:
                    pass  # no such interface (yet): its rules match nothing
            return out

        if self.netns:
            with in_netns(self.netns):
                return look()
        return look()

    def apply_firewall(self, changes: Sequence[Change]) -> None:
        t0 = time.perf_counter()
        live = self._fw_live()
        rules = {n: rec for n, (rec, _) in live.items()}
        for ch in changes:
            if ch.action == "delete":
                rules.pop(ch.key, None)
            else:
                assert isinstance(ch.after, FirewallEntry)
                rules[ch.key] = ch.after
        repair = any(ch.before is not None and getattr(ch.before, "faults", ()) for ch in changes)
        if rules == {n: rec for n, (rec, _) in live.items()} and not repair:
            return  # nothing changes (a repeated apply): no write, no flip
        if len(rules) > F.MAX_RULES:
            raise LbctlError(f"{len(rules)} firewall rules; the datapath holds at most {F.MAX_RULES}")
        t1 = time.perf_counter()
        t = fwclass.compile_rules(rules.values())
        t2 = time.perf_counter()
        stat_ids = {n: sid for n, (_, sid) in live.items() if n in rules}
        used = set(stat_ids.values())
        fresh = []
        for r in t.rules:
            if r.name not in stat_ids:
                sid = next(i for i in range(F.MAX_RULES) if i not in used)
                used.add(sid)
                stat_ids[r.name] = sid
                fresh.append(sid)
        active, gen, slots = self._fw_conf()
        slot = 1 - active
        want = self._fw_encode(t, slot, stat_ids)
        t3 = time.perf_counter()
        slot_read = 0.0  # reading what the idle slot holds (a process that did not write it)
        m = self._maps
        if fresh:  # counters and policer of a new rule start at zero
            m["lb_fw_stats"].update_batch_raw([(_U32.pack(s), bytes(L.sizeof("struct lb_fw_counters")))
                                               for s in fresh])
            m["lb_fw_rate"].update_batch_raw([(_U32.pack(s), bytes(L.sizeof("struct lb_fw_rate")))
                                              for s in fresh])
        cache = getattr(self, "_fw_cache", None)
        if cache is None:
            cache = self._fw_cache = {}
        held = cache.get(slot)
        # Same maps (not re-created since, e.g. after `lbctl down`), exactly one flip since, and no
        # repair under way (a faulty live rule: write the whole slot).
        maps_id = B.map_id(m["lb_fw_conf"].fd)
        if held is not None and held[0] == maps_id and self._fw_gen_ok(held[1], gen) and not repair:
            have = held[2]
        else:
            t_read = time.perf_counter()
            have = self._fw_slot_keys(slot)
            slot_read += time.perf_counter() - t_read
        for name, entries in want.items():
            old = have.get(name, {})
            mp = m[name]
            if name in _HASHED:  # entries of the slot nobody wants any more
                for k in old:
                    if k not in entries:
                        mp.delete_raw(k)
            diff = [(k, v) for k, v in entries.items() if old.get(k) != v]
            if not diff:
                continue
            if name == "lb_fw_cidr":  # LPM tries have no batch update
                for k, v in diff:
                    mp.update_raw(k, v)
            else:
                mp.update_batch_raw(diff)
        cache[slot] = (maps_id, gen + 1, want)
        slots[slot] = (t.words, sum(F.USES[f] for f in t.fields), len(t.rules))
        # The flip: the datapath reads the new slot from the next packet on.
        m["lb_fw_conf"].update_raw(_U32.pack(0), F.CONF.pack(slot, gen + 1, *slots[0], *slots[1]))
        # Where the time went (seconds), for bench/firewall_bench.py.
        self.fw_timing = {"read": t1 - t0, "compile": t2 - t1, "encode": t3 - t2,
                          "kernel": time.perf_counter() - t3, "slot_read": slot_read}

    def _fw_encode(self, t: fwclass.Tables, slot: int,
                   stat_ids: Mapping[str, int]) -> dict[str, dict[bytes, bytes]]:
        """Every entry of ``slot`` the datapath reads for rule set ``t``, per map (fields in use only)."""
        out: dict[str, dict[bytes, bytes]] = {name: {} for name in _SLOT_MAPS}
        out["lb_fw_rules"] = {_U32.pack(slot * F.MAX_RULES + i): rule_bytes(r, stat_ids[r.name])
                              for i, r in enumerate(t.rules)}
        if "proto" in t.fields:
            out["lb_fw_proto"] = {_U32.pack(slot * 512 + (256 if fam == 6 else 0) + p):
                                  set_bytes(t.protos.get((fam, p), t.proto_any))
                                  for fam in (4, 6) for p in range(256)}
        step = F.PORT_CHUNK * 2
        for field in ("sport", "dport"):
            if field not in t.fields:
                continue
            base = slot * 2 + F.FIELD[field]
            sets = t.port_sets[field]
            if len(sets) > F.MAX_INTERVALS:
                raise LbctlError(f"firewall port ranges cut the ports into {len(sets)} intervals; at most "
                                 f"{F.MAX_INTERVALS} fit", "merge port ranges")
            ids = struct.pack(f"<{fwclass.PORTS}H", *t.port_ids(field))
            out["lb_fw_port"].update((_U32.pack((base << 11) + c), ids[c * step:(c + 1) * step])
                                     for c in range(fwclass.PORTS // F.PORT_CHUNK))
            out["lb_fw_portset"].update((_U32.pack(base * F.MAX_INTERVALS + i), set_bytes(s))
                                        for i, s in enumerate(sets))
        if "iface" in t.fields:
            for name, idx in self._ifindexes(sorted(t.ifaces)).items():
                out["lb_fw_iface"][F.IFACE_KEY.pack(idx, slot)] = set_bytes(t.ifaces[name])
            if t.iface_any:
                out["lb_fw_iface"][F.IFACE_KEY.pack(0, slot)] = set_bytes(t.iface_any)
        for (field, fam, plen, addr), st in t.cidrs.items():
            out["lb_fw_cidr"][F.CIDR_KEY.pack(24 + plen, slot, F.FIELD[field], fam, addr)] = set_bytes(st)
        return out

    def _fw_slot_keys(self, slot: int) -> dict[str, dict[bytes, bytes]]:
        """What this process does not know of a slot: the keys of its hashed entries (values unknown,
        so every wanted entry is written; array entries are all written)."""
        iface = {k: b"" for k, _ in self._maps["lb_fw_iface"].items_raw()
                 if F.IFACE_KEY.unpack(k)[1] == slot}
        cidr = {k: b"" for k in self._maps["lb_fw_cidr"].keys_raw() if k[4] == slot}
        return {"lb_fw_iface": iface, "lb_fw_cidr": cidr}

    @staticmethod
    def _fw_gen_ok(written: int, gen: int) -> bool:
        """A slot written at flip ``written`` still holds it at ``gen`` if exactly one flip followed."""
        return written == gen - 1

