"""Traffic through a VIP over veth: lbctl against direct, iptables and nftables, one topology.

Why this exists: issue 19 asks, in the same run and the same topology, for
short connections/s and bulk TCP through the VIP for every system (lbctl at
the tc hook, kernel routing without a balancer, iptables DNAT, an nftables
DNAT map), connections/s with 10,000 services loaded against one service, and
a packets-per-second figure with small UDP packets that also gives the XDP
hook a number on veth.  ``bench/datapath_bench.py`` runs it (``--traffic-only``
for just this part) and writes ``bench/results/traffic.md``; the builders of
the rule sets and the result writer are plain functions so a test can check
them without root.  Never asserts a time.

The method is ``METHOD`` below (the result file prints it).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.testbed import VIP4, Testbed  # noqa: E402

WEB_PORT, BULK_PORT, UDP_PORT = 80, 5201, 9000
NGINX_PORT, TARGET_PORT = 8081, 8080
SCALE_SERVICES, SCALE_ENDPOINTS = 10_000, 10

NGINX_CONF = """
worker_processes 1; daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 8192; }}
http {{ access_log off; server {{ listen {port} reuseport backlog=4096;
  location / {{ return 200 "ok\\n"; }} }} }}
"""

# A UDP sink that never reads: packets are counted by the interface, then the
# socket's full queue drops them (cheap, and the same for every system).
UDP_SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
time.sleep(10**9)
"""

# sendmmsg(2) through ctypes: 256 copies of one 64-byte datagram per call on a
# connected socket, for argv[3] seconds; prints how many the kernel accepted.
UDP_SENDER = r"""
import ctypes, socket, sys, time
dst, port, secs, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
libc = ctypes.CDLL(None, use_errno=True)
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class Hdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(Iov)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class MHdr(ctypes.Structure):
    _fields_ = [("hdr", Hdr), ("len", ctypes.c_uint)]
VLEN = 256
buf = ctypes.create_string_buffer(b"x" * size, size)
iov = Iov(ctypes.cast(buf, ctypes.c_void_p), size)
msgs = (MHdr * VLEN)()
for m in msgs:
    m.hdr.iov = ctypes.pointer(iov)
    m.hdr.iovlen = 1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((dst, port))
fd, sent, end = s.fileno(), 0, time.monotonic() + secs
send = libc.sendmmsg
while time.monotonic() < end:
    for _ in range(16):
        n = send(fd, msgs, VLEN, 0)
        if n > 0:
            sent += n
print(sent, flush=True)
"""


def sh(*a: str, check: bool = True, stdin: str | None = None) -> str:
    p = subprocess.run(a, check=False, capture_output=True, text=True, input=stdin)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(a[:6])}: exit {p.returncode}: {p.stderr.strip()[:2000]}")
    return p.stdout


def scale_vip(i: int) -> str:
    """VIP of background service ``i`` (a kube-like service range, outside the testbed's)."""
    return f"10.96.{i // 250}.{i % 250 + 1}"


def scale_endpoint(i: int, j: int) -> str:
    """Endpoint ``j`` of background service ``i`` (never reached: only the benchmarked VIP gets traffic)."""
    return f"10.{110 + j}.{i // 250}.{i % 250 + 1}"


def scale_services(services: int, bench_at: int) -> list[tuple[str, int, list[tuple[str, int]]]]:
    """(VIP, port, endpoints) of the 10,000-service set; the benchmarked VIP (testbed
    backends 0-2) is number ``bench_at`` in the list (the middle: iptables walks its
    service list in order, so the middle is the average case)."""
    out: list[tuple[str, int, list[tuple[str, int]]]] = []
    for i in range(services - 1):
        if i == bench_at:
            out.append((VIP4, WEB_PORT, [(Testbed.backend4(b), NGINX_PORT) for b in range(3)]))
        out.append(
            (scale_vip(i), WEB_PORT, [(scale_endpoint(i, j), TARGET_PORT) for j in range(SCALE_ENDPOINTS)])
        )
    if bench_at >= services - 1:
        out.append((VIP4, WEB_PORT, [(Testbed.backend4(b), NGINX_PORT) for b in range(3)]))
    return out


