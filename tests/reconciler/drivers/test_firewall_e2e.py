"""Firewall end to end: YAML -> ``lbctl apply`` -> real traffic in namespaces.

A drop rule blocks one client while another is served, an allow rule of lower
number punches a hole, a rateLimit rule polices a UDP flood, a trap rule
hands VIP traffic to a socket on the LB itself, a mark rule's mark is seen by
nftables on the LB; ``lbctl get firewall`` shows the counters.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler import cli
from tests.testbed import CLIENT4, VIP4, Testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

CLIENT4B = "10.200.0.3"  # a second client address in the client namespace


def datapath(hook: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: lbctl.dev/v1alpha1
        kind: Datapath
        metadata: {{name: box}}
        spec: {{hook: {hook}, interfaces: [cl0, be0, be1, be2], vipInterface: lbctl0}}
        """)


SERVICES = textwrap.dedent(f"""\
    apiVersion: lbctl.dev/v1alpha1
    kind: Service
    metadata: {{name: web}}
    spec:
      vip: {VIP4}
      ports: [{{port: 80, protocol: TCP, targetPort: 8080}}, {{port: 53, protocol: UDP, targetPort: 5353}}]
      endpoints: [{{address: 10.201.0.2}}, {{address: 10.201.1.2}}, {{address: 10.201.2.2}}]
    """)


def rule(name: str, priority: int, action: str, match: str, extra: str = "") -> str:
    return (f"apiVersion: lbctl.dev/v1alpha1\nkind: FirewallRule\nmetadata: {{name: {name}}}\n"
            f"spec:\n  priority: {priority}\n  match: {match}\n  action: {action}\n{extra}")


