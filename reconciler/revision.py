"""Which Git commit a configuration directory shows, if it lives in a checkout.

Why this exists: ``/status`` names the config revision, and in a GitOps setup
the revision operators think in is the commit, not our content digest.  We read
``.git`` ourselves (HEAD, loose refs, ``packed-refs``, the ``gitdir:`` file of a
worktree and its ``commondir``), which covers plain clones and git-sync's
layout (a link flipped to ``.worktrees/<sha>``, each a ``git worktree`` with a
detached HEAD), and fall back to ``git rev-parse HEAD`` with a timeout only when
the files say something we do not parse.  No Git found: ``None``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
GIT_TIMEOUT = 2.0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def find_git_dir(start: Path) -> Path | None:
    """The git dir of the checkout containing ``start`` (resolved), or None."""
    here = Path(os.path.realpath(start))
    for candidate in (here, *here.parents):
        dotgit = candidate / ".git"
        if dotgit.is_dir():
            return dotgit
        if dotgit.is_file():
            text = _read(dotgit) or ""
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:"):].strip())
                if not target.is_absolute():
                    target = candidate / target
                return Path(os.path.realpath(target))
            return None
    return None


def _common_dir(git_dir: Path) -> Path:
    text = _read(git_dir / "commondir")
    if not text:
        return git_dir
    common = Path(text)
    return Path(os.path.realpath(common if common.is_absolute() else git_dir / common))


def _resolve_ref(git_dir: Path, ref: str, depth: int = 0) -> str | None:
    if depth > 5:
        return None
    for base in (git_dir, _common_dir(git_dir)):
        text = _read(base / ref)
        if text is None:
            continue
        if text.startswith("ref:"):
            return _resolve_ref(git_dir, text[4:].strip(), depth + 1)
        return text if _SHA.match(text) else None
    packed = _read(_common_dir(git_dir) / "packed-refs") or ""
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name.strip() == ref and _SHA.match(sha):
            return sha
    return None


def _git_rev_parse(directory: Path) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and _SHA.match(out) else None


def git_commit(directory: Path) -> str | None:
    """The commit checked out where ``directory`` lives, or None outside Git."""
    git_dir = find_git_dir(directory)
    if git_dir is None:
        return None
    head = _read(git_dir / "HEAD")
    if head is None:
        return None
    if _SHA.match(head):
        return head
    if head.startswith("ref:"):
        sha = _resolve_ref(git_dir, head[4:].strip())
        if sha:
            return sha
    return _git_rev_parse(directory)
