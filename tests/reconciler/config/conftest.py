"""Keep CLI runs in these tests away from the box's real state dir (the parse cache lives there)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LBCTL_STATE_DIR", str(tmp_path / "lbctl-state"))
