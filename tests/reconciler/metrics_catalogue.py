"""What the metrics tests compare: the names of docs/metrics.md, of a scrape and of the dashboard.

Shared by the unit tests (fake sources) and the root tests (a real ``lbctl watch``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "metrics.md"
DASHBOARD = REPO / "packaging" / "grafana" / "lbctl-dashboard.json"

# Families whose series come from the firewall, the health probes or BGP: declared in every
# scrape, with series once their source reports (the root test configures all three).
PENDING = {
    "lbctl_endpoint_up": "health probes",
    "lbctl_endpoint_probe_duration_seconds": "health probes",
    "lbctl_firewall_rule_hits_total": "firewall",
    "lbctl_firewall_rule_rate_limited_total": "firewall",
    "loxilb_fw_rule_drop_packets_total": "firewall",
    "lbctl_bgp_session_up": "BGP",
    "lbctl_bgp_session_state": "BGP",
    "lbctl_bgp_announced_prefixes": "BGP",
    "lbctl_bgp_received_prefixes": "BGP",
}


def doc_names() -> set[str]:
    """Every metric of the catalogue's tables (rows starting with a backticked name)."""
    return set(re.findall(r"^\| `((?:lbctl|loxilb)_[a-z0-9_]+)` \|", DOC.read_text(), re.M))


def scrape_names(text: str) -> set[str]:
    """Every family a scrape declares (``# TYPE`` lines), without prometheus_client's ``_created``."""
    names = set(re.findall(r"^# TYPE (\S+) \S+$", text, re.M))
    return {n for n in names if not n.endswith("_created")}


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", []) if t.get("expr")]


def expr_metrics(expr: str) -> set[str]:
    """The metric families an expression reads (histogram series map to their family)."""
    out = set()
    for name in re.findall(r"\b((?:lbctl|loxilb)_[a-z0-9_]+)\b", expr):
        out.add(re.sub(r"_(bucket|sum|count)$", "", name) if name.endswith(("_bucket", "_sum", "_count"))
                and not name.endswith("_total") else name)
    return out


def promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for Prometheus' HTTP API."""
    return expr.replace("$__rate_interval", "30s").replace("$__interval", "30s").replace("$__range", "5m")
