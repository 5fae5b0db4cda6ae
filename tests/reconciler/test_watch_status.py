"""The daemon's status endpoint, metrics text, logs and ``lbctl status``, on an ephemeral loopback port."""

from __future__ import annotations

import io
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from reconciler.cli import main
from reconciler.errors import LbctlError
from reconciler.logs import EventLog, format_event
from reconciler.records import ServiceKey
from reconciler.status import Address, parse_listen
from reconciler.telemetry import DatapathSnapshot, EndpointStats, ServiceStats, Traffic
from reconciler.watch import Daemon, Delivery, Options
from tests.other_user import spawn_as_nobody
from tests.reconciler.watch_fakes import ScriptedEngine


@dataclass(frozen=True)
class FakeDatapath:
    snapshot: DatapathSnapshot

    def datapath_snapshot(self) -> DatapathSnapshot:
        return self.snapshot


@pytest.fixture
def running() -> Iterator[tuple[Daemon, ScriptedEngine, str]]:
    engine = ScriptedEngine()
    engine.telemetry = [FakeDatapath(DatapathSnapshot(services=(ServiceStats(
        ServiceKey("10.0.0.1", "tcp", 80, 80), "web", Traffic(packets=10, bytes=1500, new_flows=2),
        (EndpointStats("10.1.0.1:8080", Traffic(packets=10, bytes=1500, new_flows=2)),)),)))]
    daemon = Daemon(Options(directory="/cfg", listen=Address("127.0.0.1", 0)), engine,
                    EventLog("kv", io.StringIO()))
    daemon.start_services()
    assert daemon.server is not None
    try:
        yield daemon, engine, daemon.server.address.url
    finally:
        daemon.shutdown()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_server_binds_loopback_only_by_default() -> None:
    assert parse_listen("127.0.0.1:11111") == Address("127.0.0.1", 11111)
    assert parse_listen("[::1]:8080") == Address("::1", 8080)
    for bad in ("localhost:1", "1.2.3.4", "127.0.0.1:99999", ":80"):
        with pytest.raises(LbctlError):
            parse_listen(bad)


def test_probes_before_and_after_the_first_reconcile(running: tuple[Daemon, ScriptedEngine, str]) -> None:
    daemon, _, url = running
    assert get(url + "/healthz")[0] == 200
    code, _, body = get(url + "/readyz")
    assert code == 503 and "not ready" in body
    daemon.cycle("startup")
    assert get(url + "/readyz")[0] == 200
    assert get(url + "/nope")[0] == 404


def test_status_document(running: tuple[Daemon, ScriptedEngine, str]) -> None:
    daemon, engine, url = running
    daemon.cycle("startup")
    engine.current = Delivery(digest="bad", errors=("a.yaml:3:5: Service/web: spec.ports[0].port: 70000 is "
                                                    "greater than the maximum of 65535 (use 1-65535)",))
    daemon.cycle("delivery")
    code, ctype, body = get(url + "/status")
    assert code == 200 and ctype == "application/json"
    doc = json.loads(body)
    assert doc["ready"] is True and doc["config_valid"] is False
    assert doc["revision"] == {"type": "digest", "value": "d1"}
    assert doc["last_error"]["errors"][0].startswith("a.yaml:3:5: Service/web: spec.ports[0].port")
    assert doc["last_reconcile"]["result"] == "ok"
    assert doc["counts"]["resources"] == 1 and doc["drift_repairs"] == 0
    assert doc["options"]["listen"] is None or isinstance(doc["options"]["listen"], str)


def test_metrics_text(running: tuple[Daemon, ScriptedEngine, str]) -> None:
    daemon, engine, url = running
    daemon.cycle("startup")
    engine.current = Delivery(digest="d2", resources=1)
    daemon.cycle("delivery")
    code, ctype, text = get(url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
    lines = text.splitlines()
    assert "# TYPE lbctl_reconcile_duration_seconds histogram" in lines
    assert any(line.startswith('lbctl_reconcile_duration_seconds_count{type="full"} 1') for line in lines)
    assert any(line.startswith('lbctl_reconcile_duration_seconds_count{type="incremental"} 1')
               for line in lines)
    assert any(line.startswith('lbctl_reconcile_duration_seconds_bucket{le="+Inf",type="full"} 1')
               for line in lines)
    assert 'lbctl_reconcile_total{result="ok"} 2.0' in lines
    assert "lbctl_config_valid 1.0" in lines
    assert "# TYPE lbctl_drift_repairs_total counter" in lines
    web = 'service="web",vip="10.0.0.1",port="80",protocol="tcp"'
    assert f"lbctl_service_packets_total{{{web}}} 10" in lines
    assert f"lbctl_service_bytes_total{{{web}}} 1500" in lines
    assert f"lbctl_service_new_flows_total{{{web}}} 2" in lines
    assert f'lbctl_endpoint_packets_total{{{web},endpoint="10.1.0.1:8080"}} 10' in lines
    assert 'loxilb_service_requests_total{service="web"} 2' in lines
    # every sample line is "name{labels} number"
    for line in lines:
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value.replace("+Inf", "inf"))


