"""``lbctl get services|endpoints|conntrack|pools|firewall|bgp|capacities``: live state as a table.

Why this exists: operators check what the box really does, not what the files
say.  Tables look like loxicmd's (``|``-separated, one row per object);
``-o wide`` adds columns, ``-o json|yaml`` gives the same rows as data.  Read
only: no lock is taken.

``endpoints`` adds each endpoint's health (up/down, last probe result, the reason
of the last failure, probe latency) from the running daemon's ``/status``
(``--listen``); without a daemon, or for an endpoint it does not probe, health
is ``unknown``.  An endpoint that is down is not in the datapath's list, so its
row comes from the daemon's status.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.apply import drivers_by_kind
from reconciler.commands.common import drivers_for, dump, table
from reconciler.commands.status import fetch_status
from reconciler.driver import (
    CapacityReader,
    ConntrackReader,
    CounterReader,
    Driver,
    FirewallCounterReader,
    SessionReader,
)
from reconciler.errors import LbctlError
from reconciler.ipam_store import AllocationStore
from reconciler.records import (
    EndpointSet,
    FirewallEntry,
    Record,
    ServiceEntry,
)
from reconciler.status import DEFAULT_LISTEN, parse_listen

WHAT = ("services", "endpoints", "conntrack", "pools", "firewall", "bgp", "capacities")
Row = dict[str, Any]
HEALTH_TIMEOUT = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=WHAT, metavar="KIND", help="one of: " + ", ".join(WHAT))
    parser.add_argument("--service", metavar="NAME",
                        help="only this Service (its name, or a key like tcp/10.0.0.1:80): "
                             "conntrack and endpoints")
    parser.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                        help=f"the lbctl watch daemon asked for endpoint health (default: {DEFAULT_LISTEN})")


def daemon_health(listen: str) -> dict[tuple[str, str], dict[str, Any]] | None:
    """(Service name, address) -> the daemon's probe status; None when no daemon answers."""
    try:
        doc = fetch_status(parse_listen(listen), timeout=HEALTH_TIMEOUT)
    except LbctlError:
        return None
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for ep in doc.get("endpoints") or []:
        if isinstance(ep, dict) and "service" in ep and "address" in ep:
            out[(str(ep["service"]), str(ep["address"]))] = ep
    return out


def _health_columns(ep: Mapping[str, Any] | None, known: bool) -> Row:
    if ep is None:
        return {"HEALTH": "unknown" if not known else "not probed", "LAST RESULT": "-", "LAST FAILURE": "-",
                "LATENCY MS": "-"}
    latency = ep.get("latency_ms")
    return {"HEALTH": ep.get("health", "unknown"), "LAST RESULT": ep.get("last_result") or "-",
            "LAST FAILURE": ep.get("last_failure") or "-", "LATENCY MS": "-" if latency is None else latency}


def _read(ctx: Any, *kinds: str,
          drivers: Sequence[Driver] | None = None) -> Mapping[str, Mapping[str, Record]] | None:
    owner = drivers_by_kind(list(drivers_for(ctx, read_only=True) if drivers is None else drivers))
    out: dict[str, Mapping[str, Record]] = {}
    for kind in kinds:
        drv = owner.get(kind)
        if drv is None:
            return None
        out.update(drv.read())
    return out


def _ports(e: ServiceEntry) -> str:
    return str(e.key.port) if e.key.port == e.key.port_end else f"{e.key.port}-{e.key.port_end}"


def _sorted_entries(state: Mapping[str, Mapping[str, Record]], kind: str) -> list[Any]:
    recs = list(state.get(kind, {}).values())
    return sorted(recs, key=lambda r: (r.key.family, r.key.vip, r.key.proto, r.key.port))


