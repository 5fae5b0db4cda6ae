"""``lbctl top`` driven for a few refreshes on a fixed-size terminal, with a fake clock."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from rich.console import Console

from reconciler.commands.top import loop, rows
from reconciler.errors import LbctlError
from reconciler.records import ServiceKey
from reconciler.telemetry import DatapathSnapshot, EndpointHealth, EndpointStats, ServiceStats, Traffic

WEB = ServiceKey("10.0.0.1", "tcp", 80, 80)
DNS = ServiceKey("10.0.0.2", "udp", 53, 53)


def snap(step: int) -> DatapathSnapshot:
    """``step`` seconds of traffic: web 100 packets/s and 1 new flow/s, dns 10 packets/s."""
    return DatapathSnapshot(services=(
        ServiceStats(WEB, "web", Traffic(100 * step, 1000 * step, new_flows=step, active_flows=3),
                     (EndpointStats("10.1.0.1:8080", Traffic()), EndpointStats("10.1.0.2:8080", Traffic()))),
        ServiceStats(DNS, "dns", Traffic(10 * step, 100 * step, drops=step)),
    ), conntrack={("tcp", "established"): 3}, conntrack_capacity=100, drops={"no_backend": step})


@dataclass
class Box:
    """The box's sources: a datapath counting at a steady rate and a probe engine."""

    step: int = 0
    snapshots: list[int] = field(default_factory=list)

    def datapath_snapshot(self) -> DatapathSnapshot:
        self.snapshots.append(self.step)
        return snap(self.step)

    def health_stats(self) -> Sequence[EndpointHealth]:
        return [EndpointHealth(WEB, "10.1.0.2:8080", False, "tcp")]


class Clock:
    def __init__(self, box: Box) -> None:
        self.now = 0.0
        self.box = box
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.box.step += int(seconds)


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120, height=20, force_terminal=True, color_system=None,
                   legacy_windows=False), out


def test_top_refreshes_with_rates_between_snapshots() -> None:
    box = Box()
    clock = Clock(box)
    con, out = console()
    assert loop([box], con, interval=2.0, iterations=3, clock=clock, sleep=clock.sleep) == 3
    assert box.snapshots == [0, 2, 4] and clock.sleeps == [2.0, 2.0]
    text = out.getvalue()
    last = text[text.rindex("lbctl top"):]
    lines = [line.rstrip() for line in last.splitlines()]
    assert "services 2" in lines[0] and "packets/s 110" in lines[0] and "conntrack 3/100" in lines[0]
    header = lines[1].split()
    assert header[:3] == ["SERVICE", "PORT", "PKT/S"] and "ENDPOINTS" in header
    web = next(line for line in lines if line.startswith("web"))
    dns = next(line for line in lines if line.startswith("dns"))
    assert web.split()[:7] == ["web", "tcp/10.0.0.1:80", "100", "8.0k", "1", "3", "0"]
    assert web.endswith("1/2 up")
    assert dns.split()[:7] == ["dns", "udp/10.0.0.2:53", "10", "800", "0", "0", "1"]
    assert dns.endswith("0 (not probed)")
    assert lines.index(web) < lines.index(dns)  # busiest first


def test_the_first_view_shows_no_rates_yet_and_a_filter_keeps_one_service() -> None:
    box = Box(step=5)
    clock = Clock(box)
    con, out = console()
    loop([box], con, interval=1.0, iterations=1, service="dns", clock=clock, sleep=clock.sleep)
    text = out.getvalue()
    assert "dns" in text and "web" not in text and clock.sleeps == []
    assert [r.pps for r in rows(None, snap(5), 0.0)] == [0.0, 0.0]


def test_a_counter_reset_is_not_a_negative_rate() -> None:
    assert [r.pps for r in rows(snap(9), snap(1), 8.0)] == [0.0, 0.0]


def test_no_datapath_is_an_error_not_a_traceback() -> None:
    con, _ = console()
    with pytest.raises(LbctlError, match="no datapath"):
        loop([], con, interval=1.0, iterations=1)
