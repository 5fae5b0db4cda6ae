"""Helpers shared by the commands that touch the live box (plan, apply, get, export, down).

Why this exists: every such command loads the configuration the same way,
reports configuration errors the way ``validate`` does, gets the box's
drivers from the driver registry (``reconciler.drivers.registry``, whose
``SPECS`` table tests replace with in-memory drivers) and prints data as
json/yaml or a loxicmd-style table.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import IO, Any

import yaml

from reconciler.apply import LoadedConfig, ReconcileResult, Timings, load_config, reconcile
from reconciler.constants import DEFAULT_CONFIG_DIR, DEFAULT_VIP_INTERFACE
from reconciler.driver import Driver
from reconciler.errors import ConfigError
from reconciler.lock import StateLock
from reconciler.plan import Plan


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=DEFAULT_CONFIG_DIR, metavar="DIR",
                        help=f"configuration directory (default: {DEFAULT_CONFIG_DIR})")
    add_follow_option(parser)


def add_full_plan_option(parser: argparse.ArgumentParser) -> None:
    """``--full-plan`` of plan and apply: every attribute even of a huge plan."""
    from reconciler.render import COMPACT_OVER

    parser.add_argument("--full-plan", action="store_true",
                        help=f"print every change with its attributes even when the plan has more than "
                             f"{COMPACT_OVER} changes (then one line per change by default; -o json has them "
                             "all)")


def add_follow_option(parser: argparse.ArgumentParser) -> None:
    """The option of every command that reads DIR (validate, plan, apply, watch)."""
    from reconciler.config.discover import FOLLOW_OPTION

    parser.add_argument(FOLLOW_OPTION, action="store_true",
                        help="also read *.yaml files and directories that symlinks in DIR point to outside "
                             "DIR (refused by default: such a link is an error; links that stay inside DIR, "
                             "like a ConfigMap's ..data, are always followed)")


def drivers_for(ctx: Any, vip_interface: str = DEFAULT_VIP_INTERFACE, *, read_only: bool = False
                ) -> list[Driver]:
    """Every driver of the box, whatever the configuration (``down``, ``get``, ``export``).

    ``read_only``: the caller only looks or removes, so pins of an older map layout are
    reported, never migrated (``Context.read_only``).
    """
    from reconciler.drivers import registry

    if read_only:
        ctx = dataclasses.replace(ctx, read_only=True)
    return registry.build_drivers(ctx, vip_interface=vip_interface)


def print_config_errors(errors: Sequence[ConfigError], stream: IO[str] | None = None) -> None:
    stream = stream or sys.stderr
    for err in errors:
        print(str(err), file=stream)
    n = len(errors)
    print(f"{n} error{'s' if n != 1 else ''} in the configuration; nothing was changed.", file=stream)


def print_warnings(warnings: Iterable[str]) -> None:
    for w in warnings:
        print(f"Warning: {w}", file=sys.stderr)


def load_timed(config_dir: str, state_dir: Any = None, *,
               follow_external_symlinks: bool = False) -> tuple[LoadedConfig, float]:
    """Load (and time) the configuration; with ``state_dir``, through the parse cache persisted there."""
    t = time.perf_counter()
    if state_dir is None:
        loaded = load_config(config_dir, follow_external_symlinks=follow_external_symlinks)
    else:
        from reconciler.config.persist import load_dir_persisted

        loaded = load_dir_persisted(config_dir, state_dir, create=True,
                                    follow_external_symlinks=follow_external_symlinks)
    return loaded, time.perf_counter() - t


def run_reconcile(config_dir: str, ctx: Any, *, dry_run: bool, purpose: str,
                  follow_external_symlinks: bool = False) -> ReconcileResult:
    """Load, then (holding the state lock) plan or apply; the CLI's one path into ``reconcile``."""
    from reconciler.drivers import registry

    loaded, t_parse = load_timed(config_dir, ctx.state_dir, follow_external_symlinks=follow_external_symlinks)
    if loaded.errors:
        return ReconcileResult(plan=Plan(), errors=tuple(loaded.errors), dry_run=dry_run,
                               timings=Timings(parse=t_parse), digest=loaded.digest)
    # reconcile picks the drivers this configuration needs; a plan migrates no pinned layout
    drivers = registry.driver_set(dataclasses.replace(ctx, read_only=True) if dry_run else ctx)
    with StateLock(ctx.state_dir, purpose=purpose):
        result = reconcile(config_dir, drivers, ctx.state_dir, dry_run=dry_run, loaded=loaded)
    # A command's millions of records live until it exits: frozen, the cyclic GC does not walk
    # them again at each collection while the plan is printed (0.5 s of a 30,000-change apply).
    gc.freeze()
    return replace(result, timings=replace(result.timings, parse=t_parse))


def dump(data: Any, output: str, stream: IO[str] | None = None) -> None:
    """json or yaml of plain data."""
    stream = stream or sys.stdout
    if output == "yaml":
        stream.write(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    else:
        # Streamed in batches of chunks: a 30,000-change plan never becomes one string.
        batch: list[str] = []
        for chunk in json.JSONEncoder(indent=2).iterencode(data):
            batch.append(chunk)
            if len(batch) >= 8192:
                stream.write("".join(batch))
                batch.clear()
        stream.write("".join(batch) + "\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A loxicmd-style ASCII table (plain text: fast for 100k rows, stable for scripts)."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    line = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    out = ["| " + " | ".join(h.center(w) for h, w in zip(headers, widths, strict=True)) + " |", line]
    for row in cells:
        out.append("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(out) + "\n"
