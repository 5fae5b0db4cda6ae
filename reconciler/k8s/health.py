"""One node's lbctl ``/status`` as a short annotation value for Argo CD's health check.

Why this exists: an Argo CD health check (Lua, ``examples/argocd/bootstrap/health.lua``)
sees only Kubernetes objects and has no JSON decoder, so each node's daemon
status is published as one flat annotation on the DaemonSet
(``status.lbctl.dev/NODE``: ``ready=true;valid=true;result=ok;digest=...;error=``)
by ``lbctl status --publish``, and the Lua script turns those into Healthy,
Progressing or Degraded.  This module is the mapping from ``/status``
(``reconciler/status.py``, built in ``reconciler/watch.py``) to that value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ANNOTATION_PREFIX = "status.lbctl.dev/"
MAX_ERROR = 200


def _clean(text: str) -> str:
    return " ".join(text.replace(";", ",").replace("=", ":").split())[:MAX_ERROR]


def node_report(doc: Mapping[str, Any] | None, unreachable: str = "no lbctl watch daemon answers") -> str:
    """The annotation value for one node; ``doc`` None when the daemon did not answer."""
    if doc is None:
        return f"ready=false;valid=unknown;result=none;digest=;error={_clean(unreachable)}"
    last = doc.get("last_reconcile") or {}
    error = doc.get("last_error") or {}
    errors = error.get("errors") or []
    message = errors[0] if errors else (last.get("error") or "")
    valid = doc.get("config_valid")
    return ";".join([
        f"ready={'true' if doc.get('ready') else 'false'}",
        f"valid={'unknown' if valid is None else 'true' if valid else 'false'}",
        f"result={last.get('result') or 'none'}",
        f"digest={_clean(str(doc.get('digest') or ''))}",
        f"error={_clean(str(message))}",
    ])


def annotation_key(node: str) -> str:
    return ANNOTATION_PREFIX + node
