"""Config revision: the Git commit of a checkout (plain clone, packed refs, git-sync worktrees), else None."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.revision import find_git_dir, git_commit

pytestmark = pytest.mark.skipif(shutil.which("git") is None,
                                reason="needs the git command to build repositories")


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
           "GIT_CONFIG_GLOBAL": "/dev/null"}
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def repo(path: Path) -> str:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "lb").mkdir()
    (path / "lb" / "svc.yaml").write_text("a: 1\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "one")
    return git(path, "rev-parse", "HEAD")


def test_plain_checkout_branch_head(tmp_path: Path) -> None:
    sha = repo(tmp_path / "r")
    assert git_commit(tmp_path / "r" / "lb") == sha


def test_packed_refs(tmp_path: Path) -> None:
    sha = repo(tmp_path / "r")
    git(tmp_path / "r", "pack-refs", "--all")
    assert not (tmp_path / "r" / ".git" / "refs" / "heads" / "main").exists()
    assert git_commit(tmp_path / "r") == sha


def test_detached_head(tmp_path: Path) -> None:
    sha = repo(tmp_path / "r")
    git(tmp_path / "r", "checkout", "-q", "--detach")
    assert git_commit(tmp_path / "r" / "lb") == sha


def test_gitsync_worktree_behind_a_link(tmp_path: Path) -> None:
    root = tmp_path / "git"
    sha = repo(root)
    git(root, "worktree", "add", "-q", "--detach", f".worktrees/{sha}", sha)
    os.symlink(f".worktrees/{sha}", root / "current")
    assert (root / ".worktrees" / sha / ".git").is_file()
    assert git_commit(root / "current" / "lb") == sha
    found = find_git_dir(root / "current")
    assert found is not None and "worktrees" in str(found)


def test_outside_git(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    assert git_commit(tmp_path / "conf.d") is None or find_git_dir(tmp_path) is not None
