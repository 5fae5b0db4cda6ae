"""Drift made behind lbctl's back: every live object it owns, deleted, corrupted, replaced.

Why this exists: the drift tests of the bpf driver (``drivers/test_bpf_drift.py``)
and of the daemon (``test_watch_drift_root.py``) break the same objects the same
way, on different boxes.  Each ``Case`` changes one kind of object from outside
lbctl, as an operator with bpftool, tc or ip would (through a second handle on
the pinned maps where a byte-level change is easier than bpftool's hex), and
names the records whose plan must show it.

The box must hold (``Target``): a weighted service with allowed sources, a
Maglev service, two port-range services on one VIP, a tc and an XDP attachment,
and a VIP address on lbctl's interface.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from reconciler.drivers import _libbpf as B
from reconciler.drivers.bpf import BpfDriver
from reconciler.records import ServiceKey

REPO = Path(__file__).resolve().parents[2]
EMPTY_OBJ = REPO / "build" / "bpf" / "lb_empty.o"  # empty_tc / empty_xdp: a foreign program


@dataclass(frozen=True)
class Target:
    netns: str
    pin_root: str
    weighted: str  # key of an rr/hash service with allowed sources
    maglev: str  # key of a Maglev service
    ranges: tuple[str, str]  # two port-range services on one VIP and protocol
    tc_if: str
    xdp_if: str
    vip: str  # an IPv4 VIP on lbctl's interface
    vip_if: str = "lbctl0"


class Maps:
    """A second handle on the pinned maps (another process's view, like bpftool's)."""

    def __init__(self, t: Target) -> None:
        self.t = t
        self.drv = BpfDriver(pin_root=t.pin_root, netns=t.netns)
        self.drv.read()

    def m(self, name: str) -> B.Map:
        return self.drv.map(name)

    def sid(self, key: str) -> int:
        idx = self.drv._index
        assert idx is not None
        return idx.ids[key]

    def conf(self, key: str) -> bytes:
        raw = self.m("lb_conf").lookup_raw(struct.pack("<I", self.sid(key)))
        assert raw is not None
        return raw

    def put(self, name: str, key: bytes, value: bytes) -> None:
        self.m(name).update_batch_raw([(key, value)])

    def list_key(self, key: str) -> bytes:
        active = struct.unpack_from("<I", self.conf(key), 36)[0]
        return struct.pack("<II", self.sid(key), active)

    def sel_key(self, key: str, chunk: int = 0) -> bytes:
        sid, active = struct.unpack("<II", self.list_key(key))
        return struct.pack("<IHH", sid, active, chunk)

    def range_key(self, key: str) -> bytes:
        return self.conf(key)[:16] + bytes([self.conf(key)[18], self.conf(key)[19], 0, 0])

    def close(self) -> None:
        self.drv.close()


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def _patch(raw: bytes, off: int, data: bytes) -> bytes:
    return raw[:off] + data + raw[off + len(data):]


# --- lb_svc -------------------------------------------------------------------------------------

def svc_delete(t: Target, m: Maps) -> None:
    """bpftool map delete, as in the issue."""
    key = " ".join(f"{b:02x}" for b in m.conf(t.weighted)[:20])
    sh("bpftool", "map", "delete", "pinned", os.path.join(t.pin_root, "lb_svc"), "key", "hex", *key.split())


def svc_corrupt(t: Target, m: Maps) -> None:
    m.put("lb_svc", m.conf(t.weighted)[:20], struct.pack("<I", m.sid(t.maglev)))


def svc_replace(t: Target, m: Maps) -> None:
    """The entry moved to another port (a key no service has)."""
    k = m.conf(t.weighted)[:20]
    m.m("lb_svc").delete_raw(k)
    port = struct.unpack_from("!H", k, 16)[0]
    m.put("lb_svc", k[:16] + struct.pack("!H", port + 1) + k[18:], struct.pack("<I", m.sid(t.weighted)))


# --- lb_range -----------------------------------------------------------------------------------

def range_delete(t: Target, m: Maps) -> None:
    m.m("lb_range").delete_raw(m.range_key(t.ranges[0]))


def range_corrupt(t: Target, m: Maps) -> None:
    k = m.range_key(t.ranges[0])
    raw = m.m("lb_range").lookup_raw(k)
    assert raw is not None
    m.put("lb_range", k, _patch(raw, 0, struct.pack("<I", 9)))  # count past LB_MAX_RANGES


def range_replace(t: Target, m: Maps) -> None:
    """The list rewritten with the first range pointing at the second's service."""
    k = m.range_key(t.ranges[0])
    a, b = (ServiceKey.parse(r) for r in t.ranges)
    entries = sorted([(a.port, a.port_end, m.sid(t.ranges[1])), (b.port, b.port_end, m.sid(t.ranges[1]))])
    value = struct.pack("<II", len(entries), 0) + b"".join(struct.pack("<HHI", *e) for e in entries)
    m.put("lb_range", k, value.ljust(8 + 8 * 8, b"\0"))


