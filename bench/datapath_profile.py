"""Where the time of a packet goes: the datapath built with stages cut off, timed per build.

Why this exists: issue 19 asks for the per-packet cost broken down by stage (parse,
firewall, conntrack lookup, counters, NAT and checksums, next-hop lookup, redirect)
before cutting it.  ``bpftool prog profile`` needs perf counters this VM does not
expose, so the breakdown comes from builds of ``bpf/lb_kern.c`` with the switches
of ``bpf/lb_profile.h`` (a stop point after each stage, or one stage compiled out),
each loaded into its own throwaway namespace and timed with the method of
``bench/datapath_bench.py`` (idempotent services, 200 repeats per
BPF_PROG_TEST_RUN call), in interleaved rounds.  Differences between builds are the
cost of a stage.

Run as root from the repo: ``.venv/bin/python bench/datapath_profile.py [--out FILE]``.
Prints a markdown table (and writes it to FILE).  Never asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from datapath_bench import FW_RULES  # noqa: E402  (bench/ is the script's directory)

from reconciler.constants import DATAPATH_DIR_ENV  # noqa: E402
from reconciler.drivers import _libbpf as B  # noqa: E402
from reconciler.drivers.netns import in_netns  # noqa: E402
from reconciler.records import Backend  # noqa: E402
from tests.bpf import packets as P  # noqa: E402
from tests.bpf.harness import CLIENT4, GW4, Datapath  # noqa: E402

ROUNDS = 5
CALLS = 100
REPEAT = 200
VIP_EST, VIP_NEW, VIP_NONE = "10.97.0.1", "10.97.0.2", "10.97.0.99"

# (label, -D flags, firewall rules loaded)
VARIANTS: list[tuple[str, tuple[str, ...], bool]] = [
    ("full datapath, firewall 10 rules", (), True),
    ("full datapath, no firewall rule", (), False),
    ("stop after parse", ("LB_PROFILE_STOP=1",), True),
    ("stop after firewall (+ clock)", ("LB_PROFILE_STOP=2",), True),
    ("stop after conntrack lookup", ("LB_PROFILE_STOP=3",), True),
    ("stop after conntrack bookkeeping + counters", ("LB_PROFILE_STOP=4",), True),
    ("no counters", ("LB_PROFILE_NO_COUNTERS",), True),
    ("no next-hop lookup", ("LB_PROFILE_NO_FIB",), True),
    ("no checksum updates", ("LB_PROFILE_NO_CSUM",), True),
]


def build(flags: tuple[str, ...], out: str) -> None:
    os.makedirs(out, exist_ok=True)
    inc = os.path.join(REPO, "build", "bpf", "include")
    cmd = ["clang", "-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-Wno-unused-function", "-nostdinc",
           "-isystem", inc, "-I" + os.path.join(REPO, "bpf"), *[f"-D{f}" for f in flags],
           "-c", os.path.join(REPO, "bpf", "lb_kern.c"), "-o", os.path.join(out, "lb_kern.o")]
    subprocess.run(cmd, check=True)
    shutil.copy(os.path.join(REPO, "bpf", "lb_shared.h"), out)


def setup(objdir: str, firewall: bool) -> tuple[Datapath, dict[str, dict[str, bytes]]]:
    os.environ[DATAPATH_DIR_ENV] = objdir
    try:
        dp = Datapath()
    finally:
        del os.environ[DATAPATH_DIR_ENV]
    subprocess.run(["ip", "-n", dp.ns, "route", "add", "10.97.0.0/24", "via", GW4], check=True)
    dp.service(VIP_EST, "tcp", 80, [Backend(VIP_EST, 80)])
    dp.service(VIP_NEW, "tcp", 80, [Backend(VIP_NEW, 80)], timeout=0)
    if firewall:
        dp.firewall(FW_RULES)
    frames: dict[str, dict[str, bytes]] = {}
    for n, hook in enumerate(("tc", "xdp")):
        cport = 41000 + n
        est = P.Pkt(CLIENT4, VIP_EST, P.TCP, cport, 80, flags=P.ACK, ttl=255).bytes()
        dp.run(hook, est)  # creates the flow (both conntrack entries) where the build gets that far
        frames[hook] = {
            "established flow": est,
            "reverse path": P.Pkt(VIP_EST, CLIENT4, P.TCP, 80, cport, flags=P.ACK, ttl=255).bytes(),
            "new flow": P.Pkt(CLIENT4, VIP_NEW, P.TCP, 42000 + n, 80, flags=P.SYN, ttl=255).bytes(),
            "non-matching": P.Pkt(CLIENT4, VIP_NONE, P.TCP, 43000 + n, 80, flags=P.ACK, ttl=255).bytes(),
        }
    return dp, frames


def measure(ns: str, fd: int, frame: bytes, calls: int) -> float:
    with in_netns(ns):
        return statistics.median(B.test_run(fd, frame, REPEAT).duration_ns for _ in range(calls))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--calls", type=int, default=CALLS)
    ap.add_argument("--out", default="")
    ap.add_argument("--only", default="", help="comma-separated variant numbers (0-based) to run")
    args = ap.parse_args()
    picked = [VARIANTS[int(i)] for i in args.only.split(",")] if args.only else VARIANTS
    tmp = tempfile.mkdtemp(prefix="lbctl-profile-")
    dps: list[tuple[str, Datapath, dict[str, dict[str, bytes]]]] = []
    res: dict[tuple[str, str, str], list[float]] = {}
    empty = B.BpfObject(os.path.join(REPO, "build", "bpf", "lb_empty.o"))
    empty.load()
    load0 = os.getloadavg()
    try:
        for i, (label, flags, fw) in enumerate(picked):
            d = os.path.join(tmp, f"v{i}")
            build(flags, d)
            dp, frames = setup(d, fw)
            dps.append((label, dp, frames))
        for _ in range(args.rounds):
            for hook in ("tc", "xdp"):
                ns0 = dps[0][1].ns
                res.setdefault(("empty program (floor)", "non-matching", hook), []).append(
                    measure(ns0, empty.prog_fd(f"empty_{hook}"), dps[0][2][hook]["non-matching"], args.calls))
                for label, dp, frames in dps:
                    for case, frame in frames[hook].items():
                        res.setdefault((label, case, hook), []).append(
                            measure(dp.ns, dp.driver.prog_fd(hook), frame, args.calls))
    finally:
        for _, dp, _ in dps:
            dp.close()
        empty.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "?")
    cases = ("established flow", "reverse path", "new flow", "non-matching")
    lines = [f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; "
             f"kernel {platform.release()}; cpu {cpu} x {os.cpu_count()}; "
             f"load average (1 min) before/after {load0[0]:.2f} / {load1[0]:.2f}",
             f"- {args.rounds} interleaved rounds, each the median of {args.calls} calls of {REPEAT} "
             "repeats; median of the rounds (ns/packet), tc / xdp", "",
             "| build | " + " | ".join(cases) + " |", "|---" * (len(cases) + 1) + "|"]
    fl = [statistics.median(res[("empty program (floor)", "non-matching", h)]) for h in ("tc", "xdp")]
    lines.append(f"| empty program (floor) | {fl[0]:.0f} / {fl[1]:.0f} | | | |")
    for label, _, _ in dps:
        cells = []
        for case in cases:
            v = [statistics.median(res[(label, case, h)]) for h in ("tc", "xdp")]
            cells.append(f"{v[0]:.0f} / {v[1]:.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
