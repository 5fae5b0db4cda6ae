"""load_dir: examples validate, ConfigMap layout, cache reuse, digest stability."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from reconciler.config import ParseCache, load_dir
from reconciler.errors import LbctlError
from reconciler.model import DatapathSpec, ServiceSpec

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "configs"

SVC = """apiVersion: lbctl.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  vip: {vip}
  ports: [{{port: 80}}]
  endpoints: [{{address: 10.0.0.1}}]
"""


def test_examples_validate() -> None:
    result = load_dir(EXAMPLES)
    assert result.errors == ()
    assert result.counts() == {"Service": 5, "Pool": 2, "BGPConfig": 1, "BGPPeer": 2, "FirewallRule": 5,
                               "Datapath": 1}


def test_defaults_and_mapping() -> None:
    result = load_dir(EXAMPLES)
    web = next(r for r in result.resources if r.name == "web")
    assert isinstance(web.spec, ServiceSpec)
    assert web.spec.ports[1].target_port == 8443 and web.spec.mode == "fullnat"
    assert web.spec.persist_timeout == 10800  # model default
    assert web.where("spec.endpoints[2].address").line == 19
    dp = result.of_kind("Datapath")[0].spec
    assert isinstance(dp, DatapathSpec)
    assert [(i.name, i.hook) for i in dp.interfaces] == [("eth0", "tc"), ("eth1", "tc")]


def test_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LbctlError, match="does not exist"):
        load_dir(tmp_path / "nope")


def test_configmap_layout_loads_each_file_once(tmp_path: Path) -> None:
    stamp = tmp_path / "..2026_01_01_00_00_00.123"
    stamp.mkdir()
    (stamp / "web.yaml").write_text(SVC.format(name="web", vip="198.51.100.1"))
    os.symlink(stamp.name, tmp_path / "..data")
    os.symlink("..data/web.yaml", tmp_path / "web.yaml")
    (tmp_path / ".web.yaml.swp").write_text("garbage: [")
    (tmp_path / "web.yaml~").write_text("garbage: [")
    (tmp_path / "#web.yaml#").write_text("garbage: [")
    result = load_dir(tmp_path)
    assert result.errors == ()
    assert result.files == (str(tmp_path / "web.yaml"),)


SECRET = "kind: s3cr3t-value\n"  # a root-only file's content must never reach an error message


def _outside_links(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "lib").mkdir(parents=True)
    (outside / "secret.yaml").write_text(SECRET)
    (outside / "secret.yaml").chmod(0o600)
    for i in range(50):
        (outside / "lib" / f"f{i}.yaml").write_text(SVC.format(name=f"f{i}", vip=f"198.51.100.{i + 1}"))
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.yaml").write_text(SVC.format(name="web", vip="198.51.100.200"))
    os.symlink(outside / "secret.yaml", conf / "creds.yaml")
    os.symlink("../outside/lib", conf / "vendor")
    (conf / "notes.txt").symlink_to("/etc/hostname")  # not configuration: neither read nor an error
    return conf


def test_symlinks_leaving_the_directory_are_refused_unread(tmp_path: Path) -> None:
    conf = _outside_links(tmp_path)
    result = load_dir(conf)
    assert [str(e) for e in result.errors] == [
        f"{conf}/creds.yaml: symlink leaves the configuration directory: it points to "
        f"{tmp_path}/outside/secret.yaml; not read (copy what it points to into the directory, or pass "
        "--follow-external-symlinks to read links that leave it)",
        f"{conf}/vendor: symlink leaves the configuration directory: it points to ../outside/lib "
        f"(resolves to {tmp_path}/outside/lib); not read (copy what it points to into the directory, or "
        "pass --follow-external-symlinks to read links that leave it)"]
    assert result.files == (str(conf / "web.yaml"),)  # the outside directory was not walked
    followed = load_dir(conf, follow_external_symlinks=True)
    assert len(followed.files) == 52 and "s3cr3t-value" in " ".join(str(e) for e in followed.errors)


def test_symlinks_inside_a_root_that_is_itself_a_link_are_followed(tmp_path: Path) -> None:
    """git-sync: ROOT/current -> .worktrees/SHA, with links inside the checkout."""
    tree = tmp_path / "git" / ".worktrees" / ("a" * 40)
    (tree / "lb" / "shared").mkdir(parents=True)
    (tree / "lb" / "shared" / "web.yaml").write_text(SVC.format(name="web", vip="198.51.100.1"))
    os.symlink("shared/web.yaml", tree / "lb" / "web.yaml")
    os.symlink("../lb/shared", tree / "lb" / "common")
    os.symlink(".worktrees/" + "a" * 40, tmp_path / "git" / "current")
    result = load_dir(tmp_path / "git" / "current" / "lb")
    assert result.errors == () and len(result.resources) == 1


def test_duplicate_link_to_same_file_is_loaded_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(SVC.format(name="web", vip="198.51.100.1"))
    os.symlink("a.yaml", tmp_path / "b.yaml")
    assert len(load_dir(tmp_path).resources) == 1


def test_cache_reparses_only_the_changed_file(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"s{i}.yaml").write_text(SVC.format(name=f"s{i}", vip=f"198.51.100.{i + 1}"))
    cache = ParseCache()
    first = load_dir(tmp_path, cache=cache)
    assert len(first.parsed) == 5
    (tmp_path / "s3.yaml").write_text(SVC.format(name="s3", vip="198.51.100.99"))
    second = load_dir(tmp_path, cache=cache)
    # fresh mtimes are not trusted, so unchanged files are hashed, but only s3 is parsed
    assert second.parsed == (str(tmp_path / "s3.yaml"),)
    assert second.digest != first.digest
    (tmp_path / "s4.yaml").unlink()
    third = load_dir(tmp_path, cache=cache)
    assert third.parsed == () and len(third.resources) == 4 and len(cache) == 4


def test_distrust_metadata_catches_an_edit_that_kept_size_and_mtime(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(SVC.format(name=f"s{i}", vip=f"198.51.100.{i + 1}"))
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # old: trusted by stat signature
        paths.append(path)
    cache = ParseCache()
    load_dir(tmp_path, cache=cache)
    # Same length, same mtime, same inode: invisible to the stat signature.
    st = paths[1].stat()
    with open(paths[1], "r+b") as f:
        f.write(paths[1].read_bytes().replace(b"198.51.100.2", b"198.51.100.7"))
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_dir(tmp_path, cache=cache).parsed == ()  # stat data trusted: edit missed
    cache.distrust_metadata()
    resynced = load_dir(tmp_path, cache=cache)
    assert resynced.parsed == (str(paths[1]),)  # every file hashed, only the changed one parsed
    vips = {r.name: r.spec.vip for r in resynced.resources if isinstance(r.spec, ServiceSpec)}
    assert vips["s1"] == "198.51.100.7"


def test_digest_ignores_layout_and_comments(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "one.yaml").write_text(SVC.format(name="x", vip="198.51.100.1") + "---\n" +
                                SVC.format(name="y", vip="198.51.100.2"))
    (b / "zz.yaml").write_text("# a comment\n" + SVC.format(name="y", vip="198.51.100.2"))
    (b / "sub").mkdir()
    (b / "sub" / "aa.yml").write_text(SVC.format(name="x", vip="198.51.100.1"))
    assert load_dir(a).digest == load_dir(b).digest
    (b / "zz.yaml").write_text(SVC.format(name="y", vip="198.51.100.3"))
    assert load_dir(a).digest != load_dir(b).digest


def test_single_file_path_and_empty_documents(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("---\n# only a comment\n---\n" + SVC.format(name="x", vip="198.51.100.1") + "---\n")
    result = load_dir(f)
    assert result.valid and len(result.resources) == 1


def test_errors_are_collected_across_files(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "c")
    (tmp_path / "c" / "bad1.yaml").write_text("a: [")
    (tmp_path / "c" / "bad2.yaml").write_text(SVC.format(name="web", vip="198.51.100.10"))
    result = load_dir(tmp_path / "c")
    messages = [e.message for e in result.errors]
    assert any("invalid YAML" in m for m in messages)
    assert any("duplicate Service name" in m for m in messages)
    assert any("already used by Service/web" in m for m in messages)
