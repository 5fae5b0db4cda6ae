"""Tests of the IPAM allocation store: round trip, atomic replacement, a damaged file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import LbctlError
from reconciler.ipam import Allocation
from reconciler.ipam_store import AllocationStore


def test_store_roundtrip_and_atomicity(tmp_path: Path) -> None:
    store = AllocationStore(tmp_path / "state")
    assert store.load() == {}
    allocs = {"b": Allocation("edge", "203.0.113.2"), "a": Allocation("edge", "203.0.113.1")}
    store.save(allocs)
    assert store.load() == allocs
    data = json.loads(store.path.read_text())
    assert data["format_version"] == 1 and list(data["allocations"]) == ["a", "b"]
    assert [p.name for p in store.path.parent.iterdir()] == ["allocations.json"]  # no temp left


def test_corrupt_store_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "allocations.json").write_text("{not json")
    with pytest.raises(LbctlError, match="allocations.json is not a valid allocation store"):
        AllocationStore(tmp_path).load()
