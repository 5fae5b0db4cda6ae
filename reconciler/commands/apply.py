"""``lbctl apply [DIR]``: plan, show the plan, apply it, verify.  Exit 0 ok, 1 error.

Why this exists: the product's main job from the command line.  The same
``reconciler.apply.reconcile`` runs here and in the daemon; this module only
presents the result: the plan, then either the summary with timings, or what
was applied and what was not (a failed driver), or the leftover plan (a failed
verification).  A failed apply is safe to re-run: it continues from live state.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from reconciler.apply import summary
from reconciler.commands.common import (
    add_dir_argument,
    dump,
    print_config_errors,
    print_warnings,
    run_reconcile,
)
from reconciler.render import print_plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dir_argument(parser)


def run(args: argparse.Namespace, ctx: Any) -> int:
    result = run_reconcile(args.dir, ctx, dry_run=False, purpose="lbctl apply",
                           follow_external_symlinks=args.follow_external_symlinks)
    if result.errors:
        if ctx.output in ("json", "yaml"):
            dump(summary(result), ctx.output)
        print_config_errors(result.errors)
        return 1
    print_warnings(result.warnings)
    for notice in result.notices:
        print(f"Note: {notice}", file=sys.stderr)
    if ctx.output in ("json", "yaml"):
        dump(summary(result), ctx.output)
        return 0 if result.ok else 1
    print_plan(result.plan.to_dict(), file=sys.stdout)
    if result.failure is not None:
        f = result.failure
        print(f"\nError: {f.message}", file=sys.stderr)
        print(f"{len(f.applied)} change(s) took effect, {len(f.not_applied)} did not:", file=sys.stderr)
        for c in f.not_applied:
            print(f"  {c.symbol:>3} {c.kind} {c.key}", file=sys.stderr)
        print("Fix the cause and run 'lbctl apply' again: it plans from the live state and converges.",
              file=sys.stderr)
        return 1
    t = result.timings
    if not result.verified:
        print("\nError: verification failed: after applying, the live state still differs:", file=sys.stderr)
        assert result.leftover is not None
        print_plan(result.leftover.to_json(), file=sys.stderr)
        return 1
    if result.plan:
        n = result.plan.counts()
        print(f"\nApply complete! Resources: {n['add']} added, {n['change']} changed, "
              f"{n['destroy']} destroyed. Verified: the datapath matches the configuration.")
    print(f"(parse+validate {t.parse * 1000:.1f} ms, plan {t.plan * 1000:.1f} ms, "
          f"kernel programming {t.program * 1000:.1f} ms, verify {t.verify * 1000:.1f} ms; "
          f"{result.writes} writes)")
    return 0
