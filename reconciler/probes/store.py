"""The last known endpoint health, kept in the state dir (``health.json``).

Why this exists: health is live state, not configuration, yet the datapath
carries it (a down endpoint is left out of its service's list).  ``lbctl plan``
and ``lbctl apply`` compile the desired state with the health the daemon last
recorded, so a plan shows only configuration changes and an apply never puts a
down endpoint back; the daemon starts from it, so a restart does not send new
flows to endpoints that were down.  Written by the daemon on every transition
(atomic replace, no fsync: it is rebuilt by the next probes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.statefile import read_json_state, replace_file

FILE = "health.json"
FORMAT_VERSION = 1

Key = tuple[str, str]


def _parse(data: dict[str, Any]) -> frozenset[Key]:
    return frozenset((str(s), str(a)) for s, a in data["down"])


def load_down(state_dir: str | Path) -> frozenset[Key]:
    """The endpoints recorded down: (Service name, canonical address)."""
    got = read_json_state(Path(state_dir) / FILE, FORMAT_VERSION, _parse, what="endpoint health record",
                          hint="remove it; 'lbctl watch' writes it again after its next probes")
    return got or frozenset()


def load_health(state_dir: str | Path) -> dict[Key, bool]:
    """``desired.Health`` from the record (missing file: all healthy)."""
    return {k: False for k in load_down(state_dir)}


def save(state_dir: str | Path, health: Mapping[Key, bool]) -> None:
    down = sorted(k for k, ok in health.items() if not ok)
    data = {"format_version": FORMAT_VERSION, "down": [list(k) for k in down]}
    replace_file(Path(state_dir) / FILE, (json.dumps(data, indent=1) + "\n").encode(), durable=False)
