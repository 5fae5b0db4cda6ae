"""SCTP per-packet cost under BPF_PROG_TEST_RUN, tc and XDP (issue 14).

Why this exists: SCTP's CRC32c has no pseudo header, so the datapath updates it
only where SCTP bytes change: translated ports (an endpoint ``targetPort``) and the
address parameters of INIT / INIT-ACK.  This prints what that costs next to the
same packets without a change and a TCP established flow: median of single runs
minus the median single run of an empty program (the floor), in ns.  The endpoint
is the VIP itself (routed back out), so every run takes the intended path.

Run as root from the repo: ``.venv/bin/python bench/sctp_bench.py``.  Never asserts a time.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from reconciler.drivers import _libbpf as B  # noqa: E402
from reconciler.drivers.netns import in_netns  # noqa: E402
from reconciler.probes import sctp as S  # noqa: E402
from reconciler.records import Backend  # noqa: E402
from tests.bpf import packets as P  # noqa: E402
from tests.bpf.harness import CLIENT4, GW4, Datapath  # noqa: E402

SAME, MOVED = "10.97.0.1", "10.97.0.2"  # endpoint port kept / translated (3868 -> 3869)
PEERS = ("10.97.0.8", "10.97.0.9")
RUNS, ROUNDS = 3000, 3


def frame(src: str, dst: str, sctp: bytes) -> bytes:
    return P.Pkt(src, dst, P.SCTP, payload=sctp, ttl=255).bytes()


def main() -> None:
    empty_obj = B.BpfObject(os.path.join(REPO, "build", "bpf", "lb_empty.o"))
    empty_obj.load()
    dp = Datapath()
    try:
        subprocess.run(["ip", "-n", dp.ns, "route", "add", "10.97.0.0/24", "via", GW4], check=True)
        dp.service(SAME, "sctp", 3868, [Backend(SAME, 0)], sctp_peer_vips=PEERS)
        dp.service(MOVED, "sctp", 3868, [Backend(MOVED, 3869)])
        dp.service(SAME, "tcp", 80, [Backend(SAME, 80)])
        data = S.packet
        cases: dict[str, dict[str, bytes]] = {}
        for n, hook in enumerate(("tc", "xdp")):
            a, b, t = 50000 + n, 51000 + n, 52000 + n
            dp.run(hook, frame(CLIENT4, SAME, S.init(a, 3868, 7, 1)))
            dp.run(hook, frame(CLIENT4, MOVED, S.init(b, 3868, 7, 1)))
            dp.run(hook, P.Pkt(CLIENT4, SAME, P.TCP, t, 80, flags=P.SYN, ttl=255).bytes())
            body = b"\0\0\0\1\0\0\0\0\0\0\0\0" + b"x" * 100
            tcp = P.Pkt(CLIENT4, SAME, P.TCP, t, 80, flags=P.ACK, ttl=255).bytes()
            ack = S.init_ack(3868, a, 7, 9, 1, cookie=b"c" * 200,
                             addresses=[SAME, "10.99.0.10", "10.99.0.11"])
            cases[hook] = {
                "TCP established (reference)": tcp,
                "SCTP DATA, port kept (no CRC work)": frame(CLIENT4, SAME, data(a, 3868, 9, S.DATA, body)),
                "SCTP DATA, port translated (CRC update)": frame(CLIENT4, MOVED,
                                                                 data(b, 3868, 9, S.DATA, body)),
                "SCTP reply, port translated (CRC update)": frame(MOVED, CLIENT4,
                                                                  data(3869, b, 7, S.SACK, body[:12])),
                "SCTP INIT-ACK, 3 addresses rewritten": frame(SAME, CLIENT4, ack),
            }
        for hook in ("tc", "xdp"):
            for name, f in cases[hook].items():
                r = dp.run(hook, f)
                assert r.retval in (7, 4) and P.parse(r.data).csum_ok, f"{hook} {name}: not redirected intact"
        empty = {h: empty_obj.prog_fd(f"empty_{h}") for h in ("tc", "xdp")}
        results: dict[str, dict[str, list[float]]] = {}
        with in_netns(dp.ns):
            for _ in range(ROUNDS):
                for hook in ("tc", "xdp"):
                    fd = dp.driver.prog_fd(hook)
                    probe = cases[hook]["TCP established (reference)"]
                    floor = statistics.median(B.test_run(empty[hook], probe, 1).duration_ns
                                              for _ in range(RUNS))
                    for name, f in cases[hook].items():
                        ns = statistics.median(B.test_run(fd, f, 1).duration_ns for _ in range(RUNS))
                        results.setdefault(name, {}).setdefault(hook, []).append(ns - floor)
    finally:
        dp.close()
    print(f"| case (ns/packet above an empty program; median of {RUNS} single runs, "
          f"median of {ROUNDS} rounds) | tc | xdp |")
    print("|---|---|---|")
    for name, by in results.items():
        print(f"| {name} | {statistics.median(by['tc']):.0f} | {statistics.median(by['xdp']):.0f} |")


if __name__ == "__main__":
    main()
