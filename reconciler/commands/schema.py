"""``lbctl schema [KIND]``: print the JSON Schema of a resource kind.

Why this exists: the schemas are the reference of the resource format --
every field has a description -- and editors (yaml-language-server) and CI can
consume them directly.  Without KIND the kinds are listed.  ``--crd`` prints
them as Kubernetes CustomResourceDefinitions (``reconciler.k8s.crd``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.config import schemas
from reconciler.errors import LbctlError
from reconciler.model import KINDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    parser.add_argument("--crd", action="store_true",
                        help="print Kubernetes CustomResourceDefinitions (YAML) instead: all kinds, "
                             "or KIND's")


def _crds(kinds: list[str]) -> None:
    import yaml

    from reconciler.k8s import crd

    sys.stdout.write(yaml.safe_dump_all([crd.crd(k) for k in kinds], sort_keys=False, width=100))


def run(args: argparse.Namespace, ctx: Any) -> int:
    if args.crd and args.kind is None:
        _crds(list(KINDS))
        return 0
    if args.kind is None:
        if ctx.output == "json":
            print(json.dumps(list(KINDS)))
        else:
            width = max(len(k) for k in KINDS)
            for kind in KINDS:
                print(f"{kind:<{width}}  {schemas.schema(kind).get('description', '')}")
        return 0
    matches = [k for k in KINDS if k.lower() == args.kind.lower()]
    if not matches:
        raise LbctlError(f"unknown kind {args.kind!r}", f"kinds: {', '.join(KINDS)}")
    if args.crd:
        _crds(matches)
        return 0
    sys.stdout.write(schemas.schema_text(matches[0]))
    return 0
