"""Tests of the planner: actions, ordering, determinism, and the apply property."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired import compile_state
from reconciler.plan import FORMAT_VERSION, Plan, apply_to, diff
from reconciler.records import (
    Announcement,
    Attachment,
    Backend,
    BgpPeer,
    EndpointSet,
    Record,
    ServiceEntry,
    ServiceKey,
    VipAddress,
    empty_state,
)
from tests.reconciler.fakes import bgp_config, datapath, firewall, service


def _steps(plan: Plan) -> list[tuple[str, str, str]]:
    return [(c.symbol, c.kind, c.key) for c in plan.changes]


def test_from_empty_orders_dependencies_first() -> None:
    desired = compile_state([datapath("eth0"), firewall("fw", 1), service("web", bgp=True), bgp_config()])
    plan = diff(desired, empty_state())
    kinds = [c.kind for c in plan.changes]
    # forwarding on eth0 (and rp_filter on it and on all) before traffic is steered
    assert kinds == ["sysctl"] * 3 + ["attach", "firewall", "endpoints", "service", "vip", "bgp-global",
                                      "announce"]
    assert all(c.action == "create" for c in plan.changes)
    assert plan.counts() == {"add": 10, "change": 0, "destroy": 0}


def test_teardown_order_is_reverse() -> None:
    live = compile_state([datapath("eth0"), firewall("fw", 1), service("web", bgp=True), bgp_config()])
    plan = diff(empty_state(), live)
    assert [c.kind for c in plan.changes] == ["announce", "bgp-global", "service", "endpoints", "vip",
                                              "firewall", "attach", *["sysctl"] * 3]  # settings last
    assert plan.counts() == {"add": 0, "change": 0, "destroy": 10}


def test_deletes_come_before_creates() -> None:
    live = compile_state([service("old", vip="198.51.100.1")])
    desired = compile_state([service("new", vip="198.51.100.2")])
    actions = [c.action for c in diff(desired, live).changes]
    assert actions == ["delete", "delete", "delete", "create", "create", "create"]


def test_update_vs_replace_and_fields() -> None:
    live = compile_state([service("web"), datapath("eth0")])
    desired = compile_state([service("web", endpoints=["10.0.1.10"], session_timeout=60),
                             datapath("eth0", hook="xdp")])
    plan = diff(desired, live)
    by = {(c.kind, c.key): c for c in plan.changes}
    ep = by[("endpoints", "tcp/198.51.100.10:80")]
    assert ep.action == "update" and ep.fields == ("backends",)
    svc = by[("service", "tcp/198.51.100.10:80")]
    assert svc.action == "update" and svc.fields == ("session_timeout",)
    att = by[("attach", "eth0")]
    assert att.action == "replace" and att.fields == ("hook",)
    assert plan.counts() == {"add": 1, "change": 2, "destroy": 1}
    mode = diff(compile_state([service("web", mode="dsr"), datapath("eth0")]), live).changes
    assert [(c.kind, c.action, c.fields) for c in mode] == [("service", "replace", ("mode",))]


def test_no_changes() -> None:
    s = compile_state([service("web"), datapath("eth0")])
    assert diff(s, s).empty
    assert diff(s, json.loads(json.dumps({}))) == diff(s, empty_state())


def test_json_is_versioned_and_deterministic() -> None:
    res = [service(f"s{i}", vip=f"198.51.100.{i}") for i in range(1, 20)] + [datapath("eth0")]
    desired = compile_state(res)
    shuffled = compile_state(random.Random(1).sample(res, len(res)))
    a = diff(desired, empty_state()).to_json()
    b = diff(shuffled, empty_state()).to_json()
    assert a == b
    data = json.loads(a)
    assert data["format_version"] == FORMAT_VERSION
    assert data["summary"] == {"add": 61, "change": 0, "destroy": 0}


def test_sensitive_and_binary_fields_in_json() -> None:
    desired = {"bgp-peer": {"192.0.2.1": BgpPeer("192.0.2.1", 65000, 179, 90, 30, 0, "secret")},
               "endpoints": {"tcp/198.51.100.1:80": EndpointSet(
                   ServiceKey("198.51.100.1", "tcp", 80, 80), (Backend("10.0.0.1", 0),), b"\x00\x00" * 251)}}
    text = diff(desired, {}).to_json()
    assert "secret" not in text and "(sensitive)" in text
    assert "table[251] sha256:" in text


class CountingMapping(Mapping[str, Record]):
    """A mapping that counts every key it hands out or looks up."""

    def __init__(self, data: Mapping[str, Record]) -> None:
        self.data = dict(data)
        self.touches = 0

    def __getitem__(self, key: str) -> Record:
        self.touches += 1
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        for key in self.data:
            self.touches += 1
            yield key

    def __len__(self) -> int:
        return len(self.data)


def test_diff_is_linear_in_the_records() -> None:
    """Each record is looked at a fixed number of times, however many there are (the time
    of a 10,000-service diff is benchmarked in bench/, not asserted here)."""
    res = [service(f"s{i}", vip=f"10.{i // 250}.{i % 250}.1",
                   endpoints=[f"10.200.{j}.{i % 250}" for j in range(10)]) for i in range(2_000)]
    desired = compile_state(res)
    counted_desired = {k: CountingMapping(v) for k, v in desired.items()}
    counted_live = {k: CountingMapping(v) for k, v in desired.items()}
    assert diff(counted_desired, counted_live).empty
    records = sum(len(v) for v in desired.values())
    touches = sum(m.touches for m in [*counted_desired.values(), *counted_live.values()])
    assert records == 2_000 * 3  # a service, its endpoints and its VIP each
    assert touches <= 6 * records, f"{touches} touches for {records} records: not linear"


# --- property: applying the plan to live yields desired -------------------

_ips = st.sampled_from([f"198.51.100.{i}" for i in range(1, 6)])
_keys = st.builds(lambda ip, proto, port: ServiceKey(ip, proto, port, port), _ips,
                  st.sampled_from(["tcp", "udp"]), st.sampled_from([53, 80, 443]))
_backends = st.lists(st.builds(Backend, st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
                               st.sampled_from([0, 8080]), st.integers(1, 3)), max_size=3, unique=True)


@st.composite
def _states(draw: st.DrawFn) -> dict[str, dict[str, Record]]:
    state = empty_state()
    for key in draw(st.lists(_keys, max_size=6, unique=True)):
        state["service"][str(key)] = ServiceEntry(
            key, draw(st.sampled_from(["a", "b"])), draw(st.sampled_from(["default", "dsr"])),
            draw(st.sampled_from(["rr", "maglev"])), draw(st.sampled_from([20, 240])), 10800)
        if draw(st.booleans()):
            state["endpoints"][str(key)] = EndpointSet(key, tuple(draw(_backends)))
    for ip in draw(st.lists(_ips, max_size=4, unique=True)):
        state["vip"][ip] = VipAddress(ip, 32, draw(st.sampled_from(["lbctl0", "other0"])))
        if draw(st.booleans()):
            state["announce"][f"{ip}/32"] = Announcement(f"{ip}/32")
    for ifname in draw(st.lists(st.sampled_from(["eth0", "eth1"]), max_size=2, unique=True)):
        state["attach"][ifname] = Attachment(ifname, draw(st.sampled_from(["tc", "xdp"])))
    return state


def _nonempty(state: dict[str, dict[str, Record]]) -> dict[str, dict[str, Record]]:
    return {k: v for k, v in state.items() if v}


@settings(max_examples=300, deadline=None)
@given(_states(), _states())
def test_applying_plan_to_live_yields_desired(desired: dict[str, dict[str, Record]],
                                              live: dict[str, dict[str, Record]]) -> None:
    plan = diff(desired, live)
    assert _nonempty(apply_to(live, plan)) == _nonempty(desired)
    assert diff(desired, apply_to(live, plan)).empty
    assert plan.to_json() == diff(desired, live).to_json()
    # ordering invariants
    pos = {(c.kind, c.key, c.action): i for i, c in enumerate(plan.changes)}
    for (kind, key, action), i in pos.items():
        if kind == "service" and action == "create" and ("endpoints", key, "create") in pos:
            assert pos[("endpoints", key, "create")] < i
        if kind == "service" and action == "delete" and ("endpoints", key, "delete") in pos:
            assert pos[("endpoints", key, "delete")] > i
        if kind == "vip" and action == "delete" and ("announce", f"{key}/32", "delete") in pos:
            assert pos[("announce", f"{key}/32", "delete")] < i
    first_build = next((i for i, c in enumerate(plan.changes) if c.action != "delete"), len(plan))
    assert all(c.action != "delete" or c.kind == "attach" for c in plan.changes[first_build:])