# --- lb_conf ------------------------------------------------------------------------------------

def conf_delete(t: Target, m: Maps) -> None:
    m.m("lb_conf").delete_raw(struct.pack("<I", m.sid(t.weighted)))


def conf_corrupt(t: Target, m: Maps) -> None:
    """Selection byte out of range, a flag bit lbctl never sets, one bit of an allowed-source mask."""
    raw = m.conf(t.weighted)
    flags = struct.unpack_from("<I", raw, 24)[0]
    raw = _patch(raw, 22, bytes([9]))
    raw = _patch(raw, 24, struct.pack("<I", flags | 0x80))
    raw = _patch(raw, 44 + 16, bytes([raw[44 + 16] ^ 0x01]))
    m.put("lb_conf", struct.pack("<I", m.sid(t.weighted)), raw)


def conf_active(t: Target, m: Maps) -> None:
    """The active slot flipped to the list nobody published."""
    raw = m.conf(t.weighted)
    active = struct.unpack_from("<I", raw, 36)[0]
    m.put("lb_conf", struct.pack("<I", m.sid(t.weighted)), _patch(raw, 36, struct.pack("<I", 1 - active)))


def conf_replace(t: Target, m: Maps) -> None:
    """One service's configuration overwritten with another's (two ids now claim one key)."""
    m.put("lb_conf", struct.pack("<I", m.sid(t.weighted)), m.conf(t.maglev))


# --- lb_backends --------------------------------------------------------------------------------

def list_delete(t: Target, m: Maps) -> None:
    m.m("lb_backends").delete_raw(m.list_key(t.weighted))


def list_corrupt(t: Target, m: Maps) -> None:
    """An endpoint's port, another service's counter slot, garbage after the last endpoint."""
    k = m.list_key(t.weighted)
    raw = m.m("lb_backends").lookup_raw(k)
    other = m.m("lb_backends").lookup_raw(m.list_key(t.maglev))
    assert raw is not None and other is not None
    count = struct.unpack_from("<I", raw)[0]
    raw = _patch(raw, 16 + 16, struct.pack("!H", 1))
    raw = _patch(raw, 16 + 28 + 24, other[16 + 24:16 + 28])
    raw = _patch(raw, 16 + 28 * count + 3, b"\x5a")
    m.put("lb_backends", k, raw)


def list_replace(t: Target, m: Maps) -> None:
    other = m.m("lb_backends").lookup_raw(m.list_key(t.maglev))
    assert other is not None
    m.put("lb_backends", m.list_key(t.weighted), other)


# --- lb_sel -------------------------------------------------------------------------------------

def sel_delete(t: Target, m: Maps) -> None:
    m.m("lb_sel").delete_raw(m.sel_key(t.weighted))


def sel_corrupt(t: Target, m: Maps) -> None:
    for key in (t.weighted, t.maglev):
        raw = m.m("lb_sel").lookup_raw(m.sel_key(key))
        assert raw is not None
        m.put("lb_sel", m.sel_key(key), raw[2:4] + raw[0:2] + raw[4:] if raw[:2] != raw[2:4]
              else _patch(raw, 0, b"\xff\x00"))


def sel_replace(t: Target, m: Maps) -> None:
    other = m.m("lb_sel").lookup_raw(m.sel_key(t.maglev))
    assert other is not None
    m.put("lb_sel", m.sel_key(t.weighted), other)


def maglev_delete(t: Target, m: Maps) -> None:
    m.m("lb_sel").delete_raw(m.sel_key(t.maglev, 1))


# --- attachments and programs -------------------------------------------------------------------

def _attach_key(ifname: str) -> bytes:
    return ifname.encode().ljust(16, b"\0")


def attach_delete(t: Target, m: Maps) -> None:
    m.m("lb_attach").delete_raw(_attach_key(t.tc_if))


def attach_corrupt(t: Target, m: Maps) -> None:
    raw = m.m("lb_attach").lookup_raw(_attach_key(t.xdp_if))
    assert raw is not None
    m.put("lb_attach", _attach_key(t.xdp_if), _patch(raw, 8, struct.pack("<I", 1)))  # prog_id


def tc_delete(t: Target, m: Maps) -> None:
    sh("tc", "-n", t.netns, "filter", "del", "dev", t.tc_if, "ingress")


def tc_replace(t: Target, m: Maps) -> None:
    """Another program in lbctl's place (its filter's handle and priority)."""
    sh("tc", "-n", t.netns, "filter", "replace", "dev", t.tc_if, "ingress", "protocol", "all", "handle", "1",
       "prio", "1", "bpf", "da", "obj", str(EMPTY_OBJ), "sec", "tc")


def xdp_delete(t: Target, m: Maps) -> None:
    sh("ip", "-n", t.netns, "link", "set", "dev", t.xdp_if, "xdp", "off")


