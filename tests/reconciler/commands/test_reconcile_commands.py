"""The reconcile commands end to end through ``lbctl`` with in-memory drivers."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import cli, render
from reconciler.commands import apply as apply_cmd
from reconciler.drivers import registry
from reconciler.lock import StateLock
from tests.reconciler.fakes import FakeDriver, fake_bgp, fake_drivers, fake_specs

Cap = pytest.CaptureFixture[str]

WEB = """\
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  vip: 198.51.100.10
  ports: [{port: 80, protocol: TCP, targetPort: 8080}]
  endpoints: [{address: 10.0.1.10}, {address: 10.0.1.11}]
"""
API = """\
apiVersion: lbctl.dev/v1alpha1
kind: Pool
metadata: {name: edge}
spec: {addresses: [203.0.113.0/30]}
---
apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  pool: edge
  ports: [{port: 443}]
  endpoints: [{address: 10.0.2.10}]
"""
DP = """\
apiVersion: lbctl.dev/v1alpha1
kind: Datapath
metadata: {name: box}
spec: {interfaces: [eth0]}
"""


@pytest.fixture()
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    drivers = list(fake_drivers())
    monkeypatch.setattr(registry, "SPECS", fake_specs(drivers))
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.yaml").write_text(WEB)
    (conf / "api.yaml").write_text(API)
    (conf / "dp.yaml").write_text(DP)
    state, pins = tmp_path / "state", tmp_path / "pins"
    common = ["--state-dir", str(state), "--pin-root", str(pins)]
    return {"drivers": drivers, "conf": conf, "state": state, "pins": pins, "common": common}


def lbctl(box: dict[str, Any], *argv: str) -> int:
    return cli.main([*argv, *box["common"]])


def writes(box: dict[str, Any]) -> int:
    return sum(d.writes for d in box["drivers"])


def test_plan_apply_noop(box: dict[str, Any], capsys: Cap) -> None:
    conf = str(box["conf"])
    assert lbctl(box, "plan", conf, "--detailed-exitcode") == 2
    out = capsys.readouterr().out
    assert "+ service \"tcp/198.51.100.10:80\"" in out
    assert "Plan: 10 to add, 0 to change, 0 to destroy." in out  # 3 of them kernel settings
    assert writes(box) == 0
    assert lbctl(box, "apply", conf) == 0
    out = capsys.readouterr().out
    assert "Apply complete! Resources: 10 added, 0 changed, 0 destroyed." in out
    assert "kernel programming" in out
    assert writes(box) == 10
    assert lbctl(box, "plan", conf, "--detailed-exitcode") == 0
    assert "No changes. The datapath matches the configuration." in capsys.readouterr().out
    assert lbctl(box, "apply", conf) == 0 and writes(box) == 10
    assert json.loads((box["state"] / "allocations.json").read_text())["allocations"] == {
        "api": {"pool": "edge", "vip": "203.0.113.0"}}


def test_plan_json(box: dict[str, Any], capsys: Cap) -> None:
    assert lbctl(box, "plan", str(box["conf"]), "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["format_version"] == 1 and data["summary"]["add"] == 10


def test_apply_json_summary(box: dict[str, Any], capsys: Cap) -> None:
    assert lbctl(box, "apply", str(box["conf"]), "-o", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["verified"] and data["writes"] == 10
    assert set(data["timings"]) >= {"parse", "plan", "program", "verify"}


def test_invalid_config_exit_1(box: dict[str, Any], capsys: Cap) -> None:
    (box["conf"] / "web.yaml").write_text(WEB.replace("198.51.100.10", "not-an-ip"))
    assert lbctl(box, "apply", str(box["conf"])) == 1
    err = capsys.readouterr().err
    assert "web.yaml:5:" in err and "nothing was changed" in err
    assert writes(box) == 0


def test_exhausted_pool_exit_1(box: dict[str, Any], capsys: Cap) -> None:
    more = API.replace("[203.0.113.0/30]", "[203.0.113.0/32]") + "---\n" + API.split("---\n")[1].replace(
        "name: api", "name: api2")
    (box["conf"] / "api.yaml").write_text(more)
    assert lbctl(box, "plan", str(box["conf"])) == 1
    err = capsys.readouterr().err
    assert "Pool/edge: spec.addresses: pool exhausted (1 address): 1 service does not fit: api2" in err


def test_lock_held_fails_with_holder(box: dict[str, Any], capsys: Cap,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBCTL_LOCK_TIMEOUT", "0.2")
    with StateLock(box["state"], purpose="lbctl watch"):
        assert lbctl(box, "apply", str(box["conf"])) == 1
    err = capsys.readouterr().err
    assert f"pid {os.getpid()} (lbctl watch)" in err


def test_failed_apply_reports_and_rerun_converges(box: dict[str, Any], capsys: Cap) -> None:
    bpf: FakeDriver = box["drivers"][0]
    bpf.fail_at = 2
    assert lbctl(box, "apply", str(box["conf"])) == 1
    out, err = capsys.readouterr()
    assert "injected failure" in err and "Fix the cause" in err
    # a summary of what happened instead of the plan again
    assert "of 10 change(s) took effect (" in err and "did not (" in err
    assert "Plan:" not in out and "will be created" not in out
    bpf.fail_at = None
    assert lbctl(box, "apply", str(box["conf"])) == 0
    assert lbctl(box, "plan", str(box["conf"]), "--detailed-exitcode") == 0


def test_delete_file_removes_exactly_its_objects(box: dict[str, Any], capsys: Cap) -> None:
    assert lbctl(box, "apply", str(box["conf"])) == 0
    (box["conf"] / "api.yaml").unlink()
    capsys.readouterr()
    assert lbctl(box, "apply", str(box["conf"])) == 0
    out = capsys.readouterr().out
    assert "Plan: 0 to add, 0 to change, 3 to destroy." in out
    assert "203.0.113.0" in out and "198.51.100.10" not in out.split("Plan:")[0].split("will perform")[1]
    assert json.loads((box["state"] / "allocations.json").read_text())["allocations"] == {}


def test_get_tables(box: dict[str, Any], capsys: Cap) -> None:
    assert lbctl(box, "apply", str(box["conf"])) == 0
    capsys.readouterr()
    assert lbctl(box, "get", "services") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split("|")[1].strip() == "EXT IP"
    assert "| 198.51.100.10 | 80   | tcp   | web  | rr  | default | 2" in out
    assert lbctl(box, "get", "endpoints", "-o", "json", "--listen", "127.0.0.1:1") == 0  # no daemon there
    rows = json.loads(capsys.readouterr().out)
    assert {"ext_ip": "198.51.100.10", "port": "80", "proto": "tcp", "name": "web", "endpoint": "10.0.1.10",
            "target_port": 8080, "weight": 1, "health": "unknown", "last_result": "-", "last_failure": "-",
            "latency_ms": "-"} in rows
    assert lbctl(box, "get", "services", "-o", "wide") == 0
    assert "TIMEOUT" in capsys.readouterr().out
    assert lbctl(box, "get", "pools", "-o", "yaml") == 0
    assert yaml.safe_load(capsys.readouterr().out) == [
        {"pool": "edge", "vip": "203.0.113.0", "services": "api"}]
    assert lbctl(box, "get", "bgp") == 0
    assert "not available" in capsys.readouterr().err
    assert lbctl(box, "get", "conntrack") == 0
    assert "not available" in capsys.readouterr().err


def test_export_roundtrip(box: dict[str, Any], tmp_path: Path, capsys: Cap) -> None:
    assert lbctl(box, "apply", str(box["conf"])) == 0
    capsys.readouterr()
    assert lbctl(box, "export") == 0
    text = capsys.readouterr().out
    assert text.startswith("# Exported by 'lbctl export'")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "all.yaml").write_text(text)
    assert lbctl(box, "validate", str(out)) == 0
    assert lbctl(box, "plan", str(out), "--detailed-exitcode") == 0
    assert lbctl(box, "export", "--dir", str(tmp_path / "perfile")) == 0
    assert len(list((tmp_path / "perfile").glob("*.yaml"))) == 4  # Datapath, Pool, 2 Services
    assert lbctl(box, "plan", str(tmp_path / "perfile"), "--detailed-exitcode") == 0


def test_down_removes_everything(box: dict[str, Any], capsys: Cap) -> None:
    assert lbctl(box, "apply", str(box["conf"])) == 0
    assert lbctl(box, "down") == 0
    assert all(d.downed for d in box["drivers"])
    assert all(not recs for d in box["drivers"] for recs in d.state.values())
    assert not box["state"].exists()
    out = capsys.readouterr().out
    assert "lbctl is down: removed 1 attach, 2 endpoints, 2 service, 2 vip; pins under" in out
    assert lbctl(box, "down") == 0  # idempotent
    assert capsys.readouterr().out == "lbctl is down: nothing was installed, so nothing was removed.\n"


def test_down_removes_what_it_cannot_read(box: dict[str, Any], capsys: Cap,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Pins of an lbctl with another map layout cannot be read; down must remove them all the same."""
    from reconciler.errors import LbctlError

    assert lbctl(box, "apply", str(box["conf"])) == 0
    capsys.readouterr()
    bpf = box["drivers"][0]

    def unreadable() -> None:
        raise LbctlError("pinned map /pins/lb_be_stats does not fit this lbctl's lb_be_stats",
                         hint="run lbctl down")
    monkeypatch.setattr(bpf, "read", unreadable)
    assert lbctl(box, "down") == 0
    assert bpf.downed and all(not recs for d in box["drivers"] for recs in d.state.values())
    assert capsys.readouterr().out.startswith(
        "lbctl is down: removed 2 vip and a datapath this lbctl cannot read (pinned map /pins/lb_be_stats "
        "does not fit this lbctl's lb_be_stats); pins under ")


