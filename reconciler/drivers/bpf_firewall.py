"""The bpf driver's firewall: FirewallRule records into the ``lb_fw_*`` maps and back.

Why this exists: the datapath classifies packets against tables compiled from the
whole rule set (``reconciler/fwclass.py``; the C side is ``bpf/lb_firewall.h``).
A change to one rule can change many table entries, and a packet must never see a
half-written rule set, so every table exists twice: apply writes the complete new
set into the slot the datapath does not read, then flips ``lb_fw_conf.active``
(one 4-byte store inside an array value).  The slot written last time is reused
next time; what it held is remembered (``gen``) so a process writes only what
differs, or, not knowing it, reads the slot's trie keys once.

Each rule keeps a counter slot (``stat_id``, index of ``lb_fw_stats`` and
``lb_fw_rate``) across edits of other rules; a new rule gets the lowest free one,
zeroed before the flip.  The rule table stores each rule as configured, so a live
read gives back the records the plan compares.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence

from reconciler import fwclass
from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_layout as L
from reconciler.drivers.bpf_read import BpfRead
from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import FirewallEntry, Record

MAX_RULES = B.const("LB_FW_MAX_RULES")
WORDS = B.const("LB_FW_WORDS")
MAX_INTERVALS = B.const("LB_FW_MAX_INTERVALS")
PORT_CHUNK = B.const("LB_FW_PORT_CHUNK")
_SET_BYTES = L.sizeof("struct lb_fw_set")
# active, gen, then (words, fields, count, pad) per slot (fmt() would give slot[] as bytes)
_CONF = struct.Struct("<II" + "III4x" * 2)
if _CONF.size != L.sizeof("struct lb_fw_conf") or L.offsetof("struct lb_fw_conf", "slot") != 8:
    raise B.LayoutError("struct lb_fw_conf changed: update bpf_firewall._CONF")
_RULE = L.fmt("struct lb_fw_rule")
_CIDR_KEY = L.fmt("struct lb_fw_cidr_key")
_IFACE_KEY = L.fmt("struct lb_fw_iface_key")
_U32 = struct.Struct("<I")
_ACTIONS = {("rateLimit" if k == "ratelimit" else k): v
            for k, v in L.enum("enum lb_fw_action", "LB_FW_").items()
            if k in ("allow", "drop", "trap", "mark", "ratelimit")}
_ACTION_NAMES = {v: k for k, v in _ACTIONS.items()}
_USES = L.enum("enum lb_fw_uses", "LB_FW_USES_")
_FIELD = {"src": B.const("LB_FW_SRC"), "dst": B.const("LB_FW_DST"),
          "sport": B.const("LB_FW_SPORT"), "dport": B.const("LB_FW_DPORT")}
_PROTO_NAMES = {v: k for k, v in fwclass.PROTOCOLS.items()}
_NS = 1_000_000_000


def set_bytes(s: int) -> bytes:
    """``struct lb_fw_set`` of the rule set ``s`` (bit i: rank i)."""
    if not s:
        return bytes(_SET_BYTES)
    lo = ((s & -s).bit_length() - 1) // 64
    hi = (s.bit_length() - 1) // 64 + 1
    return _U32.pack(lo) + _U32.pack(hi) + s.to_bytes(WORDS * 8, "little")


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
    return _RULE.pack(_ACTIONS[r.action], proto, r.source_ports is not None, r.destination_ports is not None,
                      r.mark or 0, stat_id, r.priority, interval, interval * (r.rate_burst or 0),
                      r.rate_pps or 0, r.rate_burst or 0, sp[0], sp[1], dp[0], dp[1], *src, *dst,
                      (r.in_interface or "").encode(), r.name.encode())


def rule_record(raw: bytes) -> tuple[FirewallEntry, int]:
    """The record and the stat id of an ``lb_fw_rule`` value."""
    (action, proto, has_sp, has_dp, mark, stat_id, prio, _iv, _bn, pps, burst, sp0, sp1, dp0, dp1,
     sa, _sm, splen, sfam, da, _dm, dplen, dfam, ifname, name) = _RULE.unpack(raw)
    act = _ACTION_NAMES.get(action, f"unknown({action})")
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

    _fw_cache: dict[int, tuple[int, dict[bytes, bytes]]]  # slot -> (gen written, trie entries)

    # ------------------------------------------------------------------ read

    def _fw_conf(self) -> tuple[int, int, list[tuple[int, int, int]]]:
        raw = self._maps["lb_fw_conf"].lookup_raw(_U32.pack(0)) or bytes(L.sizeof("struct lb_fw_conf"))
        v = _CONF.unpack(raw)
        return v[0] & 1, v[1], [(v[2], v[3], v[4]), (v[5], v[6], v[7])]

    def _fw_live(self) -> dict[str, tuple[FirewallEntry, int]]:
        active, _gen, slots = self._fw_conf()
        count = min(slots[active][2], MAX_RULES)
        rules = self._maps["lb_fw_rules"]
        out: dict[str, tuple[FirewallEntry, int]] = {}
        for rank in range(count):
            raw = rules.lookup_raw(_U32.pack(active * MAX_RULES + rank))
            if raw is not None:
                rec, sid = rule_record(raw)
                out[rec.name] = (rec, sid)
        return out

    def read_firewall(self) -> dict[str, Record]:
        if not self._maps:
            return {}
        return {n: rec for n, (rec, _) in self._fw_live().items()}

    def firewall_counters(self) -> dict[str, dict[str, int]]:
        """Per rule name: packets and bytes matched, packets over a rateLimit (summed over CPUs)."""
        if not self._open(create=False):
            return {}
        stats = self._maps["lb_fw_stats"]
        out: dict[str, dict[str, int]] = {}
        for name, (_rec, sid) in self._fw_live().items():
            raw = stats.lookup_raw(_U32.pack(sid)) or b""
            tot = [0, 0, 0]
            for cpu in range(stats.ncpus):
                vals = struct.unpack_from("<QQQ", raw, cpu * stats.stride) if raw else (0, 0, 0)
                tot = [a + b for a, b in zip(tot, vals, strict=True)]
            out[name] = {"packets": tot[0], "bytes": tot[1], "limited": tot[2]}
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
        live = self._fw_live()
        rules = {n: rec for n, (rec, _) in live.items()}
        for ch in changes:
            if ch.action == "delete":
                rules.pop(ch.key, None)
            else:
                assert isinstance(ch.after, FirewallEntry)
                rules[ch.key] = ch.after
        if len(rules) > MAX_RULES:
            raise LbctlError(f"{len(rules)} firewall rules; the datapath holds at most {MAX_RULES}")
        t = fwclass.compile_rules(rules.values())
        stat_ids = {n: sid for n, (_, sid) in live.items() if n in rules}
        used = set(stat_ids.values())
        fresh = []
        for r in t.rules:
            if r.name not in stat_ids:
                sid = next(i for i in range(MAX_RULES) if i not in used)
                used.add(sid)
                stat_ids[r.name] = sid
                fresh.append(sid)
        active, gen, slots = self._fw_conf()
        slot = 1 - active
        m = self._maps
        if fresh:  # counters and policer of a new rule start at zero
            m["lb_fw_stats"].update_batch_raw([(_U32.pack(s), bytes(L.sizeof("struct lb_fw_counters")))
                                               for s in fresh])
            m["lb_fw_rate"].update_batch_raw([(_U32.pack(s), bytes(L.sizeof("struct lb_fw_rate")))
                                              for s in fresh])
        m["lb_fw_rules"].update_batch_raw([(_U32.pack(slot * MAX_RULES + i), rule_bytes(r, stat_ids[r.name]))
                                           for i, r in enumerate(t.rules)])
        if "proto" in t.fields:
            m["lb_fw_proto"].update_batch_raw([
                (_U32.pack(slot * 512 + (256 if fam == 6 else 0) + p),
                 set_bytes(t.protos.get((fam, p), t.proto_any)))
                for fam in (4, 6) for p in range(256)])
        for field in ("sport", "dport"):
            if field in t.fields:
                self._fw_write_ports(t, slot, field)
        self._fw_write_ifaces(t, slot)
        self._fw_write_cidrs(t, slot, gen)
        words = t.words
        fields = sum(_USES[f] for f in t.fields)
        slots[slot] = (words, fields, len(t.rules))
        # The flip: the datapath reads the new slot from the next packet on.
        m["lb_fw_conf"].update_raw(_U32.pack(0), _CONF.pack(slot, gen + 1, *slots[0], *slots[1]))

    def _fw_write_ports(self, t: fwclass.Tables, slot: int, field: str) -> None:
        base = slot * 2 + _FIELD[field]
        sets = t.port_sets[field]
        if len(sets) > MAX_INTERVALS:
            raise LbctlError(f"firewall port ranges cut the ports into {len(sets)} intervals; at most "
                             f"{MAX_INTERVALS} fit")
        ids = struct.pack(f"<{fwclass.PORTS}H", *t.port_ids(field))
        step = PORT_CHUNK * 2
        self._maps["lb_fw_port"].update_batch_raw([
            (_U32.pack((base << 11) + c), ids[c * step:(c + 1) * step])
            for c in range(fwclass.PORTS // PORT_CHUNK)])
        self._maps["lb_fw_portset"].update_batch_raw([
            (_U32.pack(base * MAX_INTERVALS + i), set_bytes(s)) for i, s in enumerate(sets)])

    def _fw_write_ifaces(self, t: fwclass.Tables, slot: int) -> None:
        m = self._maps["lb_fw_iface"]
        want: dict[bytes, bytes] = {}
        if "iface" in t.fields:
            for name, idx in self._ifindexes(sorted(t.ifaces)).items():
                want[_IFACE_KEY.pack(idx, slot)] = set_bytes(t.ifaces[name])
            if t.iface_any:
                want[_IFACE_KEY.pack(0, slot)] = set_bytes(t.iface_any)
        stale = [k for k, _ in m.items_raw() if _IFACE_KEY.unpack(k)[1] == slot and k not in want]
        for k in stale:
            m.delete_raw(k)
        if want:
            m.update_batch_raw(list(want.items()))

    def _fw_write_cidrs(self, t: fwclass.Tables, slot: int, gen: int) -> None:
        """The slot's trie entries: only what differs from what the slot holds."""
        m = self._maps["lb_fw_cidr"]
        want: dict[bytes, bytes] = {}
        for (field, fam, plen, addr), s in t.cidrs.items():
            want[_CIDR_KEY.pack(24 + plen, slot, _FIELD[field], fam, addr)] = set_bytes(s)
        cache = getattr(self, "_fw_cache", None)
        if cache is None:
            cache = self._fw_cache = {}
        held = cache.get(slot)
        if held is not None and self._fw_gen_ok(held[0], gen):
            have = held[1]
        else:  # not written by this process last time: look at what the slot holds
            have = {}
            for k in m.keys_raw():
                if k[4] == slot:
                    have[k] = b""  # unknown value: rewritten if wanted
        for k in have:
            if k not in want:
                m.delete_raw(k)
        for k, v in want.items():
            if have.get(k) != v:
                m.update_raw(k, v)
        cache[slot] = (gen + 1, want)

    @staticmethod
    def _fw_gen_ok(written: int, gen: int) -> bool:
        """A slot written at flip ``written`` still holds it at ``gen`` if exactly one flip followed."""
        return written == gen - 1

