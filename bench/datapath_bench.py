"""Datapath benchmarks: ns/packet under BPF_PROG_TEST_RUN, and traffic through the VIP.

Why this exists: the issue's "done when" asks for per-packet cost (established,
new flow, reverse path, non-matching) next to an empty program as the floor,
for tc and XDP, plus bulk throughput (iperf3) and connections/s (wrk against
nginx backends) through the VIP with the tc hook, against the direct path and
an iptables DNAT of the same VIP, in interleaved rounds, medians reported.
XDP on veth is not benchmarked (DESIGN pitfall 18): its traffic numbers are
reported n/a.  Also prints the Maglev table memory at 10,000 services.

Run as root from the repo: ``.venv/bin/python bench/datapath_bench.py``.
Writes bench/results/datapath.md.  Never asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reconciler import maglev  # noqa: E402
from reconciler.drivers import _libbpf as B  # noqa: E402
from reconciler.drivers.bpf import BpfDriver  # noqa: E402
from reconciler.drivers.netns import in_netns  # noqa: E402
from reconciler.plan import Change  # noqa: E402
from reconciler.records import Attachment, Backend, EndpointSet, ServiceEntry, ServiceKey  # noqa: E402
from reconciler.testbed import VIP4, Testbed  # noqa: E402
from tests.bpf import packets as P  # noqa: E402
from tests.bpf.harness import BACKENDS4, CLIENT4, Datapath  # noqa: E402

RUNS = 3000
REPEAT = 200_000


def _median(fd: int, frames: list[bytes], netns: str) -> float:
    """Median of single BPF_PROG_TEST_RUN calls, each on a fresh copy of its frame.

    Repeats within one call would re-run an already rewritten packet (pitfall 12:
    no reset between repeats; after DNAT it is a non-VIP packet, and TTL drops),
    so every case is timed as single runs, the floor included.
    """
    with in_netns(netns):
        return statistics.median(B.test_run(fd, f, 1).duration_ns for f in frames)


def ns_per_packet() -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    obj = B.BpfObject(os.path.join(B.REPO, "build", "bpf", "lb_empty.o"))
    obj.load()
    dp = Datapath()
    vip = "10.97.0.1"
    try:
        frame = P.Pkt(CLIENT4, vip, P.TCP, 40000, 80, flags=P.ACK).bytes()
        for hook in ("tc", "xdp"):
            fd = obj.prog_fd(f"empty_{hook}")
            out.setdefault("empty program (floor)", {})[hook] = _median(fd, [frame] * RUNS, dp.ns)
            out.setdefault("empty program, 200k repeats", {})[hook] = B.test_run(
                fd, frame, REPEAT
            ).duration_ns
        dp.service(vip, "tcp", 80, [Backend(b, 8080) for b in BACKENDS4])
        for hook in ("tc", "xdp"):
            fd = dp.driver.prog_fd(hook)
            est = P.Pkt(CLIENT4, vip, P.TCP, 41000 if hook == "tc" else 41001, 80, flags=P.ACK)
            dp.run(hook, est.bytes())  # the flow exists before the timed runs
            out.setdefault("established flow", {})[hook] = _median(fd, [est.bytes()] * RUNS, dp.ns)
            flows = [f for f in dp.driver.conntrack() if f.client_port == est.sport]
            rep = P.Pkt(flows[0].backend, CLIENT4, P.TCP, 8080, est.sport, flags=P.ACK)
            out.setdefault("reverse path", {})[hook] = _median(fd, [rep.bytes()] * RUNS, dp.ns)
            news = [
                P.Pkt(f"10.98.{1 + i // 250}.{i % 250 + 1}", vip, P.TCP, 20000 + (hook == "xdp"), 80).bytes()
                for i in range(RUNS)
            ]
            out.setdefault("new flow", {})[hook] = _median(fd, news, dp.ns)
            non = P.Pkt(CLIENT4, "10.97.0.99", P.TCP, 40000, 80, flags=P.ACK).bytes()
            out.setdefault("non-matching", {})[hook] = _median(fd, [non] * RUNS, dp.ns)
            out.setdefault("non-matching, 200k repeats", {})[hook] = dp.run(hook, non, REPEAT).duration_ns
    finally:
        dp.close()
        obj.close()
    return out


NGINX_CONF = """
worker_processes 1; daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; server {{ listen 8081 reuseport backlog=4096;
  location / {{ return 200 "ok\\n"; }} }} }}
