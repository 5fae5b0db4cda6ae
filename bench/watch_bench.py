"""Watch daemon bench: one endpoint changed among 10,000 services x 10 endpoints in 100 files.

Why this exists: issue 5 asks that such a change be live within 100 ms of the
debounce firing (kube-proxy's partial sync of the same change takes ~0.7 s on
this machine).  The bench runs the real daemon in-process (real watcher, real
config loader, real reconcile layer, incremental path) and measures, per change:

* fired -> map updated: from the debounce firing to the driver's ``apply()``
  returning (the kernel map holds the new endpoint set);
* fired -> verified: until the reconcile's verification finished;
* write -> map updated: from the file write, including the debounce.

With root, a bpffs and a built datapath, the drivers are the real ones inside a
network namespace the bench creates (and removes); otherwise in-memory drivers
stand in and the report says so.  Prints a table, writes
``bench/results/watch.md``; asserts nothing.

    sudo .venv/bin/python bench/watch_bench.py [--services 10000] [--changes 20]
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.driver import Driver, DriverSet, DriverSpec  # noqa: E402
from reconciler.fswatch import DirWatcher  # noqa: E402
from reconciler.logs import EventLog  # noqa: E402
from reconciler.plan import Change  # noqa: E402
from reconciler.watch import Daemon, Options  # noqa: E402
from reconciler.watch_engine import ReconcileEngine  # noqa: E402

HEADER = "apiVersion: lbctl.dev/v1alpha1\n"
NETNS = "lbctl-watch-bench"


def vip(i: int) -> str:
    return f"198.18.{i // 250}.{i % 250 + 1}"


def endpoint(i: int, j: int, gen: int = 0) -> str:
    return f"10.{100 + (i % 100)}.{(i // 100) % 250}.{j + 1 + gen * 10}"


def service_doc(i: int, gen: int = 0, endpoints: int = 10) -> str:
    eps = "\n".join(f"    - {{address: {endpoint(i, j, gen if j == 0 else 0)}}}" for j in range(endpoints))
    return (f"{HEADER}kind: Service\nmetadata: {{name: s{i}}}\nspec:\n  vip: {vip(i)}\n"
            f"  ports: [{{port: 80, protocol: TCP, targetPort: 8080}}]\n  endpoints:\n{eps}\n")


def write_file(conf: Path, f: int, per_file: int, gens: dict[int, int], endpoints: int) -> None:
    docs = [service_doc(i, gens.get(i, 0), endpoints) for i in range(f * per_file, (f + 1) * per_file)]
    tmp = conf / f".svc-{f:03d}.yaml.tmp"
    tmp.write_text("---\n".join(docs))
    os.replace(tmp, conf / f"svc-{f:03d}.yaml")


class Timed:
    """Records when a driver's apply() returned (wraps the instance's method, so the
    driver keeps its type and every optional ability it offers)."""

    def __init__(self, inner: Driver) -> None:
        self.applied_at: float | None = None
        apply = inner.apply

        def timed(changes: Sequence[Change]) -> None:
            apply(changes)
            self.applied_at = time.monotonic()

        inner.apply = timed  # type: ignore[method-assign]


def real_drivers_available() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    try:
        import reconciler.drivers.bpf  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"bpf driver unavailable: {type(exc).__name__}: {exc}"
    return None


def make_driver_set(real: bool, pin_root: Path, state: Path, timed: list[Timed]) -> DriverSet:
    """The box's drivers (the real registry, or in-memory fakes), each timed when built."""
    specs: Sequence[DriverSpec]
    box: Any = None
    if real:
        from reconciler.cli import Context
        from reconciler.drivers.registry import SPECS

        box = Context(netns=NETNS, state_dir=state, pin_root=pin_root, output="text", verbose=False)
        specs = SPECS
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.reconciler.fakes import fake_drivers, fake_specs

        specs = fake_specs(fake_drivers())

    def timed_build(spec: DriverSpec) -> Any:
        def build(box: Any, settings: Any) -> Driver:
            drv = spec.build(box, settings)
            timed.append(Timed(drv))
            return drv

        return build

    return DriverSet([replace(s, build=timed_build(s)) for s in specs], box)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--debounce", type=float, default=0.2)
    ap.add_argument("--fake", action="store_true", help="use in-memory drivers even as root")
    ap.add_argument("--verbose", action="store_true", help="the daemon logs to stderr")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "watch.md"))
    args = ap.parse_args(argv)

    why_fake = "requested (--fake)" if args.fake else real_drivers_available()
    real = why_fake is None
    work = Path(tempfile.mkdtemp(prefix="lbctl-watch-bench-"))
    conf, state = work / "conf.d", work / "state"
    conf.mkdir()
    pin_root = Path("/sys/fs/bpf/lbctl-watch-bench")
    per_file = args.services // args.files
    gens: dict[int, int] = {}
    for f in range(args.files):
        write_file(conf, f, per_file, gens, args.endpoints)
    if real:
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
    timed: list[Timed] = []
    engine = ReconcileEngine(conf, state, make_driver_set(real, pin_root, state, timed))
    log = io.StringIO()
    daemon = Daemon(Options(directory=str(conf), debounce=args.debounce, resync=3600), engine,
                    EventLog("kv", sys.stderr if args.verbose else log), watcher_factory=DirWatcher)
    thread = threading.Thread(target=daemon.run, daemon=True)
    rows: list[tuple[float, float, float, int, int]] = []
    try:
        t0 = time.monotonic()
        thread.start()
        while not daemon.ready():
            if time.monotonic() - t0 > 600:
                raise SystemExit("the first reconcile never verified:\n" + log.getvalue()[-3000:])
            time.sleep(0.05)
        cold = time.monotonic() - t0
        cold_last = daemon.snapshot().last_reconcile
        for n in range(args.changes):
            i = (n * 7919) % args.services  # spread over files
            gens[i] = gens.get(i, 0) + 1
            before = daemon.snapshot().reconciles
            t_write = time.monotonic()
            write_file(conf, i // per_file, per_file, gens, args.endpoints)
            while daemon.snapshot().reconciles == before:
                if time.monotonic() - t_write > 30:
                    raise SystemExit("a change was never reconciled:\n" + log.getvalue()[-3000:])
                time.sleep(0.001)
            t_verified = time.monotonic()
            last = daemon.snapshot().last_reconcile
            assert last is not None
            if last.result != "ok" or last.mode != "incremental":
                print(f"warning: change {n}: {last.result} {last.mode} {last.error}", file=sys.stderr)
            fired = daemon.fired_at or t_write
            applied = max(d.applied_at or 0.0 for d in timed)
            rows.append((applied - fired, t_verified - fired, applied - t_write, last.updated, last.created))
            time.sleep(0.3)
        t1 = time.monotonic()
        daemon.hangup()  # a full reload + full reconcile at this scale
        before = daemon.snapshot().reconciles
        while daemon.snapshot().reconciles == before:
            time.sleep(0.01)
        full_resync = time.monotonic() - t1
    finally:
        daemon.stop()
        thread.join(30)
        if real:
            subprocess.run(["ip", "netns", "del", NETNS], check=False)
            if pin_root.exists():
                try:
                    from reconciler.cli import Context
                    from reconciler.drivers.registry import bpf_driver
                    drv: Any = bpf_driver(Context(netns=None, state_dir=state, pin_root=pin_root,
                                                  output="text", verbose=False))
                    drv.down()
                except Exception:  # noqa: BLE001
                    pass
                shutil.rmtree(pin_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    fired_map = [r[0] * 1000 for r in rows]
    fired_ver = [r[1] * 1000 for r in rows]
    write_map = [r[2] * 1000 for r in rows]
    drivers_label = "real (bpf + netlink in a netns)" if real else f"in-memory fakes ({why_fake})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    table = [
        "| measure | median | p95 | max |",
        "|---|---:|---:|---:|",
        f"| debounce fired -> map updated (ms) | {statistics.median(fired_map):.1f} | "
        f"{percentile(fired_map, 0.95):.1f} | {max(fired_map):.1f} |",
        f"| debounce fired -> verified (ms) | {statistics.median(fired_ver):.1f} | "
        f"{percentile(fired_ver, 0.95):.1f} | {max(fired_ver):.1f} |",
        f"| file written -> map updated (ms, incl. {args.debounce * 1000:g} ms debounce) | "
        f"{statistics.median(write_map):.1f} | {percentile(write_map, 0.95):.1f} | {max(write_map):.1f} |",
    ]
    text = "\n".join([
        "# lbctl watch: one-endpoint change at scale",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- config: {args.services} services x {args.endpoints} endpoints in {args.files} files; "
        f"{args.changes} changes of one endpoint in one file (whole file rewritten via rename)",
        f"- drivers: {drivers_label}",
        f"- debounce: {args.debounce * 1000:g} ms",
        "",
        *table,
        "",
        f"- cold start (load + full reconcile from empty): {cold:.2f} s "
        f"({cold_last.duration if cold_last else 0:.2f} s reconcile)",
        f"- full reload + full reconcile (SIGHUP path, no changes): {full_resync:.2f} s",
        "",
        "Run: `sudo .venv/bin/python bench/watch_bench.py`.",
        "",
    ])
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
