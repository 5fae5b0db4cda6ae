"""Golden-file tests of the plan renderer (text) and of ``Plan.to_json()``.

Regenerate after an intended change with ``LBCTL_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from reconciler.desired import compile_state
from reconciler.model import Endpoint
from reconciler.plan import Plan, diff
from reconciler.records import ServiceKey, empty_state
from reconciler.render import NO_CHANGES, print_plan, render_plain, render_rich
from tests.reconciler.fakes import bgp_config, datapath, fake_table, firewall, service

GOLDEN = Path(__file__).parent / "golden"


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LBCTL_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs (LBCTL_UPDATE_GOLDEN=1 to accept)"


def _mixed_plan() -> Plan:
    live = compile_state([
        datapath("eth0", "eth1"), firewall("deny-bogons", 10, "192.0.2.0/24"),
        service("web", ports=[(80, "TCP", 8080)], endpoints=["10.0.1.10", "10.0.1.11", "10.0.1.12"]),
        service("dns", vip="198.51.100.53", ports=[(53, "UDP")], endpoints=["10.0.2.1"]),
        service("legacy", vip="198.51.100.99", ports=[443], endpoints=["10.0.3.1"], bgp=True),
        bgp_config(),
    ], table_builder=fake_table)
    desired = compile_state([
        datapath("eth0", "eth1", hook="xdp"), firewall("deny-bogons", 10, "192.0.2.0/25"),
        service("web", ports=[(80, "TCP", 8080)],
                endpoints=["10.0.1.10", Endpoint("10.0.1.11", weight=3), "10.0.1.13"]),
        service("dns", vip="198.51.100.53", ports=[(53, "UDP")], endpoints=["10.0.2.1"], mode="dsr"),
        service("api", vip="2001:db8::10", ports=[(443, "TCP", 8443)], endpoints=["2001:db8:1::1"],
                selection="maglev", maglev_table_size=251, bgp=True),
        bgp_config(),
    ], table_builder=fake_table)
    return diff(desired, live)


def test_golden_mixed_text() -> None:
    _check("mixed.txt", render_plain(_mixed_plan().to_json()))


def test_golden_mixed_json() -> None:
    _check("mixed.json", _mixed_plan().to_json())


def test_golden_create_text() -> None:
    plan = diff(compile_state([datapath("eth0"), service("web", ports=[(80, "TCP", 8080)])]), empty_state())
    _check("create.txt", render_plain(plan.to_json()))


def test_no_changes() -> None:
    s = compile_state([service("web")])
    assert render_plain(diff(s, s).to_json()) == NO_CHANGES + "\n"


def test_legend_lists_only_present_actions() -> None:
    text = render_plain(diff(compile_state([service("web")]), empty_state()).to_json())
    assert "+ create" in text and "update in-place" not in text and "destroy" not in text.split("Plan:")[0]
    assert text.endswith("Plan: 3 to add, 0 to change, 0 to destroy.\n")


def test_renderer_reads_only_json() -> None:
    data = json.loads(_mixed_plan().to_json())
    assert render_plain(data) == render_plain(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        render_plain({**data, "format_version": 99})


def test_rich_and_print() -> None:
    plan = _mixed_plan().to_json()
    assert render_rich(plan).plain == render_plain(plan)
    buf = io.StringIO()
    print_plan(plan, Console(file=buf, force_terminal=True, color_system="standard", width=200))
    out = buf.getvalue()
    assert "\x1b[" in out  # coloured on a terminal
    buf2 = io.StringIO()
    print_plan(plan, Console(file=buf2, force_terminal=False))
    assert buf2.getvalue() == render_plain(plan)


def test_faults_of_live_records_show_as_what_the_apply_clears() -> None:
    desired = compile_state([service("web", ports=[(80, "TCP", 8080)])])
    live = {kind: dict(records) for kind, records in desired.items()}
    key = next(iter(live["service"]))
    live["service"][key] = replace(live["service"][key], faults=("lb_svc: no entry for it",))
    stray = "lb_svc: an entry no service of lbctl's owns points at service id 3"
    live["service"]["tcp/198.51.100.77:80"] = replace(
        live["service"][key], key=ServiceKey.parse("tcp/198.51.100.77:80"), faults=(stray,))
    plan = diff(desired, live)
    data = json.loads(plan.to_json())
    assert [(c["action"], c["fields"]) for c in data["changes"]] == [("delete", []), ("update", ["faults"])]
    assert "faults" not in data["changes"][1]["after"]  # desired records have none: not in the JSON
    text = render_plain(data)
    assert '      ~ faults = [\n          - "lb_svc: no entry for it"\n        ]\n' in text
    assert '      - faults          = ["lb_svc: an entry no service of lbctl\'s owns' in text
    assert text.endswith("Plan: 0 to add, 1 to change, 1 to destroy.\n")


def test_a_replaced_bgp_peer_says_its_session_alone_is_reset() -> None:
    from reconciler.records import BgpPeer

    old = BgpPeer("192.0.2.254", 65000, 179, 90, 30, 0, "s3cret")
    new = BgpPeer("192.0.2.254", 65000, 179, 30, 10, 0, "s3cret")
    plan = diff({"bgp-peer": {"192.0.2.254": new}}, {"bgp-peer": {"192.0.2.254": old}})
    text = render_plain(plan.to_json())
    assert ("# bgp-peer 192.0.2.254 must be replaced (its BGP session is reset; other sessions stay up)"
            in text)
    assert "hold_time = 90 -> 30  # forces replacement" in text and "s3cret" not in text
