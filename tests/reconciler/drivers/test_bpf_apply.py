"""Deletes end the flows of removed services and endpoints in one pass over conntrack per apply."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from reconciler.plan import Change
from reconciler.records import Backend, EndpointSet, ServiceEntry, ServiceKey
from tests.bpf.harness import Datapath

pytestmark = pytest.mark.root


def service(i: int) -> list[Change]:
    key = ServiceKey(f"10.96.{i // 200}.{i % 200 + 1}", "tcp", 80, 80)
    bes = tuple(Backend(f"10.95.{i // 200}.{j + 1}", 8080) for j in range(3))
    return [Change("endpoints", str(key), "create", None, EndpointSet(key, bes)),
            Change("service", str(key), "create", None, ServiceEntry(key, f"s{i}", "default", "persist",
                                                                      60, 60))]


def fill_flows(dp: Datapath, per_endpoint: int) -> None:
    """Synthetic conntrack entries (both directions) and affinities for every endpoint of every service."""
    from reconciler.drivers import _libbpf as B

    ffi = B.lib().ffi
    idx = dp.driver._idx
    ct, persist = dp.driver.map("lb_ct"), dp.driver.map("lb_persist")
    cts, pers = [], []
    n = 0
    for svc_id, stat_ids in idx.stat.items():
        for sid in stat_ids:
            for _ in range(per_endpoint):
                n += 1
                for d in (0, 1):
                    k = ffi.new("struct lb_ct_key *",
                                {"sport": n & 0xFFFF, "dport": d, "proto": 6, "family": 4})
                    k.saddr[0] = n
                    v = ffi.new("struct lb_ct *", {"dir": d, "svc_id": svc_id, "stat_id": sid, "timeout": 60})
                    cts.append((bytes(ffi.buffer(k)), bytes(ffi.buffer(v))))
                pk = ffi.new("struct lb_persist_key *", {"svc_id": svc_id, "family": 4})
                pk.saddr[0] = n
                pv = ffi.new("struct lb_persist *")
                pv.be.stat_id = sid
                pers.append((bytes(ffi.buffer(pk)), bytes(ffi.buffer(pv))))
    ct.update_batch_raw(cts)
    persist.update_batch_raw(pers)


def live_owners(dp: Datapath, name: str) -> list[tuple[int, int]]:
    """(service id, stat id) of every entry of lb_ct or lb_persist."""
    out = []
    for k, v in dp.driver.map(name).items():
        out.append((int(v.svc_id), int(v.stat_id)) if name == "lb_ct" else (int(k.svc_id), int(v.be.stat_id)))
    return sorted(out)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    from reconciler.drivers import _libbpf as B

    calls: dict[str, int] = {}
    orig = B.Map.items_raw

    def items_raw(self: B.Map, chunk: int = 1024) -> Iterator[tuple[bytes, bytes]]:
        calls[self.name] = calls.get(self.name, 0) + 1
        return orig(self, chunk)

    monkeypatch.setattr(B.Map, "items_raw", items_raw)
    yield calls


def test_deleting_services_and_endpoints_reads_conntrack_once_and_ends_exactly_their_flows(
        dp: Datapath, counted: dict[str, int]) -> None:
    changes = [c for i in range(12) for c in service(i)]
    dp.driver.apply(changes)
    fill_flows(dp, per_endpoint=2)
    idx = dp.driver._idx
    ids = {i: idx.ids[c.key] for i, c in enumerate(changes[::2])}
    before_ct, before_persist = live_owners(dp, "lb_ct"), live_owners(dp, "lb_persist")
    # Delete services 0-4 whole, the endpoint set of 5, and one endpoint of 6.
    gone = [Change(c.kind, c.key, "delete", c.after, None) for c in changes[: 2 * 5]]
    gone.append(Change("endpoints", changes[10].key, "delete", changes[10].after, None))
    six = changes[12].after
    assert isinstance(six, EndpointSet)
    dropped_sid = idx.stat[ids[6]][0]
    gone.append(Change("endpoints", changes[12].key, "update", six, EndpointSet(six.key, six.backends[1:])))
    counted.clear()
    dp.driver.apply(gone)
    assert counted.get("lb_ct") == 1 and counted.get("lb_persist") == 1, counted
    dead = {ids[i] for i in range(6)}
    for name, before in (("lb_ct", before_ct), ("lb_persist", before_persist)):
        want = [(s, st) for s, st in before if s not in dead and (s, st) != (ids[6], dropped_sid)]
        assert live_owners(dp, name) == want, name


def test_a_freed_service_id_is_not_reused_before_its_flows_end(dp: Datapath) -> None:
    """Deleting a service and creating another in one apply: the new one gets another id, so
    its flows are not ended with the old one's."""
    first = service(0)
    dp.driver.apply(first)
    old_id = dp.driver._idx.ids[first[0].key]
    changes = [Change(c.kind, c.key, "delete", c.after, None) for c in first] + service(1)
    dp.driver.apply(changes)
    assert dp.driver._idx.ids[service(1)[0].key] != old_id
    # The next apply may use it again.
    dp.driver.apply(service(2))
    assert dp.driver._idx.ids[service(2)[0].key] == old_id
