"""The parse cache persisted in the state dir: same results, trusted only for identical bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.config import LoadResult, load_dir, load_dir_persisted
from reconciler.config.persist import FILE_NAME, load_cache, save_cache

CORPUS = Path(__file__).parent / "corpus"
SVC = ("apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  vip: {vip}\n"
       "  ports: [{{port: 80}}]\n  endpoints: [{{address: 10.0.0.1}}]\n")


def _same(a: LoadResult, b: LoadResult) -> None:
    assert [str(e) for e in a.errors] == [str(e) for e in b.errors]
    assert a.resources == b.resources and a.digest == b.digest
    assert [r.where("spec.endpoints[0].address") for r in a.resources] == \
           [r.where("spec.endpoints[0].address") for r in b.resources]


def _config(root: Path) -> Path:
    conf = root / "conf"
    conf.mkdir()
    for i in range(4):
        (conf / f"s{i}.yaml").write_text(SVC.format(name=f"s{i}", vip=f"198.51.100.{i + 1}"))
    (conf / "dup.yaml").write_text(SVC.format(name="s0", vip="198.51.100.1"))  # errors across files
    return conf


def test_second_run_parses_nothing_and_gives_the_same_result(tmp_path: Path) -> None:
    conf, state = _config(tmp_path), tmp_path / "state"
    state.mkdir()
    first = load_dir_persisted(conf, state)
    assert len(first.parsed) == 5 and (state / FILE_NAME).exists()
    assert (state / FILE_NAME).stat().st_mode & 0o777 == 0o600
    second = load_dir_persisted(conf, state)
    assert second.parsed == ()
    _same(second, load_dir(conf))
    assert load_cache(state / FILE_NAME).semantic.reused == 0  # nothing checked yet in this process
    assert not second.valid


def test_the_cache_is_rewritten_only_once_enough_files_changed(tmp_path: Path) -> None:
    conf, state = tmp_path / "conf", tmp_path / "state"
    conf.mkdir()
    state.mkdir()
    for i in range(40):
        (conf / f"s{i}.yaml").write_text(SVC.format(name=f"s{i}", vip=f"198.51.100.{i + 1}"))
    load_dir_persisted(conf, state)
    saved = (state / FILE_NAME).stat().st_mtime_ns
    (conf / "s0.yaml").write_text(SVC.format(name="s0", vip="198.51.100.200"))
    one = load_dir_persisted(conf, state)  # 1 of 40 files changed: not worth 13 MB of writing
    assert one.parsed == (str(conf / "s0.yaml"),) and (state / FILE_NAME).stat().st_mtime_ns == saved
    _same(one, load_dir(conf))
    (conf / "s1.yaml").write_text(SVC.format(name="s1", vip="198.51.100.201"))
    two = load_dir_persisted(conf, state)  # s0 and s1 parsed again: 2 of 40 is 5%, so save
    assert len(two.parsed) == 2 and (state / FILE_NAME).stat().st_mtime_ns != saved
    assert load_dir_persisted(conf, state).parsed == ()
    _same(two, load_dir(conf))


def test_changed_bytes_are_parsed_even_with_the_same_size_and_mtime(tmp_path: Path) -> None:
    conf, state = _config(tmp_path), tmp_path / "state"
    state.mkdir()
    load_dir_persisted(conf, state)
    target = conf / "s1.yaml"
    st = target.stat()
    target.write_text(target.read_text().replace("198.51.100.2", "198.51.100.9"))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = load_dir_persisted(conf, state)
    assert again.parsed == (str(target),)
    _same(again, load_dir(conf))


def test_files_that_come_and_go(tmp_path: Path) -> None:
    conf, state = _config(tmp_path), tmp_path / "state"
    state.mkdir()
    load_dir_persisted(conf, state)
    (conf / "dup.yaml").unlink()
    (conf / "new.yaml").write_text(SVC.format(name="n", vip="198.51.100.1"))
    _same(load_dir_persisted(conf, state), load_dir(conf))
    _same(load_dir_persisted(conf, state), load_dir(conf))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "stale", "group-writable"])
def test_a_damaged_or_foreign_cache_is_ignored_and_rebuilt(tmp_path: Path, damage: str) -> None:
    conf, state = _config(tmp_path), tmp_path / "state"
    state.mkdir()
    load_dir_persisted(conf, state)
    path = state / FILE_NAME
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(data[:200] + b"\x00" * 50 + data[250:])
    elif damage == "stale":
        path.write_bytes(data.replace(b"\n", b"x\n", 2))
    else:
        path.chmod(0o664)
    assert len(load_cache(path)) == 0 or damage == "garbage"
    result = load_dir_persisted(conf, state)
    _same(result, load_dir(conf))
    assert len(load_cache(path)) == 5  # rebuilt


def test_no_usable_state_dir_means_a_plain_load(tmp_path: Path) -> None:
    conf = _config(tmp_path)
    missing = tmp_path / "missing"
    _same(load_dir_persisted(conf, missing), load_dir(conf))
    assert not missing.exists()
    _same(load_dir_persisted(conf, None), load_dir(conf))
    if os.geteuid() != 0:  # root writes anyway
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        _same(load_dir_persisted(conf, ro), load_dir(conf))
        assert not (ro / FILE_NAME).exists()


def test_save_fails_quietly(tmp_path: Path) -> None:
    assert save_cache(load_cache(tmp_path / "none"), tmp_path / "no" / "such" / FILE_NAME) is False


@pytest.mark.parametrize("case", ["duplicate-names", "duplicate-vip-port", "duplicate-key", "missing-kind"])
def test_validate_with_the_cache_prints_the_golden(case: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if not (CORPUS / case).is_dir():
        pytest.skip(f"no corpus case {case}")
    work, state = tmp_path / case, tmp_path / "state"
    shutil.copytree(CORPUS / case, work, symlinks=True,
                    ignore=shutil.ignore_patterns("expected.txt", "README"))
    state.mkdir()
    golden = (CORPUS / case / "expected.txt").read_text(encoding="utf-8")
    for _ in range(2):  # cold, then from the persisted cache
        code = main(["validate", str(work), "--state-dir", str(state)])
        out, err = capsys.readouterr()
        assert code == 1 and err == ""
        assert out.replace(str(work) + os.sep, "") == golden
    assert (state / FILE_NAME).exists()


def test_validate_of_another_directory_leaves_the_box_cache_alone(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    box, state = _config(tmp_path), tmp_path / "state"
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.yaml").write_text(SVC.format(name="x", vip="198.51.100.99"))
    assert len(load_dir_persisted(box, state, create=True).parsed) == 5  # `lbctl plan` of the box
    cache = state / FILE_NAME
    saved, inode = cache.read_bytes(), cache.stat().st_ino
    assert main(["validate", str(other), "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert cache.read_bytes() == saved and cache.stat().st_ino == inode
    assert load_dir_persisted(box, state, create=True).parsed == ()  # the next plan starts warm
    assert load_dir_persisted(box, state).parsed == ()  # validate of the box's own directory uses it
    # `plan`/`apply` of another directory own the cache: it becomes that directory's.
    assert load_dir_persisted(other, state, create=True).parsed == (str(other / "x.yaml"),)
    assert load_dir_persisted(other, state).parsed == ()
    assert len(load_dir_persisted(box, state).parsed) == 5 and cache.read_bytes() != saved
