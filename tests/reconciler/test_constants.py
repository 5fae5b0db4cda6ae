"""Each fact of reconciler/constants.py is stated there only.

A path, interface name or protocol table spelled out again in another module of
the package (or in the demo) is a second source of truth that drifts; docstrings
may name the values for readers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from reconciler import constants

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted((REPO / "reconciler").rglob("*.py")) + sorted((REPO / "examples").rglob("*.py"))
FACTS = {name: value for name, value in vars(constants).items()
         if name.isupper() and isinstance(value, str)}


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _strings(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def _proto_tables(path: Path) -> Iterator[int]:
    """Dict literals mapping protocol names to numbers (or back)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Dict):
            pairs = {(k.value, v.value) for k, v in zip(node.keys, node.values, strict=True)
                     if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
            if ("tcp", 6) in pairs or (6, "tcp") in pairs:
                yield node.lineno


def test_the_facts_are_the_documented_ones() -> None:
    assert FACTS["DEFAULT_CONFIG_DIR"] == "/etc/lbctl/conf.d"
    assert FACTS["DEFAULT_PIN_ROOT"] == "/sys/fs/bpf/lbctl"
    assert constants.PROTO_NAMES[constants.PROTO_NUMBERS["icmpv6"]] == "icmpv6"


def test_no_module_repeats_a_constant() -> None:
    assert {"DEFAULT_CONFIG_DIR", "DEFAULT_STATE_DIR", "DEFAULT_PIN_ROOT", "BPFFS",
            "DEFAULT_VIP_INTERFACE"} <= set(FACTS)
    repeats = []
    for path in SOURCES:
        if path.name == "constants.py" and path.parent.name == "reconciler":
            continue
        rel = path.relative_to(REPO)
        for line, text in _strings(path):
            repeats += [f"{rel}:{line}: {name} {value!r} spelled out"
                        for name, value in FACTS.items() if text == value or text.startswith(value + "/")]
        repeats += [f"{rel}:{line}: a protocol number table" for line in _proto_tables(path)]
    assert not repeats, "import these from reconciler.constants instead:\n" + "\n".join(repeats)
