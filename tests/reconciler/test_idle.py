"""The idle sweeper (pure): which flows it ends, the RSTs they get, their bytes, and the daemon's timer."""

from __future__ import annotations

import io
import ipaddress
import struct
from dataclasses import dataclass, field, replace

import pytest

from reconciler.idle import (
    ExpiredFlow,
    IdleEntry,
    IdleExpiry,
    IdleSweeper,
    Reset,
    Sender,
    SweepTotals,
    resets_for,
    rst_packet,
)
from reconciler.logs import EventLog
from reconciler.watch import Daemon, Options
from tests.reconciler.watch_fakes import ScriptedEngine

TCP = ExpiredFlow(proto=6, state="established", dsr=False, family=4, client="10.98.0.5", client_port=40000,
                  vip="10.97.0.1", vip_port=80, endpoint_family=4, endpoint="10.99.0.10", endpoint_port=8080,
                  source="10.98.0.5", source_port=40000,
                  client_sends=Sender(seq_next=106, ack=5001), endpoint_sends=Sender(seq_next=5001, ack=106))


@dataclass
class Entry:
    forward: bool
    seen_ns: int
    timeout_s: int
    flow: ExpiredFlow | None  # what ending it hands back (None: its flow is gone already)


@dataclass
class FakeConntrack:
    """An in-memory conntrack with the bpf driver's ``IdleExpiry`` behaviour; ``now`` is its clock."""

    entries: dict[bytes, Entry] = field(default_factory=dict)
    now: int = 0
    sent: list[Reset] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # directions whose sends fail

    def idle_entries(self, now_ns: int) -> list[IdleEntry]:
        return [IdleEntry(k, e.forward) for k, e in self.entries.items()
                if now_ns - e.seen_ns > e.timeout_s * 10**9]

    def expire(self, key: bytes) -> ExpiredFlow | None:
        e = self.entries.get(key)
        if e is None or self.now - e.seen_ns <= e.timeout_s * 10**9:
            return None
        del self.entries[key]
        if e.forward:  # the flow's reply entry goes with it
            self.entries.pop(key + b"-reply", None)
        return e.flow

    def send_reset(self, reset: Reset) -> None:
        if reset.to in self.refuse:
            raise OSError(101, "Network is unreachable")
        self.sent.append(reset)


def test_the_fake_is_what_the_driver_is() -> None:
    assert isinstance(FakeConntrack(), IdleExpiry)


def _box(flow: ExpiredFlow, seen_s: int = 0, timeout_s: int = 30) -> FakeConntrack:
    ct = FakeConntrack()
    ct.entries[b"f"] = Entry(True, seen_s * 10**9, timeout_s, flow)
    ct.entries[b"f-reply"] = Entry(False, seen_s * 10**9, timeout_s, None)
    return ct


def test_an_idle_established_tcp_flow_is_reset_on_both_sides_once_past_its_timeout() -> None:
    ct = _box(TCP)
    sweeper = IdleSweeper(clock=lambda: ct.now)
    ct.now = 10 * 10**9
    assert sweeper.sweep(ct).expired == 0 and ct.sent == [] and len(ct.entries) == 2  # alive at 10 s
    ct.now = 31 * 10**9
    done = sweeper.sweep(ct)
    assert (done.expired, done.resets) == (1, {"client": 1, "endpoint": 1})
    assert ct.sent == [Reset("client", 4, "10.97.0.1", 80, "10.98.0.5", 40000, 5001),
                       Reset("endpoint", 4, "10.98.0.5", 40000, "10.99.0.10", 8080, 106)]
    assert ct.entries == {}, "the reply entry went with its flow, and was not ended twice"
    assert sweeper.sweep(ct).expired == 0
    assert (sweeper.totals.sweeps, sweeper.totals.expired, sweeper.totals.resets["client"]) == (3, 1, 1)


@pytest.mark.parametrize("proto,state", [(17, "active"), (1, "active"), (6, "syn-sent"), (6, "fin-wait"),
                                         (6, "closed")])
def test_other_flows_end_silently(proto: int, state: str) -> None:
    ct = _box(replace(TCP, proto=proto, state=state))
    ct.now = 31 * 10**9
    done = IdleSweeper(clock=lambda: ct.now).sweep(ct)
    assert done.expired == 1 and ct.sent == [] and ct.entries == {}


def test_a_flow_live_again_in_the_datapath_is_kept() -> None:
    """The driver's scan and the datapath's decision may disagree (a packet came in between): the
    datapath's ``expire`` wins."""
    ct = _box(TCP)
    ct.now = 10 * 10**9  # the datapath's clock
    done = IdleSweeper(clock=lambda: 31 * 10**9).sweep(ct)  # the scan thought it idle
    assert done.expired == 0 and ct.sent == [] and len(ct.entries) == 2


def test_forward_entries_are_ended_before_reply_entries() -> None:
    ct = FakeConntrack()
    ct.entries[b"f-reply"] = Entry(False, 0, 30, None)  # listed first
    ct.entries[b"f"] = Entry(True, 0, 30, TCP)
    ct.now = 31 * 10**9
    IdleSweeper(clock=lambda: ct.now).sweep(ct)
    assert [r.to for r in ct.sent] == ["client", "endpoint"]


