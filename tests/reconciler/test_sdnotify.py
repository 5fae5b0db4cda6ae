"""The daemon's notifications to systemd (Type=notify), received on a real datagram socket."""

from __future__ import annotations

import io
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.logs import EventLog
from reconciler.sdnotify import ENV, Notifier
from reconciler.watch import Daemon, Delivery, Options
from tests.reconciler.watch_fakes import ScriptedEngine


class Listener:
    """What systemd does: a bound AF_UNIX datagram socket; ``messages()`` drains it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    def messages(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    address = str(tmp_path / "notify") if request.param == "path" else f"@lbctl-test-{uuid.uuid4().hex}"
    lst = Listener(address)
    yield lst
    lst.sock.close()


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def daemon_for(engine: ScriptedEngine, listener: Listener, directory: str = "/cfg") -> tuple[Daemon, Clock]:
    clock = Clock()
    daemon = Daemon(Options(directory=directory, resync=30), engine, EventLog("kv", io.StringIO()),
                    clock=clock, notifier=Notifier(listener.address))
    return daemon, clock


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready("x") and n.sent == []


def test_the_address_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, listener: Listener) -> None:
    monkeypatch.setenv(ENV, listener.address)
    assert Notifier().ready("applied revision abc\nsecond line")
    assert listener.messages() == [{"READY": "1", "STATUS": "applied revision abc second line"}]


def test_a_vanished_socket_is_reported_once_and_never_raises(tmp_path: Path) -> None:
    errors: list[str] = []
    n = Notifier(str(tmp_path / "gone"), on_error=errors.append)
    assert not n.status("a") and not n.status("b")
    assert len(errors) == 1 and str(tmp_path / "gone") in errors[0]


def test_ready_only_after_the_first_verified_reconcile(listener: Listener) -> None:
    engine = ScriptedEngine(fail="bpf: map lb_services: update: ENOSPC")
    daemon, clock = daemon_for(engine, listener)
    daemon.cycle("startup")
    [failed] = listener.messages()
    assert "READY" not in failed
    assert failed["STATUS"].startswith("reconcile failed: bpf: map lb_services: update: ENOSPC")
    assert "nothing applied yet" in failed["STATUS"]
    engine.fail = None
    clock.now += 30
    daemon.step()
    assert listener.messages() == [{"READY": "1", "STATUS": "applied digest d1, 1 resources (verified)"}]


def test_status_follows_the_applied_revision_and_rejections(listener: Listener) -> None:
    engine = ScriptedEngine()
    daemon, clock = daemon_for(engine, listener)
    daemon.cycle("startup")
    assert [m.get("READY") for m in listener.messages()] == ["1"]
    clock.now += 30
    daemon.step()  # a resync that changes nothing says nothing
    assert listener.messages() == []
    engine.current = Delivery(digest="d2", resources=3)
    daemon.notify()
    clock.now += 1
    daemon.step()
    assert listener.messages() == [{"STATUS": "applied digest d2, 3 resources (verified)"}]
    engine.current = Delivery(digest="bad", errors=("a.yaml:3:1: Service/web: spec: broken (fix)",))
    daemon.notify()
    clock.now += 1
    daemon.step()
    [rejected] = listener.messages()
    assert rejected["STATUS"] == ("configuration bad rejected: 1 error(s), first: a.yaml:3:1: Service/web: "
                                  "spec: broken (fix); applied digest d2, 3 resources")


def test_the_revision_is_the_git_commit_of_a_checkout(listener: Listener, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    sha = "3f2a1b9c0d12" + "0" * 28
    (repo / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    daemon, _ = daemon_for(ScriptedEngine(), listener, directory=str(repo))
    daemon.cycle("startup")
    assert listener.messages()[0]["STATUS"] == "applied revision 3f2a1b9c0d12, 1 resources (verified)"


def test_stopping_is_announced_and_says_the_datapath_stays(listener: Listener) -> None:
    daemon, _ = daemon_for(ScriptedEngine(), listener)
    daemon.stop()
    daemon.run()
    ready, stopping = listener.messages()
    assert ready["READY"] == "1"
    assert stopping["STOPPING"] == "1" and "keeps forwarding" in stopping["STATUS"]
