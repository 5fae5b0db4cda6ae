"""``lbctl apply [DIR]``: plan, show the plan, apply it, verify.  Exit 0 ok, 1 error.

Why this exists: the product's main job from the command line.  The same
``reconciler.apply.reconcile`` runs here and in the daemon; this module only
presents the result: the plan (one line per change when huge), then either the
summary with timings, or the leftover plan (a failed verification); a failed
driver prints what was applied and what was not instead of the plan.  A
failed apply is safe to re-run: it continues from live state.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

from reconciler.apply import ApplyFailure, summary
from reconciler.commands.common import (
    add_dir_argument,
    add_full_plan_option,
    dump,
    print_config_errors,
    print_warnings,
    run_reconcile,
)
from reconciler.plan import Change
from reconciler.render import print_plan, wants_compact

# A failed apply lists at most this many of the changes that did not take effect.
FAILED_LISTED = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dir_argument(parser)
    add_full_plan_option(parser)


def _by_kind(changes: Sequence[Change]) -> str:
    counts = Counter(c.kind for c in changes)
    return ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))


def print_failure(failure: ApplyFailure, total: int, stream: IO[str]) -> None:
    """What was applied, what was not and why: counts per kind and the first changes not applied.

    Printed instead of the plan: the plan is what was attempted, this is what happened.
    """
    applied, missed = failure.applied, failure.not_applied
    print(f"Error: {failure.message}", file=stream)
    print(f"{len(applied)} of {total} change(s) took effect"
          + (f" ({_by_kind(applied)})" if applied else "")
          + f"; {len(missed)} did not" + (f" ({_by_kind(missed)})" if missed else "") + ":", file=stream)
    for c in missed[:FAILED_LISTED]:
        print(f"  {c.symbol:>3} {c.kind} {c.key}", file=stream)
    if len(missed) > FAILED_LISTED:
        print(f"  ... and {len(missed) - FAILED_LISTED} more ('lbctl plan' lists them)", file=stream)
    print("Fix the cause and run 'lbctl apply' again: it plans from the live state and converges.",
          file=stream)


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
    if result.failure is not None:
        print_failure(result.failure, len(result.plan), sys.stderr)
        return 1
    t_render = time.perf_counter()
    compact = wants_compact(len(result.plan), args.full_plan)
    print_plan(result.plan.to_dict(records=not compact), file=sys.stdout, compact=compact)
    t_render = time.perf_counter() - t_render
    t = result.timings
    if not result.verified:
        print("\nError: verification failed: after applying, the live state still differs:", file=sys.stderr)
        assert result.leftover is not None
        compact = wants_compact(len(result.leftover), args.full_plan)
        print_plan(result.leftover.to_dict(records=not compact), file=sys.stderr, compact=compact)
        return 1
    if result.plan:
        n = result.plan.counts()
        print(f"\nApply complete! Resources: {n['add']} added, {n['change']} changed, "
              f"{n['destroy']} destroyed. Verified: the datapath matches the configuration.")
    print(f"(parse+validate {t.parse * 1000:.1f} ms, plan {t.plan * 1000:.1f} ms, "
          f"kernel programming {t.program * 1000:.1f} ms, verify {t.verify * 1000:.1f} ms, "
          f"render {t_render * 1000:.1f} ms; {result.writes} writes)")
    return 0
