"""The import layers of docs/architecture.md hold: no upward import, no cycle, libraries in place.

Why this exists: "the core is pure", "drivers never import commands" and "each
library is imported in one place" are promises a single careless import breaks
silently.  This test reads the layer table and the library table from
docs/architecture.md (section "Import layers"), so the page and the check cannot
disagree, then reads every module's imports with ``ast`` (imports inside
functions count too: a lazy upward import is still upward) and fails on:

* a module of ``reconciler/`` in no layer, or in two;
* an import of a module in a higher layer;
* an import cycle between modules (through any layer);
* a third-party library imported outside the modules listed for it, or one not
  listed at all.

It also imports every module, so a module that no test happens to import still
has to import cleanly.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "reconciler"
DOC = REPO / "docs" / "architecture.md"


def _section() -> list[str]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("## Import layers")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def _table(first_header: str) -> list[tuple[str, list[str]]]:
    """Rows (first cell, backticked names of the second cell) of the table headed ``first_header``."""
    lines = _section()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


def _name(path: Path) -> str:
    """``reconciler/config/loader.py`` -> ``config/loader``; a package is ``pkg/__init__``."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix()


def _dotted(name: str) -> str:
    parts = ["reconciler", *name.split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_dotted(_name(p)): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layers() -> dict[str, int]:
    """module (dotted) -> layer number, from the doc's table."""
    rows = _table("layer")
    assert rows, "docs/architecture.md: the layer table is empty"
    out: dict[str, int] = {}
    for cell, patterns in rows:
        rank = int(cell.split()[0])
        for path in sorted(PACKAGE.rglob("*.py")):
            name = _name(path)
            if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
                mod = _dotted(name)
                assert mod not in out, f"{mod} is in two layers of docs/architecture.md"
                out[mod] = rank
    return out


def _resolve(node: ast.Import | ast.ImportFrom, module: str) -> Iterator[str]:
    """The lbctl modules (dotted) and third-party top-level names an import statement uses."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    base = node.module or ""
    if node.level:  # relative: from the module's package
        pkg = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if base else pkg
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in MODULES else base


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(lbctl modules, third-party libraries) that ``module`` imports anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    ours, theirs = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for name in _resolve(node, module):
            top = name.split(".")[0]
            if top == "reconciler":
                while name not in MODULES:  # reconciler.x.Name -> reconciler.x
                    name = name.rpartition(".")[0]
                if name != module:
                    ours.add(name)
            elif top != "__future__" and top not in sys.stdlib_module_names:
                theirs.add(top)
    return ours, theirs


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_is_in_exactly_one_layer() -> None:
    layers = _layers()
    missing = sorted(set(MODULES) - set(layers))
    assert not missing, f"add these modules to the layer table of docs/architecture.md: {missing}"


def test_no_module_imports_a_higher_layer() -> None:
    layers = _layers()
    upward = [f"{m} (layer {layers[m]}) imports {dep} (layer {layers[dep]})"
              for m, (deps, _) in sorted(GRAPH.items()) for dep in sorted(deps)
              if layers[dep] > layers[m]]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(GRAPH[m][0]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_third_party_libraries_only_where_the_doc_says() -> None:
    allowed = {lib.strip("`"): pats for lib, pats in _table("library")}
    wrong = []
    for m, (_, libs) in sorted(GRAPH.items()):
        name = _name(MODULES[m])
        for lib in sorted(libs):
            if lib not in allowed:
                wrong.append(f"{m} imports {lib}, which the library table does not list")
            elif not any(fnmatch.fnmatchcase(name, pat) for pat in allowed[lib]):
                wrong.append(f"{m} imports {lib} (allowed only in {', '.join(allowed[lib])})")
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_an_upward_import_and_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules are not vacuous: an added upward import and an added cycle are caught."""
    real = GRAPH

    def add(module: str, dep: str) -> None:
        graph = {m: (set(deps), libs) for m, (deps, libs) in real.items()}
        graph[module][0].add(dep)
        monkeypatch.setattr(sys.modules[__name__], "GRAPH", graph)

    add("reconciler.plan", "reconciler.drivers.bpf")
    with pytest.raises(AssertionError, match=r"reconciler.plan \(layer 2\) imports reconciler.drivers.bpf"):
        test_no_module_imports_a_higher_layer()
    add("reconciler.records", "reconciler.plan")  # plan imports records: a cycle within one layer
    with pytest.raises(AssertionError, match="cycle: reconciler.records -> reconciler.plan -> "):
        test_no_import_cycles()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)
