"""Health probes end to end: ``lbctl watch`` probing real backends in namespaces, real traffic.

Client, LB box and three backends from ``tests.testbed``; the daemon runs as a real
process inside the LB namespace (``--netns``).  A backend "dies" when every server it
runs is killed (and it stops answering pings); it "returns" when they are restarted.
Waits poll the live datapath; the bounds the issue sets (leave within interval x
retries + timeout, return within one interval) are checked with one second of slack
for the reconcile and a loaded 2-core box.  Marked ``root``.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.drivers.netns import in_netns
from reconciler.records import EndpointSet
from tests.reconciler.test_watch_root import HEADER, Box
from tests.testbed import HTTP_PORT, UDP_PORT, VIP4, Testbed

pytestmark = pytest.mark.root

SERVERS = Path(__file__).with_name("servers.py")
HTTPS_PORT, SCTP_PORT, ALT_PORT = 8443, 9999, 5400
INTERVAL, TIMEOUT, RETRIES = 2, 1, 2
SLACK = 1.0


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _certs(d: Path) -> dict[str, str]:
    """A CA, a server certificate and a client certificate signed by it."""
    d.mkdir()
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lbpr-ca",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for who in ("server", "client"):
        _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=lbpr-{who}",
             "-keyout", str(d / f"{who}.key"), "-out", str(d / f"{who}.csr"))
        _run("openssl", "x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / "ca.pem"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-out", str(d / f"{who}.pem"))
    return {k: str(d / f) for k, f in (("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"),
                                       ("client_cert", "client.pem"), ("client_key", "client.key"))}


@dataclass
class Lab:
    tb: Testbed
    box: Box
    conf: Path
    certs: dict[str, str]
    extra: dict[int, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    main: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, i: int, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", self.tb.backend_ns(i), sys.executable, str(SERVERS),
                              self.tb.backend_name(i), *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert p.stdout is not None and b"ready" in p.stdout.readline(), f"server {args} on backend {i}"
        return p

    def start(self, i: int, alternate: bool = False) -> None:
        """Every server of backend ``i``, and answer pings."""
        if i not in self.main:
            self.tb._start_server(i)
            self.main[i] = self.tb.procs[-1]
        c = self.certs
        self.extra[i] = [self._spawn(i, "https", str(HTTPS_PORT), c["cert"], c["key"], c["ca"]),
                         self._spawn(i, "sctp", str(SCTP_PORT))]
        if alternate:
            self.extra[i].append(self._spawn(i, "udp-alternate", str(ALT_PORT)))
        _run("ip", "netns", "exec", self.tb.backend_ns(i), "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=0")

    def kill(self, i: int) -> None:
        """Backend ``i`` dies: every server killed, pings unanswered."""
        for p in [self.main.pop(i), *self.extra.pop(i, [])]:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            if p.stdout is not None:
                p.stdout.close()
        _run("ip", "netns", "exec", self.tb.backend_ns(i), "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")

    def write(self, services: dict[str, str]) -> None:
        ifaces = ", ".join(self.tb.lb_interfaces)
        (self.conf / "00-datapath.yaml").write_text(
            f"{HEADER}kind: Datapath\nmetadata: {{name: box}}\nspec: {{interfaces: [{ifaces}]}}\n")
        for name, text in services.items():
            (self.conf / f"{name}.yaml").write_text(text)

    def service(self, name: str, port: int, probe: str, endpoints: str | None = None,
                selection: str = "rr") -> str:
        eps = endpoints or ", ".join(f"{{address: {self.tb.backend4(i)}}}" for i in range(self.tb.n_backends))
        return (f"{HEADER}kind: Service\nmetadata: {{name: {name}}}\nspec:\n  vip: {VIP4}\n"
                f"  selection: {selection}\n"
                f"  ports: [{{port: {port}, protocol: TCP, targetPort: {HTTP_PORT}}}]\n  endpoints: [{eps}]\n"
                f"  probe: {probe}\n")

    def backends(self, port: int, proto: str = "tcp") -> set[str]:
        """The endpoints in selection (weight above 0; the others are down or on standby)."""
        rec = self.box.live()["endpoints"].get(f"{proto}/{VIP4}:{port}")
        return {b.address for b in rec.backends if b.weight > 0} if isinstance(rec, EndpointSet) else set()

    def get(self, port: int, timeout: float = 2.0) -> str:
        """One HTTP request through the VIP from the client: the backend's name, or the error."""
        with in_netns(self.tb.client):
            try:
                with socket.create_connection((VIP4, port), timeout=timeout) as s:
                    s.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
            except OSError as exc:
                return f"error: {exc}"
        head, _, body = data.partition(b"\r\n\r\n")
        ok = head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200"))
        return body.decode().strip() if ok else f"bad: {data[:40]!r}"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _certs(tmp_path_factory.mktemp("lbpr-certs") / "pki")


