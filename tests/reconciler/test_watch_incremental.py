"""The incremental planner gives the same changes as a full diff, on the keys it touches only."""

from __future__ import annotations

import random

from reconciler.desired import compile_state
from reconciler.incremental import Index
from reconciler.model import Resource
from reconciler.plan import apply_to, diff
from reconciler.records import Record
from tests.reconciler.fakes import bgp_config, datapath, fake_table, firewall, pool, service


def compiled(resources: list[Resource],
             allocated: dict[str, str] | None = None) -> dict[str, dict[str, Record]]:
    return compile_state(resources, allocated or {}, table_builder=fake_table)


def base() -> list[Resource]:
    return [datapath("eth0"), bgp_config(),
            service("web", vip="198.51.100.10", ports=(80, 443), bgp=True),
            service("dns", vip="198.51.100.10", ports=((53, "UDP"),), endpoints=("10.0.2.1",)),
            service("api", vip="198.51.100.11", ports=(8080,))]


def test_editing_one_service_touches_only_its_keys() -> None:
    res = base()
    index = Index(res, compiled(res), {})
    new = list(res)
    new[2] = service("web", vip="198.51.100.10", ports=(80, 443), bgp=True,
                     endpoints=("10.0.1.10", "10.0.1.99"))
    partial = index.plan(new)
    assert partial is not None and partial.changed == ("web",)
    assert [(c.kind, c.key, c.action) for c in partial.plan.changes] == [
        ("endpoints", "tcp/198.51.100.10:443", "update"), ("endpoints", "tcp/198.51.100.10:80", "update")]
    # identical to what a full diff finds
    assert partial.plan.changes == diff(compiled(new), compiled(res)).changes
    # Only records whose desired value changes are read back and diffed: the
    # unchanged service entries and the VIP (a 10k-address netlink dump) are not.
    assert {k: v for k, v in partial.touched.items() if v} == {
        "endpoints": frozenset({"tcp/198.51.100.10:80", "tcp/198.51.100.10:443"})}


def test_removing_a_service_keeps_a_shared_vip() -> None:
    res = base()
    index = Index(res, compiled(res), {})
    new = [r for r in res if r.name != "web"]
    partial = index.plan(new)
    assert partial is not None
    full = diff(compiled(new), compiled(res))
    assert partial.plan.changes == full.changes
    assert all(c.kind != "vip" for c in partial.plan.changes)  # dns still uses 198.51.100.10
    assert any(c.kind == "announce" and c.action == "delete" for c in partial.plan.changes)


def test_adding_and_removing_services_in_sequence_matches_full_diffs() -> None:
    res = base()
    index = Index(res, compiled(res), {})
    live = compiled(res)
    steps = [
        res + [service("new", vip="198.51.100.20", ports=(81,))],
        res + [service("new", vip="198.51.100.20", ports=(81,), endpoints=("10.9.9.9",))],
        [r for r in res if r.name != "api"] + [service("new", vip="198.51.100.11", ports=(81,))],
        [r for r in res if r.name not in ("api", "dns")],
    ]
    for new in steps:
        partial = index.plan(new)
        assert partial is not None
        assert partial.plan.changes == diff(compiled(new), live).changes
        live = apply_to(live, partial.plan)
        index.commit(partial)
        assert {k: v for k, v in live.items() if k in index.desired} == index.desired
        assert live == compiled(new)


def test_other_kinds_and_new_pool_allocations_need_a_full_reconcile() -> None:
    res = base()
    index = Index(res, compiled(res), {})
    assert index.plan(res + [firewall("deny", 10, "192.0.2.0/24")]) is None
    assert index.plan([r for r in res if r.kind != "Datapath"]) is None
    with_pool = res + [pool("edge", "203.0.113.0/28"), service("p", vip=None, pool="edge")]
    index = Index(with_pool, compiled(with_pool, {"p": "203.0.113.1"}), {"p": "203.0.113.1"})
    # an endpoint edit of a pool service keeps its allocation: incremental
    edited = with_pool[:-1] + [service("p", vip=None, pool="edge", endpoints=("10.0.1.10",))]
    partial = index.plan(edited)
    assert partial is not None and partial.plan.changes == diff(
        compiled(edited, {"p": "203.0.113.1"}), compiled(with_pool, {"p": "203.0.113.1"})).changes
    # a new pool service needs IPAM: full
    assert index.plan(with_pool + [service("q", vip=None, pool="edge")]) is None
    # a fullnat source address is checked against the box: full
    index = Index(res, compiled(res), {})
    sourced = service("s", vip="198.51.100.77", mode="fullnat", source_address="10.0.9.1")
    assert index.plan(res + [sourced]) is None


def test_unchanged_resources_plan_nothing() -> None:
    res = base()
    index = Index(res, compiled(res), {})
    partial = index.plan(list(res))
    assert partial is not None and partial.plan.empty and partial.changed == ()


