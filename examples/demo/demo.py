"""Topology helper for examples/demo/run.sh (run as root, from the repository root, which run.sh
puts on PYTHONPATH: the testbed lives in the test tree, not in the installed package).

Why this exists: the demo needs the namespaces of ``tests.testbed`` (client,
LB, three backends with HTTP/UDP servers) to outlive the process that builds
them, and a way to remove them (and their server processes) later from another
process.  The addresses are the testbed's fixed ones, which examples/demo/*.yaml
names; only the namespace prefix varies.

    demo.py up PREFIX        build the topology; the servers keep running
    demo.py down PREFIX      end its processes, delete its namespaces, drop stale pins/state
    demo.py udp PREFIX N     N datagrams from the client to the UDP echo VIP; print who answered
"""

from __future__ import annotations

import os
import shutil
import socket
import sys

from reconciler.constants import DEFAULT_PIN_ROOT, DEFAULT_STATE_DIR
from reconciler.drivers.netns import in_netns
from tests.testbed import VIP4, Testbed

N_BACKENDS = 3
UDP_VIP_PORT = 53


def up(prefix: str) -> None:
    # The LB box starts like a fresh edge box, forwarding off: lbctl apply turns it on.
    tb = Testbed(n_backends=N_BACKENDS, prefix=prefix, forwarding=False).setup()
    for i in range(N_BACKENDS):
        print(f"  {tb.backend_ns(i):<14} {tb.backend_name(i)}  {tb.backend4(i)}  (HTTP :8080, UDP :5353)")
    print(f"  {tb.client:<14} client    10.200.0.2  (default route via the LB)")
    print(f"  {tb.lb:<14} LB        10.200.0.1 on cl0, 10.201.<i>.1 on be<i>; VIP {VIP4} after apply")
    print("  (the LB box starts with forwarding off, as a fresh edge box does: lbctl apply turns it on\n"
          "   for the attached interfaces, and lbctl down gives the old values back)")


def down(prefix: str) -> None:
    tb = Testbed.existing(prefix, N_BACKENDS)
    gone = list(tb.namespaces)
    tb.teardown()
    # Pins and state of the LB box that `lbctl down` could not reach (its namespace was gone).
    lb = tb.lb
    for root, default in (("LBCTL_PIN_ROOT", DEFAULT_PIN_ROOT), ("LBCTL_STATE_DIR", DEFAULT_STATE_DIR)):
        path = os.path.join(os.environ.get(root) or default, lb)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    print(f"  removed: {', '.join(gone) if gone else 'nothing (no demo was running)'}")


def udp(prefix: str, n: int) -> None:
    tb = Testbed(n_backends=N_BACKENDS, prefix=prefix, servers=False)
    seen: list[str] = []
    for i in range(1, n + 1):
        with in_netns(tb.client):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with s:
            s.settimeout(3)
            s.sendto(f"ping{i}".encode(), (VIP4, UDP_VIP_PORT))
            try:
                data, peer = s.recvfrom(512)
            except TimeoutError:
                sys.exit(f"demo: no UDP answer from {VIP4}:{UDP_VIP_PORT} within 3 s")
        seen.append(f"#{i} {data.decode().strip()!r} from {peer[0]}:{peer[1]}")
    print("  " + "   ".join(seen))


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("up", "down", "udp"):
        sys.exit(__doc__)
    if argv[0] == "up":
        up(argv[1])
    elif argv[0] == "down":
        down(argv[1])
    else:
        udp(argv[1], int(argv[2]) if len(argv) > 2 else 3)


if __name__ == "__main__":
    main(sys.argv[1:])