"""


def sh(*a: str, check: bool = True) -> str:
    return subprocess.run(a, check=check, capture_output=True, text=True).stdout


def traffic(rounds: int, seconds: int) -> dict[str, dict[str, list[float]]]:
    tb = Testbed(n_backends=3).setup()
    tmp = tempfile.mkdtemp(prefix="lbctl-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    pin = f"/sys/fs/bpf/lbctl-bench-{uuid.uuid4().hex[:6]}"
    drv = BpfDriver(pin_root=pin, netns=tb.lb)
    res: dict[str, dict[str, list[float]]] = {"gbit": {}, "conn": {}}
    try:
        for i in range(3):
            d = os.path.join(tmp, f"b{i}")
            os.makedirs(d)
            with open(os.path.join(d, "nginx.conf"), "w") as fh:
                fh.write(NGINX_CONF.format(dir=d))
            procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        tb.backend_ns(i),
                        "nginx",
                        "-c",
                        os.path.join(d, "nginx.conf"),
                        "-p",
                        d,
                    ],
                    start_new_session=True,
                )
            )
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", tb.backend_ns(0), "iperf3", "-s"],
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        import time

        time.sleep(1)
        web = ServiceKey(VIP4, "tcp", 80, 80)
        bulk = ServiceKey(VIP4, "tcp", 5201, 5201)
        changes = [
            Change(
                "endpoints",
                str(web),
                "create",
                None,
                EndpointSet(web, tuple(Backend(tb.backend4(i), 8081) for i in range(3))),
            ),
            Change(
                "service", str(web), "create", None, ServiceEntry(web, "web", "default", "rr", 240, 10800)
            ),
            Change(
                "endpoints", str(bulk), "create", None, EndpointSet(bulk, (Backend(tb.backend4(0), 5201),))
            ),
            Change(
                "service", str(bulk), "create", None, ServiceEntry(bulk, "bulk", "default", "rr", 240, 10800)
            ),
        ]
        attach = [Change("attach", i, "create", None, Attachment(i, "tc")) for i in tb.lb_interfaces]
        detach = [Change("attach", i, "delete", Attachment(i, "tc"), None) for i in tb.lb_interfaces]
        drv.apply(changes)

        def iptables(on: bool) -> None:
            op = "-A" if on else "-D"
            cmds = [
                [
                    "-t",
                    "nat",
                    op,
                    "PREROUTING",
                    "-d",
                    VIP4,
                    "-p",
                    "tcp",
                    "--dport",
                    "5201",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    f"{tb.backend4(0)}:5201",
                ],
                [
                    "-t",
                    "nat",
                    op,
                    "PREROUTING",
                    "-d",
                    VIP4,
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                    "-m",
                    "statistic",
                    "--mode",
                    "nth",
                    "--every",
                    "3",
                    "--packet",
                    "0",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    f"{tb.backend4(0)}:8081",
                ],
                [
                    "-t",
                    "nat",
                    op,
                    "PREROUTING",
                    "-d",
                    VIP4,
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                    "-m",
                    "statistic",
                    "--mode",
                    "nth",
                    "--every",
                    "2",
                    "--packet",
                    "0",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    f"{tb.backend4(1)}:8081",
                ],
                [
                    "-t",
                    "nat",
                    op,
                    "PREROUTING",
                    "-d",
                    VIP4,
                    "-p",
                    "tcp",
                    "--dport",
                    "80",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    f"{tb.backend4(2)}:8081",
                ],
            ]
            for c in cmds:
                sh("ip", "netns", "exec", tb.lb, "iptables", *c)

        def measure(mode: str, bulk_dst: str, web_dst: str) -> None:
            out = sh(
                "ip",
                "netns",
                "exec",
                tb.client,
                "iperf3",
                "-c",
                bulk_dst,
                "-p",
                "5201",
                "-t",
                str(seconds),
                "-J",
            )
            bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
            res["gbit"].setdefault(mode, []).append(bps / 1e9)
            out = sh(
                "ip",
                "netns",
                "exec",
                tb.client,
                "wrk",
                "-t2",
                "-c32",
                f"-d{seconds}s",
                "-H",
                "Connection: close",
                f"http://{web_dst}/",
            )
            for line in out.splitlines():
                if line.startswith("Requests/sec:"):
                    res["conn"].setdefault(mode, []).append(float(line.split()[1]))

        for _ in range(rounds):
            drv.apply(attach)
            measure("lbctl tc", VIP4, VIP4)
            drv.apply(detach)
            measure("direct (no LB)", tb.backend4(0), f"{tb.backend4(0)}:8081")
            iptables(True)
            measure("iptables DNAT", VIP4, VIP4)
            iptables(False)
    finally:
        drv.down()
        for p in procs:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
            p.wait()
        tb.teardown()
        subprocess.run(["rm", "-rf", tmp])
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--no-traffic", action="store_true")
    args = ap.parse_args()
    pp = ns_per_packet()
    tr = None if args.no_traffic else traffic(args.rounds, args.seconds)
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    lines = [
        "# Datapath benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- kernel: {platform.release()}, cpu: {cpu} x {os.cpu_count()}",
        "",
        f"## ns/packet (BPF_PROG_TEST_RUN, median of {RUNS} single runs unless marked; the",
        "single-run timer adds a fixed cost, so compare against the floor of the same kind)",
        "",
        "| case | tc | xdp |",
        "|---|---|---|",
    ]
    for case, v in pp.items():
        lines.append(f"| {case} | {v.get('tc', 0):.0f} | {v.get('xdp', 0):.0f} |")
    if tr:
        lines += [
            "",
            f"## Through the VIP (veth, {args.rounds} interleaved rounds x {args.seconds}s, medians "
            "[min-max])",
            "",
            "| path | bulk TCP Gbit/s (iperf3) | conn/s (wrk, Connection: close) |",
            "|---|---|---|",
        ]
        for mode in res_modes(tr):
            g, c = tr["gbit"].get(mode, []), tr["conn"].get(mode, [])
            lines.append(f"| {mode} | {fmt(g, 2)} | {fmt(c, 0)} |")
        lines.append("| lbctl xdp | n/a on veth (pitfall 18: benchmark on a NIC with native XDP) | n/a |")
    mem = maglev.table_memory(10_000, 10)
    lines += [
        "",
        "## Maglev table memory at 10,000 services",
        "",
        f"- 10 endpoints each: table {maglev.table_size(10)} entries, {mem / 2**20:.1f} MiB of map values "
        f"per slot set ({2 * mem / 2**20:.1f} MiB with both slots filled), plus hash element overhead",
        f"- 100 endpoints each: table {maglev.table_size(100)} entries, "
        f"{maglev.table_memory(10_000, 100) / 2**20:.1f} MiB per slot set",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "datapath.md"), "w") as fh:
        fh.write(text)


def res_modes(tr: dict[str, dict[str, list[float]]]) -> list[str]:
    return list(tr["gbit"]) or list(tr["conn"])


def fmt(v: list[float], digits: int) -> str:
    if not v:
        return "n/a"
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}-{max(v):.{digits}f}]"


if __name__ == "__main__":
    main()
