"""Datapath benchmarks: ns/packet under BPF_PROG_TEST_RUN, and traffic through the VIP.

Why this exists: the issue's "done when" asks for per-packet cost (established,
new flow, reverse path, non-matching) next to an empty program as the floor,
for tc and XDP, plus bulk throughput (iperf3) and connections/s (wrk against
nginx backends) through the VIP with the tc hook, against the direct path and
an iptables DNAT of the same VIP, in interleaved rounds, medians reported.
XDP on veth is not benchmarked (DESIGN pitfall 18): its traffic numbers are
reported n/a.  Also prints the Maglev table memory at 10,000 services.

Also the per-packet cost of each NAT mode beside the default mode (issue 13);
``--modes-only`` measures just that and writes bench/results/datapath-modes.md.

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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from reconciler import maglev  # noqa: E402
from reconciler.drivers import _libbpf as B  # noqa: E402
from reconciler.drivers.bpf import BpfDriver  # noqa: E402
from reconciler.drivers.netns import in_netns  # noqa: E402
from reconciler.plan import Change  # noqa: E402
from reconciler.records import Attachment, Backend, EndpointSet, FirewallEntry, ServiceEntry, ServiceKey  # noqa: E402
from tests.bpf import packets as P  # noqa: E402
from tests.bpf.harness import BACKENDS4, CLIENT4, CLIENT6, GW4, ROUTED4, Datapath  # noqa: E402
from tests.testbed import VIP4, Testbed  # noqa: E402

ROUNDS = 9  # interleaved rounds; each reports the median of its calls
CALLS = 300  # BPF_PROG_TEST_RUN calls per case and round
REPEAT = 200  # runs per call (the TTL of a redirected packet drops by one per run: start at 255)
SINGLE = 2000  # single runs per round for the fresh-tuple new-flow method
VIP_EST, VIP_NEW, VIP_NONE = "10.97.0.1", "10.97.0.2", "10.97.0.99"
# Ten drop rules (source /24, TCP, one destination port each) that the bench traffic never matches.
FW_RULES = [FirewallEntry(name=f"r{i:02}", priority=i, source=f"172.16.{i}.0/24", destination=None,
                          source_ports=None, destination_ports=(1000 + i, 1000 + i), protocol="tcp",
                          in_interface=None, action="drop") for i in range(10)]


def _stats(dp: Datapath) -> dict[str, int]:
    return dp.driver.stats()


def _delta(a: dict[str, int], b: dict[str, int], *names: str) -> str:
    return ", ".join(f"{n} +{b.get(n, 0) - a.get(n, 0)}" for n in names)


def ns_per_packet(rounds: int = ROUNDS, ncalls: int = CALLS,
                  nsingle: int = SINGLE) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    """ns/packet per case and hook: a list of per-round medians.

    Method: BPF_PROG_TEST_RUN does not reset the packet between repeats
    (pitfall 12), so every service here is *idempotent* -- its only endpoint is the VIP
    itself with the same port, so the DNAT of the forward path and the reverse NAT
    of the reply path rewrite the packet into itself, and every repeat takes the
    same path through conntrack, NAT, checksum updates, bpf_fib_lookup and the
    redirect (a route to the VIPs via a permanent neighbour makes the FIB lookup
    succeed).  The only field that changes is the TTL (decremented on redirect), so
    frames start at TTL 255 and a call repeats 200 times.  New flows: the service
    has a session timeout of 0, so the conntrack entry left by one repeat is stale
    for the next one, which therefore selects an endpoint and creates both entries
    again (it also pays one stale-entry lookup where a real new flow has a miss).
    Cross-check: single runs, each on a fresh 5-tuple, minus the single-run
    overhead (empty program single run - empty program repeated).  Rows "firewall 10 rules":
    the same frames through a second datapath holding ten firewall rules (source /24, TCP,
    one destination port each) that none of them matches.  The datapath's
    own counters are read around each case to show every repeat took the intended
    path.
    """
    out: dict[str, dict[str, list[float]]] = {}
    checks: dict[str, str] = {}
    obj = B.BpfObject(os.path.join(REPO, "build", "bpf", "lb_empty.o"))
    obj.load()
    dp = Datapath()
    dpfw: Datapath | None = None
    try:
        dpfw = Datapath()
        frames: dict[str, dict[str, bytes]] = {}
        for d in (dp, dpfw):
            subprocess.run(["ip", "-n", d.ns, "route", "add", "10.97.0.0/24", "via", GW4], check=True)
            d.service(VIP_EST, "tcp", 80, [Backend(VIP_EST, 80)])
            d.service(VIP_NEW, "tcp", 80, [Backend(VIP_NEW, 80)], timeout=0)
        dpfw.firewall(FW_RULES)
        for n, hook in enumerate(("tc", "xdp")):
            cport = 41000 + n
            est = P.Pkt(CLIENT4, VIP_EST, P.TCP, cport, 80, flags=P.ACK, ttl=255).bytes()
            for d in (dp, dpfw):
                r = d.run(hook, est)  # creates the flow (both conntrack entries)
                assert r.retval in (7, 4), f"{hook}: priming run not redirected (retval {r.retval})"
            frames[hook] = {
                "established flow": est,
                "reverse path": P.Pkt(VIP_EST, CLIENT4, P.TCP, 80, cport, flags=P.ACK, ttl=255).bytes(),
                "new flow": P.Pkt(CLIENT4, VIP_NEW, P.TCP, 42000 + n, 80, flags=P.SYN, ttl=255).bytes(),
                "non-matching": P.Pkt(CLIENT4, VIP_NONE, P.TCP, 43000 + n, 80, flags=P.ACK, ttl=255).bytes(),
            }
        fds = {"tc": dp.driver.prog_fd("tc"), "xdp": dp.driver.prog_fd("xdp")}
        fwfds = {"tc": dpfw.driver.prog_fd("tc"), "xdp": dpfw.driver.prog_fd("xdp")}
        empty = {h: obj.prog_fd(f"empty_{h}") for h in ("tc", "xdp")}
        expect = {"established flow": ("forward", "redirect", "new_flow"),
                  "reverse path": ("reply", "redirect", "new_flow"),
                  "new flow": ("new_flow", "redirect"),
                  "non-matching": ("pass_not_ours", "redirect")}

        def calls(fd: int, frame: bytes, ns: str = dp.ns) -> float:
            with in_netns(ns):
                return statistics.median(B.test_run(fd, frame, REPEAT).duration_ns for _ in range(ncalls))

        def singles(fd: int, fresh: bool, sport0: int) -> float:
            with in_netns(dp.ns):
                if not fresh:
                    f = P.Pkt(CLIENT4, VIP_NONE, P.TCP, 44000, 80, flags=P.ACK).bytes()
                    return statistics.median(B.test_run(fd, f, 1).duration_ns for _ in range(nsingle))
                res = []
                for i in range(nsingle):
                    f = P.Pkt(f"10.98.{1 + i // 250}.{i % 250 + 1}", VIP_EST, P.TCP, sport0, 80).bytes()
                    res.append(B.test_run(fd, f, 1).duration_ns)
                return statistics.median(res)

        for rnd in range(rounds):
            for hook in ("tc", "xdp"):
                out.setdefault("empty program (floor)", {}).setdefault(hook, []).append(
                    calls(empty[hook], frames[hook]["non-matching"]))
                for case, frame in frames[hook].items():
                    before = _stats(dp)
                    out.setdefault(case, {}).setdefault(hook, []).append(calls(fds[hook], frame))
                    after = _stats(dp)
                    checks[f"{case} ({hook})"] = (f"{ncalls * REPEAT} runs: "
                                                  + _delta(before, after, *expect[case]))
                    before = _stats(dpfw)
                    out.setdefault(f"{case}, firewall 10 rules", {}).setdefault(hook, []).append(
                        calls(fwfds[hook], frame, dpfw.ns))
                    after = _stats(dpfw)
                    checks[f"{case}, firewall 10 rules ({hook})"] = (
                        f"{ncalls * REPEAT} runs: " + _delta(before, after, *expect[case]))
                # Cross-check of the new-flow cost with single runs on fresh tuples.
                one_empty = singles(empty[hook], False, 0)
                one_new = singles(fds[hook], True, 20000 + 100 * rnd + (hook == "xdp"))
                floor = out["empty program (floor)"][hook][-1]
                out.setdefault("new flow, single runs on fresh tuples (see method)", {}).setdefault(
                    hook, []).append(one_new - one_empty + floor)
                out.setdefault("empty program, single run (timer overhead included)", {}).setdefault(
                    hook, []).append(one_empty)
    finally:
        dp.close()
        if dpfw is not None:
            dpfw.close()
        obj.close()
    return out, checks


MODE_ROUNDS = 5
MODE_SINGLES = 400  # single runs per case and round
# (label, VIP, service mode, endpoint, configured source)
MODES = [
    ("default (DNAT)", "10.97.1.1", "default", BACKENDS4[0], ""),
    ("onearm", "10.97.1.2", "onearm", BACKENDS4[0], ""),
    ("fullnat (configured source)", "10.97.1.3", "fullnat", BACKENDS4[0], "10.99.0.77"),
    ("dsr L2", "10.97.1.4", "dsr", BACKENDS4[0], ""),
    ("dsr L3 (IP-in-IP)", "10.97.1.5", "dsr", ROUTED4, ""),
    ("fullnat NAT64 (IPv6 VIP, IPv4 endpoint)", "fd00:97::64", "fullnat", BACKENDS4[0], ""),
]


def mode_costs(rounds: int = MODE_ROUNDS, singles: int = MODE_SINGLES) -> dict[str, dict[str, list[float]]]:
    """ns/packet of each NAT mode: single runs minus the empty program's single run.

    Source NAT rewrites a packet into another one, so the repeat trick of
    ``ns_per_packet`` does not apply: every figure here is the median of single
    BPF_PROG_TEST_RUN calls (each starts from the same input frame) minus the
    median single run of the empty program, i.e. the program's own cost above
    an empty one.  Established: the flow's conntrack entry exists; reverse:
    the endpoint's reply (none for dsr: replies bypass the box); new flow: a
    fresh client address per run (endpoint selection, source-port allocation,
    both conntrack entries).
    """
    out: dict[str, dict[str, list[float]]] = {}
    obj = B.BpfObject(os.path.join(REPO, "build", "bpf", "lb_empty.o"))
    obj.load()
    dp = Datapath()
    try:
        frames: dict[tuple[str, str], dict[str, bytes]] = {}
        for label, vip, mode, be, source in MODES:
            dp.service(vip, "tcp", 80, [Backend(be, 8080 if mode != "dsr" else 0)], mode=mode,
                       selection="hash" if mode == "dsr" else "rr", source=source)
            for n, hook in enumerate(("tc", "xdp")):
                est = P.Pkt(CLIENT6 if ":" in vip else CLIENT4, vip, P.TCP, 41000 + n, 80, flags=P.ACK)
                r = dp.run(hook, est.bytes())
                assert r.retval in (7, 4), f"{label} {hook}: priming run not redirected ({r.retval})"
                fr = {"established flow": est.bytes()}
                if mode != "dsr":
                    o = P.parse(r.data)
                    fr["reverse path"] = P.Pkt(o.dst, o.src, P.TCP, o.dport, o.sport, flags=P.ACK).bytes()
                frames[(label, hook)] = fr
        fds = {"tc": dp.driver.prog_fd("tc"), "xdp": dp.driver.prog_fd("xdp")}
        empty = {h: obj.prog_fd(f"empty_{h}") for h in ("tc", "xdp")}
        probe = P.Pkt(CLIENT4, VIP_NONE, P.TCP, 44000, 80, flags=P.ACK).bytes()
        fresh = 0
        with in_netns(dp.ns):
            for _ in range(rounds):
                for hook in ("tc", "xdp"):
                    floor = statistics.median(B.test_run(empty[hook], probe, 1).duration_ns
                                              for _ in range(singles))
                    for label, vip, _mode, _be, _src in MODES:
                        for case, frame in frames[(label, hook)].items():
                            ns = statistics.median(B.test_run(fds[hook], frame, 1).duration_ns
                                                   for _ in range(singles))
                            out.setdefault(f"{label}: {case}", {}).setdefault(hook, []).append(ns - floor)
                        res = []
                        for _ in range(singles):
                            fresh += 1
                            src = (f"fd00:100::{fresh:x}" if ":" in vip else
                                   f"10.{100 + fresh // 62500}.{fresh // 250 % 250}.{fresh % 250 + 1}")
                            f = P.Pkt(src, vip, P.TCP, 45000, 80).bytes()
                            res.append(B.test_run(fds[hook], f, 1).duration_ns)
                        out.setdefault(f"{label}: new flow", {}).setdefault(hook, []).append(
                            statistics.median(res) - floor)
    finally:
        dp.close()
        obj.close()
    return dict(sorted(out.items(), key=lambda kv: (kv[0].split(":")[1], [m[0] for m in MODES].index(
        kv[0].split(":")[0]))))


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
    res: dict[str, dict[str, list[float]]] = {"gbit": {}, "conn": {}, "load": {}}
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
            rule = ["-t", "nat", "-A" if on else "-D", "PREROUTING", "-d", VIP4, "-p", "tcp"]
            nth = ["-m", "statistic", "--mode", "nth", "--packet", "0", "--every"]
            rules = [
                ["--dport", "5201", "-j", "DNAT", "--to-destination", f"{tb.backend4(0)}:5201"],
                # kube-proxy style round robin: 1 in 3, then 1 in 2 of the rest, then the rest
                ["--dport", "80", *nth, "3", "-j", "DNAT", "--to-destination", f"{tb.backend4(0)}:8081"],
                ["--dport", "80", *nth, "2", "-j", "DNAT", "--to-destination", f"{tb.backend4(1)}:8081"],
                ["--dport", "80", "-j", "DNAT", "--to-destination", f"{tb.backend4(2)}:8081"],
            ]
            for r in rules:
                sh("ip", "netns", "exec", tb.lb, "iptables", *rule, *r)

        nft_rules = f"""table ip lbbench {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    ip daddr {VIP4} tcp dport 5201 dnat to {tb.backend4(0)}:5201
    ip daddr {VIP4} tcp dport 80 dnat to numgen inc mod 3 map {{ 0 : {tb.backend4(0)}, \
1 : {tb.backend4(1)}, 2 : {tb.backend4(2)} }} : 8081
  }}
}}
"""

        def nftables(on: bool) -> None:
            if on:
                subprocess.run(["ip", "netns", "exec", tb.lb, "nft", "-f", "-"], input=nft_rules, text=True,
                               check=True, capture_output=True)
            else:
                sh("ip", "netns", "exec", tb.lb, "nft", "delete", "table", "ip", "lbbench")

        def measure(mode: str, bulk_dst: str, web_dst: str) -> None:
            res["load"].setdefault("all", []).append(os.getloadavg()[0])
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
            measure("iptables DNAT (iptables-nft, statistic nth)", VIP4, VIP4)
            iptables(False)
            nftables(True)
            measure("nftables DNAT (numgen inc map)", VIP4, VIP4)
            nftables(False)
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
    ap.add_argument("--modes-only", action="store_true", help="only the NAT modes' ns/packet")
    ap.add_argument("--mode-rounds", type=int, default=MODE_ROUNDS)
    # Each XDP BPF_PROG_TEST_RUN call waits for two RCU grace periods (the XDP dispatcher is
    # swapped in and out); on a busy box fewer calls keep the run within minutes.
    ap.add_argument("--ns-rounds", type=int, default=ROUNDS)
    ap.add_argument("--ns-calls", type=int, default=CALLS)
    ap.add_argument("--ns-singles", type=int, default=SINGLE)
    ap.add_argument("--mode-singles", type=int, default=MODE_SINGLES)
    args = ap.parse_args()
    if args.modes_only:
        load0 = os.getloadavg()
        modes = mode_costs(args.mode_rounds, args.mode_singles)
        text = "\n".join(["# Datapath benchmark: NAT modes", "",
                          f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
                          f"- kernel: {platform.release()}, {os.cpu_count()} CPUs",
                          f"- load average (1 min) before/after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f}",
                          ""] + mode_table(modes, args.mode_rounds, args.mode_singles)) + "\n"
        print(text)
        with open(os.path.join(REPO, "bench", "results", "datapath-modes.md"), "w") as fh:
            fh.write(text)
        return
    load0 = os.getloadavg()
    pp, checks = ns_per_packet(args.ns_rounds, args.ns_calls, args.ns_singles)
    modes = mode_costs(args.mode_rounds, args.mode_singles)
    load1 = os.getloadavg()
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
        f"- load average (1 min) before/after the ns/packet part: {load0[0]:.2f} / {load1[0]:.2f}",
        "",
        f"## ns/packet (BPF_PROG_TEST_RUN; {args.ns_rounds} interleaved rounds, each the median of "
        f"{args.ns_calls} calls",
        f"of {REPEAT} repeats; median of the rounds [min-max])",
        "",
        "| case | tc | xdp |",
        "|---|---|---|",
    ]
    for case, v in pp.items():
        lines.append(f"| {case} | {fmt(v.get('tc', []), 0)} | {fmt(v.get('xdp', []), 0)} |")
    lines += ["", " ".join((ns_per_packet.__doc__ or "").split("\n\n", 1)[1].split()), "",
              "Path check (the datapath's own counters over the last round):", ""]
    lines += [f"- {k}: {v}" for k, v in checks.items()]
    lines += [""] + mode_table(modes, args.mode_rounds, args.mode_singles)
    if tr:
        lines += [
            "",
            f"## Through the VIP (veth, {args.rounds} interleaved rounds x {args.seconds}s, medians "
            "[min-max])",
            "",
            f"Load average (1 min) while measuring: {fmt(tr['load'].get('all', []), 2)}.",
            "",
            "| path | bulk TCP Gbit/s (iperf3) | conn/s (wrk, Connection: close) |",
            "|---|---|---|",
        ]
        for mode in res_modes(tr):
            g, c = tr["gbit"].get(mode, []), tr["conn"].get(mode, [])
            lines.append(f"| {mode} | {fmt(g, 2)} | {fmt(c, 0)} |")
        lines.append("| lbctl xdp | n/a on veth (pitfall 18: XDP on veth turns GSO off on the peer, "
                     "drops under load without a root qdisc, and generic XDP redirect drops GSO "
                     "super-packets; benchmark it on a NIC with native XDP) | n/a |")
    mem = maglev.table_memory(10_000, 10)
    lines += [
        "",
        "## Maglev table memory at 10,000 services",
        "",
        f"- 10 endpoints each: table {maglev.table_size(10)} entries, {mem / 2**20:.1f} MiB of map values "
        f"per slot set ({2 * mem / 2**20:.1f} MiB with both slots filled), plus hash element overhead",
        f"- 100 endpoints each: table {maglev.table_size(100)} entries, "
        f"{maglev.table_memory(10_000, 100) / 2**20:.1f} MiB per slot set",
        "- why the inactive slot is not freed after a swap: a packet that read lb_conf just before the swap "
        "may still look up the old slot's list and table chunks; deleting them at once would drop it (no "
        "backend).  Waiting out an RCU grace period from user space (membarrier(MEMBARRIER_CMD_GLOBAL), i.e. "
        "synchronize_rcu) took 8-32 ms (median 16 ms) on this box, over the 5 ms budget of a one-service "
        "change.  A cold apply fills one slot set only (the figure above); the second slot of a service "
        "is allocated on its first endpoint change and then reused in place by every later change.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "datapath.md"), "w") as fh:
        fh.write(text)


def mode_table(modes: dict[str, dict[str, list[float]]], rounds: int, singles: int) -> list[str]:
    lines = [f"## ns/packet per NAT mode ({rounds} interleaved rounds, each the median of "
             f"{singles} single runs minus the empty program's; median of the rounds [min-max])", "",
             "| mode: path | tc | xdp |", "|---|---|---|"]
    for case, v in modes.items():
        lines.append(f"| {case} | {fmt(v.get('tc', []), 0)} | {fmt(v.get('xdp', []), 0)} |")
    return lines + ["", " ".join((mode_costs.__doc__ or "").split("\n\n", 1)[1].split())]


def res_modes(tr: dict[str, dict[str, list[float]]]) -> list[str]:
    return list(tr["gbit"]) or list(tr["conn"])  # insertion order: the order of each round


def fmt(v: list[float], digits: int) -> str:
    if not v:
        return "n/a"
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}-{max(v):.{digits}f}]"


if __name__ == "__main__":
    main()