@pytest.fixture
def lab(tmp_path: Path, certs: dict[str, str]) -> Iterator[Lab]:
    pytest.importorskip("reconciler.drivers.bpf", reason="the bpf driver is not in this tree yet")
    tb = Testbed(n_backends=3, prefix="lbpr" + os.urandom(3).hex())
    tb.setup()
    box = Box(tb.lb, tmp_path / "state", Path("/sys/fs/bpf") / f"lbctl-test-{tb.prefix}", tmp_path)
    conf = tmp_path / "conf.d"
    conf.mkdir()
    lab = Lab(tb, box, conf, certs)
    lab.main = dict(enumerate(tb.procs))
    try:
        for i in range(tb.n_backends):
            lab.start(i, alternate=True)
        yield lab
    finally:
        if box.proc is not None and box.proc.poll() is None:
            box.proc.kill()
            box.proc.wait(10)
        for procs in lab.extra.values():
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                if p.stdout is not None:
                    p.stdout.close()
        tb.teardown()
        shutil.rmtree(box.pin_root, ignore_errors=True)


def _timing(interval: int = INTERVAL, timeout: int = TIMEOUT, retries: int = RETRIES) -> str:
    return f"interval: {interval}, timeout: {timeout}, retries: {retries}"


def probe_specs(certs: dict[str, str]) -> dict[str, str]:
    t = _timing()
    return {
        "tcp": f"{{type: tcp, {t}}}",
        "udp": f"{{type: udp, port: {UDP_PORT}, request: hello, response: hello, {t}}}",
        "http": f"{{type: http, request: /, response: backend, {t}}}",
        "https": (f"{{type: https, port: {HTTPS_PORT}, request: /healthz, response: healthy, "
                  f"caFile: {certs['ca']}, certFile: {certs['client_cert']}, "
                  f"keyFile: {certs['client_key']}, {t}}}"),
        "ping": f"{{type: ping, {t}}}",
        "sctp": f"{{type: sctp, port: {SCTP_PORT}, {t}}}",
    }


