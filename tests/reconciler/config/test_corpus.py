"""Invalid-configuration corpus: every case fails with exactly its golden output.

Each directory under ``corpus/`` is one broken configuration with the expected
stdout of ``lbctl validate`` in ``expected.txt`` (file paths relative to the
case directory).  The case is copied to a temp dir first (symlinks kept) and
``GENERATORS`` add what git should not hold (a 50 MB file).  Regenerate goldens
with ``UPDATE_GOLDEN=1 pytest tests/reconciler/config/test_corpus.py`` and
review the diff by hand: the messages are the product.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.cli import main

CORPUS = Path(__file__).parent / "corpus"
GOLDEN = "expected.txt"


def _huge_file(case: Path) -> None:
    with open(case / "big.yaml", "wb") as f:
        f.write(b"apiVersion: lbctl.dev/v1alpha1\n")
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB without writing 50 MB


def _links_outside(case: Path) -> None:
    # Made here, not kept in git: pytest's own collection would walk a link to /usr.
    os.symlink("/etc/passwd", case / "secret.yaml")
    os.symlink("/usr", case / "vendor")


GENERATORS: dict[str, Callable[[Path], None]] = {"huge-file": _huge_file, "symlink-outside": _links_outside}


def _cases() -> list[str]:
    return sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def test_corpus_is_large_enough() -> None:
    assert len(_cases()) >= 40


@pytest.mark.parametrize("case", _cases())
def test_case(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / case
    shutil.copytree(CORPUS / case, work, symlinks=True, ignore=shutil.ignore_patterns(GOLDEN, "README"))
    if case in GENERATORS:
        GENERATORS[case](work)
    code = main(["validate", str(work)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err == ""
    out = out.replace(str(work) + os.sep, "")
    golden = CORPUS / case / GOLDEN
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(out, encoding="utf-8")
    assert code == 1
    # Bounded work (symlink loops, alias bombs, a 50 MB file) is proven by the message that
    # refuses it, not by a clock; a hang is caught by make test's timeout.
    assert out == golden.read_text(encoding="utf-8")
