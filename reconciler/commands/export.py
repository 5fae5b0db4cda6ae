"""``lbctl export``: the box's configuration as YAML in the input format.

Why this exists: adopting a box that already runs, or checking into Git what
it really runs.  ``lbctl validate`` accepts the output and ``lbctl plan``
against it is empty.  The source is the configuration the last verified
apply recorded in the state dir (``reconciler.applied``), checked against the
live state, which wins where they differ (each difference is a note on stderr
and a comment in the output); without a record (or with ``--live``) the live
state alone (``reconciler.export``).  Secrets are never written: a BGP peer's
password becomes a placeholder that ``validate`` rejects until replaced.

By default one multi-document stream on stdout; ``--file PATH`` writes it to a
file, ``--dir DIR`` one file per resource (DIR is created; files an earlier
export wrote there and this one does not are removed).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from reconciler.applied import AppliedStore
from reconciler.apply import live_vip_hints, read_live
from reconciler.commands.common import drivers_for, dump
from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.drivers.registry import vip_interface_of
from reconciler.export import Exported, dns_label, from_applied, from_live
from reconciler.ipam import allocate
from reconciler.ipam_store import AllocationStore
from reconciler.lock import StateLock
from reconciler.probes import store as health_store
from reconciler.statefile import replace_file

MARK = "# Exported by 'lbctl export'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-f", "--file", metavar="PATH", help="write one multi-document YAML file")
    where.add_argument("--dir", metavar="DIR", help="write one file per resource into DIR (created)")
    parser.add_argument("--vip-interface", metavar="IF",
                        help="interface the VIPs' local routes go through (default: the applied "
                             f"configuration's vipInterface, else {DEFAULT_VIP_INTERFACE})")
    parser.add_argument("--live", action="store_true",
                        help="ignore the applied configuration lbctl recorded; export what live state shows")


def box_name(netns: str | None, hostname: str | None = None) -> str:
    """The Datapath name for a box without a record: its namespace, else the host's first label."""
    if netns:
        return dns_label(netns)
    host = hostname if hostname is not None else socket.gethostname()
    return dns_label(host.split(".")[0] or host)


def collect(ctx: Any, *, live_only: bool = False, vip_interface: str | None = None,
            hostname: str | None = None) -> tuple[Exported, str]:
    """The export of the box ``ctx`` names, and a line saying where it came from."""
    where = ctx.netns or (hostname if hostname is not None else socket.gethostname())
    notes: list[str] = []
    with StateLock(ctx.state_dir, purpose="lbctl export"):
        recorded = None if live_only else AppliedStore(ctx.state_dir).load()
        if recorded is not None and recorded.problem is not None:
            notes.append(f"the applied-configuration record cannot be used ({recorded.problem}); "
                         "exporting the live state alone")
            recorded = None
        resources = recorded.resources if recorded is not None else ()
        vip_if = vip_interface or vip_interface_of(resources)
        live = read_live(drivers_for(ctx, vip_if, read_only=True))
        if recorded is not None:
            vips = allocate(resources, AllocationStore(ctx.state_dir).load(), live_vip_hints(live)).vips
            exported = from_applied(resources, live, vips, health=health_store.load_health(ctx.state_dir))
            source = f"the configuration last applied to {where}, checked against its live state"
        else:
            exported = from_live(live, box_name(ctx.netns, hostname), vip_if)
            source = (f"the live state of {where} alone (without an applied configuration, pools, probes, "
                      "labels, BGP and firewall resources cannot be recovered)")
    return Exported(exported.documents, tuple(notes) + exported.notes, exported.secrets), source


def _comments(exported: Exported, source: str) -> str:
    lines = [f"{MARK} from {source}."]
    if exported.notes:
        lines.append("# Notes (where the live state differs from the applied configuration, it wins):")
        lines += [f"#   {n}" for n in exported.notes]
    lines += [f"# {s}: the password is not exported; replace the placeholder." for s in exported.secrets]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-") or "x"


def _write_dir(out: Path, exported: Exported, source: str) -> tuple[int, int]:
    """One file per document; returns (written, stale files removed)."""
    out.mkdir(parents=True, exist_ok=True)
    header = _comments(exported, source)
    written: set[str] = set()
    for i, doc in enumerate(exported.documents):
        name = f"{i:03d}-{doc['kind'].lower()}-{_slug(doc['metadata']['name'])}.yaml"
        replace_file(out / name, (header + yaml.safe_dump(doc, sort_keys=False)).encode("utf-8"))
        written.add(name)
    removed = 0
    for old in sorted(out.glob("*.yaml")):
        if old.name in written or not old.is_file():
            continue
        with open(old, encoding="utf-8", errors="replace") as f:
            if not f.readline().startswith(MARK):
                continue
        os.unlink(old)  # written by an earlier export, not part of this one
        removed += 1
    return len(written), removed


def run(args: argparse.Namespace, ctx: Any) -> int:
    exported, source = collect(ctx, live_only=args.live, vip_interface=args.vip_interface)
    for note in exported.notes:
        print(f"Warning: {note}", file=sys.stderr)
    for secret in exported.secrets:
        print(f"Note: {secret}: the password is not exported; replace the placeholder with it before "
              "applying ('lbctl validate' rejects the placeholder)", file=sys.stderr)
    docs = list(exported.documents)
    n = len(docs)
    noun = "resource" if n == 1 else "resources"
    if args.dir:
        out = Path(args.dir)
        written, removed = _write_dir(out, exported, source)
        gone = f"; removed {removed} file(s) an earlier export wrote there" if removed else ""
        print(f"exported {written} {noun} to {out}/{gone}", file=sys.stderr)
        return 0
    if ctx.output == "json" and not args.file:
        dump(docs, "json")
        return 0
    text = _comments(exported, source) + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)
    if args.file:
        replace_file(args.file, text.encode("utf-8"))
        print(f"exported {n} {noun} to {args.file}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
