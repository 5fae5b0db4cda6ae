"""A configuration over a datapath capacity is refused by validation, before anything is touched.

The capacities are settings of the Datapath resource (``spec.capacities``, defaults in
``model.DatapathCapacities``); here they are set small so the test needs a few services, not
30,000.  Both paths are held to it: a plain ``load_dir`` and one through a ``ParseCache`` (the
daemon's and ``plan``'s incremental check, ``semantic_index``), the latter also after an edit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import model
from reconciler.config import ParseCache, load_dir
from reconciler.config.semantic import selection_chunks_of
from reconciler.documents import to_document
from reconciler.model import DatapathCapacities, ServiceSpec, default_conntrack_flows


def service(name: str, vip: str, endpoints: int, ports: int = 1, extra: str = "") -> str:
    eps = ", ".join(f"{{address: 10.0.{i // 250}.{i % 250 + 1}}}" for i in range(endpoints))
    pts = ", ".join(f"{{port: {80 + p}}}" for p in range(ports))
    return (f"apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n"
            f"spec:\n  vip: {vip}\n  ports: [{pts}]\n  endpoints: [{eps}]\n{extra}")


def datapath(**caps: int) -> str:
    body = "".join(f"\n    {k}: {v}" for k, v in caps.items())
    return ("apiVersion: lbctl.dev/v1alpha1\nkind: Datapath\nmetadata: {name: box}\n"
            f"spec:\n  interfaces: [eth0]\n  capacities:{body}\n")


# (setting, its value, fitting services (name, endpoints, ports, extra), the one too many,
#  the count then needed, the words of the message)
CASES = [
    ("services", 3, [("a", 1, 3, "")], ("b", 1, 1, ""), 4, "service entries"),
    ("endpoints", 20, [("a", 5, 2, ""), ("b", 10, 1, "")], ("c", 1, 1, ""), 21, "endpoint counters"),
    # maglev, a 251-entry table: 1 chunk, 2 slots; 2 ports: 4 chunks
    ("selectionChunks", 6, [("a", 10, 2, "  selection: maglev\n  maglevTableSize: 251\n"), ("b", 3, 1, "")],
     ("c", 1, 1, ""), 8, "selection table chunks"),
]


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize(("setting", "value", "fits", "extra", "needed", "words"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_configuration_over_a_capacity_is_refused(
        tmp_path: Path, cached: bool, setting: str, value: int,
        fits: list[tuple[str, int, int, str]], extra: tuple[str, int, int, str], needed: int,
        words: str) -> None:
    (tmp_path / "00-datapath.yaml").write_text(datapath(**{setting: value}))
    for n, (name, eps, ports, more) in enumerate(fits):
        (tmp_path / f"{name}.yaml").write_text(service(name, f"198.51.100.{n + 1}", eps, ports, more))
    cache = ParseCache() if cached else None
    assert load_dir(tmp_path, cache=cache).errors == ()
    name, eps, ports, more = extra
    (tmp_path / f"{name}.yaml").write_text(service(name, "198.51.100.9", eps, ports, more))
    errors = load_dir(tmp_path, cache=cache).errors
    assert len(errors) == 1, errors
    text = str(errors[0])
    assert text.startswith(f"{tmp_path / f'{name}.yaml'}:") and f"Service/{name}:" in text
    assert f"needs {needed:,} {words}" in text
    assert f"capacity is {value:,} (spec.capacities.{setting})" in text
    # the hint points at the setting that raises it, with its file and line
    assert f"raise spec.capacities.{setting} of Datapath/box ({tmp_path / '00-datapath.yaml'}:" in text
    (tmp_path / "00-datapath.yaml").write_text(datapath(**{setting: needed}))  # raising it makes room
    assert load_dir(tmp_path, cache=cache).errors == ()


def test_without_a_datapath_the_default_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "DEFAULT_SERVICE_CAPACITY", 2)
    (tmp_path / "a.yaml").write_text(service("a", "198.51.100.1", 1, ports=3))
    (err,) = load_dir(tmp_path).errors
    assert "needs 3 service entries" in str(err) and "capacity is 2 (spec.capacities.services)" in str(err)
    assert "raise spec.capacities.services in a Datapath resource" in str(err)


def test_capacities_out_of_range_are_refused_by_the_schema(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text(datapath(conntrackFlows=10, services=0))
    errors = [str(e) for e in load_dir(tmp_path).errors]
    assert any("spec.capacities.conntrackFlows" in e for e in errors), errors
    assert any("spec.capacities.services" in e for e in errors), errors


def test_capacities_build_and_export(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text(datapath(conntrackFlows=2048, selectionChunks=99))
    (res,) = load_dir(tmp_path).resources
    assert res.spec.capacities == DatapathCapacities(conntrack_flows=2048,  # type: ignore[union-attr]
                                                     selection_chunks=99)
    assert to_document(res)["spec"]["capacities"] == {"selectionChunks": 99, "conntrackFlows": 2048}


def test_conntrack_default_is_sized_to_the_box() -> None:
    gib = 1 << 30
    assert default_conntrack_flows(25276059648) == 1507328  # this 24 GB development box
    assert default_conntrack_flows(24 * gib) >= 1_000_000
    assert default_conntrack_flows(2 * gib) == 131072
    assert default_conntrack_flows(256 << 20) == 65536  # the floor
    assert default_conntrack_flows(1 << 50) == model.MAX_CONNTRACK_FLOWS
    resolved = DatapathCapacities(services=7).resolved(24 * gib)
    assert resolved.services == 7 and resolved.conntrack_flows == default_conntrack_flows(24 * gib)
    assert resolved.endpoints == model.DEFAULT_ENDPOINT_CAPACITY


def test_selection_chunks_of_a_service() -> None:
    from reconciler.model import Endpoint, ServicePort

    def spec(weights: list[int], selection: str = "rr", size: int | None = None) -> ServiceSpec:
        return ServiceSpec(ports=(ServicePort(80), ServicePort(81)), vip="198.51.100.1",
                           endpoints=tuple(Endpoint(f"10.0.0.{i + 1}", w) for i, w in enumerate(weights)),
                           selection=selection, maglev_table_size=size)  # type: ignore[arg-type]

    assert selection_chunks_of(spec([])) == 0
    assert selection_chunks_of(spec([1] * 10)) == 2 * 2 * 1  # 10 entries: one chunk, two slots, two ports
    assert selection_chunks_of(spec([600, 400])) == 2 * 2 * 1  # gcd 200: a 5-entry table
    assert selection_chunks_of(spec([1000, 999])) == 2 * 2 * 4  # 1999 entries: 4 chunks
    assert selection_chunks_of(spec([100000, 1])) == 2 * 2 * 9  # scaled to 4096 (+1 per endpoint)
    assert selection_chunks_of(spec([1, 1], "maglev", 65521)) == 2 * 2 * 128
