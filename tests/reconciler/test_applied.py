"""The applied-configuration record: written per digest, read back through the loader, checked."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.applied import RECORD_NAME, AppliedStore
from reconciler.model import Resource
from tests.reconciler.export_cases import PASSWORD, write

config = pytest.importorskip("reconciler.config")


def resources(tmp: Path) -> tuple[Resource, ...]:
    loaded = config.load_dir(write(tmp / "conf"))
    assert not loaded.errors
    return tuple(loaded.resources)


def same(rs: tuple[Resource, ...]) -> list[tuple[object, ...]]:
    """What a record keeps of each resource (the password is never stored)."""
    return [(r.kind, r.metadata, replace(r.spec, password=None) if r.kind == "BGPPeer" else r.spec)  # type: ignore[call-arg]
            for r in rs]


def test_record_and_load(tmp_path: Path) -> None:
    rs = resources(tmp_path)
    store = AppliedStore(tmp_path / "state")
    assert store.load() is None
    assert store.record(rs, "d1") is True
    assert store.record(rs, "d1") is False  # same digest: not written again
    back = store.load()
    assert back is not None and back.problem is None and back.digest == "d1"
    assert same(back.resources) == same(rs)
    text = (tmp_path / "state" / RECORD_NAME).read_text()
    assert PASSWORD not in text and text.startswith("# lbctl applied configuration: format 1, digest d1, 21 ")
    assert stat.S_IMODE(os.stat(tmp_path / "state" / RECORD_NAME).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "state").iterdir()] == [RECORD_NAME]  # no temp file left


def test_a_long_lived_store_rewrites_changed_resources(tmp_path: Path) -> None:
    rs = list(resources(tmp_path))
    store = AppliedStore(tmp_path / "state")
    store.record(rs, "d1")
    i = next(n for n, r in enumerate(rs) if r.name == "web")
    rs[i] = replace(rs[i], metadata=replace(rs[i].metadata, labels=(("tier", "back"),)))
    del rs[0]
    store.record(rs, "d2")
    back = store.load()
    assert back is not None and back.problem is None
    assert same(back.resources) == same(tuple(rs))


@pytest.mark.parametrize("damage, problem", [
    (lambda t: "".join(t.splitlines(True)[:-1]), "20 documents, the header says 21 (truncated?)"),
    (lambda t: t[:-60], "invalid YAML"),
    (lambda t: "# something else\n" + t, "not an applied-configuration record"),
    (lambda t: t.replace('"kind":"Pool"', '"kind":"Poool"', 1), "Poool"),
])
def test_a_damaged_record_says_why(tmp_path: Path, damage: object, problem: str) -> None:
    store = AppliedStore(tmp_path / "state")
    store.record(resources(tmp_path), "d1")
    path = tmp_path / "state" / RECORD_NAME
    path.write_text(damage(path.read_text()))  # type: ignore[operator]
    back = store.load()
    assert back is not None and back.resources == () and back.problem is not None and problem in back.problem
    assert store.recorded_digest() in ("d1", None)