def iptables_restore_text(svcs: list[tuple[str, int, list[tuple[str, int]]]]) -> str:
    """A kube-proxy-style nat table (``iptables-restore`` input): KUBE-SERVICES
    with one rule per service, a KUBE-SVC chain per service choosing an endpoint with
    ``statistic --mode random`` (1/n, 1/(n-1), ... as kube-proxy writes it) and a KUBE-SEP
    chain per endpoint doing the DNAT.  Not hooked: ``PREROUTING -j KUBE-SERVICES`` is
    added while measured."""
    chains = [":KUBE-SERVICES - [0:0]"]
    rules = []
    for i, (vip, port, eps) in enumerate(svcs):
        svc = f"KUBE-SVC-{i:05d}"
        chains.append(f":{svc} - [0:0]")
        rules.append(f"-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {port} -j {svc}")
        for j, (ep, eport) in enumerate(eps):
            sep = f"KUBE-SEP-{i:05d}-{j}"
            chains.append(f":{sep} - [0:0]")
            left = len(eps) - j
            if left > 1:
                rules.append(f"-A {svc} -m statistic --mode random --probability {1 / left:.11f} -j {sep}")
            else:
                rules.append(f"-A {svc} -j {sep}")
            rules.append(f"-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}:{eport}")
    return "*nat\n" + "\n".join(chains + rules) + "\nCOMMIT\n"


METHOD = [
    "Topology: `tests.testbed.Testbed` (client -- LB namespace -- 3 backends, veth), nginx on every "
    "backend (port 8081, `return 200`), iperf3 on backend 0, a UDP sink on backend 0 that never reads.",
    "Systems are switched on and off in turn inside each round (interleaved), in the same order every "
    "round, in the same namespaces; `direct` sends to backend 0 itself (kernel routing through the LB "
    "namespace, no balancer). lbctl is programmed through its bpf driver (the records `lbctl apply` "
    "writes) and attached to every LB interface while measured; iptables is iptables-nft "
    "(`statistic nth` round robin); nftables a native `dnat to numgen inc mod 3 map {...}`.",
    "10,000 services: a second lbctl pin root holds 10,000 services x 10 endpoints (the benchmarked "
    "VIP among them, with its 3 real endpoints) and is attached instead of the one-service one; iptables "
    "has a kube-proxy-style ruleset of the same size (KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP, `statistic "
    "random`) loaded all along and hooked by one `PREROUTING -j KUBE-SERVICES` rule while measured; "
    "nftables has a table with a verdict map of the 10,000 services, each a chain with a "
    "`numgen random` endpoint map, hooked by a base chain while measured. The benchmarked VIP is in "
    "the middle of the list (iptables walks it in order: the average case).",
    "Packets/s: one sender process (sendmmsg(2) through ctypes, 256 copies of a 64-byte UDP datagram "
    "per call, one flow) in the client; packets counted as *received* by backend 0's interface "
    "(`rx_packets` over the middle of the send), so drops on the way do not count. This phase runs "
    "with DESIGN pitfalls 9, 10 and 18 worked around for every system (tx checksum offload off and a "
    "pfifo_fast root qdisc at the senders, GRO on at the receivers), which is what lets XDP forward on "
    "veth. On veth the sender, the LB path and the backend's receive run on the sender's CPU (softirq), "
    "so a figure is the whole path's per-packet cost, sender syscall included, the same for every system. "
    "For lbctl, `LB redirects` is the datapath's own redirect counter over the window divided by the "
    "packets received (about 1.0: every packet took the fast path, none fell back to the kernel).",
]

NFT_SCALE_TABLE = "bnscale"


