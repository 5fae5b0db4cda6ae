"""``lbctl plan [DIR] [--detailed-exitcode]``: what apply would change, touching nothing.

Why this exists: reviewers (and CI on a pull request) need the exact, ordered
change before it happens.  Exit codes follow Terraform: 0 success, 1 error, and
with ``--detailed-exitcode`` 2 when there are changes (a capacity change, shown as a
note, is one).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from reconciler.commands.common import (
    add_dir_argument,
    add_full_plan_option,
    dump,
    print_config_errors,
    print_warnings,
    run_reconcile,
)
from reconciler.render import print_plan, wants_compact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dir_argument(parser)
    add_full_plan_option(parser)
    parser.add_argument("--detailed-exitcode", action="store_true",
                        help="exit 2 when there are changes (0: none, 1: error)")


def run(args: argparse.Namespace, ctx: Any) -> int:
    result = run_reconcile(args.dir, ctx, dry_run=True, purpose="lbctl plan",
                           follow_external_symlinks=args.follow_external_symlinks)
    if result.errors:
        print_config_errors(result.errors)
        return 1
    print_warnings(result.warnings)
    for notice in result.notices:  # a capacity change: the maps are re-created live on apply
        print(f"Note: {notice}", file=sys.stderr)
    if ctx.output in ("json", "yaml"):
        dump(result.plan.to_dict(), ctx.output)
    else:
        t_render = time.perf_counter()
        if result.notices and not result.plan:
            print("No changes to records; apply re-creates the datapath's maps at their new capacities "
                  "(see the note).")
        else:
            compact = wants_compact(len(result.plan), args.full_plan)
            print_plan(result.plan.to_dict(records=not compact), file=sys.stdout, compact=compact)
        t_render = time.perf_counter() - t_render
        if ctx.verbose:
            t = result.timings
            print(f"(parse+validate {t.parse * 1000:.1f} ms, plan {t.plan * 1000:.1f} ms, "
                  f"render {t_render * 1000:.1f} ms)", file=sys.stderr)
    if args.detailed_exitcode and (result.plan or result.notices):
        return 2
    return 0
