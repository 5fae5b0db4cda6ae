"""``lbctl status``: ask the running ``lbctl watch`` daemon how the box is doing.

Why this exists: operators want one command that says whether the daemon is
converged, which revision is live, and what the last error was, without
curling JSON.  It GETs ``/status`` from the daemon's local endpoint and prints a
table (``-o json``: the JSON as served).  ``--publish NAMESPACE/DAEMONSET`` keeps
publishing this node's status as an annotation of that DaemonSet for Argo CD's
health check (``reconciler.k8s.health``, ``examples/argocd/``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

from reconciler.cli import Context
from reconciler.errors import LbctlError
from reconciler.status import DEFAULT_LISTEN, Address, parse_listen

TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                        help=f"where the daemon's status endpoint listens (default: {DEFAULT_LISTEN})")
    parser.add_argument("--publish", metavar="NAMESPACE/DAEMONSET", default=None,
                        help="write this node's status into that DaemonSet's annotation "
                             "status.lbctl.dev/NODE (for the Argo CD health check), every --every seconds")
    parser.add_argument("--node", metavar="NAME", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                        help="node name for --publish (default: $NODE_NAME, else the host name)")
    parser.add_argument("--every", metavar="SECONDS", type=float, default=10.0,
                        help="--publish interval; 0 publishes once (default: 10)")
    parser.add_argument("--kubeconfig", metavar="FILE", default=None,
                        help="kubeconfig for --publish (default: $KUBECONFIG, ~/.kube/config, in-cluster)")


def fetch_status(address: Address, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The daemon's /status document; ``LbctlError`` when no daemon answers."""
    url = f"{address.url}/status"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own loopback URL
            doc = json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        raise LbctlError(f"{url} answered {exc.code} {exc.reason}",
                         hint="is something other than lbctl watch listening there?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LbctlError(f"no lbctl watch daemon answers on {address} ({reason})",
                         hint="start it with 'lbctl watch DIR', "
                              "or pass the --listen it was started with") from None
    except ValueError:
        raise LbctlError(f"{url} did not return JSON",
                         hint="is something other than lbctl watch listening there?") from None
    if not isinstance(doc, dict):
        raise LbctlError(f"{url} returned unexpected JSON", hint="is the daemon the same lbctl version?")
    return doc


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="lbctl watch", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    ready = doc.get("ready")
    valid = doc.get("config_valid")
    table.add_row("directory", _fmt(doc.get("directory")))
    table.add_row("pid", _fmt(doc.get("pid")))
    table.add_row("started", _fmt(doc.get("started")))
    table.add_row("ready", "[green]yes[/]" if ready else "[red]no[/] (no reconcile has verified yet)")
    table.add_row("config valid", "-" if valid is None else "[green]yes[/]" if valid else "[red]no[/]")
    rev = doc.get("revision") or {}
    table.add_row("revision", f"{rev.get('value')} ({rev.get('type')})" if rev else "-")
    last = doc.get("last_reconcile")
    if last:
        changes = last.get("changes", {})
        style = "green" if last.get("result") == "ok" else "red"
        table.add_row("last reconcile",
                      f"{last.get('time')} [{style}]{last.get('result')}[/] {last.get('type')} "
                      f"({last.get('trigger')}) in {last.get('duration_ms')} ms: "
                      f"+{changes.get('create', 0)} ~{changes.get('update', 0)} -{changes.get('delete', 0)}")
    else:
        table.add_row("last reconcile", "-")
    counts = doc.get("counts") or {}
    records = counts.get("records") or {}
    table.add_row("resources", _fmt(counts.get("resources")))
    table.add_row("records", ", ".join(f"{k}={v}" for k, v in records.items()) or "-")
    by_kind = doc.get("drift_repairs_by_kind") or {}
    table.add_row("drift repairs", _fmt(doc.get("drift_repairs"))
                  + (f" ({', '.join(f'{k}={v}' for k, v in by_kind.items())})" if by_kind else ""))
    table.add_row("reconciles", _fmt(doc.get("reconciles")))
    probed = [e for e in doc.get("endpoints") or [] if isinstance(e, dict)]
    if probed:
        down = sorted(f"{e.get('service')}/{e.get('address')}" for e in probed if e.get("health") == "down")
        table.add_row("endpoint health", f"{len(probed)} probed, {len(down)} down"
                      + (f" ({', '.join(down[:10])}{', ...' if len(down) > 10 else ''})" if down else ""))
    console.print(table)
    error = doc.get("last_error")
    if error:
        console.print(f"[bold red]Last error[/] ({error.get('time')}):")
        for line in error.get("errors", []):
            console.print(f"  {line}", markup=False, highlight=False)
    warnings = doc.get("warnings") or []
    if warnings:
        console.print("[bold yellow]Configured but not carried out by this box:[/]")
        for line in warnings:
            console.print(f"  {line}", markup=False, highlight=False)


def publish(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Publish this node's status until ``stop`` (once with ``--every 0``); only changes are written."""
    from reconciler.k8s import cluster, health

    namespace, sep, name = args.publish.partition("/")
    if not sep or not namespace or not name:
        raise LbctlError(f"--publish {args.publish!r} is not NAMESPACE/DAEMONSET",
                         hint="e.g. lbctl-system/lbctl")
    api = cluster.connect(args.kubeconfig)
    address = parse_listen(args.listen)
    stop = stop or threading.Event()
    last = None
    while True:
        try:
            value = health.node_report(fetch_status(address))
        except LbctlError as exc:
            value = health.node_report(None, str(exc))
        if value != last:
            try:
                cluster.annotate_daemonset(api, namespace, name, health.annotation_key(args.node), value)
                last = value
            except LbctlError as exc:
                if args.every <= 0:
                    raise
                print(f"Warning: {exc}", file=sys.stderr, flush=True)
        if args.every <= 0 or stop.wait(args.every):
            return 0


def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.publish:
        return publish(args)
    doc = fetch_status(parse_listen(args.listen))
    if ctx.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif ctx.output == "yaml":
        import yaml
        print(yaml.safe_dump(doc, sort_keys=True), end="")
    else:
        render(doc)
    return 0