def nft_scale_text(svcs: list[tuple[str, int, list[tuple[str, int]]]]) -> str:
    """An nftables table of the same size: a verdict map (VIP . port -> goto the service's
    chain), each service chain one ``dnat to numgen random mod n map {...}`` rule.  Not
    hooked: the base chain is added while measured (``nft_scale_hook``)."""
    out = [f"table ip {NFT_SCALE_TABLE} {{"]
    for i, (_vip, _port, eps) in enumerate(svcs):
        ports = {p for _, p in eps}
        assert len(ports) == 1, "one target port per service"
        m = ", ".join(f"{j} : {ep}" for j, (ep, _) in enumerate(eps))
        out.append(
            f"  chain s{i:05d} {{ meta l4proto tcp dnat to numgen random mod {len(eps)} "
            f"map {{ {m} }} : {ports.pop()} ; }}"
        )
    elems = ", ".join(f"{vip} . {port} : goto s{i:05d}" for i, (vip, port, _) in enumerate(svcs))
    out.append(f"  map svcs {{ type ipv4_addr . inet_service : verdict ; elements = {{ {elems} }} ; }}")
    out.append("}")
    return "\n".join(out) + "\n"


def nft_scale_hook(on: bool) -> str:
    if on:
        return (
            f"add chain ip {NFT_SCALE_TABLE} pre "
            "{ type nat hook prerouting priority dstnat ; policy accept ; }\n"
            f"add rule ip {NFT_SCALE_TABLE} pre ip daddr . tcp dport vmap @svcs\n"
        )
    return f"flush chain ip {NFT_SCALE_TABLE} pre\ndelete chain ip {NFT_SCALE_TABLE} pre\n"


def nft_one_text(backends: list[str]) -> str:
    """The one-service nftables DNAT: bulk, web (round robin over a numgen map) and UDP."""
    m = ", ".join(f"{i} : {b}" for i, b in enumerate(backends))
    return f"""table ip bnone {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    ip daddr {VIP4} tcp dport {BULK_PORT} dnat to {backends[0]}:{BULK_PORT}
    ip daddr {VIP4} udp dport {UDP_PORT} dnat to {backends[0]}:{UDP_PORT}
    ip daddr {VIP4} tcp dport {WEB_PORT} dnat to numgen inc mod {len(backends)} map {{ {m} }} : {NGINX_PORT}
  }}
}}
"""


def iptables_one_rules(backends: list[str]) -> list[list[str]]:
    """The one-service iptables DNAT (PREROUTING rules, without -A/-D)."""
    base = ["-t", "nat", "PREROUTING", "-d", VIP4]
    nth = ["-m", "statistic", "--mode", "nth", "--packet", "0", "--every"]
    rules = [
        [
            *base,
            "-p",
            "tcp",
            "--dport",
            str(BULK_PORT),
            "-j",
            "DNAT",
            "--to-destination",
            f"{backends[0]}:{BULK_PORT}",
        ],
        [
            *base,
            "-p",
            "udp",
            "--dport",
            str(UDP_PORT),
            "-j",
            "DNAT",
            "--to-destination",
            f"{backends[0]}:{UDP_PORT}",
        ],
    ]
    # kube-proxy style round robin: 1 in n, then 1 in n-1 of the rest, ..., then the rest
    for i, b in enumerate(backends):
        left = len(backends) - i
        pick = [*nth, str(left)] if left > 1 else []
        rules.append(
            [
                *base,
                "-p",
                "tcp",
                "--dport",
                str(WEB_PORT),
                *pick,
                "-j",
                "DNAT",
                "--to-destination",
                f"{b}:{NGINX_PORT}",
            ]
        )
    return rules


@dataclass
class Results:
    """Per metric, per system: one value per round; plus load averages and notes."""

    gbit: dict[str, list[float]] = field(default_factory=dict)
    conn: dict[str, list[float]] = field(default_factory=dict)
    conn_scale: dict[str, list[float]] = field(default_factory=dict)
    pps: dict[str, list[float]] = field(default_factory=dict)
    pps_sent: dict[str, list[float]] = field(default_factory=dict)
    pps_redirect: dict[str, list[float]] = field(default_factory=dict)  # lbctl: redirects / received
    load: dict[str, list[float]] = field(default_factory=dict)  # phase -> 1-min load per measurement
    setup_s: dict[str, float] = field(default_factory=dict)  # what -> seconds to load it
    rounds: int = 0
    seconds: float = 0.0

    @staticmethod
    def add(d: dict[str, list[float]], k: str, v: float) -> None:
        d.setdefault(k, []).append(v)


