"""The import's output directory: byte-identical reruns, atomic writes, deleting only its own files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from reconciler.cli import main
from reconciler.k8s import outdir

FIXTURE = Path(__file__).parent / "fixtures" / "cluster.yaml"


def _import(out: Path, fixture: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["import", "k8s", "-f", str(fixture), "-o", str(out), "--output", "json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_rerun_is_byte_identical_and_writes_nothing(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    first = _import(out, FIXTURE, capsys)
    assert len(first["written"]) == 11  # type: ignore[arg-type]
    before = {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()}
    second = _import(out, FIXTURE, capsys)
    assert second["written"] == [] and second["deleted"] == [] and second["unchanged"] == 11
    assert {p.name: (p.read_bytes(), p.stat().st_ino) for p in out.iterdir()} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left


def test_deletes_only_its_own_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    _import(out, FIXTURE, capsys)
    (out / "site.yaml").write_text("# the operator's own file\n")
    (out / "default-kubernetes.yaml").write_text("# not the importer's, same name as nothing imported\n")
    doc = yaml.safe_load(FIXTURE.read_text())
    doc["items"] = [i for i in doc["items"] if i["metadata"].get("name") != "api"]
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(doc))
    result = _import(out, smaller, capsys)
    assert result["deleted"] == ["shop-api.yaml"]
    assert (out / "site.yaml").exists() and (out / "default-kubernetes.yaml").exists()


def test_never_overwrites_a_file_it_does_not_own(tmp_path: Path) -> None:
    (tmp_path / "default-web.yaml").write_text("# hand-written\n")
    report = outdir.sync(tmp_path, [("default-web.yaml", outdir.MARKER + b" x\n")])
    assert report.refused == ("default-web.yaml",)
    assert (tmp_path / "default-web.yaml").read_text() == "# hand-written\n"


def test_files_are_world_readable(tmp_path: Path) -> None:
    outdir.sync(tmp_path, [("a.yaml", outdir.MARKER + b"\n")])
    assert os.stat(tmp_path / "a.yaml").st_mode & 0o777 == 0o644


def test_marker_is_the_importers(tmp_path: Path) -> None:
    from reconciler.k8s import importer

    assert importer.MARKER.encode() == outdir.MARKER


def test_unreadable_manifest_is_an_error_naming_it(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("items: [\n")
    assert main(["import", "k8s", "-f", str(bad), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "not valid YAML" in err
    assert main(["import", "k8s", "-f", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "out")]) == 1
    assert "cannot read" in capsys.readouterr().err
