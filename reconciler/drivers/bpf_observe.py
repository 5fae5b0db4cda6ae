"""The bpf driver's observations for ``lbctl get``: counters, conntrack, connection counts.

Why this exists: reading the datapath's own state (per-CPU counters, flows) is
not part of the reconcile loop; it only reads, except ``sync_conn_counts``.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_layout as L
from reconciler.drivers.bpf_codec import (
    _MODE_NAMES,
    _PROTO_NAMES,
    _words_addr,
)
from reconciler.drivers.bpf_layout import (
    CT_STATES,
    F_HAS_ENDPOINTS,
)
from reconciler.drivers.bpf_read import BpfRead
from reconciler.records import ServiceKey


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
    source: str  # the source the endpoint sees (the client's, or the box's under source NAT)
    source_port: int
    mode: str
    service: str
    state: str
    age_s: float
    idle_s: float
    expired: bool


class BpfObserve(BpfRead):
    """Counters, flows and least-connection counts."""


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
            bfam = int(v.nat_family) or fam  # NAT64/NAT46: the endpoint's family
            snat = any(int(w) for w in v.snat_addr)
            conf = confs.get(int(v.svc_id))
            timeout = int(v.timeout)
            if int(v.state) >= L.CT_FIN_WAIT:
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
