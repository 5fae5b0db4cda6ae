"""``/metrics`` of a real ``lbctl watch`` with UDP traffic through two VIPs, and a real Prometheus.

One box for the module (client, LB, two UDP echo backends from ``tests.testbed``),
two Services on two VIPs, applied by the daemon.  The test sends datagrams (each
answered by the backend that got it, which names itself) and checks that every
service's and every endpoint's counters moved by exactly what it sent; that the
catalogue (docs/metrics.md) and the scrape list the same families; that every
dashboard query reads families of the scrape; and that a real Prometheus (Debian's
``prometheus``, started here in a temporary directory on a free loopback port and
stopped by its PID) scraping the daemon returns at least one series for every
dashboard expression while traffic flows.  The box also has a firewall (an allow rule
the traffic hits, a rate limit), UDP health probes (on one of the two Services, and on a
third whose only endpoint never answers, so it goes down) and a BGP peer that never
answers, so the firewall's, the probes' and BGP's families have series too.
Marked ``root``.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler import cli
from reconciler.drivers.netns import in_netns
from tests.reconciler.metrics_catalogue import (
    PENDING,
    dashboard_exprs,
    doc_names,
    expr_metrics,
    promql,
    scrape_names,
)
from tests.reconciler.test_watch_root import HEADER, Box, free_port
from tests.testbed import UDP_PORT, VIP4, Testbed

pytestmark = pytest.mark.root

VIP_B = "10.250.0.2"
VIP_DOWN, DEAD = "10.250.0.3", "10.201.0.99"
PORT = 53
SERVICES = {"alpha": VIP4, "beta": VIP_B}
Values = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _service(name: str, vip: str, endpoints: list[str], probe: bool = False) -> str:
    eps = ", ".join(f"{{address: {e}}}" for e in endpoints)
    probed = ("  probe: {type: udp, request: ping, response: backend, interval: 2, timeout: 1, retries: 3}\n"
              if probe else "")
    return (f"{HEADER}kind: Service\nmetadata: {{name: {name}}}\nspec:\n  vip: {vip}\n"
            f"  ports: [{{port: {PORT}, protocol: UDP, targetPort: {UDP_PORT}}}]\n  selection: rr\n"
            f"  endpoints: [{eps}]\n{probed}")


# The sources besides the datapath: a firewall the traffic passes through, a BGP peer (on the
# client's address, where nothing speaks BGP: the session stays down, its series exist).
EXTRAS = f"""{HEADER}kind: FirewallRule
metadata: {{name: clients-udp}}
spec: {{priority: 10, match: {{source: 10.200.0.0/24, protocol: UDP}}, action: allow}}
---
{HEADER}kind: FirewallRule
metadata: {{name: police-icmp}}
spec:
  priority: 20
  match: {{protocol: ICMP}}
  action: rateLimit
  rateLimit: {{packetsPerSecond: 10, burst: 5}}
