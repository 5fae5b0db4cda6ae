"""The traffic bench's rule-set builders, result writer and topology (bench/_traffic.py).

Why this exists: the bench is rerun by hand after merges; a broken ruleset or
writer would only show at the end of a ten-minute run.  These tests check the
builders' shapes, the writer on made-up numbers, and (root) that the topology
comes up, every system switches on and off through the real tools, and
nothing is left behind.  No traffic is measured and no time is asserted.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from types import ModuleType

import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "_traffic.py")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_traffic", _PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_traffic"] = mod
    spec.loader.exec_module(mod)
    return mod


T = _load()


def test_scale_services_hold_the_benchmarked_vip_once_in_the_middle() -> None:
    svcs = T.scale_services(11, 5)
    assert len(svcs) == 11
    assert [v for v, _, _ in svcs].count(T.VIP4) == 1
    assert svcs[5][0] == T.VIP4 and len(svcs[5][2]) == 3
    assert all(len(eps) == T.SCALE_ENDPOINTS for v, _, eps in svcs if v != T.VIP4)
    assert len({v for v, _, _ in svcs}) == 11


def test_iptables_ruleset_is_kube_proxy_shaped() -> None:
    svcs = T.scale_services(4, 1)
    text = T.iptables_restore_text(svcs)
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    assert sum(ln.startswith("-A KUBE-SERVICES ") for ln in lines) == 4
    assert sum(" DNAT " in ln for ln in lines) == 3 * 10 + 3
    # the last endpoint of a service is taken without a statistic match
    assert "-A KUBE-SVC-00001 -j KUBE-SEP-00001-2" in lines
    assert (
        "-A KUBE-SVC-00001 -m statistic --mode random --probability 0.33333333333 -j KUBE-SEP-00001-0"
        in lines
    )


def test_nft_ruleset_has_a_chain_per_service_and_one_verdict_map() -> None:
    text = T.nft_scale_text(T.scale_services(4, 1))
    assert text.count("chain s") == 4 and text.count("map svcs") == 1
    assert f"{T.VIP4} . 80 : goto s00001" in text
    assert "pre" in T.nft_scale_hook(True) and "delete chain" in T.nft_scale_hook(False)


def test_writer_reports_ratios_loads_and_every_section() -> None:
    r = T.Results(rounds=2, seconds=1.0)
    for s, g, c in (
        (T.LBCTL, 10.0, 1300.0),
        (T.DIRECT, 10.0, 1000.0),
        (T.IPT, 9.0, 1000.0),
        (T.NFT, 9.0, 900.0),
    ):
        r.gbit[s] = [g, g]
        r.conn[s] = [c, c + 10]
    r.conn_scale = {T.LBCTL: [1290.0, 1290.0], T.IPT: [350.0, 360.0], T.NFT: [880.0, 900.0]}
    r.pps = {T.XDP: [3e5, 3e5], T.LBCTL: [2e5, 2e5], T.DIRECT: [1e5, 1e5]}
    r.pps_sent = {T.XDP: [3e5, 3e5], T.LBCTL: [2e5, 2e5], T.DIRECT: [2e5, 2e5]}
    r.pps_redirect = {T.XDP: [1.0, 1.0]}
    r.load = {"bulk TCP and conn/s": [0.5, 1.5]}
    text = T.write_markdown(r, ["- date: x"], 0.25, 1.75)
    assert "0.25 / 1.75" in text and "1.00 [0.50-1.50]" in text
    assert "| lbctl tc | 10.00 [10.00-10.00] | 1.00x | 1305 [1300-1310] | 1.30x | 1.30x |" in text
    assert "| iptables DNAT | 1005 [1000-1010] | 355 [350-360] | 0.35x |" in text
    assert "| lbctl xdp | 300 [300-300] | 3.00x | 300 [300-300] | 100% | 1.00 [1.00-1.00] |" in text
    assert "| direct (no LB) | 100 [100-100] | 1.00x | 200 [200-200] | 50% | - |" in text
    assert "## Method" in text


@pytest.mark.root
def test_topology_and_every_system_switch_on_and_off() -> None:
    tb = T.TrafficBench(rounds=1, seconds=1, scale=20)
    try:
        tb.setup()
        lb = tb.tb.lb
        for name in (T.LBCTL, T.XDP, T.DIRECT, T.IPT, T.NFT):
            with tb.system(name):
                pass
        for name in (T.LBCTL, T.IPT, T.NFT):
            with tb.system(name, scale=True):
                if name == T.IPT:
                    assert "KUBE-SERVICES" in T.sh(
                        "ip", "netns", "exec", lb, "iptables", "-t", "nat", "-S", "PREROUTING"
                    )
        rules = T.sh("ip", "netns", "exec", lb, "iptables", "-t", "nat", "-S", "PREROUTING")
        assert "DNAT" not in rules and "KUBE-SERVICES" not in rules
        assert "bnone" not in T.sh("ip", "netns", "exec", lb, "nft", "list", "tables")
        assert tb.scale_drv.stats() is not None
    finally:
        tb.teardown()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert tb.tb.prefix not in listed
    assert not any(os.path.exists(p) for p in tb.pins)
    assert all(p.poll() is not None for p in tb.procs)
