"""Deep nesting gets lbctl's own error, whatever PyYAML/libyaml version parses it.

PyYAML 6.0.4's wheels bundle a libyaml that refuses deep flow nesting itself,
and its refusal came before lbctl's limit (issue #8); these cases pin the one
message and position on every version, and prove the fallback path directly.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from reconciler.config import yamlparse
from reconciler.config.yamlparse import MAX_DEPTH, parse_text

DEEP = 1500  # past libyaml's own limit (1000) where it has one


def _block(depth: int) -> str:
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v\n"


CASES = {
    "flow-sequences": "[" * DEEP + "]" * DEEP + "\n",
    "flow-mappings": "{a: " * DEEP + "1" + "}" * DEEP + "\n",
    "mixed-flow": "a: " + "[{b: " * (DEEP // 2) + "1" + "}]" * (DEEP // 2) + "\n",
    "block-mappings": _block(MAX_DEPTH + 5),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_deep_nesting_is_lbctls_error(name: str) -> None:
    parsed = parse_text("deep.yaml", CASES[name])
    assert len(parsed.errors) == 1
    error = parsed.errors[0]
    assert f"nesting deeper than {MAX_DEPTH} levels" in error.message
    assert "invalid YAML" not in error.message


def test_position_is_the_first_level_too_deep() -> None:
    parsed = parse_text("deep.yaml", "x: 1\n---\n" + "[" * DEEP + "]" * DEEP + "\n")
    (error,) = parsed.errors
    assert (error.line, error.column) == (3, MAX_DEPTH + 1)


class _LimitedLoader(yaml.SafeLoader):
    """Stands in for a libyaml with its own depth limit (as PyYAML 6.0.4 bundles)."""

    def __init__(self, text: str) -> None:
        if text.count("[") > 100:
            raise yaml.scanner.ScannerError(
                "while scanning", None,
                "exceeded maximum nesting depth while increasing flow level", None)
        super().__init__(text)


def test_a_libyaml_depth_refusal_is_mapped_to_lbctls_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlparse, "_Loader", _LimitedLoader)
    parsed = parse_text("deep.yaml", "[" * DEEP + "]" * DEEP + "\n")
    (error,) = parsed.errors
    assert f"nesting deeper than {MAX_DEPTH} levels" in error.message
    assert (error.line, error.column) == (1, MAX_DEPTH + 1)


def test_other_syntax_errors_are_not_rerouted(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = yamlparse._parse_full

    def spy(file: str, text: str, loader_class: Any = None) -> Any:
        calls.append(loader_class)
        return real(file, text, loader_class)

    monkeypatch.setattr(yamlparse, "_parse_full", spy)
    parsed = parse_text("bad.yaml", "a: [1, 2\n")
    assert "invalid YAML" in parsed.errors[0].message
    assert calls == [None]
