"""``lbctl export`` end to end through the CLI with in-memory drivers: export -> validate -> empty plan.

Round trip, defined: an export is written to a directory; ``validate`` accepts
it except for the password placeholder of a BGP peer with a password (export
never writes secrets, and ``validate`` rejects the placeholder so it cannot be
applied by mistake); once the operator puts the password in (``fill_secrets``),
``validate`` passes and ``plan --detailed-exitcode`` against the box exits 0.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.applied import RECORD_NAME, AppliedStore
from reconciler.commands.export import MARK
from reconciler.drivers import registry
from reconciler.model import SECRET_PLACEHOLDER
from reconciler.watch_engine import ReconcileEngine
from tests.reconciler.export_cases import EVERYTHING, PASSWORD, fill_secrets, write
from tests.reconciler.fakes import FakeDriver, fake_drivers, fake_specs

Cap = pytest.CaptureFixture[str]


class Box:
    def __init__(self, tmp: Path, netns: str | None) -> None:
        self.tmp, self.netns = tmp, netns
        self.drivers: tuple[FakeDriver, ...] = fake_drivers()
        self.common = ["--state-dir", str(tmp / "state"), "--pin-root", str(tmp / "pins")]
        if netns:
            self.common += ["--netns", netns]
        self.state = tmp / "state" / netns if netns else tmp / "state"

    def __call__(self, *argv: str) -> int:
        return cli.main([*argv, *self.common])


@pytest.fixture(params=[None, "ex_Lb.1", "Edge.Box_2"])
def box(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Box:
    b = Box(tmp_path, request.param)
    monkeypatch.setattr(registry, "SPECS", fake_specs(b.drivers))
    monkeypatch.setattr(socket, "gethostname", lambda: "Web01.Example.COM")
    return b


def round_trip(box: Box, directory: Path, capsys: Cap, *, secret: bool = True) -> None:
    """validate rejects only the placeholder; with the password filled in: valid, empty plan."""
    files = sorted(directory.glob("*.yaml"))
    if secret:
        assert box("validate", str(directory)) == 1
        said = "".join(capsys.readouterr())
        assert "spec.password: is the placeholder" in said and "1 error in" in said
        holder = next(f for f in files if SECRET_PLACEHOLDER in f.read_text())
        holder.write_text(fill_secrets(holder.read_text()))
    assert not any(SECRET_PLACEHOLDER in f.read_text() for f in files)
    assert box("validate", str(directory)) == 0, capsys.readouterr()
    assert box("plan", str(directory), "--detailed-exitcode") == 0, capsys.readouterr().out
    capsys.readouterr()


def test_everything_round_trips(box: Box, capsys: Cap) -> None:
    conf = write(box.tmp / "conf")
    assert box("apply", str(conf)) == 0
    capsys.readouterr()
    assert box("export") == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{MARK} from the configuration last applied to {box.netns or 'Web01.Example.COM'}")
    assert PASSWORD not in out and "BGPPeer/upstream-a: the password is not exported" in err
    assert "kind: Pool" in out and "pool: edge-v4" in out and "vipInterface: vips0" in out
    round_trip(box, write(box.tmp / "stdout", out), capsys)
    assert box("export", "--dir", str(box.tmp / "perfile")) == 0
    assert capsys.readouterr().err.endswith(f"exported 21 resources to {box.tmp / 'perfile'}/\n")
    round_trip(box, box.tmp / "perfile", capsys)
    assert box("export", "--file", str(box.tmp / "one" / "all.yaml")) == 0
    round_trip(box, box.tmp / "one", capsys)


def test_a_box_without_record_exports_valid_yaml_from_live(box: Box, capsys: Cap) -> None:
    conf = write(box.tmp / "conf")
    assert box("apply", str(conf)) == 0
    (box.state / RECORD_NAME).unlink()
    capsys.readouterr()
    assert box("export", "--vip-interface", "vips0") == 0
    out = capsys.readouterr().out
    assert f"from the live state of {box.netns or 'Web01.Example.COM'} alone" in out
    name = {None: "web01", "ex_Lb.1": "ex-lb-1", "Edge.Box_2": "edge-box-2"}[box.netns]
    assert f"kind: Datapath\nmetadata:\n  name: {name}\n" in out
    assert "port: 0" not in out and "web-tcp" not in out
    round_trip(box, write(box.tmp / "live", out), capsys, secret=False)
    assert box("export", "--live", "--vip-interface", "vips0") == 0  # the same, asked for
    assert capsys.readouterr().out == out


def test_a_corrupt_record_is_reported_and_live_state_exported(box: Box, capsys: Cap) -> None:
    assert box("apply", str(write(box.tmp / "conf"))) == 0
    path = box.state / RECORD_NAME
    path.write_text(path.read_text()[:-40])
    capsys.readouterr()
    assert box("export", "--vip-interface", "vips0") == 0
    out, err = capsys.readouterr()
    assert "Warning: the applied-configuration record cannot be used" in err
    round_trip(box, write(box.tmp / "live", out), capsys, secret=False)


def test_export_dir_on_an_empty_box_creates_it(box: Box, capsys: Cap) -> None:
    target = box.tmp / "new" / "dir"
    assert box("export", "--dir", str(target)) == 0
    assert target.is_dir() and list(target.iterdir()) == []
    assert capsys.readouterr().err == f"exported 0 resources to {target}/\n"


def test_export_dir_replaces_an_earlier_export_only(box: Box, capsys: Cap) -> None:
    target = box.tmp / "out"
    stale = write(target, f"{MARK} from somewhere.\nkind: Service\n", "099-old.yaml") / "099-old.yaml"
    mine = write(target, "# my own notes\n", "notes.yaml") / "notes.yaml"
    assert box("apply", str(write(box.tmp / "conf"))) == 0
    assert box("export", "--dir", str(target)) == 0
    assert "removed 1 file(s) an earlier export wrote there" in capsys.readouterr().err
    assert not stale.exists() and mine.exists()


def test_only_a_verified_apply_is_recorded(box: Box, capsys: Cap) -> None:
    conf = write(box.tmp / "conf")
    assert box("plan", str(conf)) == 0
    assert not (box.state / RECORD_NAME).exists()
    box.drivers[0].fail_at = 1
    assert box("apply", str(conf)) == 1
    assert not (box.state / RECORD_NAME).exists()
    box.drivers[0].fail_at = None
    assert box("apply", str(conf)) == 0
    record = AppliedStore(box.state).load()
    assert record is not None and record.problem is None and len(record.resources) == 21
    assert PASSWORD not in (box.state / RECORD_NAME).read_text()
    assert box("down") == 0
    assert not box.state.exists()


def test_the_daemon_records_full_and_incremental_reconciles(tmp_path: Path) -> None:
    conf = write(tmp_path / "conf")
    drivers = fake_drivers()
    engine = ReconcileEngine(conf, tmp_path / "state", drivers)
    assert engine.reconcile(engine.load(full=True), full=True).verified
    store = AppliedStore(tmp_path / "state")
    first = store.load()
    assert first is not None and len(first.resources) == 21
    write(conf, EVERYTHING.replace("{address: 10.0.3.53}", "{address: 10.0.3.55}"))
    out = engine.reconcile(engine.load(full=False), full=False)
    assert out.verified and out.mode == "incremental" and out.warnings is None
    again = store.load()
    assert again is not None and again.digest != first.digest
    dns = next(r for r in again.resources if r.name == "dns")
    assert "10.0.3.55" in repr(dns.spec)
