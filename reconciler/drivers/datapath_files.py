"""Find the datapath's files: the compiled object and the header of its map layouts.

Why this exists: lbctl runs from a checkout (editable install), from a wheel or a
``pip install .`` anywhere, and later from a Debian package that puts the object
in ``/usr/lib/lbctl`` -- never relative to a working directory or to a source
tree.  This is the one place that decides which file is loaded, in this order:

1. ``$LBCTL_DATAPATH_DIR``, when set: an explicit choice (a build tree, a test's
   own build); a file missing there is an error, never a silent fallback;
2. package data, through ``importlib.resources``: ``reconciler/datapath/``,
   which ``make build`` fills from ``build/bpf/`` and ``bpf/`` and
   ``pyproject.toml`` ships (the directory is git-ignored: built, not written);
3. the system directory ``/usr/lib/lbctl``.

Nothing found is an ``LbctlError`` naming the file, every place looked at and
``make build``.  ``_libbpf`` checks the header against the object's BTF at load,
so a stale pair is refused there rather than misread.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from reconciler.constants import DATAPATH_DIR_ENV, DATAPATH_PACKAGE_DIR, DATAPATH_SYSTEM_DIR
from reconciler.errors import LbctlError

_HINT = ("build the datapath with 'make build' (it compiles bpf/ and copies the object and "
         "lb_shared.h into reconciler/datapath/, the package data pip installs), or set "
         f"{DATAPATH_DIR_ENV} to a directory holding both")


def package_dir() -> Path:
    """``reconciler/datapath/`` of the imported package (it may not exist: not built)."""
    return Path(str(files("reconciler").joinpath(DATAPATH_PACKAGE_DIR)))


def datapath_file(name: str) -> str:
    """The path of datapath file ``name`` (``lb_kern.o``, ``lb_shared.h``); see the module doc."""
    override = os.environ.get(DATAPATH_DIR_ENV)
    if override:
        path = os.path.join(override, name)
        if os.path.isfile(path):
            return path
        raise LbctlError(f"the datapath file {name} is not in {override} ({DATAPATH_DIR_ENV})",
                         f"point {DATAPATH_DIR_ENV} at a directory holding {name}, or unset it")
    looked = []
    for directory in (package_dir(), Path(DATAPATH_SYSTEM_DIR)):
        if (directory / name).is_file():
            return str(directory / name)
        looked.append(str(directory))
    raise LbctlError(f"the datapath file {name} is missing (looked in {' and '.join(looked)})", _HINT)
