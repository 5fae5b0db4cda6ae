"""Resources -> input documents -> the same resources, for every kind and field."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from reconciler import model
from reconciler.documents import to_document
from reconciler.model import SECRET_PLACEHOLDER, YAML_NAMES, BGPPeerSpec, Resource
from tests.reconciler.export_cases import EVERYTHING, PASSWORD, write

config = pytest.importorskip("reconciler.config")


def same(res: Resource) -> tuple[object, ...]:
    return res.kind, res.metadata, res.spec


def load(directory: Path) -> tuple[Resource, ...]:
    loaded = config.load_dir(directory)
    assert not loaded.errors, "\n".join(map(str, loaded.errors))
    return tuple(loaded.resources)


def test_every_model_field_has_a_yaml_name() -> None:
    specs = typing.get_args(model.Spec)
    assert set(specs) <= set(YAML_NAMES)
    for cls, names in YAML_NAMES.items():
        assert {f.name for f in dataclasses.fields(cls)} == set(names), cls.__name__
        for field, hint in typing.get_type_hints(cls).items():  # nested model classes need a table too
            for part in typing.get_args(hint) or (hint,):
                if dataclasses.is_dataclass(part):
                    assert part in YAML_NAMES, f"{cls.__name__}.{field}"


def test_everything_round_trips(tmp_path: Path) -> None:
    original = load(write(tmp_path / "in"))
    assert {r.kind for r in original} == set(model.KINDS)
    docs = [to_document(r, secrets=True) for r in original]
    write(tmp_path / "out", yaml.safe_dump_all(docs, sort_keys=False))
    again = load(tmp_path / "out")
    assert [same(r) for r in again] == [same(r) for r in original]


def test_defaults_are_left_out_and_icmp_has_no_port(tmp_path: Path) -> None:
    docs = {d["metadata"]["name"]: d for d in map(to_document, load(write(tmp_path, EVERYTHING)))}
    assert docs["ping"]["spec"]["ports"] == [{"protocol": "ICMP"}]
    assert docs["api"]["spec"] == {"ports": [{"port": 8443, "protocol": "TCP"}], "pool": "edge-v4",
                                   "selection": "persist", "persistTimeout": 3600,
                                   "endpoints": [{"address": "10.0.2.10"}, {"address": "10.0.2.11"}]}
    assert docs["edge-box"]["spec"] == {"interfaces": ["eth0", {"name": "eth1", "hook": "xdp"}],
                                        "vipInterface": "vips0"}
    assert docs["edge-box"]["metadata"] == {"name": "edge-box", "labels": {"site": "fra1"}}
    assert docs["mark-all"]["spec"] == {"priority": 200, "match": {}, "action": "mark", "mark": 42}


def test_the_password_is_a_placeholder_unless_asked_for(tmp_path: Path) -> None:
    peer = next(r for r in load(write(tmp_path)) if isinstance(r.spec, BGPPeerSpec) and r.spec.password)
    assert to_document(peer)["spec"]["password"] == SECRET_PLACEHOLDER
    assert to_document(peer, secrets=True)["spec"]["password"] == PASSWORD
    assert PASSWORD not in repr(to_document(peer))


def test_validate_rejects_the_placeholder(tmp_path: Path) -> None:
    peer = next(r for r in load(write(tmp_path / "in"))
                if isinstance(r.spec, BGPPeerSpec) and r.spec.password)
    write(tmp_path / "out", yaml.safe_dump(to_document(peer)) + "---\n" + yaml.safe_dump(
        {"apiVersion": model.API_VERSION, "kind": "BGPConfig", "metadata": {"name": "bgp"},
         "spec": {"localAS": 65001, "routerID": "192.0.2.1"}}))
    errors = config.load_dir(tmp_path / "out").errors
    assert [(e.path, e.name) for e in errors] == [("spec.password", "upstream-a")]
    assert "placeholder 'lbctl export' writes" in str(errors[0]) and "TCP MD5 password" in str(errors[0])
