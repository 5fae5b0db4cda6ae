"""``lbctl validate [DIR]``: check a configuration directory, touch nothing live.

Why this exists: operators (and pre-commit hooks, and CI of config repos) need
a fast yes/no with every problem listed at once, in the
``file:line:col: Kind/name: path: message (hint)`` form editors can jump to,
or as JSON for scripts.  Exit 0 when valid, 1 when not.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.commands.common import add_follow_option
from reconciler.config import LoadResult, load_dir_persisted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reconciler.constants import DEFAULT_CONFIG_DIR

    parser.add_argument("dir", nargs="?", default=DEFAULT_CONFIG_DIR, metavar="DIR",
                        help=f"configuration directory or file (default: {DEFAULT_CONFIG_DIR})")
    add_follow_option(parser)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def to_json(result: LoadResult) -> dict[str, Any]:
    return {
        "valid": result.valid,
        "resources": result.counts(),
        "files": len(result.files),
        "digest": result.digest,
        "errors": [e.to_json() for e in result.errors],
    }


def _summary(result: LoadResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(title=None, box=None, show_header=True, pad_edge=False)
    table.add_column("KIND")
    table.add_column("COUNT", justify="right")
    table.add_column("NAMES", overflow="fold")
    for kind, count in result.counts().items():
        res = result.of_kind(kind)
        names = ", ".join(r.name for r in res[:6]) + (f", ... (+{len(res) - 6} more)" if len(res) > 6 else "")
        table.add_row(kind, str(count), names)
    console.print(f"[green]valid[/green]: {_plural(len(result.resources), 'resource')} in "
                  f"{_plural(len(result.files), 'file')} ({result.root})")
    console.print(table)


def run(args: argparse.Namespace, ctx: Any) -> int:
    # Never creates the state dir, and leaves a parse cache of another directory alone.
    result = load_dir_persisted(args.dir, getattr(ctx, "state_dir", None),
                                follow_external_symlinks=args.follow_external_symlinks)
    if ctx.output == "json":
        json.dump(to_json(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif result.valid:
        _summary(result)
    else:
        # plain lines, never wrapped: editors and scripts parse them
        for error in result.errors:
            print(error)
        print(f"{_plural(len(result.errors), 'error')} in {_plural(len(result.files_with_errors), 'file')}")
    return 0 if result.valid else 1