def fmt(v: list[float], digits: int) -> str:
    if not v:
        return "n/a"
    return f"{statistics.median(v):.{digits}f} [{min(v):.{digits}f}-{max(v):.{digits}f}]"


def ratio(a: list[float], b: list[float]) -> str:
    if not a or not b:
        return "n/a"
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


LBCTL, DIRECT, IPT, NFT, XDP = "lbctl tc", "direct (no LB)", "iptables DNAT", "nftables DNAT map", "lbctl xdp"


def machine() -> list[str]:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    return [
        f"- date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
        f"- kernel: {platform.release()}, cpu: {cpu} x {os.cpu_count()}",
    ]


def write_markdown(r: Results, head: list[str], load_before: float, load_after: float) -> str:
    """The result file's text (pure: a test checks it on made-up numbers)."""
    lines = [
        "# Traffic through the VIP (veth)",
        "",
        *head,
        f"- load average (1 min) before / after the whole traffic part: {load_before:.2f} / {load_after:.2f}",
        f"- {r.rounds} interleaved rounds x {r.seconds:g} s per measurement; every cell: median of the "
        "rounds [min-max]; systems switched on and off in turn inside each round",
        "",
    ]
    for phase, v in r.load.items():
        lines.append(f"- load average (1 min) during {phase}: {fmt(v, 2)}")
    if r.setup_s:
        lines.append(
            "- time to load the 10,000-service sets: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in r.setup_s.items())
        )
    lines += [
        "",
        "## Bulk TCP and short connections (default offloads)",
        "",
        "| system | bulk TCP Gbit/s (iperf3) | vs direct | conn/s (wrk, Connection: close) | "
        "vs direct | vs iptables |",
        "|---|---|---|---|---|---|",
    ]
    for s in [x for x in (LBCTL, DIRECT, IPT, NFT) if x in r.gbit or x in r.conn]:
        g, c = r.gbit.get(s, []), r.conn.get(s, [])
        lines.append(
            f"| {s} | {fmt(g, 2)} | {ratio(g, r.gbit.get(DIRECT, []))} | {fmt(c, 0)} | "
            f"{ratio(c, r.conn.get(DIRECT, []))} | {ratio(c, r.conn.get(IPT, []))} |"
        )
    lines += [
        "",
        "Targets (issue 19): lbctl conn/s >= 1.3x iptables and >= 1.0x direct; bulk >= 1.0x direct.",
    ]
    if r.conn_scale:
        lines += [
            "",
            f"## Connections/s with {SCALE_SERVICES:,} services x {SCALE_ENDPOINTS} endpoints loaded",
            "",
            "| system | one service | 10,000 services | 10,000 / one |",
            "|---|---|---|---|",
        ]
        for s in (LBCTL, IPT, NFT):
            if s in r.conn_scale:
                lines.append(
                    f"| {s} | {fmt(r.conn.get(s, []), 0)} | {fmt(r.conn_scale[s], 0)} | "
                    f"{ratio(r.conn_scale[s], r.conn.get(s, []))} |"
                )
        lines += [
            "",
            "Target (issue 19): lbctl >= 0.95x of one service. The 10,000-service set of each system "
            "holds the benchmarked VIP (3 real endpoints) in the middle of 9,999 others with 10 "
            "endpoints each; the one-service column is the same round's one-service measurement.",
        ]
    if r.pps:
        lines += [
            "",
            "## Packets/s, 64-byte UDP payload, one flow (XDP workarounds on for every system)",
            "",
            "| system | received at the backend, kpps | vs direct | sent, kpps | received / sent "
            "| LB redirects / received |",
            "|---|---|---|---|---|---|",
        ]
        for s in [x for x in (XDP, LBCTL, DIRECT, IPT, NFT) if x in r.pps]:
            rx, tx = r.pps[s], r.pps_sent.get(s, [])
            lost = (
                f"{statistics.median(rx) / statistics.median(tx):.0%}"
                if tx and statistics.median(tx)
                else "n/a"
            )
            red = r.pps_redirect.get(s, [])
            lines.append(
                f"| {s} | {fmt([x / 1e3 for x in rx], 0)} | {ratio(rx, r.pps.get(DIRECT, []))} | "
                f"{fmt([x / 1e3 for x in tx], 0)} | {lost} | {fmt(red, 2) if red else '-'} |"
            )
    lines += ["", "## Method", ""] + [f"- {m}" for m in METHOD]
    return "\n".join(lines) + "\n"


