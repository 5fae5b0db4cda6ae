"""The up/down rule of health probes, the probe targets and the health record (pure, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.desired import compile_state, healthy_endpoints
from reconciler.model import Endpoint, Probe, Resource
from reconciler.probes import store
from reconciler.probes.health import HealthTracker, ProbeResult
from reconciler.probes.probers import ProbeFailed, check_http, timeout_means_up
from reconciler.probes.sctp import INIT, INIT_ACK, crc32c, init, init_ack, parse
from reconciler.probes.targets import ProbeTarget, probe_targets
from reconciler.records import EndpointSet
from tests.reconciler.fakes import service

OK = ProbeResult(True, 0.001, None, 1.0)
FAIL = ProbeResult(False, 0.001, "connection refused", 1.0)


def target(retries: int = 3, **kw: object) -> ProbeTarget:
    base: dict[str, object] = dict(service="web", address="10.0.0.1", type="tcp", port=80, request=None,
                                   response=None, status=200, interval=1.0, timeout=0.5, retries=retries)
    base.update(kw)
    return ProbeTarget(**base)  # type: ignore[arg-type]


def tracker(t: ProbeTarget) -> HealthTracker:
    h = HealthTracker()
    h.configure({t.key: t})
    return h


def test_retries_failures_in_a_row_take_an_endpoint_down_and_one_success_brings_it_back() -> None:
    t = target(retries=3)
    h = tracker(t)
    assert h.record(t.key, FAIL) is None
    assert h.record(t.key, FAIL) is None
    down = h.record(t.key, FAIL)
    assert down is not None and not down.healthy
    assert down.reason == "connection refused" and down.failures == 3
    assert h.health() == {t.key: False}
    assert h.record(t.key, FAIL) is None  # already down: no second transition
    up = h.record(t.key, OK)
    assert up is not None and up.healthy
    assert h.health() == {}


def test_a_backend_failing_every_other_probe_never_flaps_with_retries_2() -> None:
    """Every success resets the failure count (loxilb PR#1087's bug was a count that never did)."""
    t = target(retries=2)
    h = tracker(t)
    for i in range(1000):
        assert h.record(t.key, FAIL if i % 2 else OK) is None
    assert h.health() == {}
    assert h.status()[0]["transitions"] == 0


def test_status_is_plain_data_with_the_last_failure_and_latency() -> None:
    t = target(retries=1)
    h = tracker(t)
    h.record(t.key, FAIL)
    h.record(t.key, ProbeResult(True, 0.0025, None, 2.0))
    (st,) = h.status()
    assert st["health"] == "up" and st["last_result"] == "ok" and st["latency_ms"] == 2.5
    assert st["last_failure"] == "connection refused" and st["last_failure_time"] == 1.0
    assert st["transitions"] == 2 and st["consecutive_failures"] == 0


def test_recorded_down_endpoints_start_down_and_unprobed_ones_are_forgotten(tmp_path: Path) -> None:
    t = target()
    store.save(tmp_path, {t.key: False, ("gone", "10.9.9.9"): False})
    h = HealthTracker(store.load_down(tmp_path))
    h.configure({t.key: t})
    assert h.health() == {t.key: False}
    h.configure({})
    assert h.health() == {} and h.status() == []
    assert store.load_health(tmp_path / "none") == {}


def test_probe_targets_apply_defaults_and_skip_type_none() -> None:
    probed = service("web", vip="198.51.100.1", ports=((80, "TCP", 8080),),
                     endpoints=("10.0.0.1", "10.0.0.2"), probe=Probe(type="http", request="/healthz"))
    plain = service("plain", vip="198.51.100.2", endpoints=("10.0.0.3",))
    got = probe_targets([probed, plain])
    assert sorted(got) == [("web", "10.0.0.1"), ("web", "10.0.0.2")]
    t = got[("web", "10.0.0.1")]
    assert (t.type, t.port, t.request, t.status, t.interval, t.timeout, t.retries) == (
        "http", 8080, "/healthz", 200, 10.0, 2.0, 3)


def _backup_service() -> Resource:
    return service("web", vip="198.51.100.1", endpoints=(
        Endpoint("10.0.0.1"), Endpoint("10.0.0.2"), Endpoint("10.0.0.3", backup=True)))


@pytest.mark.parametrize(("down", "want"), [
    ((), ["10.0.0.1", "10.0.0.2"]),
    (("10.0.0.1",), ["10.0.0.2"]),
    (("10.0.0.1", "10.0.0.2"), ["10.0.0.3"]),
    (("10.0.0.1", "10.0.0.2", "10.0.0.3"), []),
])
def test_backups_take_new_flows_only_while_no_primary_is_healthy(down: tuple[str, ...],
                                                                  want: list[str]) -> None:
    res = _backup_service()
    health = {("web", a): False for a in down}
    assert [e.address for e in healthy_endpoints(res, health)] == want
    sets = compile_state([res], health=health)["endpoints"]
    (eps,) = sets.values()
    assert isinstance(eps, EndpointSet)
    # Out of selection means weight 0 in the list (open flows stay), not gone.
    assert [b.address for b in eps.backends] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [b.address for b in eps.backends if b.weight > 0] == want


def test_http_check() -> None:
    t = target(type="http", response="ok")
    check_http(t, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with pytest.raises(ProbeFailed, match="HTTP 503"):
        check_http(t, b"HTTP/1.0 503 Unavailable\r\n\r\nok")
    with pytest.raises(ProbeFailed, match="lacks"):
        check_http(t, b"HTTP/1.0 200 OK\r\n\r\nnope")
    with pytest.raises(ProbeFailed, match="without a response"):
        check_http(t, b"")
    assert timeout_means_up(target(type="udp")) and not timeout_means_up(target(type="udp", response="x"))


def test_sctp_init_and_init_ack() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    pkt = init(40000, 9999, 0xABCDEF01, 7)
    assert parse(pkt) == (40000, 9999, 0, INIT, 0xABCDEF01)
    ack = init_ack(9999, 40000, 0xABCDEF01, 0x11111111, 1)
    assert parse(ack) == (9999, 40000, 0xABCDEF01, INIT_ACK, 0x11111111)
    assert parse(ack[:-1] + bytes([ack[-1] ^ 1])) is None  # a bad checksum is ignored


def test_a_probe_that_cannot_run_here_leaves_the_endpoint_alone(tmp_path: Path) -> None:
    """An unreadable caFile is this box's problem, not the endpoint's: no failure is counted."""
    import asyncio

    from reconciler.probes.probers import ProbeNotRun, Probers

    t = target(type="https", retries=1, ca_file=str(tmp_path / "missing.pem"))
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ProbeNotRun, match="cannot load the TLS files"):
            Probers(loop)._ssl_context(t)
    finally:
        loop.close()
    h = tracker(t)
    h.not_run(t.key, "cannot load the TLS files of the probe")
    (st,) = h.status()
    assert st["health"] == "up" and st["consecutive_failures"] == 0 and st["probe_error"].startswith("cannot")
    h.record(t.key, OK)
    assert h.status()[0]["probe_error"] is None
