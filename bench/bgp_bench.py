"""BGP bench: from ``lbctl apply`` to the VIP's route in a real FRR's kernel table, and back.

Why this exists: issue 15 asks how long an edge router takes to learn a new VIP
once the operator applies it (anchor on this kind of machine: ~70 ms from a
gobgpd to FRR) and why the driver talks gRPC rather than the ``gobgp`` CLI.
The bench builds ``tests.routers.BgpLab`` (LB box, FRR in its own namespace),
brings the session up, then per round adds one Service with ``bgp: true`` and
times, from the start of the apply (in-process ``lbctl apply``: load, plan,
datapath, VIP address, announcement, verify):

* apply returned (the VIP is announced by gobgpd);
* RTM_NEWROUTE for the VIP seen in FRR's namespace (zebra installed the route),
  from a netlink socket subscribed to the IPv4 route group there, also counted
  from the moment the driver's ``AddPath`` call returned (BGP's own share);

and the same for removing the Service (the route's RTM_DELROUTE).  Then one
gobgpd API call (``GetBgp``) over gRPC against the same through the ``gobgp``
CLI.  Needs root.  Prints a table, writes ``bench/results/bgp.md``; asserts nothing.

    sudo .venv/bin/python bench/bgp_bench.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler import cli  # noqa: E402
from reconciler.drivers.bgp import BgpDriver  # noqa: E402
from reconciler.drivers.netns import in_netns  # noqa: E402
from tests.routers import BgpLab, kernel_route, wait_for  # noqa: E402
from tests.testbed import Testbed  # noqa: E402

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTA_DST = 1

HEAD = "apiVersion: lbctl.dev/v1alpha1\n"
BASE = (HEAD + "kind: Datapath\nmetadata: {name: box}\nspec: {interfaces: [cl0, be0, be1]}\n---\n"
        + HEAD + "kind: BGPConfig\nmetadata: {name: bgp}\nspec: {localAS: 65001, routerID: 10.200.0.1}\n---\n"
        + HEAD + "kind: BGPPeer\nmetadata: {name: frr}\nspec: {address: 10.200.0.2, remoteAS: 65000, "
        "password: lbctl-md5-test}\n")


def service(i: int) -> str:
    return (HEAD + f"kind: Service\nmetadata: {{name: web{i}}}\nspec:\n  vip: 10.250.1.{i}\n  bgp: true\n"
            "  ports: [{port: 80, targetPort: 8080}]\n  endpoints: [{address: 10.201.0.2}]\n")


class RouteWatch:
    """Arrival times of route messages in a namespace, by (message type, destination)."""

    def __init__(self, ns: str) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, RTMGRP_IPV4_ROUTE))
        self.seen: dict[tuple[int, str], float] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            data = self.sock.recv(1 << 16)
            now = time.perf_counter()
            pos = 0
            while pos + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, pos)
                if length < 16:
                    break
                if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
                    self._route(mtype, data[pos + 16:pos + length], now)
                pos += (length + 3) & ~3

    def _route(self, mtype: int, body: bytes, now: float) -> None:
        family, dst_len = body[0], body[1]
        if family != socket.AF_INET:
            return
        pos = 12
        while pos + 4 <= len(body):
            alen, atype = struct.unpack_from("=HH", body, pos)
            if alen < 4:
                return
            if atype == RTA_DST:
                dst = socket.inet_ntoa(body[pos + 4:pos + 8]) + f"/{dst_len}"
                with self.cond:
                    self.seen.setdefault((mtype, dst), now)
                    self.cond.notify_all()
            pos += (alen + 3) & ~3

    def wait(self, mtype: int, dst: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: (mtype, dst) in self.seen, timeout):
                raise RuntimeError(f"no route message {mtype} for {dst}")
            return self.seen[(mtype, dst)]


ANNOUNCED: dict[str, float] = {}  # prefix -> when the driver's AddPath call returned


def time_announcements() -> None:
    """Record when each AddPath (announcement) returns, around the real driver method."""
    real = BgpDriver._add

    def add(self: BgpDriver, kind: str, rec: object) -> None:
        real(self, kind, rec)  # type: ignore[arg-type]
        if kind == "announce":
            ANNOUNCED[getattr(rec, "prefix", "")] = time.perf_counter()

    BgpDriver._add = add  # type: ignore[method-assign]


def lbctl(*argv: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(list(argv))
    if code != 0:
        raise RuntimeError(f"lbctl {' '.join(argv[:1])} exited {code}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bgp.md"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bgp_bench needs root (namespaces, bpffs, FRR)", file=sys.stderr)
        return 1
    work = Path(f"/tmp/lbctl-bench-bgp-{uuid.uuid4().hex[:6]}")
    conf = work / "conf"
    conf.mkdir(parents=True)
    lab = BgpLab(Testbed(n_backends=2, prefix="lbbb" + uuid.uuid4().hex[:6]), work)
    pins = f"/sys/fs/bpf/lbctl-bench-bgp-{uuid.uuid4().hex[:6]}"
    common = ["--netns", lab.lb, "--state-dir", str(work / "state"), "--pin-root", pins]
    add_ret, add_fib, del_ret, del_fib, path_fib = [], [], [], [], []
    time_announcements()
    grpc_us = cli_ms = 0.0
    try:
        lab.setup()
        lab.start_frr()
        (conf / "base.yaml").write_text(BASE)
        lbctl("apply", str(conf), *common)
        drv = BgpDriver(work / "state" / lab.lb, lab.lb)
        wait_for("the session", lambda: any(p["state"] == "established" for p in drv.sessions()["peers"]))
        watch = RouteWatch(lab.r1)
        for i in range(1, args.rounds + 1):
            prefix = f"10.250.1.{i}/32"
            (conf / "svc.yaml").write_text(service(i))
            t0 = time.perf_counter()
            lbctl("apply", str(conf), *common)
            add_ret.append(time.perf_counter() - t0)
            t_fib = watch.wait(RTM_NEWROUTE, prefix)
            add_fib.append(t_fib - t0)
            path_fib.append(t_fib - ANNOUNCED[prefix])
            assert kernel_route(lab.r1, prefix) == ["10.200.0.1"]
            (conf / "svc.yaml").unlink()
            t0 = time.perf_counter()
            lbctl("apply", str(conf), *common)
            del_ret.append(time.perf_counter() - t0)
            del_fib.append(watch.wait(RTM_DELROUTE, prefix) - t0)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            drv._call("GetBgp", b"")
        grpc_us = (time.perf_counter() - t0) / n * 1e6
        m = 30
        t0 = time.perf_counter()
        for _ in range(m):
            subprocess.run(["gobgp", "--target", drv.target, "-j", "global"], check=True, capture_output=True)
        cli_ms = (time.perf_counter() - t0) / m * 1e3
    finally:
        with contextlib.suppress(Exception):
            lbctl("down", *common)
        lab.teardown()
        subprocess.run(["rm", "-rf", str(work)], check=False)

    def row(name: str, xs: list[float]) -> str:
        ms = [x * 1000 for x in xs]
        return f"| {name} | {statistics.median(ms):.1f} | {min(ms):.1f} | {max(ms):.1f} |"

    cpu = platform.processor() or platform.machine()
    load = os.getloadavg()
    text = "\n".join([
        "# BGP: apply to the route in FRR's kernel table",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, "
        f"Python {platform.python_version()}, load average {load[0]:.2f}",
        "- setup: lbctl's gobgpd in the LB namespace, FRR 8.4 (zebra + bgpd) in the router's, one eBGP "
        "session with a TCP MD5 password; each round adds one Service (1 VIP, bgp: true) with an "
        "in-process `lbctl apply`, then removes it",
        f"- rounds: {args.rounds}; times from the start of the apply, ms",
        "",
        "| step | median | min | max |",
        "|---|---:|---:|---:|",
        row("add: apply returned (verified, announced)", add_ret),
        row("add: route in FRR's kernel table (RTM_NEWROUTE)", add_fib),
        row("add: gobgpd took the path (AddPath returned) -> route in FRR's table", path_fib),
        row("remove: apply returned (withdrawn, service gone)", del_ret),
        row("remove: route gone from FRR's table (RTM_DELROUTE)", del_fib),
        "",
        "gobgpd API, one `GetBgp` call:",
        "",
        "| path | per call |",
        "|---|---:|",
        f"| gRPC on the driver's open channel (hand-encoded protobuf) | {grpc_us:.0f} µs |",
        f"| `gobgp -j global` (the CLI: a process per call) | {cli_ms:.1f} ms |",
        "",
        "Run: `sudo .venv/bin/python bench/bgp_bench.py`.",
        "",
    ])
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