class TrafficBench:
    """Builds the topology and the systems, runs the rounds, removes everything."""

    def __init__(self, rounds: int, seconds: float, scale: int = SCALE_SERVICES, pps: bool = True) -> None:
        self.rounds, self.seconds, self.scale, self.with_pps = rounds, seconds, scale, pps
        self.tag = uuid.uuid4().hex[:6]
        self.tb = Testbed(n_backends=3, prefix=f"bn{self.tag}", servers=False)
        self.tmp = tempfile.mkdtemp(prefix="lbctl-traffic-")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pins = [f"/sys/fs/bpf/bn-traffic-{self.tag}", f"/sys/fs/bpf/bn-traffic-{self.tag}-scale"]
        self.drivers: list[object] = []
        self.res = Results(rounds=rounds, seconds=seconds)

    # --- setup -------------------------------------------------------------
    def _spawn(self, ns: str, *argv: str, ready: bool = False) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(p)
        if ready:
            assert p.stdout is not None
            if b"ready" not in p.stdout.readline():
                raise RuntimeError(f"{argv[0]} did not start in {ns}")
        return p

    def setup(self) -> None:
        from reconciler.drivers.bpf import BpfDriver
        from reconciler.plan import Change
        from reconciler.records import Backend, EndpointSet, ServiceEntry, ServiceKey

        self.tb.setup()
        for i in range(3):
            d = os.path.join(self.tmp, f"b{i}")
            os.makedirs(d)
            with open(os.path.join(d, "nginx.conf"), "w") as fh:
                fh.write(NGINX_CONF.format(dir=d, port=NGINX_PORT))
            self._spawn(self.tb.backend_ns(i), "nginx", "-c", os.path.join(d, "nginx.conf"), "-p", d)
        self._spawn(self.tb.backend_ns(0), "iperf3", "-s", "-p", str(BULK_PORT))
        self._spawn(self.tb.backend_ns(0), sys.executable, "-c", UDP_SINK, str(UDP_PORT), ready=True)
        self.backends = [self.tb.backend4(i) for i in range(3)]

        def svc(vip: str, proto: str, port: int, eps: list[tuple[str, int]], name: str) -> list[Change]:
            k = ServiceKey(vip, proto, port, port)
            return [
                Change(
                    "endpoints", str(k), "create", None, EndpointSet(k, tuple(Backend(a, p) for a, p in eps))
                ),
                Change("service", str(k), "create", None, ServiceEntry(k, name, "default", "rr", 240, 10800)),
            ]

        one = BpfDriver(pin_root=self.pins[0], netns=self.tb.lb)
        self.drivers.append(one)
        one.apply(
            svc(VIP4, "tcp", WEB_PORT, [(b, NGINX_PORT) for b in self.backends], "web")
            + svc(VIP4, "tcp", BULK_PORT, [(self.backends[0], BULK_PORT)], "bulk")
            + svc(VIP4, "udp", UDP_PORT, [(self.backends[0], UDP_PORT)], "udp")
        )
        self.one = one
        self.svc = svc
        if self.scale:
            self._setup_scale()
        time.sleep(0.5)  # nginx and iperf3 listening

    def _setup_scale(self) -> None:
        from reconciler.drivers.bpf import BpfDriver

        svcs = scale_services(self.scale, self.scale // 2)
        t0 = time.monotonic()
        drv = BpfDriver(pin_root=self.pins[1], netns=self.tb.lb)
        self.drivers.append(drv)
        changes = []
        for i, (vip, port, eps) in enumerate(svcs):
            changes += self.svc(vip, "tcp", port, eps, f"s{i:05d}")
        drv.apply(changes)
        self.scale_drv = drv
        self.res.setup_s["lbctl (driver apply)"] = time.monotonic() - t0
        t0 = time.monotonic()
        sh(
            "ip",
            "netns",
            "exec",
            self.tb.lb,
            "iptables-restore",  # replaces the (empty) nat table; --noflush took minutes on 320k lines
            stdin=iptables_restore_text(svcs),
        )
        self.res.setup_s["iptables-restore"] = time.monotonic() - t0
        t0 = time.monotonic()
        sh("ip", "netns", "exec", self.tb.lb, "nft", "-f", "-", stdin=nft_scale_text(svcs))
        self.res.setup_s["nft -f"] = time.monotonic() - t0

    def teardown(self) -> None:
        for d in self.drivers:
            try:
                d.down()  # type: ignore[attr-defined]
            except Exception as e:  # keep removing the rest
                print(f"driver down: {e}", file=sys.stderr)
        for p in self.procs:
            try:
                os.killpg(p.pid, 15)
            except ProcessLookupError:
                pass
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self.tb.teardown()
        subprocess.run(["rm", "-rf", self.tmp], check=False)
        for pin in self.pins:
            subprocess.run(["rm", "-rf", pin], check=False)

    # --- systems -----------------------------------------------------------
    def _attach(self, drv: object, hook: str, on: bool) -> None:
        from reconciler.plan import Change
        from reconciler.records import Attachment

        a = Attachment
        ch = [
            Change("attach", i, "create", None, a(i, hook))
            if on
            else Change("attach", i, "delete", a(i, hook), None)
            for i in self.tb.lb_interfaces
        ]
        drv.apply(ch)  # type: ignore[attr-defined]

    @contextmanager
    def system(self, name: str, scale: bool = False) -> Iterator[None]:
        lb = self.tb.lb
        if name in (LBCTL, XDP):
            drv = self.scale_drv if scale else self.one
            hook = "xdp" if name == XDP else "tc"
            self._attach(drv, hook, True)
            try:
                yield
            finally:
                self._attach(drv, hook, False)
        elif name == IPT and scale:
            sh("ip", "netns", "exec", lb, "iptables", "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")
            try:
                yield
            finally:
                sh(
                    "ip",
                    "netns",
                    "exec",
                    lb,
                    "iptables",
                    "-t",
                    "nat",
                    "-D",
                    "PREROUTING",
                    "-j",
                    "KUBE-SERVICES",
                )
        elif name == IPT:
            rules = iptables_one_rules(self.backends)
            for r in rules:
                sh("ip", "netns", "exec", lb, "iptables", r[0], r[1], "-A", *r[2:])
            try:
                yield
            finally:
                for r in rules:
                    sh("ip", "netns", "exec", lb, "iptables", r[0], r[1], "-D", *r[2:])
        elif name == NFT and scale:
            sh("ip", "netns", "exec", lb, "nft", "-f", "-", stdin=nft_scale_hook(True))
            try:
                yield
            finally:
                sh("ip", "netns", "exec", lb, "nft", "-f", "-", stdin=nft_scale_hook(False))
        elif name == NFT:
            sh("ip", "netns", "exec", lb, "nft", "-f", "-", stdin=nft_one_text(self.backends))
            try:
                yield
            finally:
                sh("ip", "netns", "exec", lb, "nft", "delete", "table", "ip", "bnone")
        else:
            yield

    def _dst(self, name: str, port: int) -> str:
        if name == DIRECT:
            return f"{self.backends[0]}:{NGINX_PORT if port == WEB_PORT else port}"
        return f"{VIP4}:{port}"

    # --- measurements ------------------------------------------------------
    def bulk(self, name: str) -> float:
        host = self._dst(name, BULK_PORT).split(":")[0]
        out = sh(
            "ip",
            "netns",
            "exec",
            self.tb.client,
            "iperf3",
            "-c",
            host,
            "-p",
            str(BULK_PORT),
            "-t",
            f"{self.seconds:g}",
            "-J",
        )
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9

    def cps(self, name: str) -> float:
        out = sh(
            "ip",
            "netns",
            "exec",
            self.tb.client,
            "wrk",
            "-t2",
            "-c32",
            f"-d{self.seconds:g}s",
            "-H",
            "Connection: close",
            f"http://{self._dst(name, WEB_PORT)}/",
        )
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1])
        raise RuntimeError(f"wrk printed no rate: {out!r}")

    def _rx(self) -> int:
        out = sh("ip", "-n", self.tb.backend_ns(0), "-s", "-j", "link", "show", "eth0")
        return int(json.loads(out)[0]["stats64"]["rx"]["packets"])

    def pps(self, name: str) -> tuple[float, float, float]:
        """(received at backend 0 per second, sent per second, the LB's redirects per received
        packet or 0 when lbctl is not the system) over the middle of the send."""
        host = self._dst(name, UDP_PORT).split(":")[0]
        warm = 0.3
        p = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.tb.client,
                sys.executable,
                "-c",
                UDP_SENDER,
                host,
                str(UDP_PORT),
                f"{self.seconds + 2 * warm:g}",
                "64",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(p)
        try:
            time.sleep(warm)
            s0 = self.one.stats().get("redirect", 0)
            c0, t0 = self._rx(), time.monotonic()
            time.sleep(self.seconds)
            c1, t1 = self._rx(), time.monotonic()
            s1 = self.one.stats().get("redirect", 0)
            out, _ = p.communicate(timeout=self.seconds + 30)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
            self.procs.remove(p)
        sent = int(out.split()[0]) / (self.seconds + 2 * warm) if out.split() else 0.0
        red = (s1 - s0) / (c1 - c0) if name in (LBCTL, XDP) and c1 > c0 else 0.0
        return (c1 - c0) / (t1 - t0), sent, red

    def load(self, phase: str) -> None:
        Results.add(self.res.load, phase, os.getloadavg()[0])

    def run(self, log: Callable[[str], None] = lambda m: print(m, flush=True)) -> Results:
        r = self.res
        for rnd in range(self.rounds):
            for name in (LBCTL, DIRECT, IPT, NFT):
                with self.system(name):
                    self.load("bulk TCP and conn/s")
                    Results.add(r.gbit, name, self.bulk(name))
                    Results.add(r.conn, name, self.cps(name))
                log(f"round {rnd + 1}: {name}: {r.gbit[name][-1]:.2f} Gbit/s, {r.conn[name][-1]:.0f} conn/s")
                if self.scale and name != DIRECT:
                    with self.system(name, scale=True):
                        self.load("conn/s at 10,000 services")
                        Results.add(r.conn_scale, name, self.cps(name))
                    log(
                        f"round {rnd + 1}: {name} with {self.scale} services: "
                        f"{r.conn_scale[name][-1]:.0f} conn/s"
                    )
        if self.with_pps:
            self.tb.xdp_workarounds()
            for rnd in range(self.rounds):
                for name in (XDP, LBCTL, DIRECT, IPT, NFT):
                    with self.system(name):
                        self.load("packets/s")
                        rx, tx, red = self.pps(name)
                    Results.add(r.pps, name, rx)
                    Results.add(r.pps_sent, name, tx)
                    if red:
                        Results.add(r.pps_redirect, name, red)
                    log(f"round {rnd + 1}: {name}: {rx / 1e3:.0f} kpps received ({tx / 1e3:.0f} sent)")
        return r
