"""``lbctl schema [KIND]``: print the JSON Schema of a resource kind.

Why this exists: the schemas are the reference of the resource format --
every field has a description -- and editors (yaml-language-server) and CI can
consume them directly.  Without KIND the kinds are listed.
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


def run(args: argparse.Namespace, ctx: Any) -> int:
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
    sys.stdout.write(schemas.schema_text(matches[0]))
    return 0
