"""lbctl validate / lbctl schema through the CLI dispatcher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.model import KINDS

EXAMPLES = str(Path(__file__).resolve().parents[3] / "examples" / "configs")


def test_validate_examples_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", EXAMPLES]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid: 16 resources in 7 files")


def test_validate_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", EXAMPLES, "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is True and data["resources"]["Service"] == 5 and data["errors"] == []
    (tmp_path / "x.yaml").write_text("a: [")
    assert main(["validate", str(tmp_path), "-o", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False
    assert set(data["errors"][0]) == {"file", "line", "column", "kind", "name", "path", "message", "hint"}


def test_validate_missing_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_schema_list_and_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in KINDS)
    assert main(["schema", "service"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Service"
    assert main(["schema", "Nope"]) == 1
    assert "unknown kind" in capsys.readouterr().err


def _walk(schema: object, path: str = "") -> list[str]:
    """Property schemas lacking a description."""
    missing: list[str] = []
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            if "description" not in sub:
                missing.append(f"{path}.{name}")
        for key, sub in schema.items():
            if key not in ("if", "else"):  # conditions, not fields
                missing += _walk(sub, f"{path}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            missing += _walk(sub, f"{path}[{i}]")
    return missing


@pytest.mark.parametrize("kind", KINDS)
def test_schemas_describe_every_field_and_are_closed(kind: str) -> None:
    from reconciler.config import schemas
    s = schemas.schema(kind)
    assert _walk(s) == []
    assert s["additionalProperties"] is False and s["properties"]["spec"]["additionalProperties"] is False
    assert schemas.quick(kind) is not None  # the fast path covers every schema


def test_closed_pipe_is_not_an_internal_error(tmp_path: Path) -> None:
    """`lbctl validate -o json | head -1`: the reader goes away; no traceback, no "internal error"."""
    import subprocess
    import sys

    for i in range(400):  # enough output to outlast the pipe buffer
        (tmp_path / f"s{i}.yaml").write_text(f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from reconciler.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", "validate", str(tmp_path), "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[3])
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == ""


def test_command_not_built_takes_its_arguments_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """`lbctl import k8s` (README) says "not available", exit 1 -- not an argparse usage error (exit 2)."""
    from reconciler.cli import COMMANDS, build_parser

    subs = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in COMMANDS:
        if subs[name].get_default("_module") is None:
            assert main([name, "k8s", "--netns", "x"]) == 1
            assert f"'{name}' is not available in this build" in capsys.readouterr().err
