"""Parsing on several CPUs by forking: exactly the serial results, whatever a child does."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from reconciler.config import fork_parse, load_dir
from reconciler.config.loader import LoadResult

CORPUS = Path(__file__).parent / "corpus"
SVC = ("apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc-{i}}}\nspec:\n"
       "  vip: 198.51.{a}.{b}\n  ports: [{{port: 80}}]\n"
       "  endpoints: [{{address: 10.0.0.1}}, {{address: 10.0.0.2}}]\n")


def _same(a: LoadResult, b: LoadResult) -> None:
    assert [str(e) for e in a.errors] == [str(e) for e in b.errors]
    assert a.resources == b.resources and a.digest == b.digest and a.parsed == b.parsed
    assert [r.where("spec.endpoints[0].address") for r in a.resources] == \
           [r.where("spec.endpoints[0].address") for r in b.resources]


def _config(root: Path, files: int = 12, per: int = 40) -> Path:
    """A directory of many services, with a broken file and a schema error among them."""
    conf = root / "conf"
    conf.mkdir()
    for f in range(files):
        docs = [SVC.format(i=f * per + k, a=f, b=k + 1) for k in range(per)]
        (conf / f"svc-{f:02d}.yaml").write_text("---\n".join(docs))
    (conf / "broken.yaml").write_text("kind: Service\nmetadata: {name: x\n")
    (conf / "schema.yaml").write_text(SVC.format(i="bad", a=250, b=1).replace("port: 80", "port: 99999"))
    return conf


@pytest.fixture
def forking(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Parse with three processes whatever the size; the list counts the forks made."""
    forks: list[int] = []
    real_fork = os.fork

    def counted() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(fork_parse, "workers", lambda total: 3)
    monkeypatch.setattr(fork_parse.os, "fork", counted)
    return forks


def test_forked_parse_equals_the_serial_one(tmp_path: Path, forking: list[int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _config(tmp_path)
    parallel = load_dir(conf)
    assert len(forking) == 2
    monkeypatch.setattr(fork_parse, "workers", lambda total: 1)
    serial = load_dir(conf)
    _same(parallel, serial)
    assert len(parallel.resources) == 12 * 40 and parallel.errors


def test_the_corpus_loads_the_same_forked(tmp_path: Path, forking: list[int],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    forked = {c.name: load_dir(c) for c in sorted(CORPUS.iterdir()) if c.is_dir()}
    monkeypatch.setattr(fork_parse, "workers", lambda total: 1)
    for name, result in forked.items():
        _same(result, load_dir(CORPUS / name))


def test_a_child_that_fails_has_its_share_parsed_by_the_parent(tmp_path: Path, forking: list[int],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _config(tmp_path)
    monkeypatch.setattr(fork_parse.pickling, "dumps", lambda obj: (_ for _ in ()).throw(OSError("full")))
    failed = load_dir(conf)  # the children exit 1 without a payload
    assert len(forking) == 2
    monkeypatch.setattr(fork_parse.pickling, "dumps", lambda obj: b"not a pickle")
    garbage = load_dir(conf)
    monkeypatch.setattr(fork_parse, "workers", lambda total: 1)
    serial = load_dir(conf)
    _same(failed, serial)
    _same(garbage, serial)


def test_when_it_forks() -> None:
    assert fork_parse.workers(fork_parse.PARALLEL_MIN_BYTES - 1) == 1  # a small re-parse: not worth it
    cpus = len(os.sched_getaffinity(0))
    assert fork_parse.workers(fork_parse.PARALLEL_MIN_BYTES) == min(cpus, fork_parse.MAX_WORKERS)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:  # another thread running (the watch daemon): fork would copy only this one
        assert fork_parse.workers(fork_parse.PARALLEL_MIN_BYTES) == 1
    finally:
        stop.set()
        other.join()


def test_shares_balance_by_size_and_cover_every_file() -> None:
    sizes = [100, 1, 50, 50, 3, 2, 90, 10]
    groups = fork_parse.shares(sizes, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    totals = sorted(sum(sizes[i] for i in g) for g in groups)
    assert totals[-1] - totals[0] <= max(sizes) and all(g == sorted(g) for g in groups)
    assert fork_parse.shares([5], 2) == [[0], []]
