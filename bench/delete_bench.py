#!/usr/bin/env python3
"""Deleting 1,000 of 10,000 services while conntrack holds live flows.

Why this exists: issue 10 measured deleting 2,000 services with 12,133 live flows
at 19-22 s of kernel programming (the removed services' flows were looked for with
two full scans of lb_ct and lb_persist per removed key), holding the lock so a
concurrent ``plan`` timed out.  Now an apply makes one pass over each for all the
keys it removes.  This bench times ``BpfDriver.apply()`` of the deletes (the kernel
programming step of a reconcile) on real pinned maps, with lb_ct filled with
synthetic flows (both directions) spread over all services, in interleaved
rounds: the current code, the old per-key scans (kept here only for the
comparison), and the current code with an empty conntrack as the floor.

Run as root from the repo after ``make build``: ``.venv/bin/python bench/delete_bench.py``.
Writes bench/results/delete.md.  Never asserts a time.  Its pins live under
/sys/fs/bpf/lbctl-bench-del-*, removed at the end; it attaches nothing.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shutil
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from reconciler.drivers import _libbpf as B  # noqa: E402
from reconciler.drivers import bpf_layout as L  # noqa: E402
from reconciler.drivers.bpf import BpfDriver  # noqa: E402
from reconciler.plan import Change  # noqa: E402
from reconciler.records import Backend, EndpointSet, ServiceEntry, ServiceKey  # noqa: E402


class OldPurge(BpfDriver):
    """The driver with the purge as it was before issue 10: two full scans per removed key."""

    def _purge_flows(self, svc_id: int, stat_ids: set[int] | None) -> None:
        for name, id_off, stat_off, id_in_key in (("lb_ct", L.CT_SVC_OFF, L.CT_STAT_OFF, False),
                                                  ("lb_persist", 0, L.PERSIST_STAT_OFF, True)):
            m = self._maps[name]
            doomed = []
            for k, v in m.items_raw():
                sid = L.U32.unpack_from(k if id_in_key else v, id_off)[0]
                if sid != svc_id:
                    continue
                if stat_ids is None or L.U32.unpack_from(v, stat_off)[0] in stat_ids:
                    doomed.append(k)
            for k in doomed:
                m.delete_raw(k)


def service(i: int, endpoints: int) -> tuple[Change, Change]:
    key = ServiceKey(f"198.19.{i // 250}.{i % 250 + 1}", "tcp", 80, 80)
    bes = tuple(Backend(f"10.{j + 1}.{i // 250}.{i % 250 + 1}", 8080) for j in range(endpoints))
    return (Change("endpoints", str(key), "create", None, EndpointSet(key, bes)),
            Change("service", str(key), "create", None, ServiceEntry(key, f"s{i}", "default", "rr", 60, 60)))


def fill_flows(drv: BpfDriver, flows: int) -> None:
    """``flows`` synthetic flows (two lb_ct entries each), round-robin over services and endpoints."""
    ffi = B.lib().ffi
    idx = drv._idx
    ids = sorted(idx.stat)
    items = []
    for n in range(flows):
        svc_id = ids[n % len(ids)]
        stats = idx.stat[svc_id]
        sid = stats[(n // len(ids)) % len(stats)]
        for d in (0, 1):
            k = ffi.new("struct lb_ct_key *", {"sport": n & 0xFFFF, "dport": d, "proto": 6, "family": 4})
            k.saddr[0] = n
            v = ffi.new("struct lb_ct *", {"dir": d, "svc_id": svc_id, "stat_id": sid, "timeout": 60})
            items.append((bytes(ffi.buffer(k)), bytes(ffi.buffer(v))))
    drv.map("lb_ct").update_batch_raw(items)


def one_run(cls: type[BpfDriver], services: int, deleted: int, endpoints: int,
            flows: int) -> tuple[float, int]:
    """(seconds of apply() for the deletes, lb_ct entries left)."""
    root = f"/sys/fs/bpf/lbctl-bench-del-{uuid.uuid4().hex[:8]}"
    drv = cls(pin_root=root)
    try:
        made = [service(i, endpoints) for i in range(services)]
        drv.apply([c for pair in made for c in pair])
        if flows:
            fill_flows(drv, flows)
        gone = []
        for eps, svc in made[:deleted]:
            gone.append(Change("service", svc.key, "delete", svc.after, None))
            gone.append(Change("endpoints", eps.key, "delete", eps.after, None))
        gc.collect()
        t0 = time.perf_counter()
        drv.apply(gone)
        dt = time.perf_counter() - t0
        left = sum(1 for _ in drv.map("lb_ct").items_raw())
        return dt, left
    finally:
        drv.close()
        shutil.rmtree(root, ignore_errors=True)  # pins only: nothing of this bench is attached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--deleted", type=int, default=1_000)
    ap.add_argument("--endpoints", type=int, default=4)
    ap.add_argument("--flows", type=int, default=10_000, help="flows (two lb_ct entries each)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-old", action="store_true", help="skip the old per-key scans (slow)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("delete_bench needs root (bpffs, BPF maps)")
    cases = [("current code", BpfDriver, a.flows), ("old: two scans per removed key", OldPurge, a.flows),
             ("current code, empty conntrack (floor)", BpfDriver, 0)]
    if a.no_old:
        cases = [c for c in cases if c[1] is not OldPurge]
    times: dict[str, list[float]] = {c[0]: [] for c in cases}
    lefts: dict[str, set[int]] = {c[0]: set() for c in cases}
    load_before = os.getloadavg()[0]
    for r in range(a.rounds):
        for name, cls, flows in cases:
            dt, left = one_run(cls, a.services, a.deleted, a.endpoints, flows)
            times[name].append(dt)
            lefts[name].add(left)
            print(f"round {r + 1}: {name}: {dt * 1000:.0f} ms, lb_ct entries left {left}", flush=True)
    load_after = os.getloadavg()[0]
    u = platform.uname()
    lines = [
        "# Deleting services with live flows",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- kernel: {u.release}, cpu: {platform.processor() or u.machine} x {os.cpu_count()}",
        f"- load average (1 min) before/after: {load_before:.2f} / {load_after:.2f}",
        f"- {a.services:,} services x {a.endpoints} endpoints (rr); delete {a.deleted:,} of them "
        f"(service and endpoints: {2 * a.deleted:,} changes) in one apply; lb_ct holds "
        f"{2 * a.flows:,} entries ({a.flows:,} flows, both directions, spread over all services)",
        f"- {a.rounds} interleaved rounds; time of `BpfDriver.apply()` of the deletes (kernel programming)",
        "",
        "| case | min | max | lb_ct entries left |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {min(ts) * 1000:.0f} ms | {max(ts) * 1000:.0f} ms | "
                     f"{', '.join(map(str, sorted(lefts[name])))} |")
    lines += ["", "Both codes leave the same entries: those of the 9,000 kept services "
              "(the old code per key, the new one in one pass over lb_ct and lb_persist per apply)."
              if a.services == 10_000 and a.deleted == 1_000 else ""]
    out = "\n".join(lines).rstrip() + "\n"
    print(out)
    if (a.services, a.deleted, a.flows) == (10_000, 1_000, 10_000):
        with open(os.path.join(REPO, "bench", "results", "delete.md"), "w", encoding="utf-8") as fh:
            fh.write(out)


if __name__ == "__main__":
    main()
