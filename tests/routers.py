"""Real routers in network namespaces for the BGP tests and bench: FRR (zebra + bgpd) and BIRD 2.

Why this exists: the BGP driver is proven against the routers operators run, not
against another gobgpd.  Each router runs in a namespace the test built, with
its configuration, pid files and control sockets in a directory of its own (so
nothing collides with a system FRR/BIRD or another test), installs what it
learns into that namespace's kernel routing table (zebra, BIRD's kernel
protocol), and is stopped by the PIDs this module started.  Test code, not
installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FRR_DIR = "/usr/lib/frr"


@dataclass(frozen=True)
class Neighbor:
    address: str
    asn: int
    password: str | None = None


def _spawn(ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        # ip netns exec execs the daemon: the Popen pid is the daemon's.
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    procs.clear()


def kernel_route(ns: str, prefix: str) -> list[str]:
    """The next hops of ``prefix`` in namespace ``ns``'s main table (empty: no route)."""
    fam = "-6" if ":" in prefix else "-4"
    out = subprocess.run(["ip", "-n", ns, fam, "-j", "route", "show", "exact", prefix], check=True,
                         capture_output=True, text=True).stdout
    hops: list[str] = []
    for r in json.loads(out or "[]"):
        if "gateway" in r:
            hops.append(r["gateway"])
        hops += [h["gateway"] for h in r.get("nexthops", []) if "gateway" in h]
    return sorted(hops)