---
{HEADER}kind: BGPConfig
metadata: {{name: bgp}}
spec: {{localAS: 65001, routerID: 10.200.0.1}}
---
{HEADER}kind: BGPPeer
metadata: {{name: upstream}}
spec: {{address: 10.200.0.2, remoteAS: 65000}}
"""


@dataclass
class Obs:
    tb: Testbed
    box: Box

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.box.port}/metrics"

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=30) as r:
            return str(r.read().decode())

    def scrape(self) -> Values:
        out: Values = {}
        for fam in text_string_to_metric_families(self.text()):
            for s in fam.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def endpoint(self, backend_name: str) -> str:
        i = int(backend_name.removeprefix("backend"))
        return f"{self.tb.backend4(i)}:{UDP_PORT}"

    def send(self, vip: str, flows: int, per_flow: int) -> dict[str, int]:
        """``flows`` UDP flows of ``per_flow`` datagrams each; datagrams per answering backend."""
        got: dict[str, int] = {}
        with in_netns(self.tb.client):
            for _ in range(flows):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(5)
                    s.connect((vip, PORT))
                    for n in range(per_flow):
                        s.send(f"ping {n}".encode())
                        name = s.recv(256).split(b" ", 1)[0].decode()
                        got[name] = got.get(name, 0) + 1
        return got


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Obs]:
    tmp = tmp_path_factory.mktemp("metrics")
    with Testbed(n_backends=2) as tb:
        box = Box(tb.lb, tmp / "state", Path("/sys/fs/bpf") / f"lbctl-test-{tb.prefix}", tmp)
        try:
            conf = tmp / "conf.d"
            conf.mkdir()
            ifaces = ", ".join(tb.lb_interfaces)
            (conf / "00-datapath.yaml").write_text(
                f"{HEADER}kind: Datapath\nmetadata: {{name: box}}\nspec: {{interfaces: [{ifaces}]}}\n")
            backends = [tb.backend4(i) for i in range(tb.n_backends)]
            for name, vip in SERVICES.items():
                (conf / f"{name}.yaml").write_text(_service(name, vip, backends, probe=name == "alpha"))
            (conf / "90-extras.yaml").write_text(EXTRAS)
            # A probed Service no traffic goes to, with an endpoint nobody answers for: it goes down.
            (conf / "gamma.yaml").write_text(_service("gamma", VIP_DOWN, [DEAD], probe=True))
            box.start(conf, "--resync", "1h")
            box.wait_ready()
            yield Obs(tb, box)
        finally:
            if box.proc is not None and box.proc.poll() is None:
                box.stop()
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(["down", *box.common])
            shutil.rmtree(box.pin_root, ignore_errors=True)


def _labels(name: str) -> dict[str, str]:
    return {"service": name, "vip": SERVICES[name], "port": str(PORT), "protocol": "udp"}


def test_counters_move_by_exactly_the_packets_sent(obs: Obs) -> None:
    before = obs.scrape()
    sent = {"alpha": obs.send(VIP4, flows=4, per_flow=3), "beta": obs.send(VIP_B, flows=2, per_flow=5)}
    after = obs.scrape()

    def delta(sample: str, labels: dict[str, str]) -> float:
        key = (sample, frozenset(labels.items()))
        assert key in after, (sample, labels)
        return after[key] - before.get(key, 0.0)

    assert set(sent["alpha"]) == {"backend0", "backend1"}, sent  # rr spread the four flows
    for name, by_backend in sent.items():
        total = sum(by_backend.values())
        svc = _labels(name)
        assert delta("lbctl_service_packets_total", svc) == total
        assert delta("lbctl_service_reply_packets_total", svc) == total
        assert delta("lbctl_service_new_flows_total", svc) == {"alpha": 4, "beta": 2}[name]
        assert after[("lbctl_service_active_flows", frozenset(svc.items()))] >= {"alpha": 4, "beta": 2}[name]
        for backend in ("backend0", "backend1"):
            ep = {**svc, "endpoint": obs.endpoint(backend)}
            assert delta("lbctl_endpoint_packets_total", ep) == by_backend.get(backend, 0), (name, backend)
        assert delta("loxilb_service_traffic_packets_total", {"service": name}) == 2 * total
    assert delta("loxilb_processed_packets_total", {}) == 2 * sum(sum(b.values()) for b in sent.values())
    assert after[("lbctl_conntrack_entries", frozenset({"protocol": "udp", "state": "active"}.items()))] >= 6


def test_the_catalogue_and_a_real_scrape_list_the_same_families(obs: Obs) -> None:
    names = scrape_names(obs.text())
    documented = doc_names()
    assert documented - names == set(), "in docs/metrics.md, not in the scrape"
    assert names - documented == set(), "in the scrape, not in docs/metrics.md"


def test_every_dashboard_query_reads_families_of_a_real_scrape(obs: Obs) -> None:
    names = scrape_names(obs.text())
    for expr in dashboard_exprs():
        assert expr_metrics(expr) <= names, (expr, expr_metrics(expr) - names)


def _query(base: str, expr: str) -> list[object]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", (expr, doc)
    result: list[object] = doc["data"]["result"]
    return result


def _ready(base: str) -> bool:
    try:
        return bool(_query(base, 'count_over_time(up{job="lbctl"}[1m]) >= 4'))
    except OSError:
        return False


def test_prometheus_evaluates_every_dashboard_query_while_traffic_flows(obs: Obs, tmp_path: Path) -> None:
    prom = shutil.which("prometheus")
    assert prom, "Debian's prometheus package is missing (make setup installs APT_PACKAGES)"
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: lbctl\n    static_configs: [{{targets: ['127.0.0.1:{obs.box.port}']}}]\n")
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            for vip in SERVICES.values():
                obs.send(vip, flows=1, per_flow=2)
            stop.wait(0.1)

    sender = threading.Thread(target=traffic, daemon=True)
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([prom, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        sender.start()
        deadline = time.monotonic() + 60  # only keeps a broken Prometheus from hanging the suite
        while not _ready(base):
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-3000:]
            time.sleep(0.2)
        empty = []
        for expr in dashboard_exprs():
            if not _query(base, promql(expr)):
                empty.append(expr)
        # The firewall's, the probes' and BGP's families (PENDING) have series in a real scrape.
        sampled = {name for name, _ in obs.scrape()}
        missing = [m for m in PENDING if not any(n == m or n.startswith(m + "_") for n in sampled)]
        assert missing == [], "families without series"
        assert empty == [], "dashboard expressions without series"
    finally:
        stop.set()
        sender.join(10)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_get_conntrack_shows_the_flows_of_one_service(obs: Obs, capsys: pytest.CaptureFixture[str]) -> None:
    sent = obs.send(VIP_B, flows=2, per_flow=1)
    capsys.readouterr()
    assert cli.main(["get", "conntrack", "--service", "beta", "-o", "json", *obs.box.common]) == 0
    flows = json.loads(capsys.readouterr().out)
    assert len(flows) >= 2 and {f["service"] for f in flows} == {"beta"}
    assert {f["vip"] for f in flows} == {f"{VIP_B}:{PORT}"} and {f["proto"] for f in flows} == {"udp"}
    assert {f["endpoint"] for f in flows} >= {obs.endpoint(b) for b in sent}
    assert all(f["state"] == "active" and f["age_s"] >= f["idle_s"] >= 0 for f in flows)
    assert cli.main(["get", "conntrack", "-o", "wide", *obs.box.common]) == 0
    table = capsys.readouterr().out
    assert "SERVICE KEY" in table and f"udp/{VIP4}:{PORT}" in table and f"udp/{VIP_B}:{PORT}" in table
    assert cli.main(["get", "endpoints", "--service", "beta", "-o", "json", *obs.box.common]) == 0
    eps = json.loads(capsys.readouterr().out)
    assert {e["name"] for e in eps} == {"beta"} and sum(e["packets"] for e in eps) > 0


def test_top_reads_the_maps_itself(obs: Obs, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")  # rich's width when stdout is no terminal
    capsys.readouterr()
    assert cli.main(["top", "--iterations", "2", "--interval", "0.05", *obs.box.common]) == 0
    out = capsys.readouterr().out
    assert "lbctl top" in out and f"udp/{VIP4}:{PORT}" in out and f"udp/{VIP_B}:{PORT}" in out
    assert "2 (not probed)" in out
