"""Tests of the IPAM allocator: shared and exclusive pools, stability, release, exhaustion."""

from __future__ import annotations

import random

from reconciler.ipam import Allocation, allocate
from reconciler.model import Resource, ServicePort
from tests.reconciler.fakes import pool, service


def svc(name: str, *ports: int, p: str = "edge", proto: str = "TCP") -> Resource:
    return service(name, vip=None, pool=p, ports=[ServicePort(x, proto) for x in ports] or [80])


def test_shared_pool_packs_by_ports() -> None:
    res = [pool("edge", "203.0.113.0/30"), svc("a", 80), svc("b", 443), svc("c", 80), svc("d", 80, 443)]
    r = allocate(res)
    assert not r.errors
    assert r.vips == {"a": "203.0.113.0", "b": "203.0.113.0", "c": "203.0.113.1", "d": "203.0.113.2"}
    assert r.allocations["a"] == Allocation("edge", "203.0.113.0")


def test_same_port_different_protocol_shares() -> None:
    r = allocate([pool("edge", "203.0.113.1"), svc("dns-t", 53), svc("dns-u", 53, proto="UDP")])
    assert r.vips == {"dns-t": "203.0.113.1", "dns-u": "203.0.113.1"}


def test_exclusive_pool_one_vip_per_service() -> None:
    r = allocate([pool("x", "203.0.113.10-203.0.113.12", sharing="exclusive"), svc("a", 80, p="x"),
                  svc("b", 443, p="x")])
    assert r.vips == {"a": "203.0.113.10", "b": "203.0.113.11"}


def test_stable_under_reorder_and_additions() -> None:
    base = [pool("edge", "203.0.113.0/28")] + [svc(f"s{i}", 80) for i in range(5)]
    first = allocate(base)
    shuffled = random.Random(3).sample(base, len(base))
    assert allocate(shuffled).vips == first.vips
    # a new service sorting first must not move anyone, given the store
    grown = base + [svc("a-new", 80)]
    again = allocate(grown, first.allocations)
    assert {k: v for k, v in again.vips.items() if k != "a-new"} == first.vips
    assert again.vips["a-new"] == "203.0.113.5"


def test_release_and_reuse() -> None:
    first = allocate([pool("edge", "203.0.113.0/30", sharing="exclusive"), svc("a"), svc("b")])
    second = allocate([pool("edge", "203.0.113.0/30", sharing="exclusive"), svc("b")],
                      first.allocations)
    assert second.allocations == {"b": first.allocations["b"]}
    third = allocate([pool("edge", "203.0.113.0/30", sharing="exclusive"), svc("b"), svc("c")],
                     second.allocations)
    assert third.vips == {"b": "203.0.113.1", "c": "203.0.113.0"}


def test_literal_vip_wins_and_occupies() -> None:
    lit = service("lit", vip="203.0.113.0", pool="edge", ports=[80])
    r = allocate([pool("edge", "203.0.113.0/30", sharing="exclusive"), lit, svc("a")])
    assert r.vips == {"a": "203.0.113.1"} and "lit" not in r.allocations


def test_stale_allocation_outside_pool_moves() -> None:
    prev = {"a": Allocation("edge", "198.51.100.1"), "b": Allocation("other", "203.0.113.3")}
    r = allocate([pool("edge", "203.0.113.0/30"), svc("a"), svc("b")], prev)
    assert r.vips == {"a": "203.0.113.0", "b": "203.0.113.1"}


def test_live_hints_when_store_lost() -> None:
    r = allocate([pool("edge", "203.0.113.0/30"), svc("a"), svc("b")], {},
                 hints={"b": "203.0.113.0", "a": "203.0.113.3"})
    assert r.vips == {"a": "203.0.113.3", "b": "203.0.113.0"}


def test_exhausted_pool_is_an_error_naming_pool_and_services() -> None:
    r = allocate([pool("tiny", "203.0.113.7/32", sharing="exclusive"), svc("a", p="tiny"),
                  svc("b", p="tiny"), svc("c", p="tiny")])
    assert r.vips == {"a": "203.0.113.7"}
    (err,) = r.errors
    text = str(err)
    assert text.startswith("test.yaml:1:1: Pool/tiny: spec.addresses: pool exhausted (1 address)")
    assert "2 services do not fit: b, c" in text and "sharing: shared" in text


def test_unknown_pool_is_an_error() -> None:
    (err,) = allocate([svc("a", p="nope")]).errors
    assert "Service/a: spec.pool: pool 'nope' does not exist" in str(err)


def test_ipv6_pool() -> None:
    r = allocate([pool("v6", "2001:db8:10::/126"), svc("a", p="v6"), svc("b", p="v6")])
    assert r.vips == {"a": "2001:db8:10::", "b": "2001:db8:10::1"}


def test_large_pool_allocation_is_linear() -> None:
    res = [pool("big", "10.0.0.0/16", sharing="exclusive")]
    res += [svc(f"s{i:05}", 80, p="big") for i in range(5000)]
    r = allocate(res)
    assert len(set(r.vips.values())) == 5000



def test_fullnat_source_must_be_on_the_box_or_in_a_pool() -> None:
    from dataclasses import replace

    from reconciler.ipam import source_errors
    from tests.reconciler.fakes import datapath

    def fullnat(name: str, source: str, mode: str = "fullnat") -> Resource:
        res = service(name)
        return replace(res, spec=replace(res.spec, mode=mode, source_address=source))

    dp = datapath("eth0")
    dp = replace(dp, spec=replace(dp.spec, source_address="192.0.2.99"))
    resources = [pool("edge", "198.51.100.32/28"), fullnat("in-pool", "198.51.100.40"),
                 fullnat("on-box", "192.0.2.1"), fullnat("nowhere", "192.0.2.77"),
                 fullnat("not-fullnat", "192.0.2.78", mode="onearm"), dp]
    errors = source_errors(resources, frozenset({"192.0.2.1", "10.0.0.1"}))
    assert [(e.kind, e.name, e.path) for e in errors] == [("Service", "nowhere", "spec.sourceAddress"),
                                                          ("Datapath", "box", "spec.sourceAddress")]
    assert "neither an address of this box nor in a Pool" in errors[0].message and errors[0].hint
    assert source_errors(resources, None) == ()  # no driver knows the box: nothing refused
