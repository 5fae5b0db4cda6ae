"""Tests of export: live records -> input documents that load back to the same state."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.desired import compile_state
from reconciler.export import export_documents
from reconciler.ipam import allocate
from reconciler.model import Endpoint, ServicePort
from reconciler.records import Backend, EndpointSet, Record, ServiceEntry, ServiceKey
from tests.reconciler.fakes import datapath, fake_table, firewall, service

config = pytest.importorskip("reconciler.config")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def roundtrip(state: dict[str, dict[str, Record]], tmp: Path, **kw: object) -> dict[str, dict[str, Record]]:
    docs = export_documents(state, **kw)  # type: ignore[arg-type]
    (tmp / "export.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    loaded = config.load_dir(tmp)
    assert not loaded.errors, "\n".join(map(str, loaded.errors))
    return compile_state(loaded.resources, {}, table_builder=fake_table)


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="examples/configs not present")
def test_examples_roundtrip(tmp_path: Path) -> None:
    loaded = config.load_dir(EXAMPLES)
    assert not loaded.errors
    vips = allocate(loaded.resources).vips
    state = compile_state(loaded.resources, vips, table_builder=fake_table)
    bgp = next(r.spec for r in loaded.resources if r.kind == "BGPConfig")
    again = roundtrip(state, tmp_path, bgp_config={"localAS": bgp.local_as, "routerID": bgp.router_id})
    assert again == state


def test_without_bgp_config_bgp_is_left_out(tmp_path: Path) -> None:
    state = compile_state([datapath("eth0"), service("web")])
    assert roundtrip(state, tmp_path) == state


def test_target_ports_secondary_vips_timeouts(tmp_path: Path) -> None:
    state = compile_state([
        datapath("eth0", hook="xdp", vip_interface="vips0"), firewall("fw", 5, "192.0.2.0/24"),
        service("a", ports=[ServicePort(80, "SCTP", target_port=8080), ServicePort(53, "SCTP")],
                endpoints=[Endpoint("10.0.0.1", 3), "10.0.0.2"], secondary_vips=("198.51.100.20",),
                session_timeout=99, mode="dsr", allowed_sources=("192.0.2.0/24",)),
        service("u", vip="198.51.100.60", ports=[ServicePort(80, target_port=8080), ServicePort(53, "UDP")],
                session_timeout=99),
        service("b", vip="198.51.100.30", ports=[80, 81],
                endpoints=[Endpoint("10.0.0.1", target_port=9000), Endpoint("10.0.0.2", target_port=9001)]),
        service("m", vip="198.51.100.40", selection="maglev", maglev_table_size=1009),
        service("r", vip="198.51.100.50", ports=[ServicePort(1000, "UDP", end_port=2000)], endpoints=[]),
    ], table_builder=fake_table)
    assert roundtrip(state, tmp_path) == state


def test_inconsistent_groups_are_split_exactly(tmp_path: Path) -> None:
    k1, k2 = ServiceKey("198.51.100.1", "tcp", 80, 80), ServiceKey("198.51.100.1", "tcp", 443, 443)
    state: dict[str, dict[str, Record]] = {
        "service": {str(k1): ServiceEntry(k1, "odd", "default", "rr", 240, 10800),
                    str(k2): ServiceEntry(k2, "odd", "fullnat", "hash", 240, 10800)},
        "endpoints": {str(k1): EndpointSet(k1, (Backend("10.0.0.1", 0),)),
                      str(k2): EndpointSet(k2, (Backend("10.0.0.2", 8443),))},
        "vip": compile_state([service("x", vip="198.51.100.1")])["vip"],
    }
    docs = export_documents(state)
    assert [d["metadata"]["name"] for d in docs] == ["odd-tcp-80", "odd-tcp-443"]
    again = roundtrip(state, tmp_path)
    assert again["endpoints"] == state["endpoints"]
    assert {k: (v.mode, v.selection) for k, v in again["service"].items()} == {  # type: ignore[union-attr]
        k: (v.mode, v.selection) for k, v in state["service"].items()}  # type: ignore[union-attr]