def test_live_reads_of_touched_keys_find_drift_on_them() -> None:
    res = base()
    desired = compiled(res)
    index = Index(res, desired, {})
    live = {k: dict(v) for k, v in desired.items()}
    del live["endpoints"]["tcp/198.51.100.11:8080"]  # drift on the key we are about to touch
    asked: list[dict[str, frozenset[str]]] = []

    def read_keys(touched):  # type: ignore[no-untyped-def]
        asked.append(dict(touched))
        return {kind: {k: live[kind][k] for k in keys if k in live.get(kind, {})}
                for kind, keys in touched.items()}

    new = res[:-1] + [service("api", vip="198.51.100.11", ports=(8080,), endpoints=("10.0.1.10",))]
    partial = index.plan(new, read_keys)
    assert partial is not None
    assert [(c.kind, c.action) for c in partial.plan.changes] == [("endpoints", "create")]
    # the changed endpoint set is read from the kernel (and its drift found); the
    # unchanged service entry and VIP are not asked for
    assert {k: v for k, v in asked[0].items() if v} == {"endpoints": frozenset({"tcp/198.51.100.11:8080"})}
    live = apply_to(live, partial.plan)
    assert index.verify(partial, read_keys).empty


def test_random_edit_sequences_match_full_diffs() -> None:
    rng = random.Random(7)
    vips = [f"198.51.100.{i}" for i in range(1, 5)]

    def svc(name: str) -> Resource:
        eps = tuple(f"10.0.{rng.randrange(3)}.{rng.randrange(1, 6)}" for _ in range(rng.randrange(0, 4)))
        return service(name, vip=rng.choice(vips), ports=(int(name[1:]) + 1000,), endpoints=eps,
                       bgp=rng.random() < 0.5)

    current = {f"s{i}": svc(f"s{i}") for i in range(8)}
    res = [datapath("eth0"), bgp_config(), *current.values()]
    live = compiled(res)
    index = Index(res, live, {})
    for _ in range(200):
        name = f"s{rng.randrange(12)}"
        if name in current and rng.random() < 0.3:
            del current[name]
        else:
            current[name] = svc(name)
        new = [datapath("eth0"), bgp_config(), *current.values()]
        partial = index.plan(new)
        assert partial is not None
        assert partial.plan.changes == diff(compiled(new), live).changes
        live = apply_to(live, partial.plan)
        index.commit(partial)
        assert live == compiled(new)


def test_scoped_scan_compares_only_parsed_and_vanished_files() -> None:
    a1 = service("a1", vip="198.51.100.1", file="a.yaml")
    a2 = service("a2", vip="198.51.100.2", file="a.yaml")
    b1 = service("b1", vip="198.51.100.3", file="b.yaml")
    res = [datapath("eth0"), a1, a2, b1]
    index = Index(res, compiled(res), {})
    # b.yaml re-parsed with b1 edited; a.yaml not parsed (same objects)
    b1e = service("b1", vip="198.51.100.3", endpoints=("10.0.0.9",), file="b.yaml")
    new = [res[0], a1, a2, b1e]
    partial = index.plan(new, files=["test.yaml", "a.yaml", "b.yaml"], parsed=["b.yaml"])
    assert partial is not None and partial.changed == ("b1",)
    index.commit(partial)
    # a service moves from a.yaml to c.yaml (both parsed); then a.yaml vanishes
    a2c = service("a2", vip="198.51.100.2", file="c.yaml")
    new2 = [res[0], a1, a2c, b1e]
    partial = index.plan(new2, files=["test.yaml", "a.yaml", "b.yaml", "c.yaml"], parsed=["a.yaml", "c.yaml"])
    assert partial is not None and partial.changed == () and partial.plan.empty
    index.commit(partial)
    new3 = [res[0], a2c, b1e]
    partial = index.plan(new3, files=["test.yaml", "b.yaml", "c.yaml"], parsed=[])
    assert partial is not None and partial.changed == ("a1",)
    assert partial.plan.changes == diff(compiled(new3), compiled(new2)).changes
    index.commit(partial)
    assert index.plan(new3, files=["test.yaml", "b.yaml", "c.yaml"], parsed=[]).changed == ()  # type: ignore[union-attr]


def test_first_or_last_vip_of_a_family_needs_a_full_reconcile() -> None:
    """The kernel settings (IPv6 forwarding) follow the set of VIP families: no partial plan may skip them."""
    res = base()
    index = Index(res, compiled(res), {})
    v6 = service("v6", vip="2001:db8::10", ports=(80,), endpoints=("2001:db8:1::1",))
    assert index.plan([*res, v6]) is None  # first IPv6 VIP: net.ipv6.*.forwarding are now needed
    another_v4 = service("more", vip="198.51.100.12", ports=(80,))
    partial = index.plan([*res, another_v4])
    assert partial is not None and partial.plan.changes == diff(compiled([*res, another_v4]),
                                                                compiled(res)).changes
    with_v6 = [*res, v6]
    index = Index(with_v6, compiled(with_v6), {})
    assert index.plan(res) is None  # the last IPv6 VIP goes: the settings are given back
    second_v6 = service("v6b", vip="2001:db8::11", ports=(80,), endpoints=("2001:db8:1::1",))
    partial = index.plan([*with_v6, second_v6])
    assert partial is not None
    index.commit(partial)
    assert index.plan(res) is None and index.plan([*res, v6]) is not None
