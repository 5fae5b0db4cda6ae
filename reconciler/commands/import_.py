"""``lbctl import k8s``: Kubernetes Services -> lbctl Service files in a directory.

Why this exists: a box in front of a cluster takes its Services from the
cluster (kube-loxilb's job for loxilb).  Sources: manifest files (``-f``, the
output of ``kubectl get svc,endpointslices,nodes -A -o yaml``) or the live
cluster (kubeconfig or in-cluster config); ``--watch`` keeps the directory in
sync, ``--write-status`` writes the VIP back into each Service's status.  The
mapping itself is ``reconciler.k8s.importer`` (pure); the cluster side is
``reconciler.k8s.cluster`` and ``reconciler.k8s.sync``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from reconciler.errors import LbctlError
from reconciler.k8s import importer, manifests, outdir
from reconciler.k8s.objects import key_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=["k8s"], help="where the objects come from: k8s (Kubernetes)")
    parser.add_argument("-f", "--filename", action="append", nargs="+", metavar="FILE", default=None,
                        help="read manifests (kubectl get svc,endpointslices,nodes -A -o yaml) instead of "
                             "a live cluster")
    parser.add_argument("-o", "--out-dir", metavar="DIR", required=True,
                        help="directory to write one file per Service into")
    parser.add_argument("--default-pool", metavar="NAME", default=importer.DEFAULT_POOL,
                        help="Pool of Services without loxilb.io/poolSelect (default: default)")
    parser.add_argument("--default-pool-ipv6", metavar="NAME", default=None,
                        help="Pool of IPv6 Services without loxilb.io/poolSelect (default: --default-pool)")
    parser.add_argument("--class", dest="lb_class", metavar="CLASS", default=importer.DEFAULT_CLASS,
                        help=f"spec.loadBalancerClass to import (default: {importer.DEFAULT_CLASS})")
    parser.add_argument("--kubeconfig", metavar="FILE", default=None,
                        help="kubeconfig of the live cluster (default: $KUBECONFIG, ~/.kube/config, "
                             "then the in-cluster service account)")
    parser.add_argument("--context", metavar="NAME", default=None, help="kubeconfig context")
    parser.add_argument("--watch", action="store_true",
                        help="keep the directory in sync with the cluster (list + watch); runs until stopped")
    parser.add_argument("--write-status", action="store_true",
                        help="write each Service's VIP into its status.loadBalancer.ingress (live cluster)")


def options(args: argparse.Namespace) -> importer.Options:
    return importer.Options(lb_class=args.lb_class, default_pool=args.default_pool,
                            default_pool_ipv6=args.default_pool_ipv6)


def report(result: importer.Result, sync: outdir.SyncReport, out_dir: str, output: str,
           seen: set[str] | None = None) -> None:
    """What one import did: warnings on stderr (those not in ``seen`` yet), the summary on stdout."""
    for w in result.warnings:
        if seen is None or str(w) not in seen:
            print(f"Warning: {w}", file=sys.stderr, flush=True)
    if seen is not None:
        seen.update(str(w) for w in result.warnings)
    for name in sync.refused:
        print(f"Warning: {out_dir}/{name} exists and was not written by lbctl import k8s; left alone",
              file=sys.stderr)
    if output == "json":
        print(json.dumps({"files": [f.filename for f in result.files], "written": list(sync.written),
                          "deleted": list(sync.deleted), "unchanged": sync.unchanged,
                          "refused": list(sync.refused), "skipped_services": result.skipped,
                          "warnings": [str(w) for w in result.warnings]}, sort_keys=True), flush=True)
        return
    print(f"Imported {len(result.files)} resources into {out_dir}: {len(sync.written)} written, "
          f"{len(sync.deleted)} deleted, {sync.unchanged} unchanged ({result.skipped} Services of another "
          f"class or type skipped, {len(result.warnings)} warnings).", flush=True)  # --watch: one line each


def run(args: argparse.Namespace, ctx: Any) -> int:
    opts = options(args)
    if args.filename:
        if args.watch or args.write_status:
            raise LbctlError("--watch and --write-status need a live cluster, not -f files",
                             hint="drop -f to read the cluster named by --kubeconfig")
        objects = manifests.read_files([p for group in args.filename for p in group])
        result = importer.convert(objects, opts)
        done = outdir.sync(args.out_dir, [(f.filename, f.data) for f in result.files])
        report(result, done, args.out_dir, ctx.output)
        return 0
    from reconciler.k8s import cluster, sync

    api = cluster.connect(args.kubeconfig, args.context)
    if not args.watch:
        objects = cluster.list_all(api).objects
        result = importer.convert(objects, opts)
        done = outdir.sync(args.out_dir, [(f.filename, f.data) for f in result.files])
        report(result, done, args.out_dir, ctx.output)
        if args.write_status:
            services = {key_of(s): s for s in objects.services}
            sync.write_status(api, result, services, ctx.state_dir)
        return 0
    seen: set[str] = set()  # --watch repeats a warning only when it changes
    sync.run(api, opts, args.out_dir, state_dir=ctx.state_dir if args.write_status else None,
             on_import=lambda r, s: report(r, s, args.out_dir, ctx.output, seen))
    return 0
