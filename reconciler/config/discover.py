"""Find the configuration files of a directory, the way operators lay them out.

Why this exists: the directory may be a Git checkout, a hand-edited
``/etc/lbctl/conf.d`` or a Kubernetes ConfigMap volume, where kubelet writes
files into a timestamped ``..2026_...`` directory, points ``..data`` at it and
adds top-level links ``foo.yaml -> ..data/foo.yaml``.  Discovery walks
recursively in a stable order, follows symlinks, skips dotfiles and editor
droppings, loads each real file once, and reports symlink loops, broken
links and special files instead of hanging on them.  It also reads files
with a size limit, so a huge file is refused without being read.

Symlinks are followed only while they stay inside the configuration root (its
real path, so a git-sync root that is itself a link works): a ``*.yaml`` link
to a root-only file elsewhere would be read as root and its values would
appear in errors and in the daemon's ``/status``, and a link to ``/usr`` would
walk thousands of files.  Such a link is an error naming the link and its
target, unless the operator passes ``--follow-external-symlinks``.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from reconciler.errors import ConfigError, LbctlError

MAX_FILE_BYTES = 8 * 1024 * 1024
SUFFIXES = (".yaml", ".yml")
FOLLOW_OPTION = "--follow-external-symlinks"


@dataclass(frozen=True)
class Found:
    """A file to load: the path shown to the user and the file it resolves to."""

    display: str
    real: str


def _ignored(name: str) -> bool:
    """Dotfiles (also ``..data``, ``.#lock``), and editor backups and swap files."""
    return (name.startswith(".") or name.endswith("~") or name.endswith(".swp")
            or (name.startswith("#") and name.endswith("#")))


def _whole_file(display: str, message: str, hint: str) -> ConfigError:
    return ConfigError(display, 0, 0, None, None, "", message, hint)


def _join(root: str, name: str) -> str:
    return name if root in (".", "") else os.path.join(root, name)


def inside(real: str, real_root: str) -> bool:
    """Whether the resolved path ``real`` is ``real_root`` or below it."""
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _outside(path: str, real: str) -> ConfigError:
    target = os.readlink(path) if os.path.islink(path) else real
    where = target if target == real else f"{target} (resolves to {real})"
    return _whole_file(path, f"symlink leaves the configuration directory: it points to {where}; not read",
                       f"copy what it points to into the directory, or pass {FOLLOW_OPTION} "
                       "to read links that leave it")


def discover(root: str, *, follow_external_symlinks: bool = False) -> tuple[list[Found], list[ConfigError]]:
    """Files to load under ``root`` (a directory or a single file), and problems found.

    Symlinks resolving outside ``root`` are errors unless ``follow_external_symlinks``.
    """
    try:
        top = os.stat(root)
    except FileNotFoundError:
        raise LbctlError(f"configuration directory {root} does not exist",
                         "pass the directory holding your *.yaml files") from None
    except OSError as exc:
        raise LbctlError(f"cannot open {root}: {exc.strerror}",
                         "check the path and its permissions") from None
    if not stat.S_ISDIR(top.st_mode):
        return [Found(root, os.path.realpath(root))], []

    found: list[Found] = []
    errors: list[ConfigError] = []
    seen_files: set[str] = set()
    seen_dirs: set[str] = set()
    # (display dir, real dir, real dirs from the root down to here)
    stack: list[tuple[str, str, tuple[str, ...]]] = []
    real_root = os.path.realpath(root)
    stack.append((root, real_root, (real_root,)))
    seen_dirs.add(real_root)
    while stack:
        display_dir, _, ancestors = stack.pop()
        try:
            names = sorted(os.listdir(display_dir))
        except OSError as exc:
            errors.append(_whole_file(display_dir, f"cannot list directory: {exc.strerror}",
                                      "check its permissions"))
            continue
        subdirs: list[tuple[str, str, tuple[str, ...]]] = []
        for name in names:
            if _ignored(name):
                continue
            path = _join(display_dir, name)
            wanted = name.endswith(SUFFIXES)
            try:
                st = os.stat(path)
            except OSError as exc:
                if wanted or os.path.islink(path):
                    if exc.errno == errno.ELOOP:
                        errors.append(_whole_file(path, "symlink loop", "point the link at a real file"))
                    elif exc.errno == errno.ENOENT:
                        errors.append(_whole_file(path, f"broken symlink to {os.readlink(path)}",
                                                  "fix the link target or remove the link"))
                    else:
                        errors.append(_whole_file(path, f"cannot read: {exc.strerror}", "check permissions"))
                continue
            real = os.path.realpath(path)
            is_dir = stat.S_ISDIR(st.st_mode)
            if (wanted or is_dir) and not follow_external_symlinks and not inside(real, real_root):
                errors.append(_outside(path, real))
                continue
            if is_dir:
                if real in ancestors:
                    target = display_dir if real == ancestors[-1] else "a parent directory"
                    errors.append(_whole_file(path, f"symlink loop: this directory links back to {target}",
                                              "remove the link or point it elsewhere"))
                elif real not in seen_dirs:
                    seen_dirs.add(real)
                    subdirs.append((path, real, ancestors + (real,)))
                continue
            if not wanted:
                continue
            if not stat.S_ISREG(st.st_mode):
                errors.append(_whole_file(path, "not a regular file", "configuration must be plain files"))
                continue
            if real in seen_files:
                continue  # the same file through another link (ConfigMap ..data layout)
            seen_files.add(real)
            found.append(Found(path, real))
        stack.extend(reversed(subdirs))
    return found, errors


def read_limited(found: Found) -> tuple[bytes | None, ConfigError | None]:
    """The bytes of a file, or an error if it is unreadable or larger than ``MAX_FILE_BYTES``."""
    try:
        with open(found.display, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                return None, _too_big(found.display, size)
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return None, _whole_file(found.display, f"cannot read: {exc.strerror}", "check permissions")
    if len(data) > MAX_FILE_BYTES:
        return None, _too_big(found.display, len(data))
    return data, None


def _too_big(display: str, size: int) -> ConfigError:
    return _whole_file(display, f"file is too large ({size / 1048576:.1f} MiB; the limit is "
                       f"{MAX_FILE_BYTES // 1048576} MiB)", "split the configuration into several files")
