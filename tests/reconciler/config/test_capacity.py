"""A configuration over a datapath capacity is refused by validation, before anything is touched.

The limits are the map sizes of bpf/lb_shared.h (``reconciler/limits.py``, a packet test
compares them); here they are patched small so the test needs a few services, not 30,000.
Both paths are held to it: a plain ``load_dir`` and one through a ``ParseCache`` (the daemon's
and ``plan``'s incremental check, ``semantic_index``), the latter also after an edit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import limits
from reconciler.config import ParseCache, load_dir


def service(name: str, vip: str, endpoints: int, ports: int = 1) -> str:
    eps = ", ".join(f"{{address: 10.0.{i // 250}.{i % 250 + 1}}}" for i in range(endpoints))
    pts = ", ".join(f"{{port: {80 + p}}}" for p in range(ports))
    return (f"apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\n"
            f"spec:\n  vip: {vip}\n  ports: [{pts}]\n  endpoints: [{eps}]\n")


@pytest.mark.parametrize("cached", [False, True])
def test_endpoint_counters_over_capacity_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     cached: bool) -> None:
    monkeypatch.setattr(limits, "MAX_ENDPOINT_COUNTERS", 20)
    (tmp_path / "a.yaml").write_text(service("a", "198.51.100.1", 5, ports=2))  # 10 counters
    (tmp_path / "b.yaml").write_text(service("b", "198.51.100.2", 10))  # 20 in all: fits
    cache = ParseCache() if cached else None
    assert load_dir(tmp_path, cache=cache).errors == ()
    (tmp_path / "c.yaml").write_text(service("c", "198.51.100.3", 1))  # 21: one too many
    errors = load_dir(tmp_path, cache=cache).errors
    assert len(errors) == 1, errors
    text = str(errors[0])
    assert text.startswith(f"{tmp_path / 'c.yaml'}:") and "Service/c: spec.endpoints" in text
    assert "more than 20 endpoint counters" in text and "LB_MAX_BACKEND_STATS" in text
    (tmp_path / "b.yaml").write_text(service("b", "198.51.100.2", 9))  # an edit makes room again
    assert load_dir(tmp_path, cache=cache).errors == ()


@pytest.mark.parametrize("cached", [False, True])
def test_service_entries_over_capacity_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   cached: bool) -> None:
    monkeypatch.setattr(limits, "MAX_SERVICES", 3)
    (tmp_path / "a.yaml").write_text(service("a", "198.51.100.1", 1, ports=3))
    cache = ParseCache() if cached else None
    assert load_dir(tmp_path, cache=cache).errors == ()
    (tmp_path / "b.yaml").write_text(service("b", "198.51.100.2", 1))
    (err,) = load_dir(tmp_path, cache=cache).errors
    assert "Service/b" in str(err) and "more than 3 service entries" in str(err)
