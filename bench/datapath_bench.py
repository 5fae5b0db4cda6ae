"""Datapath benchmarks: ns/packet under BPF_PROG_TEST_RUN, and traffic through the VIP.

Why this exists: the issue's "done when" asks for per-packet cost (established,
new flow, reverse path, non-matching) next to an empty program as the floor,
for tc and XDP, and traffic through the VIP against the direct path, iptables
DNAT and an nftables DNAT map in the same run and topology.  This script
measures the per-packet part and prints the Maglev table memory at 10,000
services (bench/results/datapath.md); the traffic part lives in
``bench/_traffic.py`` (bulk TCP and connections/s per system, connections/s
with 10,000 services loaded, UDP packets/s with the XDP hook on veth;
bench/results/traffic.md).

Also the per-packet cost of each NAT mode beside the default mode (issue 13);
``--modes-only`` measures just that and writes bench/results/datapath-modes.md.

Run as root from the repo: ``.venv/bin/python bench/datapath_bench.py``
(``--quick``: a few minutes in all; ``--traffic-only``: just traffic.md).
Never asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _traffic  # noqa: E402

from reconciler import maglev  # noqa: E402
from reconciler.drivers import _libbpf as B  # noqa: E402
from reconciler.drivers.netns import in_netns  # noqa: E402
from reconciler.records import Backend, FirewallEntry  # noqa: E402
from tests.bpf import packets as P  # noqa: E402
from tests.bpf.harness import BACKENDS4, CLIENT4, CLIENT6, GW4, ROUTED4, Datapath  # noqa: E402

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
            # a SYN creates the flow (both conntrack entries): only an opening SYN may
            syn = P.Pkt(CLIENT4, VIP_EST, P.TCP, cport, 80, flags=P.SYN, ttl=255).bytes()
            for d in (dp, dpfw):
                r = d.run(hook, syn)
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
                r = dp.run(hook, est.but(flags=P.SYN).bytes())  # only an opening SYN creates a flow
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


def main() -> None:
    global ROUNDS, CALLS, SINGLE
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the traffic part")
    ap.add_argument("--seconds", type=float, default=5, help="seconds per traffic measurement")
    ap.add_argument("--scale", type=int, default=_traffic.SCALE_SERVICES,
                    help="services in the loaded-box comparison (0: skip it)")
    ap.add_argument("--quick", action="store_true",
                    help="a few minutes in all: 2 rounds x 2 s of traffic, fewer ns/packet rounds")
    ap.add_argument("--no-traffic", action="store_true")
    ap.add_argument("--no-pps", action="store_true", help="skip the UDP packets/s part")
    ap.add_argument("--traffic-only", action="store_true", help="only the traffic part (traffic.md)")
    ap.add_argument("--modes-only", action="store_true", help="only the NAT modes' ns/packet")
    ap.add_argument("--mode-rounds", type=int, default=MODE_ROUNDS)
    # Each XDP BPF_PROG_TEST_RUN call waits for two RCU grace periods (the XDP dispatcher is
    # swapped in and out); on a busy box fewer calls keep the run within minutes.
    ap.add_argument("--ns-rounds", type=int, default=ROUNDS)
    ap.add_argument("--ns-calls", type=int, default=CALLS)
    ap.add_argument("--ns-singles", type=int, default=SINGLE)
    ap.add_argument("--mode-singles", type=int, default=MODE_SINGLES)
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 2, 2
        args.mode_rounds, args.mode_singles = 2, 100
        ROUNDS, CALLS, SINGLE = 3, 60, 300
        args.ns_rounds, args.ns_calls, args.ns_singles = ROUNDS, CALLS, SINGLE
    results = os.path.join(REPO, "bench", "results")
    os.makedirs(results, exist_ok=True)
    if args.modes_only:
        load0 = os.getloadavg()
        modes = mode_costs(args.mode_rounds, args.mode_singles)
        text = "\n".join(["# Datapath benchmark: NAT modes", "",
                          f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
                          f"- kernel: {platform.release()}, {os.cpu_count()} CPUs",
                          f"- load average (1 min) before/after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f}",
                          ""] + mode_table(modes, args.mode_rounds, args.mode_singles)) + "\n"
        print(text)
        with open(os.path.join(results, "datapath-modes.md"), "w") as fh:
            fh.write(text)
        return
    if not args.traffic_only:
        packet_part(args, results)
    if not args.no_traffic:
        traffic_part(args, results)


def traffic_part(args: argparse.Namespace, results: str) -> None:
    """The traffic part (bench/_traffic.py): writes bench/results/traffic.md."""
    load0 = os.getloadavg()[0]
    tb = _traffic.TrafficBench(args.rounds, args.seconds, scale=args.scale, pps=not args.no_pps)
    try:
        tb.setup()
        tr = tb.run()
    finally:
        tb.teardown()
    text = _traffic.write_markdown(tr, _traffic.machine(), load0, os.getloadavg()[0])
    print(text)
    with open(os.path.join(results, "traffic.md"), "w") as fh:
        fh.write(text)


def packet_part(args: argparse.Namespace, results: str) -> None:
    """ns/packet, NAT modes and Maglev memory: writes bench/results/datapath.md."""
    load0 = os.getloadavg()
    pp, checks = ns_per_packet(args.ns_rounds, args.ns_calls, args.ns_singles)
    modes = mode_costs(args.mode_rounds, args.mode_singles)
    load1 = os.getloadavg()
    lines = [
        "# Datapath benchmark",
        "",
        *_traffic.machine(),
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
    lines += ["", "Traffic through the VIP (bulk TCP, connections/s, 10,000 services, UDP packets/s, "
              "the XDP hook on veth): `traffic.md` beside this file, same command."]
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
    with open(os.path.join(results, "datapath.md"), "w") as fh:
        fh.write(text)


def mode_table(modes: dict[str, dict[str, list[float]]], rounds: int, singles: int) -> list[str]:
    lines = [f"## ns/packet per NAT mode ({rounds} interleaved rounds, each the median of "
             f"{singles} single runs minus the empty program's; median of the rounds [min-max])", "",
             "| mode: path | tc | xdp |", "|---|---|---|"]
    for case, v in modes.items():
        lines.append(f"| {case} | {fmt(v.get('tc', []), 0)} | {fmt(v.get('xdp', []), 0)} |")
    return lines + ["", " ".join((mode_costs.__doc__ or "").split("\n\n", 1)[1].split())]


fmt = _traffic.fmt


if __name__ == "__main__":
    main()
