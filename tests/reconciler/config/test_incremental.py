"""Incremental loading gives exactly what a fresh load gives.

A ``ParseCache`` makes ``load_dir`` re-parse only changed files and re-check
only what they touch (``semantic_index``); the lean YAML loop skips position
trees.  These tests hold both to the plain path: after any sequence of file
edits, the errors, resources and digest equal a fresh ``load_dir`` without a
cache (which runs ``semantic.check`` over everything).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.config import ConfigError, LoadResult, ParseCache, load_dir
from reconciler.config.tree import LocationMap
from reconciler.config.yamlparse import parse_text

CORPUS = Path(__file__).parent / "corpus"

# small value sets, so that names, VIPs and ports collide often
svc_names = st.sampled_from(["a", "b", "c", "d"])
vips = st.sampled_from(["198.51.100.1", "198.51.100.2", "2001:db8::1", "127.0.0.1", "224.0.0.1"])
pool_names = st.sampled_from(["p1", "p2", "p3"])


@st.composite
def service(draw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": [{"port": draw(st.sampled_from([80, 443, 53])),
                   "protocol": draw(st.sampled_from(["TCP", "UDP"]))}
                  for _ in range(draw(st.integers(1, 2)))],
        "endpoints": [{"address": draw(st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::9", "0.0.0.0"]))}
                      for _ in range(draw(st.integers(0, 3)))],
    }
    if draw(st.booleans()):
        spec["vip"] = draw(vips)
    else:
        spec["pool"] = draw(pool_names)
    if draw(st.integers(0, 4)) == 0:
        spec["bgp"] = True
    if draw(st.integers(0, 4)) == 0:
        spec["ports"][0]["endPort"] = spec["ports"][0]["port"] + draw(st.integers(-1, 500))
    return {"apiVersion": "lbctl.dev/v1alpha1", "kind": "Service", "metadata": {"name": draw(svc_names)},
            "spec": spec}


@st.composite
def other(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["Pool", "BGPConfig", "Datapath", "BGPPeer"]))
    spec: dict[str, Any]
    if kind == "Pool":
        spec = {"addresses": [draw(st.sampled_from(["198.51.100.0/28", "198.51.100.8/29", "2001:db8::/64"]))]}
    elif kind == "BGPConfig":
        spec = {"localAS": 65001, "routerID": "192.0.2.1"}
    elif kind == "Datapath":
        spec = {"interfaces": ["eth0"]}
    else:
        spec = {"address": draw(st.sampled_from(["192.0.2.7", "192.0.2.8"])), "remoteAS": 65000}
    name = draw(pool_names) if kind == "Pool" else draw(svc_names)
    return {"apiVersion": "lbctl.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


broken_doc = st.sampled_from([
    "kind: Pool\nmetadata: {name: p1}\nspec: {addresses: 5}\n",  # a broken Pool p1 (references stay quiet)
    "kind: BGPConfig\n",
    "a: [\n",
    "{a: 1, a: 2}\n",
])


@st.composite
def file_text(draw: Any) -> str:
    docs = draw(st.lists(st.one_of(service(), other()), max_size=4))
    style = draw(st.sampled_from([False, True, None]))
    text = yaml.safe_dump_all(docs, default_flow_style=style, sort_keys=False) if docs else ""
    if draw(st.integers(0, 5)) == 0:
        text += "---\n" + draw(broken_doc)
    return text


edits = st.lists(st.tuples(st.sampled_from(["a.yaml", "b.yaml", "sub/c.yaml", "d.yaml"]),
                           st.one_of(st.none(), file_text())), min_size=1, max_size=8)


def _key(e: ConfigError) -> tuple[str, ...]:
    return (str(e), e.kind or "", e.name or "", e.hint or "")


def _same(a: LoadResult, b: LoadResult) -> None:
    assert sorted(a.errors, key=_key) == sorted(b.errors, key=_key)
    assert [str(e) for e in a.errors] == [str(e) for e in b.errors]
    assert a.resources == b.resources
    assert [r.location for r in a.resources] == [r.location for r in b.resources]
    assert a.digest == b.digest


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits)
def test_incremental_equals_fresh_after_any_edits(steps: list[tuple[str, str | None]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "sub").mkdir()
        (root / "base.yaml").write_text(yaml.safe_dump({
            "apiVersion": "lbctl.dev/v1alpha1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"vip": "198.51.100.1", "ports": [{"port": 80}]}}))
        cache = ParseCache()
        _same(load_dir(root, cache=cache), load_dir(root))
        for name, text in steps:
            path = root / name
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
            _same(load_dir(root, cache=cache), load_dir(root))


@pytest.mark.parametrize("case", sorted(p.name for p in CORPUS.iterdir()
                                        if p.is_dir() and p.name != "huge-file"))
def test_corpus_through_the_cache(case: str, tmp_path: Path) -> None:
    work = tmp_path / case
    shutil.copytree(CORPUS / case, work, symlinks=True)
    cache = ParseCache()
    _same(load_dir(work, cache=cache), load_dir(work))
    _same(load_dir(work, cache=cache), load_dir(work))  # the second, warm load too


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(service(), other()), max_size=4), st.sampled_from([False, True, None]))
def test_lean_parse_equals_full_parse(docs: list[dict[str, Any]], style: bool | None) -> None:
    text = yaml.safe_dump_all(docs, default_flow_style=style)
    lean, full = parse_text("f.yaml", text, positions=False), parse_text("f.yaml", text)
    assert lean.errors == full.errors == ()
    assert [(d.value, d.index, d.loc.line, d.loc.column) for d in lean.documents] == \
           [(d.value, d.index, d.loc.line, d.loc.column) for d in full.documents]
    assert lean.positions is not None
    for d in full.documents:
        assert lean.positions.root(d.index).children is not None


def test_lazy_positions_match_eager_ones(tmp_path: Path) -> None:
    text = ("apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec:\n  vip: 198.51.100.1\n"
            "  ports: [{port: 80}]\n  endpoints:\n    - address: 10.0.0.1\n    - {address: 10.0.0.2}\n")
    (tmp_path / "x.yaml").write_text("---\n" + text)
    (res,) = load_dir(tmp_path).resources
    display = str(tmp_path / "x.yaml")
    eager = LocationMap(display, parse_text(display, "---\n" + text).documents[0].loc)
    assert dict(res.locations) == dict(eager) and len(eager) > 10
    where = res.where("spec.endpoints[1].address")
    assert (where.line, where.column) == (10, 17)
    assert res.where("spec.nope").line == 6  # the nearest parent: the value of spec


def test_unusual_yaml_takes_the_full_path() -> None:
    text = ("base: &b {x: 1}\nm:\n  <<: *b\n  y: 2\n")
    lean, full = parse_text("f.yaml", text, positions=False), parse_text("f.yaml", text)
    assert [d.value for d in lean.documents] == [d.value for d in full.documents]
    assert lean.documents[0].value["m"] == {"x": 1, "y": 2}