BGP = """\
apiVersion: lbctl.dev/v1alpha1
kind: BGPConfig
metadata: {name: bgp}
spec: {localAS: 65001, routerID: 192.0.2.1}
---
apiVersion: lbctl.dev/v1alpha1
kind: BGPPeer
metadata: {name: upstream}
spec: {address: 192.0.2.254, remoteAS: 65000, password: s3cret-pw}
"""


def test_a_bgpconfig_brings_a_bgp_driver_up_and_removing_it_takes_it_down(
        box: dict[str, Any], capsys: Cap, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each CLI run builds its drivers from the registry for the configuration it applies."""
    bgp = fake_bgp()
    monkeypatch.setattr(registry, "SPECS", fake_specs([*box["drivers"], bgp]))
    assert lbctl(box, "apply", str(box["conf"])) == 0
    assert not bgp.calls  # not needed and nothing of it live: left alone
    (box["conf"] / "bgp.yaml").write_text(BGP)
    assert lbctl(box, "apply", str(box["conf"])) == 0
    assert set(bgp.state["bgp-peer"]) == {"192.0.2.254"}
    capsys.readouterr()
    assert lbctl(box, "get", "bgp") == 0
    out = capsys.readouterr().out
    assert "| peer | 192.0.2.254 | 65000 | established |" in out
    assert lbctl(box, "get", "bgp", "-o", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["type"] == "peer" and rows[0]["as"] == 65000 and rows[0]["uptime"] > 0
    assert "s3cret-pw" not in json.dumps(rows)
    (box["conf"] / "bgp.yaml").unlink()
    capsys.readouterr()
    assert lbctl(box, "plan", str(box["conf"]), "--detailed-exitcode") == 2
    out = capsys.readouterr().out
    assert '- bgp-peer "192.0.2.254"' in out and not bgp.downed
    assert "s3cret-pw" not in out and '"(sensitive)"' in out  # the plan never prints a password
    assert lbctl(box, "apply", str(box["conf"])) == 0
    assert bgp.downed and bgp.read() == {"bgp-global": {}, "bgp-peer": {}, "announce": {}}
    assert lbctl(box, "plan", str(box["conf"]), "--detailed-exitcode") == 0


def test_netns_gives_own_state_dir(box: dict[str, Any], tmp_path: Path) -> None:
    assert lbctl(box, "apply", str(box["conf"]), "--netns", "lb1") == 0
    assert (box["state"] / "lb1" / "allocations.json").exists()


def test_options_after_arguments_and_help() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["plan", "/x", "--detailed-exitcode", "--netns", "a", "-o", "json"])
    assert (args.dir, args.detailed_exitcode, args.netns, args.output) == ("/x", True, "a", "json")


def test_a_missing_netns_is_a_clear_error_not_an_internal_one(tmp_path: Path, capsys: Cap) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.yaml").write_text(WEB)
    code = cli.main(["plan", str(conf), "--netns", "lbctl-test-no-such-ns",
                     "--state-dir", str(tmp_path / "s"), "--pin-root", str(tmp_path / "pins")])
    err = capsys.readouterr().err
    assert code == 1
    assert "network namespace 'lbctl-test-no-such-ns' does not exist" in err and "ip netns add" in err
    assert "internal error" not in err and "Traceback" not in err


def test_only_apply_builds_drivers_that_may_migrate_the_datapath(box: dict[str, Any],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """plan, get, export and down see the box through read-only drivers (no layout migration)."""
    seen: dict[str, list[bool]] = {}
    command = [""]
    specs = []
    for spec in registry.SPECS:
        def build(ctx: Any, settings: Any, inner: Any = spec.build) -> Any:
            seen.setdefault(command[0], []).append(ctx.read_only)
            return inner(ctx, settings)
        specs.append(dataclasses.replace(spec, build=build))
    monkeypatch.setattr(registry, "SPECS", tuple(specs))
    for argv in (["plan", str(box["conf"])], ["apply", str(box["conf"])], ["get", "services"],
                 ["export"], ["down"]):
        command[0] = argv[0]
        assert lbctl(box, *argv) == 0
    assert seen == {"plan": [True] * 3, "apply": [False] * 3, "get": [True] * 3, "export": [True] * 3,
                    "down": [True] * 3}


def test_failed_apply_of_a_big_plan_prints_a_bounded_summary(box: dict[str, Any], capsys: Cap) -> None:
    conf: Path = box["conf"]
    (conf / "many.yaml").write_text("---\n".join(
        WEB.replace("name: web", f"name: s{i}").replace("198.51.100.10", f"198.18.0.{i + 1}")
        for i in range(40)))
    bpf: FakeDriver = box["drivers"][0]
    bpf.fail_at = 3
    assert lbctl(box, "apply", str(conf)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    head = next(line for line in lines if "took effect" in line)
    n_applied = int(head.split(" of ")[0])
    n_total = int(head.split(" of ")[1].split()[0])
    n_missed = int(head.split("; ")[1].split()[0])
    assert n_applied + n_missed == n_total and n_missed > apply_cmd.FAILED_LISTED
    assert "endpoints " in head.split("did not")[1] and "service " in head.split("did not")[1]
    listed = [line for line in lines if line.startswith("    + ")]
    assert len(listed) == apply_cmd.FAILED_LISTED
    assert f"... and {n_missed - apply_cmd.FAILED_LISTED} more ('lbctl plan' lists them)" in err


def test_a_huge_plan_is_printed_one_line_per_change_unless_full(box: dict[str, Any], capsys: Cap,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render, "COMPACT_OVER", 5)
    conf = str(box["conf"])
    assert lbctl(box, "plan", conf) == 0
    out = capsys.readouterr().out
    assert "10 changes, one line each" in out
    assert '    + service "tcp/198.51.100.10:80"\n' in out and "vip_interface" not in out
    assert "Plan: 10 to add, 0 to change, 0 to destroy." in out
    assert lbctl(box, "plan", conf, "--full-plan") == 0
    out = capsys.readouterr().out
    assert "one line each" not in out and "will be created" in out
    assert lbctl(box, "apply", conf) == 0
    out = capsys.readouterr().out
    assert "one line each" in out and "Apply complete!" in out and "render " in out
    # an update shows which fields change
    (box["conf"] / "web.yaml").write_text(WEB.replace("{address: 10.0.1.11}", "{address: 10.0.1.12}"))
    monkeypatch.setattr(render, "COMPACT_OVER", 0)
    assert lbctl(box, "plan", conf) == 0
    assert '    ~ endpoints "tcp/198.51.100.10:80" (backends)' in capsys.readouterr().out


def test_a_command_imports_only_its_own_module() -> None:
    import subprocess
    import sys

    code = ("import sys; from reconciler import cli; "
            "p = cli.build_parser(cli._command_of(['plan', 'x', '-v'])); "
            "print(sorted(m for m in sys.modules if m.startswith('reconciler.commands.')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[3]).stdout
    assert "reconciler.commands.plan" in out and "reconciler.commands.watch" not in out
    assert "reconciler.commands.get" not in out and "reconciler.commands.top" not in out
    assert cli._command_of(["--version"]) is None and cli._command_of(["nosuch"]) is None
