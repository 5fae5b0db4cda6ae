"""The applied-configuration record: what the last verified apply put on the box.

Why this exists: the live records (eBPF maps, VIP addresses) do not carry
everything an operator wrote -- pool references, the VIP interface, resource
names of non-live kinds, probes, labels, BGP and firewall settings no driver
carries out yet.  ``lbctl export`` must reproduce the applied configuration
exactly, so every verified apply (``lbctl apply``, the daemon's full and
incremental paths) records it here, in the box's state dir.

The file (``applied.yaml``) is itself a valid lbctl configuration file: a
header comment, then one JSON document per line (JSON is YAML), so it is
read back through the normal loader with its schema checks, and an operator
can ``lbctl validate`` it.  It is replaced atomically (``statefile``, without
fsync) and only when the configuration's digest changed (the header carries it).  Secrets are
never written: a BGPPeer password is stored as ``model.SECRET_PLACEHOLDER``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.documents import to_document
from reconciler.model import Resource
from reconciler.statefile import replace_file

RECORD_NAME = "applied.yaml"
RECORD_FORMAT = 1
_HEADER = re.compile(r"# lbctl applied configuration: format (\d+), digest ([0-9a-f]*), (\d+) documents\n")


@dataclass(frozen=True)
class AppliedConfig:
    """The record read back: the resources, or why they could not be read."""

    resources: tuple[Resource, ...] = ()
    digest: str = ""
    problem: str | None = None  # set when the record exists but cannot be used


def _header(digest: str, count: int) -> str:
    return f"# lbctl applied configuration: format {RECORD_FORMAT}, digest {digest}, {count} documents\n"


def _line(res: Resource) -> bytes:
    return ("--- " + json.dumps(to_document(res), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


class AppliedStore:
    """``applied.yaml`` in the state dir: record after a verified apply, read for export."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / RECORD_NAME
        # id(resource) -> its encoded line, and the resources themselves (kept alive, so an id in
        # the memo is always the same object): a long-lived store (the daemon's) serializes only
        # resources that changed since its last record, as unchanged files keep their Resource
        # objects in the parse cache.  Dicts of ints, bytes and existing objects: no work for
        # the cyclic GC, and the 10,000-service case stays a few C-level passes.
        self._lines: dict[int, bytes] = {}
        self._kept: dict[int, Resource] = {}

    def recorded_digest(self) -> str | None:
        """The digest in the record's header (None: no usable record)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                m = _HEADER.fullmatch(f.readline())
        except (OSError, UnicodeDecodeError):
            return None
        return m.group(2) if m and int(m.group(1)) == RECORD_FORMAT else None

    def record(self, resources: Sequence[Resource], digest: str | None) -> bool:
        """Record ``resources`` unless the record already holds ``digest``; True when written."""
        if digest and self.recorded_digest() == digest:
            return False
        ids = [id(r) for r in resources]
        found = list(map(self._lines.get, ids))
        lines = [line if line is not None else _line(res) for line, res in zip(found, resources, strict=True)]
        head = (_header(digest or "", len(resources))
                + "# Written by lbctl after each verified apply and read by 'lbctl export'. Do not edit.\n")
        # Not fsynced: on a power loss the kernel state it describes is gone too (bpffs pins do
        # not survive a reboot), and a stale record only makes export take more from live state.
        replace_file(self.path, head.encode() + b"".join(lines), durable=False)
        self._lines = dict(zip(ids, lines, strict=True))
        self._kept = dict(zip(ids, resources, strict=True))
        return True

    def load(self) -> AppliedConfig | None:
        """The recorded configuration; None when there is no record."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return AppliedConfig(problem=f"{self.path}: {exc.strerror or exc}")
        first = data.split(b"\n", 1)[0] + b"\n"
        m = _HEADER.fullmatch(first.decode("utf-8", "replace"))
        if m is None or int(m.group(1)) != RECORD_FORMAT:
            return AppliedConfig(problem=f"{self.path}: not an applied-configuration record of format "
                                         f"{RECORD_FORMAT}")
        from reconciler.config import load_bytes  # the config layer, only when a record is read

        loaded = load_bytes(str(self.path), data)
        if loaded.errors:
            more = len(loaded.errors) - 1
            return AppliedConfig(problem=f"{loaded.errors[0]}" + (f" (and {more} more)" if more else ""))
        if len(loaded.resources) != int(m.group(3)):
            return AppliedConfig(problem=f"{self.path}: {len(loaded.resources)} documents, the header says "
                                         f"{m.group(3)} (truncated?)")
        return AppliedConfig(resources=loaded.resources, digest=m.group(2))

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