def test_lbctl_status_prints_a_table_and_json(running: tuple[Daemon, ScriptedEngine, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    daemon, engine, _ = running
    engine.warnings = ("5 firewall record(s) not applied",)
    daemon.cycle("startup")
    assert daemon.server is not None
    listen = str(daemon.server.address)
    assert main(["status", "--listen", listen]) == 0
    out = capsys.readouterr().out
    assert "ready" in out and "d1 (digest)" in out and "drift repairs" in out
    assert "not carried out" in out and "5 firewall record(s) not applied" in out
    assert main(["status", "--listen", listen, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["revision"]["value"] == "d1"


def test_lbctl_status_when_no_daemon_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["status", "--listen", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert "no lbctl watch daemon answers on 127.0.0.1:" in err and "lbctl watch DIR" in err


def test_second_daemon_on_the_same_port_fails_clearly(running: tuple[Daemon, ScriptedEngine, str]) -> None:
    daemon, _, _ = running
    assert daemon.server is not None
    other = Daemon(Options(directory="/cfg", listen=daemon.server.address), ScriptedEngine(),
                   EventLog("kv", io.StringIO()))
    with pytest.raises(LbctlError) as info:
        other.start_services()
    message = str(info.value)
    assert f"cannot listen on {daemon.server.address} for the status endpoint: another process holds it " \
           f"(pid {os.getpid()} (" in message, message
    assert "--listen HOST:PORT" in message


@pytest.mark.root
def test_a_status_port_taken_by_another_user_names_the_holder() -> None:
    child = spawn_as_nobody(
        "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n"
        "print(s.getsockname()[1], flush=True)\ntime.sleep(60)\n")
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        daemon = Daemon(Options(directory="/cfg", listen=Address("127.0.0.1", port)), ScriptedEngine(),
                        EventLog("kv", io.StringIO()))
        with pytest.raises(LbctlError) as info:
            daemon.start_services()
    finally:
        child.kill()
        child.wait()
    message = str(info.value)
    assert f"cannot listen on 127.0.0.1:{port} for the status endpoint: another process holds it " \
           f"(pid {child.pid} (" in message, message
    assert "user nobody (uid 65534))" in message
    assert "another address with --listen HOST:PORT (--listen none disables the endpoint)" in message


def test_proc_net_addresses_decode_in_host_order() -> None:
    import sys

    from reconciler.status import _proc_addr

    if sys.byteorder == "little":
        assert _proc_addr("0100007F:2B67") == ("127.0.0.1", 11111)
        assert _proc_addr("00000000000000000000000001000000:0050") == ("::1", 80)
    assert _proc_addr("00000000:0000") == ("0.0.0.0", 0)


# --- logs and metrics text ---

def test_kv_log_lines_quote_what_needs_quoting() -> None:
    line = format_event("kv", 0.0, "error", "config-error",
                        {"error": 'a.yaml:1:2: bad "x"\nnext', "n": 3, "ok": True, "none": None})
    assert line == ('ts=1970-01-01T00:00:00.000Z level=error event=config-error '
                    'error="a.yaml:1:2: bad \\"x\\"\\nnext" n=3 ok=true none=""')


def test_json_log_lines_are_one_object_each() -> None:
    out = io.StringIO()
    log = EventLog("json", out)
    log.info("applied", create=1, timings="plan=1.0ms")
    log.error("config-invalid", errors=2)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["event"] for d in docs] == ["applied", "config-invalid"]
    assert docs[0]["create"] == 1 and docs[1]["level"] == "error"
    with pytest.raises(ValueError):
        EventLog("xml")  # type: ignore[arg-type]


def test_listening_off_loopback_warns_about_tls_and_auth() -> None:
    log = io.StringIO()
    daemon = Daemon(Options(directory="/cfg", listen=Address("0.0.0.0", 0)), ScriptedEngine(),
                    EventLog("kv", log))
    daemon.start_services()
    try:
        assert "listening-off-loopback" in log.getvalue() and "reverse proxy" in log.getvalue()
    finally:
        daemon.shutdown()