def xdp_replace(t: Target, m: Maps) -> None:
    sh("ip", "-n", t.netns, "-force", "link", "set", "dev", t.xdp_if, "xdp", "obj", str(EMPTY_OBJ),
       "sec", "xdp")


def prog_pin_replace(t: Target, m: Maps) -> None:
    """lbctl's pinned tc program replaced by another program (what reads compare hooks with)."""
    path = os.path.join(t.pin_root, "prog_tc")
    os.unlink(path)
    sh("bpftool", "prog", "load", str(EMPTY_OBJ), path, "type", "classifier")


def prog_pin_delete(t: Target, m: Maps) -> None:
    os.unlink(os.path.join(t.pin_root, "prog_xdp"))


# --- VIPs (local routes through the VIP interface) ---------------------------------------------

def _unroute(t: Target, vip: str) -> None:
    sh("ip", "-n", t.netns, "route", "del", "local", f"{vip}/32", "dev", t.vip_if, "table", "local")


def vip_delete(t: Target, m: Maps) -> None:
    _unroute(t, t.vip)


def vip_corrupt(t: Target, m: Maps) -> None:
    """Put back as a /24 address with host scope instead of lbctl's route (deleting that address
    later flushes every IPv4 route through the link: the fix must put the others back)."""
    _unroute(t, t.vip)
    sh("ip", "-n", t.netns, "addr", "add", f"{t.vip}/24", "dev", t.vip_if, "scope", "host")


def vip_replace(t: Target, m: Maps) -> None:
    _unroute(t, t.vip)
    sh("ip", "-n", t.netns, "route", "add", "local", "203.0.113.99/32", "dev", t.vip_if, "table", "local",
       "proto", "108")


Where = Callable[[Target], tuple[str, str]]  # (record kind, key) the plan must change


@dataclass(frozen=True)
class Case:
    name: str
    do: Callable[[Target, Maps], None]
    shows: tuple[Where, ...]  # records the plan must change


def _w(kind: str) -> Where:
    return lambda t: (kind, t.weighted)


CASES: tuple[Case, ...] = (
    Case("lb_svc-delete", svc_delete, (_w("service"),)),
    Case("lb_svc-corrupt", svc_corrupt, (_w("service"),)),
    Case("lb_svc-replace", svc_replace, (_w("service"),)),
    Case("lb_range-delete", range_delete, (lambda t: ("service", t.ranges[0]),
                                           lambda t: ("service", t.ranges[1]))),
    Case("lb_range-corrupt", range_corrupt, (lambda t: ("service", t.ranges[0]),)),
    Case("lb_range-replace", range_replace, (lambda t: ("service", t.ranges[0]),)),
    Case("lb_conf-delete", conf_delete, (_w("service"), _w("endpoints"))),
    Case("lb_conf-corrupt", conf_corrupt, (_w("service"),)),
    Case("lb_conf-active-slot", conf_active, (_w("endpoints"),)),
    Case("lb_conf-replace", conf_replace, (_w("service"), lambda t: ("service", t.maglev))),
    Case("lb_backends-delete", list_delete, (_w("endpoints"),)),
    Case("lb_backends-corrupt", list_corrupt, (_w("endpoints"), lambda t: ("endpoints", t.maglev))),
    Case("lb_backends-replace", list_replace, (_w("endpoints"),)),
    Case("lb_sel-delete", sel_delete, (_w("endpoints"),)),
    Case("lb_sel-corrupt", sel_corrupt, (_w("endpoints"), lambda t: ("endpoints", t.maglev))),
    Case("lb_sel-replace", sel_replace, (_w("endpoints"),)),
    Case("lb_sel-maglev-delete", maglev_delete, (lambda t: ("endpoints", t.maglev),)),
    Case("lb_attach-delete", attach_delete, (lambda t: ("attach", t.tc_if),)),
    Case("lb_attach-corrupt", attach_corrupt, (lambda t: ("attach", t.xdp_if),)),
    Case("tc-delete", tc_delete, (lambda t: ("attach", t.tc_if),)),
    Case("tc-replace", tc_replace, (lambda t: ("attach", t.tc_if),)),
    Case("xdp-delete", xdp_delete, (lambda t: ("attach", t.xdp_if),)),
    Case("xdp-replace", xdp_replace, (lambda t: ("attach", t.xdp_if),)),
    Case("prog-pin-replace", prog_pin_replace, (lambda t: ("attach", t.tc_if),)),
    Case("prog-pin-delete", prog_pin_delete, (lambda t: ("attach", t.xdp_if),)),
)

VIP_CASES: tuple[Case, ...] = (
    Case("vip-delete", vip_delete, (lambda t: ("vip", t.vip),)),
    Case("vip-corrupt", vip_corrupt, (lambda t: ("vip", t.vip),)),
    Case("vip-replace", vip_replace, (lambda t: ("vip", t.vip), lambda t: ("vip", "203.0.113.99"))),
)


def break_it(case: Case, t: Target) -> None:
    m = Maps(t)
    try:
        case.do(t, m)
    finally:
        m.close()
