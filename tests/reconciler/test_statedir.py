"""The state dir: private to its owner, older loose ones tightened, other users' refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler import statedir
from reconciler.errors import LbctlError
from tests.other_user import NOBODY, public_dir, run_as_nobody


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_missing_directories_are_made_private(tmp_path: Path) -> None:
    base = tmp_path / "var-lib-lbctl"
    state = statedir.ensure(base / "box1")  # --netns box1 on a fresh machine
    assert state == base / "box1" and mode(base) == 0o700 and mode(state) == 0o700


def test_an_older_state_dir_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)  # what lbctl made before
    statedir.ensure(state)
    assert mode(state) == 0o700


def test_a_world_writable_state_dir_is_refused_not_tightened(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o1777)
    with pytest.raises(LbctlError) as info:
        statedir.ensure(state)
    assert f"the state dir {state} is writable by every user" in str(info.value)
    assert "mode 1777" in str(info.value) and "--state-dir" in str(info.value)
    assert mode(state) == 0o1777


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(LbctlError, match="is not a directory"):
        statedir.ensure(tmp_path / "state")


@pytest.mark.root
def test_a_state_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(LbctlError) as info:
        statedir.ensure(state)
    message = str(info.value)
    assert f"the state dir {state} is owned by nobody (uid {NOBODY}), mode 0755" in message, message
    assert f"chown root {state} && chmod 0700 {state}" in message
    assert mode(state) == 0o755 and state.stat().st_uid == NOBODY  # left as it was


@pytest.mark.root
def test_validate_as_another_user_needs_no_state_dir() -> None:
    """Root's private state dir (and its per-netns subdirectory) must not break a user's validate."""
    with public_dir() as base:
        conf = base / "conf"
        conf.mkdir()
        (conf / "web.yaml").write_text(
            "apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {name: web}\n"
            "spec: {vip: 198.51.100.1, ports: [{port: 80}], endpoints: [{address: 10.0.0.1}]}\n")
        conf.chmod(0o755)
        (conf / "web.yaml").chmod(0o644)
        state = base / "state"
        statedir.ensure(state / "box1")
        for extra in ([], ["--netns", "box1"], ["--netns", "missing"]):
            argv = ["validate", str(conf), "--state-dir", str(state), *extra]
            out = run_as_nobody(f"from reconciler.cli import main\nraise SystemExit(main({argv!r}))\n")
            assert out.returncode == 0, (extra, out.stdout, out.stderr)
            assert "valid" in out.stdout and out.stderr == ""
        assert sorted(p.name for p in state.iterdir()) == ["box1"]


def test_watch_checks_the_state_dir_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.cli import main

    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o777)
    assert main(["watch", str(tmp_path), "--state-dir", str(state), "--listen", "none"]) == 1
    assert f"Error: the state dir {state} is writable by every user" in capsys.readouterr().err