def test_a_refused_send_is_counted_and_the_sweep_goes_on() -> None:
    ct = _box(TCP)
    ct.refuse = {"client"}
    ct.now = 31 * 10**9
    done = IdleSweeper(clock=lambda: ct.now).sweep(ct)
    assert (done.send_errors, done.resets) == (1, {"client": 0, "endpoint": 1})


def test_resets_use_the_other_sides_next_sequence_number_else_the_last_ack() -> None:
    assert [r.seq for r in resets_for(TCP)] == [5001, 106]
    no_reply = replace(TCP, endpoint_sends=Sender())
    assert [r.seq for r in resets_for(no_reply)] == [5001, 106]  # the client's ack: its receive next
    dsr = replace(TCP, dsr=True, endpoint_sends=Sender())
    assert [(r.to, r.seq) for r in resets_for(dsr)] == [("client", 5001)], "DSR: no endpoint reset"
    unseen = replace(TCP, client_sends=Sender(), endpoint_sends=Sender())
    assert resets_for(unseen) == [], "numbers never seen (a flow from before layout v4)"


def test_nat64_and_source_nat_resets_come_from_the_addresses_each_side_knows() -> None:
    flow = replace(TCP, endpoint_family=6, endpoint="fd00:99::10", source="fd00:99::1", source_port=2048)
    client, endpoint = resets_for(flow)
    assert (client.family, client.src, client.dst) == (4, "10.97.0.1", "10.98.0.5")
    assert (endpoint.family, endpoint.src, endpoint.sport) == (6, "fd00:99::1", 2048)
    assert endpoint.dst == "fd00:99::10"


def _csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@pytest.mark.parametrize("family,src,dst", [(4, "10.97.0.1", "10.98.0.5"), (6, "fd00:97::1", "fd00:98::5")])
def test_rst_packet_bytes_and_checksums(family: int, src: str, dst: str) -> None:
    pkt = rst_packet(Reset("client", family, src, 80, dst, 40000, 0xFFFFFFF0))
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if family == 4:
        ip, tcp = pkt[:20], pkt[20:]
        assert ip[0] == 0x45 and ip[9] == 6 and ip[12:16] == s and ip[16:20] == d
        assert struct.unpack("!H", ip[2:4])[0] == 40 and _csum(ip) == 0xFFFF
        pseudo = s + d + struct.pack("!BBH", 0, 6, 20)
    else:
        ip, tcp = pkt[:40], pkt[40:]
        assert ip[0] >> 4 == 6 and ip[6] == 6 and ip[8:24] == s and ip[24:40] == d
        assert struct.unpack("!H", ip[4:6])[0] == 20
        pseudo = s + d + struct.pack("!IxxxB", 20, 6)
    sport, dport, seq, ack, off, flags, win = struct.unpack("!HHIIBBH", tcp[:16])
    assert (sport, dport, seq, ack, off >> 4, flags, win) == (80, 40000, 0xFFFFFFF0, 0, 5, 0x04, 0)
    assert _csum(pseudo + tcp) == 0xFFFF


# --- the daemon's timer ---

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SweepingEngine(ScriptedEngine):
    def __init__(self) -> None:
        super().__init__()
        self.sweeps = 0
        self.next: SweepTotals | Exception = SweepTotals(sweeps=1)

    def sweep_idle(self) -> SweepTotals:
        self.sweeps += 1
        if isinstance(self.next, Exception):
            raise self.next
        return self.next


def test_the_daemon_sweeps_on_its_own_timer_and_counts_resets() -> None:
    engine = SweepingEngine()
    clock = Clock()
    out = io.StringIO()
    daemon = Daemon(Options(directory="/cfg", resync=30, sweep=5), engine, EventLog("kv", out), clock=clock)
    daemon.cycle("startup")
    daemon.step()
    assert engine.sweeps == 1
    clock.now += 4.9
    daemon.step()
    assert engine.sweeps == 1
    engine.next = SweepTotals(sweeps=1, expired=3, resets={"client": 2, "endpoint": 1})
    clock.now += 0.1
    daemon.step()
    assert engine.sweeps == 2
    assert daemon.metrics.value("lbctl_idle_flows_expired_total") == 3
    assert daemon.metrics.value("lbctl_idle_resets_total", to="client") == 2
    assert daemon.metrics.value("lbctl_idle_resets_total", to="endpoint") == 1
    assert "idle-expired" in out.getvalue() and "resets_client=2" in out.getvalue()
    engine.next = RuntimeError("map gone")
    clock.now += 5
    daemon.step()  # a failed sweep is logged; the daemon goes on
    assert "idle-sweep-failed" in out.getvalue()
    engine.next = SweepTotals(sweeps=1)
    clock.now += 5
    daemon.step()
    assert engine.sweeps == 4


def test_sweep_zero_turns_it_off() -> None:
    engine = SweepingEngine()
    clock = Clock()
    daemon = Daemon(Options(directory="/cfg", sweep=0), engine, EventLog("kv", io.StringIO()), clock=clock)
    daemon.cycle("startup")
    for _ in range(3):
        clock.now += 10
        daemon.step()
    assert engine.sweeps == 0 and engine.reconciles(), "the daemon is alive, only the sweep is off"