def services(ctx: Any, wide: bool) -> list[Row] | None:
    live = _read(ctx, "service", "endpoints")
    if live is None:
        return None
    eps = live.get("endpoints", {})
    rows = []
    for e in _sorted_entries(live, "service"):
        assert isinstance(e, ServiceEntry)
        s = eps.get(str(e.key))
        row: Row = {"EXT IP": e.key.vip, "PORT": _ports(e), "PROTO": e.key.proto, "NAME": e.name,
                    "SEL": e.selection, "MODE": e.mode,
                    "# OF ENDPOINTS": len(s.backends) if isinstance(s, EndpointSet) else 0}
        if wide:
            row |= {"TIMEOUT": e.session_timeout, "PERSIST": e.persist_timeout,
                    "ALLOWED": ",".join(e.allowed_sources) or "any",
                    "MAGLEV": len(s.maglev) // 2 if isinstance(s, EndpointSet) and s.maglev else ""}
        rows.append(row)
    return rows


def _endpoint_counters(drivers: Sequence[Driver]) -> dict[str, dict[str, Any]] | None:
    """Per service key, per ``addr:port``: the datapath's counters (None: no driver keeps any)."""
    for drv in drivers:
        if isinstance(drv, CounterReader):
            return {k: dict(v.get("endpoints", {})) for k, v in drv.counters().items()}
    return None


def endpoints(ctx: Any, wide: bool, listen: str = DEFAULT_LISTEN) -> list[Row] | None:
    health = daemon_health(listen)
    drivers = drivers_for(ctx, read_only=True)
    live = _read(ctx, "service", "endpoints", drivers=drivers)
    if live is None:
        return None
    counters = _endpoint_counters(drivers)
    names = {k: r.name for k, r in live.get("service", {}).items() if isinstance(r, ServiceEntry)}
    rows = []
    for s in _sorted_entries(live, "endpoints"):
        assert isinstance(s, EndpointSet)
        name = names.get(str(s.key), "")
        ports = str(s.key.port) if s.key.port == s.key.port_end else f"{s.key.port}-{s.key.port_end}"
        for b in s.backends:
            row: Row = {"EXT IP": s.key.vip, "PORT": ports, "PROTO": s.key.proto,
                        "NAME": name, "ENDPOINT": b.address,
                        "TARGET PORT": b.port or ports, "WEIGHT": b.weight}
            row |= _health_columns(None if health is None else health.get((name, b.address)),
                                   health is not None)
            if counters is not None:
                host = f"[{b.address}]" if ":" in b.address else b.address
                c = counters.get(str(s.key), {}).get(f"{host}:{b.port or s.key.port}")
                row |= {"FLOWS": getattr(c, "new_flows", 0), "PACKETS": getattr(c, "packets", 0),
                        "BYTES": getattr(c, "bytes", 0)}
                if wide:
                    row |= {"REPLY PACKETS": getattr(c, "reply_packets", 0),
                            "REPLY BYTES": getattr(c, "reply_bytes", 0), "DROPS": getattr(c, "drops", 0)}
            rows.append(row)
        # Endpoints out of selection (down, or a backup on standby) are not in the datapath's list.
        listed = {b.address for b in s.backends}
        for (svc, address), ep in sorted((health or {}).items()):
            if svc == name and address not in listed:
                row = {"EXT IP": s.key.vip, "PORT": ports, "PROTO": s.key.proto, "NAME": name,
                       "ENDPOINT": address, "TARGET PORT": "-", "WEIGHT": "-"} | _health_columns(ep, True)
                if counters is not None:
                    row |= {"FLOWS": "-", "PACKETS": "-", "BYTES": "-"}
                    if wide:
                        row |= {"REPLY PACKETS": "-", "REPLY BYTES": "-", "DROPS": "-"}
                rows.append(row)
    return rows


def _host_port(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _key_text(proto: str, vip: str, ports: str) -> str:
    """A service key as ``ServiceKey`` prints it (``tcp/10.0.0.1:80``, ``udp/[fd00::1]:53``)."""
    return f"{proto}/[{vip}]:{ports}" if ":" in vip else f"{proto}/{vip}:{ports}"


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def conntrack(ctx: Any, wide: bool, service: str | None = None) -> list[Row] | None:
    """One row per flow, like ``loxicmd get ct``: service, tuple, the endpoint chosen, state, ages.

    The datapath keeps no per-flow packet counters (lb_ct has none); per-endpoint
    counters are in ``lbctl get endpoints``.
    """
    for drv in drivers_for(ctx, read_only=True):
        if isinstance(drv, ConntrackReader):
            data = ctx.output in ("json", "yaml")
            flows = [f for f in drv.conntrack()
                     if service is None or service in (getattr(f, "name", ""), getattr(f, "service", ""))]
            flows.sort(key=lambda f: (f.name, f.service, f.client, f.client_port))
            rows: list[Row] = []
            for f in flows:
                row: Row = {"SERVICE": f.name, "PROTO": f.proto,
                            "CLIENT": _host_port(f.client, f.client_port),
                            "VIP": _host_port(f.vip, f.vip_port),
                            "ENDPOINT": _host_port(f.backend, f.backend_port),
                            # an entry idle past its timeout is no flow: the datapath ignores it and
                            # the daemon's sweep removes it (reconciler/idle.py)
                            "STATE": "expired" if f.expired else f.state}
                if data:
                    row |= {"AGE S": round(f.age_s, 3), "IDLE S": round(f.idle_s, 3), "EXPIRED": f.expired,
                            "SERVICE KEY": f.service}
                else:
                    row |= {"AGE": _age(f.age_s), "IDLE": _age(f.idle_s)}
                    if wide:
                        row |= {"EXPIRED": "yes" if f.expired else "", "SERVICE KEY": f.service}
                rows.append(row)
            return rows
    return None


def pools(ctx: Any, wide: bool) -> list[Row] | None:
    allocs = AllocationStore(ctx.state_dir).load()
    by_vip: dict[tuple[str, str], list[str]] = {}
    for name, a in allocs.items():
        by_vip.setdefault((a.pool, a.vip), []).append(name)
    return [{"POOL": pool, "VIP": vip, "SERVICES": ",".join(sorted(names))}
            for (pool, vip), names in sorted(by_vip.items())]


def firewall(ctx: Any, wide: bool) -> list[Row] | None:
    """Rules in evaluation order with their counters (matched packets and bytes, rate-limited drops)."""
    drivers = list(drivers_for(ctx, read_only=True))
    live = _read(ctx, "firewall", drivers=drivers)
    if live is None:
        return None
    counts: Mapping[str, Mapping[str, int]] = {}
    for drv in drivers:
        if isinstance(drv, FirewallCounterReader):
            counts = drv.firewall_counters()
    rows = []
    for r in sorted((r for r in live.get("firewall", {}).values() if isinstance(r, FirewallEntry)),
                    key=lambda r: (r.priority, r.name)):
        def rng(p: tuple[int, int] | None) -> str:
            return "any" if p is None else (str(p[0]) if p[0] == p[1] else f"{p[0]}-{p[1]}")
        c = counts.get(r.name, {})
        row: Row = {"PRIORITY": r.priority, "NAME": r.name, "SOURCE": r.source or "any",
                    "DESTINATION": r.destination or "any", "PROTO": r.protocol or "any",
                    "SPORTS": rng(r.source_ports), "DPORTS": rng(r.destination_ports),
                    "IN IF": r.in_interface or "any", "ACTION": r.action,
                    "PACKETS": c.get("packets", 0), "BYTES": c.get("bytes", 0),
                    "LIMITED": c.get("limited", 0)}
        if wide:
            row |= {"MARK": r.mark if r.mark is not None else "",
                    "RATE": f"{r.rate_pps}/s burst {r.rate_burst}" if r.rate_pps else ""}
        else:
            row["ARG"] = (f"mark {r.mark}" if r.mark is not None else
                          f"{r.rate_pps}/s burst {r.rate_burst}" if r.rate_pps else "")
        rows.append(row)
    return rows


def _uptime(since: int, now: float) -> str:
    if not since:
        return "never"
    secs = max(0, int(now - since))
    days, rest = divmod(secs, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def bgp(ctx: Any, wide: bool) -> list[Row] | None:
    """Peers (address, AS, session state, uptime, prefixes sent/received), then announced prefixes.

    Uptime is ``HH:MM:SS`` in tables and seconds with ``-o json|yaml``; passwords are never shown.
    """
    drivers = drivers_for(ctx, read_only=True)
    reader = next((d for d in drivers if isinstance(d, SessionReader)), None)
    if reader is None:
        return None
    data = reader.sessions()
    now = time.time()
    as_data = ctx.output in ("json", "yaml")
    rows: list[Row] = []
    for p in data.get("peers", []):
        up = int(now - p["uptime"]) if p["uptime"] else 0
        row: Row = {"TYPE": "peer", "ADDRESS": p["address"], "AS": p["remote_as"], "STATE": p["state"],
                    "UPTIME": up if as_data else _uptime(p["uptime"], now),
                    "SENT": p["advertised"], "RECEIVED": p["received"]}
        if wide or as_data:
            row["ACCEPTED"] = p["accepted"]
        rows.append(row)
    for prefix in data.get("announced", []):
        row = {"TYPE": "announce", "ADDRESS": prefix, "AS": "", "STATE": "", "UPTIME": "", "SENT": "",
               "RECEIVED": ""}
        if wide or as_data:
            row["ACCEPTED"] = ""
        rows.append(row)
    return rows


def capacities(ctx: Any, wide: bool) -> list[Row] | None:
    """The datapath's capacities (the Datapath's spec.capacities as installed) and what is in use."""
    reader = next((d for d in drivers_for(ctx, read_only=True) if isinstance(d, CapacityReader)), None)
    if reader is None:
        return None
    return [{"CAPACITY": name, "SIZE": size, "IN USE": used,
             "USED %": round(100 * used / size, 1) if size else 0.0}
            for name, (size, used) in reader.capacity_use().items()]


READERS = {"services": services, "endpoints": endpoints, "conntrack": conntrack, "pools": pools,
           "firewall": firewall, "bgp": bgp, "capacities": capacities}


def print_rows(rows: Sequence[Row], output: str) -> None:
    if output in ("json", "yaml"):
        dump([{k.lower().replace(" ", "_").replace("#_of_", "n_"): v for k, v in r.items()} for r in rows],
             output)
    elif rows:
        headers = list(rows[0])
        sys.stdout.write(table(headers, ([r.get(h) for h in headers] for r in rows)))
    else:
        print("No resources found.")


def run(args: argparse.Namespace, ctx: Any) -> int:
    service = getattr(args, "service", None)
    if args.what == "conntrack":
        rows = conntrack(ctx, ctx.output == "wide", service)
    elif args.what == "endpoints":
        rows = endpoints(ctx, ctx.output == "wide", args.listen)
        if service and rows is not None:
            rows = [r for r in rows if service in (r["NAME"], _key_text(r["PROTO"], r["EXT IP"], r["PORT"]))]
    else:
        rows = READERS[args.what](ctx, ctx.output == "wide")
    if rows is None:
        print(f"{args.what}: not available on this box (no driver provides it)", file=sys.stderr)
        if ctx.output in ("json", "yaml"):
            dump([], ctx.output)
        return 0
    print_rows(rows, ctx.output)
    return 0
