"""Endpoint selection in the real datapath: 10,000 synthetic flows per algorithm.

Flows are new 5-tuples run through BPF_PROG_TEST_RUN (tc hook; the XDP entry
shares the code); the endpoint a flow got is read from the rewritten packet.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter

import pytest

from reconciler import maglev
from reconciler.records import Backend
from tests.bpf import packets as P
from tests.bpf.harness import BACKENDS4, VIP4, Datapath

pytestmark = pytest.mark.root
FLOWS = 10_000


def client(i: int) -> str:
    return str(ipaddress.IPv4Address("10.98.0.0") + 1 + i % 200)


def flows(dp: Datapath, n: int = FLOWS, proto: int = P.TCP, start: int = 0) -> list[str]:
    out = []
    for i in range(start, start + n):
        pkt = P.Pkt(client(i), VIP4, proto, 1024 + i // 200, 80, payload=b"")
        r = dp.run("tc", pkt.bytes())
        assert r.retval == 7
        out.append(P.parse(r.data).dst)
    return out


def shares(dsts: list[str]) -> dict[str, float]:
    c = Counter(dsts)
    return {k: v / len(dsts) for k, v in c.items()}


def backends(weights: tuple[int, ...] = (1, 1, 1)) -> list[Backend]:
    return [Backend(a, 8080, w) for a, w in zip(BACKENDS4, weights, strict=True)]


def assert_weights(dsts: list[str], weights: tuple[int, ...], tol: float = 0.05) -> None:
    """Shares within 5% of the weights; for hashed selections, within sampling noise (3 sigma) if larger."""
    s = shares(dsts)
    total = sum(weights)
    for addr, w in zip(BACKENDS4, weights, strict=True):
        want = w / total
        sigma = (want * (1 - want) / len(dsts)) ** 0.5
        assert abs(s.get(addr, 0.0) - want) <= max(tol * want, 3 * sigma), (addr, s, want)


def table_for(selection: str, bes: list[Backend]) -> bytes:
    if selection != "maglev":
        return b""
    return maglev.for_backends([(b.address, b.port, b.weight) for b in bes])


@pytest.mark.parametrize("selection", ["rr", "hash", "priority", "maglev"])
def test_even_distribution(dp: Datapath, selection: str) -> None:
    bes = backends()
    dp.service(VIP4, "tcp", 80, bes, selection=selection, maglev_table=table_for(selection, bes))
    assert_weights(flows(dp), (1, 1, 1))


def test_round_robin_is_exact_across_cpus(dp: Datapath) -> None:
    """New flows landing on alternating CPUs still take the endpoints in turn."""
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "this test needs two CPUs to alternate between"
    dp.service(VIP4, "tcp", 80, backends(), selection="rr")
    dsts: list[str] = []
    try:
        for i in range(30):
            os.sched_setaffinity(0, {cpus[i % 2]})
            dsts += flows(dp, 1, start=i)
    finally:
        os.sched_setaffinity(0, cpus)
    assert Counter(dsts) == {b: 10 for b in BACKENDS4}
    assert all(dsts[i] != dsts[i + 1] for i in range(len(dsts) - 1)), dsts


@pytest.mark.parametrize("selection", ["rr", "hash", "priority", "maglev", "lc"])
def test_weights_honoured(dp: Datapath, selection: str) -> None:
    w = (1, 2, 5)
    bes = backends(w)
    dp.service(VIP4, "tcp", 80, bes, selection=selection, maglev_table=table_for(selection, bes))
    assert_weights(flows(dp), w)


def test_persist_keeps_a_source_on_one_endpoint(dp: Datapath) -> None:
    dp.service(VIP4, "tcp", 80, backends(), selection="persist")
    per_source: dict[str, set[str]] = {}
    for i in range(FLOWS):
        pkt = P.Pkt(client(i), VIP4, P.TCP, 1024 + i // 200, 80, payload=b"")
        per_source.setdefault(pkt.src, set()).add(P.parse(dp.run("tc", pkt.bytes()).data).dst)
    assert all(len(v) == 1 for v in per_source.values())
    spread = Counter(next(iter(v)) for v in per_source.values())
    assert len(spread) == 3  # sources are spread over all endpoints


def test_persist_survives_endpoint_set_change(dp: Datapath) -> None:
    key = dp.service(VIP4, "tcp", 80, backends(), selection="persist")
    first = {P.parse(dp.run("tc", P.Pkt(client(0), VIP4, P.TCP, 2000, 80).bytes()).data).dst}
    # Add a fourth endpoint: the source keeps its endpoint on a new connection.
    dp.set_endpoints(key, backends() + [Backend("10.99.0.13", 8080)])
    again = P.parse(dp.run("tc", P.Pkt(client(0), VIP4, P.TCP, 2001, 80).bytes()).data).dst
    assert {again} == first


def test_least_connections_prefers_idle_endpoint(dp: Datapath) -> None:
    dp.service(VIP4, "tcp", 80, backends(), selection="lc")
    dsts = flows(dp, 300)
    assert Counter(dsts) == {b: 100 for b in BACKENDS4}
    # Close every flow that went to the first endpoint: new flows go there first.
    for i, d in enumerate(dsts):
        if d == BACKENDS4[0]:
            pkt = P.Pkt(client(i), VIP4, P.TCP, 1024 + i // 200, 80, flags=P.RST | P.ACK, payload=b"")
            dp.run("tc", pkt.bytes())
    assert set(flows(dp, 100, start=300)) == {BACKENDS4[0]}


def test_maglev_moves_few_flows_when_one_endpoint_goes(dp: Datapath) -> None:
    n = 5
    bes = [Backend(f"10.99.0.{10 + i}", 8080) for i in range(n)]
    key = dp.service(VIP4, "udp", 80, bes, selection="maglev",
                     maglev_table=maglev.for_backends([(b.address, b.port, 1) for b in bes]))
    before = flows(dp, proto=P.UDP)
    kept = bes[:2] + bes[3:]
    dp.set_endpoints(key, kept, maglev.for_backends([(b.address, b.port, 1) for b in kept]))
    ct = dp.driver.map("lb_ct")
    for k in [k for k, _ in ct.items()]:
        ct.delete(k)  # forget flows so every packet is hashed through the new table
    after = flows(dp, proto=P.UDP)
    moved = sum(a != b for a, b in zip(before, after, strict=True)) / FLOWS
    assert moved <= 1.2 / n
    assert bes[2].address not in after


@pytest.mark.parametrize(("weights", "want"), [((80, 20), (26, 6)), ((40, 40, 20), (13, 13, 6))])
def test_priority_is_a_deterministic_weighted_share(dp: Datapath, weights: tuple[int, ...],
                                                    want: tuple[int, ...]) -> None:
    """loxilb's wrrtcplb1/2: 32 new flows from random client ports land exactly on the weights."""
    import random

    rng = random.Random(12)
    addrs = BACKENDS4[: len(weights)]
    dp.service(VIP4, "tcp", 80, [Backend(a, 8080, w) for a, w in zip(addrs, weights, strict=True)],
               selection="priority")
    dsts = []
    for _ in range(32):
        pkt = P.Pkt(client(rng.randrange(200)), VIP4, P.TCP, rng.randrange(1024, 65536), 80, payload=b"")
        dsts.append(P.parse(dp.run("tc", pkt.bytes()).data).dst)
    assert tuple(Counter(dsts)[a] for a in addrs) == want


def test_persist_leaves_an_endpoint_whose_weight_went_to_0(dp: Datapath) -> None:
    """A source bound to an endpoint now drained or down (weight 0) gets another one for a new flow."""
    key = dp.service(VIP4, "tcp", 80, backends(), selection="persist")
    first = P.parse(dp.run("tc", P.Pkt(client(0), VIP4, P.TCP, 2000, 80).bytes()).data).dst
    weights = tuple(0 if a == first else 1 for a in BACKENDS4)
    dp.set_endpoints(key, backends(weights))
    again = P.parse(dp.run("tc", P.Pkt(client(0), VIP4, P.TCP, 2001, 80).bytes()).data).dst
    assert again != first