def test_every_probe_type_takes_a_dead_backend_out_and_brings_it_back(lab: Lab) -> None:
    kinds = probe_specs(lab.certs)
    ports = {kind: 81 + n for n, kind in enumerate(kinds)}
    lab.write({f"p-{kind}": lab.service(f"p-{kind}", ports[kind], spec) for kind, spec in kinds.items()})
    lab.box.start(lab.conf)
    lab.box.wait_ready()
    everyone = {lab.tb.backend4(i) for i in range(3)}
    dead = lab.tb.backend4(0)
    # Every probe passes: all three backends stay in every service (a few probe rounds).
    def all_probed_ok() -> bool:
        eps = (lab.box.status() or {}).get("endpoints", [])
        return len(eps) == 18 and all(e.get("last_result") == "ok" for e in eps)

    lab.box.wait("first probes", all_probed_ok, 10)
    for kind, port in ports.items():
        assert lab.backends(port) == everyone, kind
    status = lab.box.status() or {}
    assert len(status["endpoints"]) == 18 and {e["health"] for e in status["endpoints"]} == {"up"}

    lab.kill(0)
    t0 = time.monotonic()
    left: dict[str, float] = {}
    while len(left) < len(ports) and time.monotonic() - t0 < INTERVAL * RETRIES + TIMEOUT + 5:
        for kind, port in ports.items():
            if kind not in left and dead not in lab.backends(port):
                left[kind] = time.monotonic() - t0
        time.sleep(0.05)
    print("left selection after (s):", {k: round(v, 2) for k, v in sorted(left.items())})
    assert set(left) == set(ports), lab.box.logs()[-3000:]
    bound = INTERVAL * RETRIES + TIMEOUT + SLACK
    assert all(v <= bound for v in left.values()), (left, bound)
    # A request loop through the VIP now sees no failure, on every service.
    answers = Counter(lab.get(port) for port in ports.values() for _ in range(12))
    assert set(answers) <= {"backend1", "backend2"}, answers
    # Health is live state, not configuration: the plan is empty; one log line per transition.
    assert lab.box.plan_empty(lab.conf)
    downs = [ln for ln in lab.box.logs().splitlines() if "endpoint-down" in ln]
    assert len(downs) == len(ports), downs
    status = lab.box.status() or {}
    down = {e["service"]: e for e in status["endpoints"] if e["address"] == dead}
    assert {e["health"] for e in down.values()} == {"down"}
    assert down["p-tcp"]["last_failure"] == "connection refused", down["p-tcp"]
    print("last failures:", {k: v["last_failure"] for k, v in sorted(down.items())})
    # lbctl get endpoints shows it, from the daemon.
    out = subprocess.run([sys.executable, "-m", "reconciler.cli", "get", "endpoints", "-o", "json",
                          *lab.box.common, "--listen", f"127.0.0.1:{lab.box.port}"],
                         check=True, capture_output=True, text=True, cwd=Path(__file__).parents[3]).stdout
    rows = json.loads(out)
    row = next(r for r in rows if r["name"] == "p-http" and r["endpoint"] == dead)
    assert row["health"] == "down" and row["last_result"] == "failed" and row["last_failure"] != "-"
    assert {r["health"] for r in rows if r["endpoint"] != dead} == {"up"}

    lab.start(0)
    t0 = time.monotonic()
    back: dict[str, float] = {}
    while len(back) < len(ports) and time.monotonic() - t0 < INTERVAL + 5:
        for kind, port in ports.items():
            if kind not in back and dead in lab.backends(port):
                back[kind] = time.monotonic() - t0
        time.sleep(0.05)
    print("back in selection after (s):", {k: round(v, 2) for k, v in sorted(back.items())})
    assert set(back) == set(ports), lab.box.logs()[-3000:]
    assert all(v <= INTERVAL + SLACK for v in back.values()), back
    assert len([ln for ln in lab.box.logs().splitlines() if "endpoint-up" in ln]) == len(ports)


def test_a_backend_failing_every_other_probe_stays_in_selection(lab: Lab) -> None:
    """UDP probes answered every other time, retries 2: the endpoint never leaves."""
    spec = f"{{type: udp, port: {ALT_PORT}, request: ping, response: pong, {_timing()}}}"
    lab.write({"alt": lab.service("alt", 80, spec)})
    lab.box.start(lab.conf)
    lab.box.wait_ready()

    def probes() -> list[dict[str, object]]:
        return list((lab.box.status() or {}).get("endpoints", []))

    lab.box.wait("six probes of each endpoint", lambda: bool(probes()) and all(
        int(str(e["probes"])) >= 6 for e in probes()), timeout=20)
    eps = probes()
    assert all(e["transitions"] == 0 and e["health"] == "up" for e in eps), eps
    assert all(e["last_failure"] is not None for e in eps), eps  # they did fail, every other time
    assert "endpoint-down" not in lab.box.logs()
    assert lab.backends(80) == {lab.tb.backend4(i) for i in range(3)}