def wait_for(what: str, check: object, timeout: float = 60.0) -> None:
    """Poll ``check()`` until true; fail naming ``what`` (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Frr:
    """zebra + bgpd in ``ns``; learned routes go to the kernel (ECMP up to 4 paths)."""

    ns: str
    workdir: Path
    asn: int
    router_id: str
    neighbors: list[Neighbor]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def config(self) -> str:
        lines = ["frr defaults traditional", "hostname r", f"router bgp {self.asn}",
                 f" bgp router-id {self.router_id}", " no bgp ebgp-requires-policy",
                 " bgp bestpath as-path multipath-relax"]
        for n in self.neighbors:
            lines += [f" neighbor {n.address} remote-as {n.asn}", f" neighbor {n.address} timers connect 1"]
            if n.password:
                lines.append(f" neighbor {n.address} password {n.password}")
        lines += [" address-family ipv4 unicast", "  maximum-paths 4", " exit-address-family",
                  " address-family ipv6 unicast", "  maximum-paths 4"]
        lines += [f"  neighbor {n.address} activate" for n in self.neighbors if ":" in n.address]
        lines += [" exit-address-family", ""]
        return "\n".join(lines)

    def start(self) -> Frr:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "zebra.conf").write_text("hostname r\n")
        (d / "bgpd.conf").write_text(self.config())
        shutil.chown(d, "frr", "frr")  # the daemons drop root for the frr user (its vty group: frrvty)
        for f in d.iterdir():
            shutil.chown(f, "frr", "frr")
        common = ["-z", str(d / "zserv.api"), "--vty_socket", str(d)]
        self.procs.append(_spawn(self.ns, [f"{FRR_DIR}/zebra", "-f", str(d / "zebra.conf"),
                                           "-i", str(d / "zebra.pid"), *common], d / "zebra.log"))
        wait_for("zebra's socket", lambda: (d / "zserv.api").exists(), 20)
        self.procs.append(_spawn(self.ns, [f"{FRR_DIR}/bgpd", "-f", str(d / "bgpd.conf"),
                                           "-i", str(d / "bgpd.pid"), *common], d / "bgpd.log"))
        return self

    def vtysh(self, command: str) -> str:
        return subprocess.run(["vtysh", "--vty_socket", str(self.workdir), "-c", command], check=True,
                              capture_output=True, text=True).stdout

    def established(self, address: str) -> bool:
        try:
            data = json.loads(self.vtysh(f"show bgp neighbors {address} json"))
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            return False
        return bool(data.get(address, {}).get("bgpState") == "Established")

    def stop(self) -> None:
        _stop(self.procs)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Bird:
    """BIRD 2 in ``ns``; learned routes exported to the kernel."""

    ns: str
    workdir: Path
    asn: int
    router_id: str
    neighbors: list[Neighbor]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def config(self) -> str:
        out = [f"router id {self.router_id};", "protocol device {}",
               "protocol kernel { ipv4 { export all; }; merge paths on; }"]
        for i, n in enumerate(self.neighbors):
            out.append(f"protocol bgp lb{i} {{ local as {self.asn}; neighbor {n.address} as {n.asn}; "
                       "connect retry time 1; "
                       + (f'password "{n.password}"; ' if n.password else "")
                       + "ipv4 { import all; export none; }; }")
        return "\n".join(out) + "\n"

    def start(self) -> Bird:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "bird.conf").write_text(self.config())
        argv = ["bird", "-f", "-c", str(d / "bird.conf"), "-s", str(d / "bird.ctl"),
                "-P", str(d / "bird.pid")]
        self.procs.append(_spawn(self.ns, argv, d / "bird.log"))
        return self

    def stop(self) -> None:
        _stop(self.procs)


# --- the lab: an LB box announcing to FRR and BIRD, clients behind both ----------------------

LB_ASN, FRR_ASN, BIRD_ASN = 65001, 65000, 65002
MD5_PASSWORD = "lbctl-md5-test"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _sysctl(ns: str, *settings: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", *settings], check=True, capture_output=True)


@dataclass
class BgpLab:
    """``Testbed`` (LB box, two backends) plus::

        client1 (10.210.0.2) - r1 [FRR, AS 65000] 10.200.0.2 --- cl0 10.200.0.1 [LB, AS 65001]
        client2 (10.211.0.2) - r2 [BIRD, AS 65002] 10.203.0.2 --- rt2 10.203.0.1 [LB]
                               r1 10.202.0.2 --- eth0 10.202.0.1 [LB box 2, AS 65001]

    The routers reach the VIP only through what BGP tells them (no default route);
    the LB boxes route the client subnets back through the routers (static routes).
    """

    tb: object  # tests.testbed.Testbed (imported by the caller: no import cycle for the bench)
    workdir: Path
    routers: list[Frr | Bird] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return str(self.tb.prefix)  # type: ignore[attr-defined]

    @property
    def lb(self) -> str:
        return str(self.tb.lb)  # type: ignore[attr-defined]

    @property
    def r1(self) -> str:
        return str(self.tb.client)  # type: ignore[attr-defined]

    def ns(self, tag: str) -> str:
        return f"{self.prefix}-{tag}"

    def _add_ns(self, tag: str) -> str:
        name = self.ns(tag)
        _ip("netns", "add", name)
        self.tb.namespaces.append(name)  # type: ignore[attr-defined]
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _veth(self, ns_a: str, a: str, addr_a: str, ns_b: str, b: str, addr_b: str) -> None:
        t, u = f"{self.prefix}t", f"{self.prefix}u"
        _ip("link", "add", t, "type", "veth", "peer", "name", u)
        _ip("link", "set", t, "netns", ns_a, "name", a)
        _ip("link", "set", u, "netns", ns_b, "name", b)
        for ns, dev, addr in ((ns_a, a, addr_a), (ns_b, b, addr_b)):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def setup(self) -> BgpLab:
        self.tb.setup()  # type: ignore[attr-defined]
        lb, r1 = self.lb, self.r1
        _ip("-n", r1, "route", "del", "default")
        c1, r2, c2, lb2 = (self._add_ns(t) for t in ("c1", "r2", "c2", "l2"))
        self._veth(r1, "eth1", "10.210.0.1/24", c1, "eth0", "10.210.0.2/24")
        self._veth(lb, "rt2", "10.203.0.1/24", r2, "eth0", "10.203.0.2/24")
        self._veth(r2, "eth1", "10.211.0.1/24", c2, "eth0", "10.211.0.2/24")
        self._veth(lb2, "eth0", "10.202.0.1/24", r1, "eth2", "10.202.0.2/24")
        _ip("-n", c1, "route", "add", "default", "via", "10.210.0.1")
        _ip("-n", c2, "route", "add", "default", "via", "10.211.0.1")
        _ip("-n", lb, "route", "add", "10.210.0.0/24", "via", "10.200.0.2")
        _ip("-n", lb, "route", "add", "10.211.0.0/24", "via", "10.203.0.2")
        _ip("-n", lb2, "route", "add", "10.210.0.0/24", "via", "10.202.0.2")
        for ns in (r1, r2):
            _sysctl(ns, "net.ipv4.ip_forward=1")
        return self

    def start_frr(self) -> Frr:
        # Not under pytest's tmp dir: its parents are root-only, and FRR's daemons run as frr.
        frr = Frr(self.r1, Path(tempfile.mkdtemp(prefix="lbctl-test-frr-")), FRR_ASN, "10.200.0.2",
                  [Neighbor("10.200.0.1", LB_ASN, MD5_PASSWORD), Neighbor("10.202.0.1", LB_ASN),
                   Neighbor("fd00:200::1", LB_ASN)]).start()
        self.routers.append(frr)
        return frr

    def start_bird(self) -> Bird:
        bird = Bird(self.ns("r2"), self.workdir / "bird", BIRD_ASN, "10.203.0.2",
                    [Neighbor("10.203.0.1", LB_ASN)]).start()
        self.routers.append(bird)
        return bird

    def teardown(self) -> None:
        for r in self.routers:
            r.stop()
        self.routers.clear()
        self.tb.teardown()  # type: ignore[attr-defined]
