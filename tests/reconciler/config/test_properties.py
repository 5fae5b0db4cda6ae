"""Property tests: generated valid services load; digest is order-independent;
the fast schema predicate agrees with jsonschema."""

from __future__ import annotations

import copy
import ipaddress
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.config import load_bytes, load_dir, schemas

names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)
ports = st.integers(min_value=1, max_value=65535)
v4 = st.integers(min_value=int(ipaddress.IPv4Address("10.0.0.1")),
                 max_value=int(ipaddress.IPv4Address("10.255.255.254"))
                 ).map(lambda n: str(ipaddress.IPv4Address(n)))


@st.composite
def services(draw: Any) -> dict[str, Any]:
    eps = draw(st.lists(v4, min_size=0, max_size=8, unique=True))
    spec: dict[str, Any] = {
        "vip": draw(st.sampled_from(["198.51.100.7", "203.0.113.9"])),
        "ports": [{"port": draw(ports), "protocol": draw(st.sampled_from(["TCP", "UDP"]))}],
        "endpoints": [{"address": a, "weight": draw(st.integers(0, 255))} for a in eps],
    }
    if draw(st.booleans()):
        spec["mode"] = draw(st.sampled_from(["default", "onearm", "fullnat", "dsr"]))
    if draw(st.booleans()):
        spec["selection"] = draw(st.sampled_from(["rr", "hash", "persist", "lc", "maglev", "priority"]))
    return {"apiVersion": "lbctl.dev/v1alpha1", "kind": "Service", "metadata": {"name": draw(names)},
            "spec": spec}


@given(services())
def test_generated_services_load(doc: dict[str, Any]) -> None:
    result = load_bytes("gen.yaml", yaml.safe_dump(doc).encode())
    assert result.errors == ()
    (res,) = result.resources
    assert res.name == doc["metadata"]["name"]
    assert [e.address for e in res.spec.endpoints] == [e["address"] for e in doc["spec"]["endpoints"]]  # type: ignore[union-attr]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(services(), min_size=1, max_size=5, unique_by=lambda d: d["metadata"]["name"]), st.randoms())
def test_digest_is_order_independent(docs: list[dict[str, Any]], rnd: Any) -> None:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        for i, d in enumerate(docs):
            Path(a, f"{i}.yaml").write_text(yaml.safe_dump(d))
        shuffled = docs[:]
        rnd.shuffle(shuffled)
        Path(b, "all.yaml").write_text(yaml.safe_dump_all(shuffled))
        assert load_dir(a).digest == load_dir(b).digest


def _mutations() -> Any:
    junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=8),
                     st.sampled_from(["10.0.0.300", "10.0.0.0/8", "TCP", "fulnat", "80"]),
                     st.just([]), st.just({}))
    return st.lists(st.tuples(st.integers(0, 1000), junk), min_size=1, max_size=3)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


@given(services(), _mutations())
def test_fast_predicate_agrees_with_jsonschema(doc: dict[str, Any], edits: list[tuple[int, Any]]) -> None:
    doc = copy.deepcopy(doc)
    for pick, value in edits:
        paths = [p for p in _paths(doc) if p]
        path = paths[pick % len(paths)]
        parent = doc
        for seg in path[:-1]:
            parent = parent[seg]
        parent[path[-1]] = value
    fast = schemas.quick("Service")
    assert fast is not None
    assert fast(doc) == schemas.validator("Service").is_valid(doc)