@dataclass
class Box:
    tb: Testbed
    conf: Path
    state: Path
    pins: Path

    def lbctl(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = cli.main([*argv, "--netns", self.tb.lb, "--state-dir", str(self.state),
                           "--pin-root", str(self.pins)])
        return rc, out.getvalue()

    def rules(self, *docs: str) -> None:
        (self.conf / "50-fw.yaml").write_text("---\n".join(docs) if docs else "")
        rc, out = self.lbctl("apply", str(self.conf))
        assert rc == 0, out

    def curl(self, source: str = CLIENT4, host: str = VIP4) -> str | None:
        r = subprocess.run(["ip", "netns", "exec", self.tb.client, "curl", "-s", "-m", "2", "--interface",
                            source, f"http://{host}/"], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None


def udp_to_lb(tb: Testbed, source: str, count: int) -> None:
    """``count`` datagrams from ``source`` to the LB's own address (port 9, closed)."""
    code = ("import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.bind((sys.argv[1],0))\nfor _ in range(int(sys.argv[2])):\n"
            "    s.sendto(b'x',('10.200.0.1',9)); time.sleep(0.05)\ntime.sleep(0.2)\n")
    subprocess.run(["ip", "netns", "exec", tb.client, sys.executable, "-c", code, source, str(count)],
                   check=True, capture_output=True)


@contextlib.contextmanager
def _box(hook: str, tmp_path: Path) -> Iterator[Box]:
    tb = Testbed(n_backends=3).setup()
    pins = Path(f"/sys/fs/bpf/lbctl-test-fw-{uuid.uuid4().hex[:8]}")
    b = Box(tb, tmp_path / "conf", tmp_path / "state", pins)
    try:
        if hook == "xdp":
            tb.xdp_workarounds()
        subprocess.run(["ip", "-n", tb.client, "addr", "add", f"{CLIENT4B}/24", "dev", "eth0"], check=True)
        b.conf.mkdir()
        (b.conf / "00-datapath.yaml").write_text(datapath(hook))
        (b.conf / "10-web.yaml").write_text(SERVICES)
        rc, out = b.lbctl("apply", str(b.conf))
        assert rc == 0, out
        # The LB learns both client MACs up front (it answers a datagram to a closed port): at XDP a
        # reply whose next hop has no neighbour entry goes to the kernel, which drops it as its
        # source is the VIP, a local address (tc resolves the neighbour with bpf_redirect_neigh).
        for source in (CLIENT4, CLIENT4B):
            udp_to_lb(tb, source, 1)
        yield b
    finally:
        try:
            b.lbctl("down")
        finally:
            tb.teardown()
            shutil.rmtree(pins, ignore_errors=True)


@pytest.fixture(params=["tc", "xdp"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    with _box(request.param, tmp_path) as b:
        yield b


@pytest.fixture
def tc_box(tmp_path: Path) -> Iterator[Box]:
    with _box("tc", tmp_path) as b:
        yield b


def test_drop_one_client_allow_punches_a_hole(box: Box) -> None:
    assert box.curl(CLIENT4) and box.curl(CLIENT4B)
    box.rules(rule("block-one", 10, "drop", f"{{source: {CLIENT4}/32}}"))
    assert box.curl(CLIENT4) is None
    assert (box.curl(CLIENT4B) or "").startswith("backend")
    box.rules(rule("deny-clients", 10, "drop", "{source: 10.200.0.0/24, protocol: TCP}"),
              rule("web-for-one", 5, "allow",
                   f"{{source: {CLIENT4}/32, protocol: TCP, destinationPorts: {{from: 80}}}}"))
    assert (box.curl(CLIENT4) or "").startswith("backend")
    assert box.curl(CLIENT4B) is None
    rc, out = box.lbctl("get", "firewall", "-o", "json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert [r["name"] for r in json.loads(out)] == ["web-for-one", "deny-clients"]
    assert rows["web-for-one"]["packets"] > 0 and rows["deny-clients"]["packets"] > 0
    box.rules()
    assert box.curl(CLIENT4) and box.curl(CLIENT4B)


_FLOOD = r"""
import socket, sys, time
vip, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
s.connect((vip, 53))
sent = got = 0
start = time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= secs:
        break
    while sent < now * rate:
        s.send(b"x")
        sent += 1
    try:
        while True:
            s.recv(100)
            got += 1
    except BlockingIOError:
        pass
    time.sleep(0.0005)
end = time.monotonic() + 1.0
while time.monotonic() < end:
    try:
        s.recv(100)
        got += 1
    except BlockingIOError:
        time.sleep(0.01)
print(sent, got)
"""


def test_rate_limit_holds_a_udp_flood_to_its_rate(box: Box) -> None:
    box.rules(rule("police-dns", 10, "rateLimit", f"{{source: {CLIENT4}/32, protocol: UDP}}",
                   "  rateLimit: {packetsPerSecond: 100, burst: 20}\n"))
    r = subprocess.run(["ip", "netns", "exec", box.tb.client, sys.executable, "-c", _FLOOD, VIP4, "5000",
                        "5"], capture_output=True, text=True, check=True)
    sent, got = map(int, r.stdout.split())
    assert sent >= 20000  # the flood really ran at ~5,000 packets/s
    assert 400 <= got <= 600, f"{got} packets got through in 5 s at 100/s"
    rc, out = box.lbctl("get", "firewall", "-o", "json")
    row = json.loads(out)[0]
    assert row["packets"] == sent
    assert row["packets"] - row["limited"] == got  # what passed is what the receiver answered


_LB_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"lb-itself"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = HTTPServer((sys.argv[1], 80), H)
print("ready", flush=True)
srv.serve_forever()
"""


def test_trap_delivers_vip_traffic_to_a_socket_on_the_lb(box: Box) -> None:
    srv = subprocess.Popen(["ip", "netns", "exec", box.tb.lb, sys.executable, "-c", _LB_SERVER, VIP4],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert srv.stdout is not None and b"ready" in srv.stdout.readline()
        assert (box.curl() or "").startswith("backend")
        box.rules(rule("to-host", 10, "trap", f"{{destination: {VIP4}/32, protocol: TCP, "
                                               "destinationPorts: {from: 80}}"))
        assert box.curl() == "lb-itself"
        assert (box.curl() or "") == "lb-itself"
    finally:
        srv.kill()
        srv.wait()


def test_mark_is_visible_to_nftables_on_the_lb(tc_box: Box) -> None:
    """At tc the mark is skb->mark; XDP hands it over as metadata (the packet tests cover that)."""
    box = tc_box
    nft = ("table inet lbfwtest {\n chain pre {\n  type filter hook prerouting priority 0;\n"
           "  meta mark 0x2a counter\n }\n}\n")
    subprocess.run(["ip", "netns", "exec", box.tb.lb, "nft", "-f", "-"], input=nft, text=True, check=True)
    box.rules(rule("tag", 10, "mark", "{protocol: UDP, destinationPorts: {from: 9}}", "  mark: 42\n"))
    udp_to_lb(box.tb, CLIENT4, 3)
    out = subprocess.run(["ip", "netns", "exec", box.tb.lb, "nft", "-j", "list", "table", "inet", "lbfwtest"],
                         check=True, capture_output=True, text=True).stdout
    counters = [e["rule"]["expr"][-1]["counter"]["packets"]
                for e in json.loads(out)["nftables"] if "rule" in e]
    assert counters == [3]


def test_a_service_requiring_a_mark_serves_only_marked_clients(tc_box: Box) -> None:
    box = tc_box
    vip = "10.250.0.2"
    (box.conf / "20-marked.yaml").write_text(SERVICES.replace("name: web", "name: marked").replace(
        VIP4, vip).replace("endpoints:", "firewallMark: 7\n  endpoints:"))
    box.rules(rule("mark-one", 10, "mark", f"{{source: {CLIENT4}/32}}", "  mark: 7\n"))
    assert (box.curl(CLIENT4, vip) or "").startswith("backend")
    assert box.curl(CLIENT4B, vip) is None  # not marked: the VIP is the box's own, nothing listens
    assert (box.curl(CLIENT4B) or "").startswith("backend")  # the unmarked service serves everyone
