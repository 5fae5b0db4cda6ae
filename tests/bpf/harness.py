"""A throwaway datapath for BPF_PROG_TEST_RUN tests and benches.

Why this exists: BPF_PROG_TEST_RUN writes the live maps (pitfall 12) and
``bpf_fib_lookup`` uses the routing table of the calling thread's network
namespace, so every test gets its own pin root and its own namespace with known
routes and permanent neighbours, and removes both afterwards.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Sequence

from reconciler.drivers import _libbpf as B
from reconciler.drivers.bpf import BpfDriver
from reconciler.drivers.netns import in_netns
from reconciler.model import DatapathCapacities
from reconciler.plan import Change
from reconciler.records import Backend, EndpointSet, FirewallEntry, ServiceEntry, ServiceKey

VIP4, VIP6 = "10.97.0.1", "fd00:97::1"
CLIENT4, CLIENT6 = "10.98.0.5", "fd00:98::5"
BACKENDS4 = ("10.99.0.10", "10.99.0.11", "10.99.0.12")
BACKENDS6 = ("fd00:99::10", "fd00:99::11", "fd00:99::12")
GW4, GW6 = "10.99.0.254", "fd00:99::fe"
LB4, LB6 = "10.99.0.1", "fd00:99::1"  # the box's own address towards the backends (onearm's source)
ROUTED4, ROUTED6 = "10.96.0.9", "fd00:96::9"  # endpoints behind the routers GW4, GW6 (L3 DSR)
BACKEND_MAC = bytes.fromhex("02000000aa01")
GW_MAC = bytes.fromhex("02000000bb01")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


# Packet tests need few flows: the box's default conntrack (about 365 MB of kernel memory on a
# 24 GB box) for every test datapath adds up on a machine shared by several test runs.
CAPACITIES = DatapathCapacities().resolved(0)  # the defaults, conntrack at its floor (65,536 flows)


class Datapath:
    """Namespace + pinned datapath; ``run()`` executes one packet."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.ns = f"lbt-{tag}"
        self.pin_root = f"/sys/fs/bpf/lbctl-test-{tag}"
        sh("ip", "netns", "add", self.ns)
        try:  # a failure anywhere below (e.g. the verifier refusing the object) must leave nothing behind
            self._setup()
            self.driver = BpfDriver(pin_root=self.pin_root, netns=self.ns, capacities=CAPACITIES)
            self.driver.load()
            with in_netns(self.ns):
                import socket

                self.ifindex = socket.if_nametoindex("v0")
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        ns = self.ns
        cmds = [
            "link set lo up",
            "link add v0 type veth peer name v1",
            "link set v0 up", "link set v1 up",
            "addr add 10.99.0.1/24 dev v0", "addr add fd00:99::1/64 dev v0 nodad",
            f"route add 10.98.0.0/24 via {GW4}", f"route add fd00:98::/64 via {GW6}",
            f"route add 10.96.0.0/24 via {GW4}", f"route add fd00:96::/64 via {GW6}",
        ]
        for c in cmds:
            sh("ip", "-n", ns, *c.split())
        for a in BACKENDS4 + BACKENDS6:
            mac = BACKEND_MAC.hex(":")
            sh("ip", "-n", ns, "neigh", "add", a, "lladdr", mac, "dev", "v0", "nud", "permanent")
        for a in (GW4, GW6):
            sh("ip", "-n", ns, "neigh", "add", a, "lladdr", GW_MAC.hex(":"), "dev", "v0", "nud", "permanent")
        for k in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0"):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", k)

    def service(self, vip: str, proto: str, port: int, backends: Sequence[Backend], *,
                port_end: int | None = None,
                selection: str = "rr", timeout: int = 240, persist: int = 10800,
                allowed: tuple[str, ...] = (), maglev_table: bytes = b"", mode: str = "default",
                source: str = "", firewall_mark: int = 0, no_endpoints: str = "reject",
                sctp_peer_vips: tuple[str, ...] = ()) -> ServiceKey:
        key = ServiceKey(vip, proto, port, port if port_end is None else port_end)
        svc = ServiceEntry(key, "test", mode, selection, timeout, persist, allowed, source, firewall_mark,
                           no_endpoints, sctp_peer_vips)
        eps = EndpointSet(key, tuple(backends), maglev_table)
        self.driver.apply([
            Change("endpoints", str(key), "create", None, eps),
            Change("service", str(key), "create", None, svc),
        ])
        return key

    def set_endpoints(self, key: ServiceKey, backends: Sequence[Backend], maglev_table: bytes = b"") -> None:
        cur = self.driver.read()["endpoints"][str(key)]
        self.driver.apply([Change("endpoints", str(key), "update", cur, EndpointSet(key, tuple(backends),
                                                                                     maglev_table))])

    def firewall(self, rules: Sequence[FirewallEntry]) -> None:
        """Make the rule set exactly ``rules`` (one apply, as the plan would)."""
        cur = self.driver.read()["firewall"]
        want = {r.name: r for r in rules}
        changes = [Change("firewall", n, "delete", r, None) for n, r in cur.items() if n not in want]
        changes += [Change("firewall", n, "update" if n in cur else "create", cur.get(n), r)
                    for n, r in want.items() if cur.get(n) != r]
        if changes:
            self.driver.apply(changes)

    def run(self, hook: str, frame: bytes, repeat: int = 1, on_v0: bool = False,
            ctx_size: int = 0) -> B.TestRun:
        """Run one frame; ``on_v0``: it arrives on v0 (the backends' interface), not on loopback;
        ``ctx_size``: bytes of the context to return after the run."""
        fd = self.driver.prog_fd(hook)
        with in_netns(self.ns):
            return B.test_run(fd, frame, repeat=repeat, ingress=(hook, self.ifindex) if on_v0 else None,
                              ctx_size=ctx_size)

    def close(self) -> None:
        drv = getattr(self, "driver", None)
        if drv is not None:
            try:
                drv.down()
            except Exception:  # noqa: BLE001 - a half-loaded driver; the pins go below anyway
                pass
        if os.path.isdir(self.pin_root):
            for f in os.listdir(self.pin_root):
                os.unlink(os.path.join(self.pin_root, f))
            os.rmdir(self.pin_root)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
