"""Health-probe bench: one probe runner probing 1,000 endpoints every second.

Why this exists: issue 12 asks that one ``lbctl watch`` probe 1,000 endpoints every
second with less than 25 % of one core.  The bench builds an LB namespace and one
backend namespace holding 1,000 addresses (10.202.x.y, routed from the LB), runs a
small asyncio server there (TCP accept on 8080, HTTP on 8081, UDP echo on 5353; the
kernel answers pings), and runs the daemon's probe runner (``reconciler.probes.
runner.ProbeRunner``, the same thread and event loop ``lbctl watch`` starts) inside
the LB namespace for each probe type in turn.  CPU is the bench process's CPU time
(the runner thread; the main thread sleeps) over the measured window, as a share of
one core.  The backend server runs in another process and is not counted.

Prints a table, writes ``bench/results/probes.md``; asserts nothing.

    sudo .venv/bin/python bench/probe_bench.py [--endpoints 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.drivers.netns import in_netns  # noqa: E402
from reconciler.probes.health import HealthTracker, Transition  # noqa: E402
from reconciler.probes.runner import ProbeRunner  # noqa: E402
from reconciler.probes.targets import ProbeTarget  # noqa: E402

PREFIX = "lbpb" + os.urandom(2).hex()
LB, BE = f"{PREFIX}-lb", f"{PREFIX}-be"
RESULTS = Path(__file__).resolve().parent / "results" / "probes.md"

SERVER = r"""
import asyncio, sys
async def tcp(r, w):
    w.close()
async def http(r, w):
    try:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        await w.drain()
    except Exception:
        pass
    w.close()
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, t):
        self.t = t
    def datagram_received(self, data, addr):
        self.t.sendto(data, addr)
async def main():
    loop = asyncio.get_running_loop()
    a = await asyncio.start_server(tcp, "0.0.0.0", 8080, backlog=4096)
    b = await asyncio.start_server(http, "0.0.0.0", 8081, backlog=4096)
    # One UDP socket per address: a reply must come from the address probed (a socket bound
    # to 0.0.0.0 answers from the route's source address, which a connected probe ignores).
    for i in range(int(sys.argv[1])):
        await loop.create_datagram_endpoint(Echo, local_addr=(f"10.202.{i // 250}.{i % 250 + 1}", 5353))
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def ip(*args: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, input=stdin)


def address(i: int) -> str:
    return f"10.202.{i // 250}.{i % 250 + 1}"


def setup(n: int) -> subprocess.Popen[bytes]:
    ip("netns", "add", LB)
    ip("netns", "add", BE)
    ip("link", "add", f"{PREFIX}a", "type", "veth", "peer", "name", f"{PREFIX}b")
    ip("link", "set", f"{PREFIX}a", "netns", LB, "name", "be0")
    ip("link", "set", f"{PREFIX}b", "netns", BE, "name", "eth0")
    for ns, dev, addr in ((LB, "be0", "10.201.0.1/24"), (BE, "eth0", "10.201.0.2/24")):
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "set", dev, "up")
        ip("-n", ns, "addr", "add", addr, "dev", dev)
    ip("-n", BE, "-batch", "-", stdin="".join(f"addr add {address(i)}/32 dev eth0\n" for i in range(n)))
    ip("-n", LB, "route", "add", "10.202.0.0/16", "via", "10.201.0.2")
    ip("-n", BE, "route", "add", "default", "via", "10.201.0.1")
    p = subprocess.Popen(["ip", "netns", "exec", BE, sys.executable, "-c", SERVER, str(n)],
                         stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None and b"ready" in p.stdout.readline()
    return p


def teardown(server: subprocess.Popen[bytes] | None) -> None:
    if server is not None:
        server.kill()
        server.wait()
    for ns in (LB, BE):
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def measure(kind: str, n: int, seconds: float) -> dict[str, float]:
    port = {"tcp": 8080, "http": 8081, "udp": 5353, "ping": 0}[kind]
    targets = {("bench", address(i)): ProbeTarget(
        service="bench", address=address(i), type=kind, port=port, request="/" if kind == "http" else "x",  # type: ignore[arg-type]
        response="x" if kind == "udp" else None, status=200, interval=1.0, timeout=0.5, retries=3)
        for i in range(n)}
    transitions: list[Transition] = []
    tracker = HealthTracker()
    runner = ProbeRunner(tracker, transitions.append, namespace=lambda: in_netns(LB))
    runner.start()
    try:
        runner.configure(targets)
        time.sleep(2.5)  # warm up: every endpoint probed at least twice
        before = {e["address"]: e["probes"] for e in tracker.status()}
        c0, t0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = time.process_time(), time.monotonic()
        status = tracker.status()
    finally:
        runner.stop()
    probes = sum(e["probes"] - before.get(e["address"], 0) for e in status)
    failed = sum(1 for e in status if e["last_result"] != "ok")
    lat = sorted(e["latency_ms"] for e in status if e["latency_ms"] is not None)
    return {"cpu": 100 * (c1 - c0) / (t1 - t0), "rate": probes / (t1 - t0), "failed": failed,
            "down": len(tracker.health()), "lat50": lat[len(lat) // 2] if lat else 0.0,
            "lat99": lat[int(len(lat) * 0.99)] if lat else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--kinds", default="tcp,http,udp,ping", help="probe types to measure (comma-separated)")
    args = ap.parse_args()
    server = None
    rows = []
    try:
        server = setup(args.endpoints)
        for kind in args.kinds.split(","):
            r = measure(kind, args.endpoints, args.seconds)
            rows.append((kind, r))
            print(f"{kind:5} {r['rate']:7.0f} probes/s  CPU {r['cpu']:5.1f} % of one core  "
                  f"latency p50 {r['lat50']:.2f} ms p99 {r['lat99']:.2f} ms  failing {r['failed']:.0f}",
                  flush=True)
    finally:
        teardown(server)
    load = os.getloadavg()
    lines = [
        "# Health probes: one runner, 1,000 endpoints every second", "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- {args.endpoints} endpoints (addresses of one backend namespace, routed from the LB namespace), "
        f"interval 1 s, timeout 0.5 s; {args.seconds:g} s measured after a 2.5 s warm-up",
        "- CPU: the bench process's CPU time (the probe thread) per second of wall time; target < 25 %", "",
        "| probe | probes/s | CPU (% of one core) | latency p50 (ms) | latency p99 (ms) | failing |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, r in rows:
        lines.append(f"| {kind} | {r['rate']:.0f} | {r['cpu']:.1f} | {r['lat50']:.2f} | {r['lat99']:.2f} | "
                     f"{r['failed']:.0f} |")
    lines += ["", "Run: `sudo .venv/bin/python bench/probe_bench.py`."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