def test_backups_and_every_endpoint_down_refuses_at_once(lab: Lab) -> None:
    b = [lab.tb.backend4(i) for i in range(3)]
    eps = f"{{address: {b[0]}}}, {{address: {b[1]}}}, {{address: {b[2]}, backup: true}}"
    lab.write({"web": lab.service("web", 80, f"{{type: tcp, {_timing()}}}", endpoints=eps)})
    lab.box.start(lab.conf)
    lab.box.wait_ready()
    assert Counter(lab.get(80) for _ in range(20)) == {"backend0": 10, "backend1": 10}
    lab.kill(0)
    lab.box.wait("backend0 out", lambda: lab.backends(80) == {b[1]}, timeout=10)
    assert Counter(lab.get(80) for _ in range(10)) == {"backend1": 10}  # still no backup
    lab.kill(1)
    lab.box.wait("the backup takes over", lambda: lab.backends(80) == {b[2]}, timeout=10)
    assert Counter(lab.get(80) for _ in range(10)) == {"backend2": 10}
    lab.start(0)
    lab.box.wait("a primary returns", lambda: lab.backends(80) == {b[0]}, timeout=10)
    assert Counter(lab.get(80) for _ in range(10)) == {"backend0": 10}  # new flows leave the backup
    # Every endpoint down: a connect to the VIP is refused at once (RST), not black-holed.
    lab.kill(0)
    lab.kill(2)
    lab.box.wait("every endpoint out", lambda: lab.backends(80) == set(), timeout=10)
    assert lab.box.plan_empty(lab.conf)
    for _ in range(5):
        with in_netns(lab.tb.client):
            s = socket.socket()
            s.settimeout(2)
            t0 = time.monotonic()
            err = s.connect_ex((VIP4, 80))
            took = time.monotonic() - t0
            s.close()
        assert err == errno.ECONNREFUSED, os.strerror(err)
        assert took < 0.05, took
    # UDP to a service with no endpoint: ICMP port unreachable.
    udp_eps = f"{{address: {b[0]}}}"
    lab.write({"dns": (f"{HEADER}kind: Service\nmetadata: {{name: dns}}\nspec:\n  vip: {VIP4}\n"
                       f"  ports: [{{port: 53, protocol: UDP, targetPort: {UDP_PORT}}}]\n"
                       f"  endpoints: [{udp_eps}]\n"
                       f"  probe: {{type: udp, request: x, response: x, {_timing()}}}\n")})
    def dns_refusing() -> bool:
        rec = lab.box.live()["endpoints"].get(f"udp/{VIP4}:53")  # one read: the set exists, none in selection
        return isinstance(rec, EndpointSet) and bool(rec.backends) and not any(b.weight for b in rec.backends)

    lab.box.wait("dns endpoint out", dns_refusing, timeout=15)
    refused = 0
    with in_netns(lab.tb.client):
        for _ in range(3):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1)
                s.connect((VIP4, 53))
                s.send(b"x")
                try:
                    s.recv(100)
                except ConnectionRefusedError:
                    refused += 1
    assert refused == 3, refused


@pytest.mark.parametrize(("weights", "want"), [((80, 20), (26, 6)), ((40, 40, 20), (13, 13, 6))])
def test_priority_shares_over_32_requests_in_20_runs(lab: Lab, weights: tuple[int, ...],
                                                      want: tuple[int, ...]) -> None:
    """loxilb's wrrtcplb1/2 over real connections with random client ports: within +-1, 20 of 20 runs."""
    eps = ", ".join(f"{{address: {lab.tb.backend4(i)}, weight: {w}}}" for i, w in enumerate(weights))
    lab.write({"wrr": lab.service("wrr", 80, "{type: none}", endpoints=eps, selection="priority")})
    assert subprocess.run([sys.executable, "-m", "reconciler.cli", "apply", str(lab.conf), *lab.box.common],
                          capture_output=True, cwd=Path(__file__).parents[3]).returncode == 0
    names = [lab.tb.backend_name(i) for i in range(len(weights))]
    for run in range(20):
        got: Counter[str] = Counter()
        for _ in range(32):
            with in_netns(lab.tb.client):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("0.0.0.0", random.randrange(20000, 60000)))
                    s.settimeout(2)
                    s.connect((VIP4, 80))
                    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
            got[data.partition(b"\r\n\r\n")[2].decode().strip()] += 1
        counts = tuple(got[n] for n in names)
        assert all(abs(c - w) <= 1 for c, w in zip(counts, want, strict=True)), (run, counts, want)
