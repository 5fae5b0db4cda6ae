"""``lbctl watch [DIR]``: run the daemon that keeps the box converged to DIR.

Why this exists: the CLI face of ``reconciler.watch``; it parses options, wires
the real engine (config loader + reconcile layer + the box's drivers), the
directory watcher, signals and the status endpoint, then blocks.  SIGTERM or
Ctrl-C stop it and leave the datapath running.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from reconciler import statedir
from reconciler.cli import Context
from reconciler.commands.common import add_follow_option
from reconciler.constants import DEFAULT_CONFIG_DIR
from reconciler.duration import format_duration, parse_duration
from reconciler.errors import LbctlError
from reconciler.logs import FORMATS, EventLog
from reconciler.status import DEFAULT_LISTEN, parse_listen
from reconciler.watch import DEFAULT_DEBOUNCE, DEFAULT_RESYNC, DEFAULT_SWEEP, Daemon, Options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default=os.environ.get("LBCTL_CONFIG_DIR", DEFAULT_CONFIG_DIR),
                        metavar="DIR", help=f"configuration directory (default: {DEFAULT_CONFIG_DIR})")
    parser.add_argument("--debounce", type=parse_duration, default=DEFAULT_DEBOUNCE, metavar="DURATION",
                        help=f"wait this long after the last file event before acting "
                             f"(default: {format_duration(DEFAULT_DEBOUNCE)})")
    parser.add_argument("--resync", type=parse_duration, default=DEFAULT_RESYNC, metavar="DURATION",
                        help=f"full resync period: re-read live state and repair drift "
                             f"(default: {format_duration(DEFAULT_RESYNC)})")
    parser.add_argument("--sweep", type=parse_duration, default=DEFAULT_SWEEP, metavar="DURATION",
                        help=f"end flows idle past their timeout this often, sending a RST to both sides of "
                             f"an established TCP connection; 0 turns it off "
                             f"(default: {format_duration(DEFAULT_SWEEP)})")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"status endpoint (/healthz /readyz /status /metrics; "
                             f"default: {DEFAULT_LISTEN}; 'none' disables it)")
    parser.add_argument("--log-format", choices=FORMATS, default="kv",
                        help="structured log lines on stderr: key=value (default) or json")
    parser.add_argument("--no-probes", action="store_true",
                        help="do not run the Services' health probes (every endpoint counts as healthy)")
    parser.add_argument("--no-incremental", action="store_true",
                        help="always reconcile fully (slower at scale; for debugging)")
    add_follow_option(parser)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from reconciler.drivers.registry import driver_set
    from reconciler.fswatch import DirWatcher
    from reconciler.watch_engine import ReconcileEngine

    if args.sweep < 0:
        raise LbctlError("--sweep must not be negative", hint="e.g. --sweep 5s, or --sweep 0 to turn it off")
    if args.debounce <= 0 or args.resync <= 0:
        raise LbctlError("--debounce and --resync must be greater than 0",
                         hint="e.g. --debounce 200ms --resync 30s")
    listen = None if args.listen.lower() in ("none", "off", "") else parse_listen(args.listen)
    directory = os.path.abspath(args.dir)
    statedir.ensure(ctx.state_dir)  # a state dir others can open would let them block every reconcile

    follow = args.follow_external_symlinks
    from reconciler.drivers.netns import in_netns

    netns = ctx.netns
    engine = ReconcileEngine(directory, ctx.state_dir, driver_set(ctx), incremental=not args.no_incremental,
                             follow_external_symlinks=follow,
                             probe_namespace=(lambda: in_netns(netns)) if netns else None)
    log = EventLog(args.log_format)

    def watcher(path: str, notify: Callable[[str], None]) -> DirWatcher:
        return DirWatcher(path, notify, follow_external_symlinks=follow)

    from reconciler.drivers.route_events import RouteEvents

    def route_events(on_change: Callable[[], None]) -> RouteEvents:
        return RouteEvents(on_change, namespace=(lambda: in_netns(netns)) if netns else None)

    daemon = Daemon(Options(directory=directory, debounce=args.debounce, resync=args.resync, listen=listen,
                            probes=not args.no_probes, sweep=args.sweep),
                    engine, log, watcher_factory=watcher, route_events_factory=route_events)
    daemon.install_signals()
    if ctx.netns:
        log.info("box", netns=ctx.netns, state_dir=str(ctx.state_dir), pin_root=str(ctx.pin_root))
    daemon.run()
    return 0
