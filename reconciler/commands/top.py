"""``lbctl top``: a live view of per-service packet and connection rates and endpoint health.

Why this exists: an operator on the box wants to see what the traffic does now,
with or without the daemon running (the datapath keeps counting while no lbctl
process runs).  It reads the maps directly through the box's telemetry sources
(the bpf driver's ``datapath_snapshot``; a probe engine's health once it exists),
takes a snapshot every ``--interval`` and shows rates between the last two in a
rich ``Live`` table.  Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from reconciler.commands.common import drivers_for
from reconciler.errors import LbctlError
from reconciler.telemetry import DatapathSnapshot, DatapathSource, EndpointHealth, HealthSource


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="refresh period (default: 2)")
    parser.add_argument("--iterations", type=int, default=0, metavar="N",
                        help="stop after N refreshes (default: run until Ctrl-C)")
    parser.add_argument("--service", metavar="NAME", help="only this Service")
    parser.add_argument("--sort", choices=("packets", "bytes", "flows", "name"), default="packets",
                        help="order of the rows (default: packets per second)")


@dataclass(frozen=True)
class Row:
    service: str
    key: str  # proto/vip:port
    pps: float  # client-to-VIP packets per second
    bps: float  # bits per second, both directions
    new_flows: float  # per second
    active: int
    drops: float  # per second
    endpoints: int
    down: int  # endpoints whose probe fails
    probed: bool


def rows(prev: DatapathSnapshot | None, cur: DatapathSnapshot, seconds: float,
         health: Sequence[EndpointHealth] = ()) -> list[Row]:
    """Per service port: rates between two snapshots ``seconds`` apart (zero on the first)."""
    before = {s.key: s.traffic for s in prev.services} if prev is not None else {}
    down: dict[str, int] = {}
    probed: set[str] = set()
    for h in health:
        probed.add(str(h.service_key))
        if not h.healthy:
            down[str(h.service_key)] = down.get(str(h.service_key), 0) + 1
    out = []
    for s in cur.services:
        t, b = s.traffic, before.get(s.key)

        def rate(now: int, then: int | None) -> float:
            if then is None or seconds <= 0 or now < then:  # first view, or the counter was reset
                return 0.0
            return (now - then) / seconds

        key = str(s.key)
        out.append(Row(
            service=s.name, key=key,
            pps=rate(t.packets, b.packets if b else None),
            bps=8 * rate(t.bytes + t.reply_bytes, b.bytes + b.reply_bytes if b else None),
            new_flows=rate(t.new_flows, b.new_flows if b else None),
            active=t.active_flows, drops=rate(t.drops, b.drops if b else None),
            endpoints=len(s.endpoints), down=down.get(key, 0), probed=key in probed))
    return out


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{prefix}{unit}"
    return f"{value:.1f}{unit}" if value % 1 else f"{value:.0f}{unit}"


def view(found: list[Row], cur: DatapathSnapshot, seconds: float, stamp: str) -> Group:
    total_pps = sum(r.pps for r in found)
    entries = sum(cur.conntrack.values())
    head = Text(f"lbctl top  {stamp}  every {seconds:g}s  services {len(found)}  "
                f"packets/s {_si(total_pps)}  conntrack {entries}/{cur.conntrack_capacity}  "
                f"drops {', '.join(f'{k}={v}' for k, v in sorted(cur.drops.items())) or 'none'}")
    table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
    # Names and keys are never cut (an operator copies them); the endpoints column folds.
    table.add_column("SERVICE", no_wrap=True, min_width=max([len(r.service) for r in found] + [7]))
    table.add_column("PORT", no_wrap=True, min_width=max([len(r.key) for r in found] + [4]))
    for col in ("PKT/S", "BIT/S", "NEW FLOWS/S", "ACTIVE", "DROPS/S"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("ENDPOINTS", overflow="fold")
    for r in found:
        health = (f"{r.endpoints - r.down}/{r.endpoints} up" if r.probed
                  else f"{r.endpoints} (not probed)")
        table.add_row(r.service, r.key, _si(r.pps), _si(r.bps), _si(r.new_flows), str(r.active),
                      _si(r.drops), Text(health, style="red" if r.down else ""))
    return Group(head, table)


ORDER: dict[str, Callable[[Row], tuple[float | str, ...]]] = {
    "packets": lambda r: (-r.pps, r.service, r.key),
    "bytes": lambda r: (-r.bps, r.service, r.key),
    "flows": lambda r: (-r.active, -r.new_flows, r.service, r.key),
    "name": lambda r: (r.service, r.key),
}


def loop(sources: Iterable[object], console: Console, interval: float, iterations: int,
         service: str | None = None, sort: str = "packets",
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """Refresh the view ``iterations`` times (0: until Ctrl-C); the number of refreshes made."""
    srcs = list(sources)
    datapath = next((s for s in srcs if isinstance(s, DatapathSource)), None)
    if datapath is None:
        raise LbctlError("no datapath on this box to read", hint="lbctl apply loads it")
    probes = [s for s in srcs if isinstance(s, HealthSource)]
    prev: DatapathSnapshot | None = None
    then = clock()
    done = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while iterations <= 0 or done < iterations:
                cur = datapath.datapath_snapshot()
                now = clock()
                if cur is None:
                    raise LbctlError("the datapath is not loaded on this box", hint="lbctl apply loads it")
                health = [h for p in probes for h in p.health_stats()]
                found = [r for r in rows(prev, cur, now - then, health)
                         if service is None or service in (r.service, r.key)]
                found.sort(key=ORDER[sort])
                live.update(view(found, cur, interval, time.strftime("%H:%M:%S")), refresh=True)
                prev, then = cur, now
                done += 1
                if iterations <= 0 or done < iterations:
                    sleep(interval)
        except KeyboardInterrupt:
            pass
    return done


def run(args: argparse.Namespace, ctx: object) -> int:
    if args.interval <= 0:
        raise LbctlError("--interval must be greater than 0", hint="e.g. --interval 1")
    loop(drivers_for(ctx, read_only=True), Console(), args.interval, args.iterations, args.service, args.sort)
    return 0
