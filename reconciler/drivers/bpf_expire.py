"""The bpf driver's idle expiry: find idle conntrack entries, end them in the datapath, send resets.

Why this exists: the ``idle.IdleExpiry`` ability of the bpf driver.  ``idle_entries``
scans lb_ct with batch reads (one pass, raw bytes); ``expire`` runs the datapath's
``lb_ct_expire`` program (BPF_PROG_TYPE_SYSCALL, through BPF_PROG_TEST_RUN) on one key,
which decides with the datapath's own clock and removes the flow atomically with its
connection count, so a packet arriving meanwhile never sees half a flow and the
count never races the datapath's; ``send_reset`` sends through raw sockets in the
box's namespace (``tcp_reset``).
"""

from __future__ import annotations

import socket
from typing import Any

from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_layout as L
from reconciler.drivers.bpf_codec import _words_addr
from reconciler.drivers.bpf_pins import EXPIRE_PROG, BpfPins
from reconciler.drivers.tcp_reset import RawResetSender
from reconciler.idle import ExpiredFlow, IdleEntry, Reset, Sender

_CT_KEY = L.fmt("struct lb_ct_key")
_CT_VALUE = L.fmt("struct lb_ct")
_KEY_SIZE = L.sizeof("struct lb_ct_key")
_PROG = EXPIRE_PROG


def _sender(ct: Any) -> Sender:
    known = int(ct.seq_known)
    return Sender(int(ct.seq_next) if known & B.const("LB_CT_SEQ_NEXT") else None,
                  int(ct.ack_seq) if known & B.const("LB_CT_SEQ_ACK") else None)


def _addr(ct_words: Any, family: int) -> str:
    return _words_addr(family, ct_words)


def _snat(ct: Any) -> bool:
    return any(int(w) for w in ct.snat_addr)


def _flow(x: Any) -> ExpiredFlow:
    """The flow of what lb_ct_expire handed back (its key's entry and, if found, the other)."""
    k, ct = x.key, x.entry
    fam = int(k.family)
    if int(ct.dir) == L.CT_FORWARD:
        fwd, rep = ct, (x.other if x.has_other else None)
        efam = int(ct.nat_family) or fam
        client, cport = _addr(k.saddr, fam), socket.ntohs(int(k.sport))
        vip, vport = _addr(k.daddr, fam), socket.ntohs(int(k.dport))
        endpoint, eport = _addr(ct.nat_addr, efam), socket.ntohs(int(ct.nat_port))
        snat = _snat(ct)
        source = _addr(ct.snat_addr, efam) if snat else client
        sport = socket.ntohs(int(ct.snat_port)) if snat else cport
    else:  # a reply entry: endpoint -> the source it sees; it restores the VIP and the client
        fwd, rep = (x.other if x.has_other else None), ct
        efam = fam
        cfam = int(ct.nat_family) or fam
        endpoint, eport = _addr(k.saddr, fam), socket.ntohs(int(k.sport))
        source, sport = _addr(k.daddr, fam), socket.ntohs(int(k.dport))
        vip, vport = _addr(ct.nat_addr, cfam), socket.ntohs(int(ct.nat_port))
        client, cport = _addr(ct.snat_addr, cfam), socket.ntohs(int(ct.snat_port))
        fam = cfam
    return ExpiredFlow(
        proto=int(k.proto), state=L.CT_STATES.get(int(fwd.state), "?") if fwd is not None else "",
        dsr=int(ct.mode) == B.const("LB_MODE_DSR"), family=fam, client=client, client_port=cport,
        vip=vip, vip_port=vport, endpoint_family=efam, endpoint=endpoint, endpoint_port=eport,
        source=source, source_port=sport,
        client_sends=_sender(fwd) if fwd is not None else Sender(),
        endpoint_sends=_sender(rep) if rep is not None else Sender())


class BpfExpire(BpfPins):
    """``idle.IdleExpiry`` for the bpf driver."""

    _resets: RawResetSender | None = None

    def idle_entries(self, now_ns: int) -> list[IdleEntry]:
        if not self._open(create=False):
            return []
        closing, fin_wait, forward = L.CT_CLOSING_TIMEOUT, L.CT_FIN_WAIT, L.CT_FORWARD
        out = []
        for _, kv, vv in self._maps["lb_ct"].chunks_raw(4096):
            for i, v in enumerate(_CT_VALUE.iter_unpack(vv)):
                timeout = min(v[6], closing) if v[3] >= fin_wait else v[6]
                if (now_ns - v[8]) % 2**64 > timeout * 1_000_000_000:  # u64, as the datapath computes it
                    out.append(IdleEntry(bytes(kv[i * _KEY_SIZE:(i + 1) * _KEY_SIZE]), v[2] == forward))
        return out

    def expire(self, key: bytes) -> ExpiredFlow | None:
        if not self._open(create=False):
            return None
        # the program runs from this process's loaded object (it reuses the pinned maps)
        fd = self._prog(_PROG)
        ffi = B.lib().ffi
        x = ffi.new("struct lb_ct_expire *")
        ffi.memmove(ffi.addressof(x[0], "key"), key, _KEY_SIZE)
        B.run_syscall(fd, x)
        if int(x.result) != B.const("LB_EXPIRE_DONE"):
            return None
        return _flow(x)

    def send_reset(self, reset: Reset) -> None:
        if self._resets is None:
            self._resets = RawResetSender(self.netns)
        self._resets.send(reset)
