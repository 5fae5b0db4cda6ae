"""Finding the datapath's object and header: override, package data, system dir, a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

import reconciler
from reconciler.drivers import datapath_files as df
from reconciler.errors import LbctlError


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An empty package-data dir and system dir instead of the real ones; no override."""
    pkg, system = tmp_path / "pkg", tmp_path / "usr-lib-lbctl"
    pkg.mkdir()
    system.mkdir()
    monkeypatch.setattr(df, "package_dir", lambda: pkg)
    monkeypatch.setattr(df, "DATAPATH_SYSTEM_DIR", str(system))
    monkeypatch.delenv(df.DATAPATH_DIR_ENV, raising=False)
    return pkg, system


def test_package_data_is_the_imported_package_s_datapath_dir() -> None:
    assert df.package_dir() == Path(reconciler.__file__).resolve().parent / "datapath"


def test_package_data_before_the_system_dir(places: tuple[Path, Path]) -> None:
    pkg, system = places
    (system / "lb_kern.o").write_bytes(b"system")
    assert df.datapath_file("lb_kern.o") == str(system / "lb_kern.o")
    (pkg / "lb_kern.o").write_bytes(b"package")
    assert df.datapath_file("lb_kern.o") == str(pkg / "lb_kern.o")


def test_the_override_wins_and_never_falls_back(places: tuple[Path, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pkg, _ = places
    (pkg / "lb_shared.h").write_text("package")
    own = tmp_path / "own-build"
    own.mkdir()
    (own / "lb_shared.h").write_text("own")
    monkeypatch.setenv(df.DATAPATH_DIR_ENV, str(own))
    assert df.datapath_file("lb_shared.h") == str(own / "lb_shared.h")
    with pytest.raises(LbctlError, match=rf"lb_kern.o is not in {own} \(LBCTL_DATAPATH_DIR\)"):
        df.datapath_file("lb_kern.o")


def test_nothing_found_names_the_file_the_places_and_make_build(places: tuple[Path, Path]) -> None:
    pkg, system = places
    with pytest.raises(LbctlError) as exc:
        df.datapath_file("lb_kern.o")
    text = str(exc.value)
    assert f"the datapath file lb_kern.o is missing (looked in {pkg} and {system})" in text
    assert "make build" in text and "LBCTL_DATAPATH_DIR" in text
