"""``lbctl export``: the live state as YAML in the input format.

Why this exists: adopting a box that already runs, or checking into Git what
the kernel really holds.  ``lbctl validate`` accepts the output and ``lbctl
plan`` against it is empty.  By default one multi-document stream on stdout;
``--file PATH`` writes it to a file, ``--dir DIR`` writes one file per resource.
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

from reconciler.apply import read_live
from reconciler.commands.common import drivers_for
from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.export import export_documents

HEADER = "# Exported by 'lbctl export' from the live state of {box}.\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-f", "--file", metavar="PATH", help="write one multi-document YAML file")
    where.add_argument("--dir", metavar="DIR", help="write one file per resource into DIR")
    parser.add_argument("--vip-interface", default=DEFAULT_VIP_INTERFACE, metavar="IF",
                        help=f"interface holding the VIP addresses (default: {DEFAULT_VIP_INTERFACE})")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-") or "x"


def run(args: argparse.Namespace, ctx: Any) -> int:
    box = ctx.netns or socket.gethostname().split(".")[0]
    live = read_live(drivers_for(ctx, args.vip_interface))
    docs = export_documents(live, box_name=_slug(box))
    header = HEADER.format(box=box)
    if args.dir:
        out = Path(args.dir)
        for i, doc in enumerate(docs):
            name = f"{i:03d}-{doc['kind'].lower()}-{_slug(doc['metadata']['name'])}.yaml"
            _write(out / name, header + yaml.safe_dump(doc, sort_keys=False))
        print(f"exported {len(docs)} resources to {out}/", file=sys.stderr)
        return 0
    text = header + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)
    if args.file:
        _write(Path(args.file), text)
        print(f"exported {len(docs)} resources to {args.file}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
