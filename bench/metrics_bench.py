#!/usr/bin/env python3
"""A ``/metrics`` scrape at 10,000 services x 10 endpoints.

Why this exists: issue 16's target: a scrape under 200 ms at 10,000 services x
10 endpoints, reading the maps at scrape time (one batch dump per map, per-CPU
values summed in one pass).  The maps are real pinned maps filled by the bpf
driver (nothing attached), conntrack holds synthetic flows.  Each round times
the datapath snapshot alone, the whole ``/metrics`` body (what the HTTP handler
sends: the daemon's metrics plus the datapath collector's) and an HTTP GET of
it from the daemon's status server on loopback; once, for comparison,
prometheus_client's own ``generate_latest`` over the same collector.

Run as root from the repo after ``make build``: ``.venv/bin/python bench/metrics_bench.py``.
Writes bench/results/metrics.md.  Never asserts a time.  Its pins live under
/sys/fs/bpf/lbctl-bench-metrics-*, removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import io
import os
import platform
import shutil
import statistics
import struct
import sys
import time
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

from delete_bench import fill_flows  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402

from reconciler.drivers.bpf import BpfDriver  # noqa: E402
from reconciler.logs import EventLog  # noqa: E402
from reconciler.plan import Change  # noqa: E402
from reconciler.records import Backend, EndpointSet, ServiceEntry, ServiceKey  # noqa: E402
from reconciler.status import Address  # noqa: E402
from reconciler.watch import Daemon, Options  # noqa: E402


def changes(services: int, endpoints: int) -> list[Change]:
    out = []
    for i in range(services):
        key = ServiceKey(f"198.19.{i // 250}.{i % 250 + 1}", "tcp", 80, 80)
        bes = tuple(Backend(f"10.{j + 1}.{i // 250}.{i % 250 + 1}", 8080) for j in range(endpoints))
        out.append(Change("endpoints", str(key), "create", None, EndpointSet(key, bes)))
        out.append(Change("service", str(key), "create", None,
                          ServiceEntry(key, f"svc{i}", "default", "rr", 60, 60)))
    return out


class Engine:
    """The daemon's engine seam with only what a scrape needs."""

    def __init__(self, driver: BpfDriver) -> None:
        self.driver = driver

    def sources(self) -> list[object]:
        return [self.driver]


def traffic(drv: BpfDriver, fraction: float, r: int) -> None:
    """Move the counters of ``fraction`` of the services and of all their endpoints (as traffic
    spread over the box would), by writing their per-CPU counter entries."""
    idx = drv._idx
    ids = sorted(idx.stat)
    step = max(1, round(1 / fraction)) if fraction > 0 else 0
    if not step:
        return
    value = struct.pack("<6Q", r + 1, 100 * (r + 1), 0, 0, r + 1, 0)
    svc_items, be_items = [], []
    for svc_id in ids[r % step :: step]:
        svc_items.append((struct.pack("<I", svc_id), value))
        be_items.extend((struct.pack("<I", sid), value) for sid in idx.stat[svc_id])
    drv.map("lb_svc_stats").update_batch_raw(svc_items)
    drv.map("lb_be_stats").update_batch_raw(be_items)


def ms(values: list[float]) -> str:
    lo, hi = min(values) * 1000, max(values) * 1000
    return f"{statistics.median(values) * 1000:,.1f} (min {lo:,.1f}, max {hi:,.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--busy", type=float, default=0.1,
                    help="fraction of services whose counters change before each busy round")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("metrics_bench needs root (bpffs, BPF maps)")
    root = f"/sys/fs/bpf/lbctl-bench-metrics-{uuid.uuid4().hex[:8]}"
    drv = BpfDriver(pin_root=root)
    daemon = Daemon(Options(directory="/nonexistent", listen=Address("127.0.0.1", 0)), Engine(drv),  # type: ignore[arg-type]
                    EventLog("kv", io.StringIO()))
    try:
        drv.apply(changes(a.services, a.endpoints))
        if a.flows:
            fill_flows(drv, a.flows)
        daemon.start_services()
        assert daemon.server is not None
        url = daemon.server.address.url + "/metrics"
        load_before = os.getloadavg()[0]
        times: dict[str, dict[str, list[float]]] = {}
        size = lines = 0
        daemon.metrics_parts()  # the first scrape decodes every label; later ones reuse them
        for r in range(a.rounds):
            for kind in ("idle", "busy"):
                if kind == "busy":
                    traffic(drv, a.busy, r)
                gc.collect()
                t0 = time.perf_counter()
                drv.datapath_snapshot()
                t1 = time.perf_counter()
                c1 = time.thread_time()
                daemon.metrics_parts()  # what the HTTP handler sends, in ~1 MB writes
                t2 = time.perf_counter()
                c2 = time.thread_time()
                if kind == "busy":
                    traffic(drv, a.busy, r + a.rounds)
                t3 = time.perf_counter()
                with urllib.request.urlopen(url, timeout=30) as resp:
                    got = resp.read()
                t4 = time.perf_counter()
                t = times.setdefault(kind, {"snap": [], "body": [], "cpu": [], "http": []})
                t["cpu"].append(c2 - c1)
                t["snap"].append(t1 - t0)
                t["body"].append(t2 - t1)
                t["http"].append(t4 - t3)
                size, lines = len(got), got.count(b"\n")
                print(f"round {r + 1} {kind}: snapshot {(t1 - t0) * 1000:.1f} ms, /metrics body "
                      f"{(t2 - t1) * 1000:.1f} ms, HTTP GET {(t4 - t3) * 1000:.1f} ms", flush=True)
        t = time.perf_counter()
        ref = generate_latest(daemon.exporter.reference_registry())
        ref_t = time.perf_counter() - t
        load_after = os.getloadavg()[0]
    finally:
        daemon.shutdown()
        drv.close()
        shutil.rmtree(root, ignore_errors=True)
    u = platform.uname()
    out = [
        "# /metrics scrape",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- kernel: {u.release}, cpu: {platform.processor() or u.machine} x {os.cpu_count()}, "
        f"Python {platform.python_version()}",
        f"- load average (1 min) before/after: {load_before:.2f} / {load_after:.2f} (the machine is shared)",
        f"- {a.services:,} services x {a.endpoints} endpoints, {a.flows:,} flows in conntrack; "
        f"{a.rounds} rounds after one warm-up scrape",
        f"- body: {size / 1e6:.1f} MB, {lines:,} lines",
        "",
        f"- idle: no counter changed since the previous scrape; busy: the counters of {a.busy:.0%} of "
        "the services and of all their endpoints changed (spread over the box, so every chunk of the "
        "counter arrays is re-summed), and again before the HTTP GET",
        "",
        "| step | idle: median ms (min, max) | busy: median ms (min, max) |",
        "|---|---:|---:|",
        f"| datapath snapshot (batch dumps of lb_conf, lb_svc_stats, lb_be_stats, lb_ct, lb_stats; "
        f"per-CPU sums) | {ms(times['idle']['snap'])} | {ms(times['busy']['snap'])} |",
        f"| whole /metrics body as the handler sends it (snapshot + daemon metrics + collector text) | "
        f"{ms(times['idle']['body'])} | {ms(times['busy']['body'])} |",
        f"| the same, CPU time of the scraping thread (what the shared machine's load does not inflate) | "
        f"{ms(times['idle']['cpu'])} | {ms(times['busy']['cpu'])} |",
        f"| HTTP GET /metrics on loopback (a scrape as Prometheus sees it) | {ms(times['idle']['http'])} | "
        f"{ms(times['busy']['http'])} |",
        f"| for comparison: prometheus_client generate_latest over the same collector (once) | "
        f"{ref_t * 1000:,.1f} ({len(ref) / 1e6:.1f} MB) |",
        "",
        "`sudo .venv/bin/python bench/metrics_bench.py` (never asserts a time).",
    ]
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    with open(os.path.join(REPO, "bench", "results", "metrics.md"), "w") as fh:
        fh.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
