"""The BGP driver: the box's speaker (gobgpd), its peers and the VIPs it announces.

Why this exists: an edge LB whose VIPs the upstream routers never learn only
works on one L2 segment.  This driver owns three record kinds: ``bgp-global``
(AS, router ID, listen port and addresses), ``bgp-peer`` (one per neighbour) and
``announce`` (one /32 or /128 per VIP with ``bgp: true``), and keeps them in
Debian's ``gobgpd`` (package gobgpd, 3.x).  It is the only module that imports
grpc.

* **Which gobgpd.**  With ``--netns NAME`` (a box simulated in a namespace: the
  tests, the demo) lbctl runs its own gobgpd inside that namespace, started on
  the first apply that needs it, detached (it outlives the lbctl command, like
  the pinned datapath), its API on a unix socket in the state dir (reachable
  from the host's namespace, root only; ``/run/lbctl/bgp-HASH/`` when the state
  dir's path is too long for a socket), its pid and log in the state dir;
  ``down()`` stops it.  Without ``--netns`` (a real box) it talks to the
  system's gobgpd (the package's systemd unit) at ``127.0.0.1:50051``
  (``$LBCTL_GOBGP_API`` names another) and never starts or stops it.
* **Run-time configuration only, through gobgpd's gRPC API** (no config file),
  with the messages of Debian's protos encoded by ``bgp_wire``.  The ``gobgp``
  CLI was measured at 12-22 ms per call (a process each) against 0.13-0.5 ms for
  a gRPC call on an open channel, and it cannot set hold/keepalive timers, the
  peer port or a TCP MD5 password at all (``bench/results/bgp.md``).
* **Live state is read back** (``GetBgp``, ``ListPeer``, ``ListPath``), so a
  gobgpd that restarted (and lost everything: it keeps no configuration) reads as
  empty; the next reconcile plans creates and restores it, and the driver says so
  once (``notices()``).  A managed gobgpd that is not running reads as empty too
  (``read()`` starts nothing); the apply starts it.
* **Sessions.**  A changed peer is deleted and added again (the plan's replace):
  that resets its session only.  A changed ``bgp-global`` needs gobgpd's
  ``StopBgp``/``StartBgp``, which drops every session: the driver re-adds the peers
  and paths it had, and the plan shows it as a replace.
* Session state, uptime and prefix counts are not configuration and are never in
  a record: ``sessions()`` returns them as plain data (``lbctl get bgp``, metrics).
* Passwords: read back from gobgpd (so a changed password is a change), never
  printed (``plan.SENSITIVE_FIELDS``, ``records.BgpPeer`` hides it from repr).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reconciler.drivers import bgp_wire as wire
from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import Announcement, BgpGlobal, BgpPeer, Record
from reconciler.telemetry import BgpSession

PACKAGE = "gobgpd"  # the Debian package of the daemon
GRPC_PACKAGE = "python3-grpcio"
SYSTEM_API = "127.0.0.1:50051"
API_ENV = "LBCTL_GOBGP_API"
RUNTIME_ROOT = Path("/run/lbctl")
SOCKET_FILE = "gobgpd.sock"
SOCKET_PATH_MAX = 100
PID_FILE = "gobgpd.pid"
LOG_FILE = "gobgpd.log"
GLOBAL_KEY = "global"
DEFAULT_LISTEN = ("0.0.0.0", "::")  # what gobgpd reports for "all addresses"
CALL_TIMEOUT = 5.0
START_TIMEOUT = 10.0

Live = dict[str, dict[str, Record]]


def _grpc() -> Any:
    try:
        import grpc
    except ImportError as exc:
        raise LbctlError(f"the BGP driver needs Python's grpc module ({exc})",
                         hint=f"install the Debian package {GRPC_PACKAGE} (apt-get install {GRPC_PACKAGE})"
                         ) from exc
    return grpc


def global_record(g: wire.GlobalConf) -> BgpGlobal:
    addrs = () if set(g.listen_addresses) == set(DEFAULT_LISTEN) else tuple(sorted(g.listen_addresses))
    return BgpGlobal(asn=g.asn, router_id=g.router_id, listen_port=g.listen_port, listen_addresses=addrs)


def peer_record(p: wire.PeerConf) -> BgpPeer:
    return BgpPeer(address=p.address, remote_as=p.remote_as, port=p.port, hold_time=p.hold_time,
                   keepalive=p.keepalive, multihop=p.multihop, password=p.password,
                   description=p.description)


def announcement_record(p: wire.PathConf) -> Announcement:
    return Announcement(prefix=p.prefix, next_hop="self",
                        communities=tuple(wire.community_text(c) for c in p.communities),
                        local_pref=p.local_pref, med=p.med)


def _peer_conf(r: BgpPeer) -> wire.PeerConf:
    return wire.PeerConf(r.address, r.remote_as, r.port, r.hold_time, r.keepalive, r.multihop, r.password,
                         r.description)


def _path_conf(r: Announcement) -> wire.PathConf:
    return wire.PathConf(r.prefix, tuple(wire.community_value(c) for c in r.communities), r.local_pref, r.med)


def _global_conf(r: BgpGlobal) -> wire.GlobalConf:
    return wire.GlobalConf(r.asn, r.router_id, r.listen_port, r.listen_addresses)


def _proc_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, its identity.  None: gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


class BgpDriver:
    """Peers and announcements in gobgpd (see the module docstring).

    ``required``: a BGPConfig exists, so a missing gobgpd (or grpc) is an error
    now, naming the package, rather than an empty live state.
    """

    kinds = frozenset({"bgp-global", "bgp-peer", "announce"})

    def __init__(self, state_dir: str | Path, netns: str | None = None, *, required: bool = False,
                 api: str | None = None, gobgpd: str | None = None) -> None:
        self.writes = 0
        self.state_dir = Path(state_dir)
        self.netns = netns
        self.managed = api is None and netns is not None
        tag = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:12]
        # The API socket lives in the state dir (0700: root only) unless that path is too long
        # for a unix socket (108 bytes with the NUL); then in a directory of its own under /run.
        in_state = self.state_dir / SOCKET_FILE
        self.runtime_dir = (self.state_dir if len(str(in_state)) < SOCKET_PATH_MAX
                            else RUNTIME_ROOT / f"bgp-{tag}")
        self.socket = self.runtime_dir / (SOCKET_FILE if self.runtime_dir == self.state_dir else "api.sock")
        self.target = (api if api is not None
                       else f"unix://{self.socket}" if self.managed
                       else os.environ.get(API_ENV, SYSTEM_API))
        self.gobgpd = gobgpd or shutil.which("gobgpd")
        self._channel: Any = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._seen: tuple[int, str] | None = None  # the managed gobgpd last seen running
        self._reported: tuple[int, str] | None = None  # the gone gobgpd already reported
        self._configured = False  # this driver has seen BGP running with a global config
        self._notices: list[str] = []
        if required:
            if self.gobgpd is None and api is None:  # lbctl's own and the system's come from the package
                raise LbctlError("a BGPConfig exists but gobgpd is not installed (no 'gobgpd' on PATH)",
                                 hint=f"install the Debian package {PACKAGE}: apt-get install {PACKAGE}")
            _grpc()

    # --- the managed process ---------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.state_dir / PID_FILE

    def _recorded(self) -> tuple[int, str] | None:
        """The gobgpd the pid file names (pid, start time), running or not."""
        try:
            text = self.pid_file.read_text().split()
            return int(text[0]), text[1]
        except (OSError, ValueError, IndexError):
            return None

    def _running(self) -> tuple[int, str] | None:
        """The managed gobgpd (pid, start time) when it runs, else None."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None  # reaped: no zombie left behind
        rec = self._recorded()
        if rec is None or _proc_start(rec[0]) != rec[1]:
            return None
        return rec

    def _observe(self, now: tuple[int, str] | None) -> None:
        """Say once that the gobgpd seen before (by this driver, or recorded by an earlier lbctl) is gone."""
        last = self._seen
        if last is None:
            rec = self._recorded()
            last = rec if rec is not None and rec != now else None
        if last is not None and now != last and last != self._reported:
            self._notices.append(f"gobgpd (pid {last[0]}) is no longer running"
                                 + ("; it is started again" if self.managed else ""))
            self._reported = last
        self._seen = now

    def _start(self) -> None:
        if self.gobgpd is None:
            raise LbctlError("gobgpd is not installed (no 'gobgpd' on PATH)",
                             hint=f"install the Debian package {PACKAGE}: apt-get install {PACKAGE}")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        self._close()
        with open(self.state_dir / LOG_FILE, "ab") as log, in_netns(self.netns):
            # Forked from this thread, the child starts in the thread's namespace.
            proc = subprocess.Popen(
                [self.gobgpd, "--api-hosts", f"unix://{self.socket}", "--pprof-disable", "-p",
                 "-l", "warn"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        start = _proc_start(proc.pid)
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(f"{proc.pid} {start}\n")
        tmp.replace(self.pid_file)
        self._proc = proc
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise LbctlError(f"gobgpd exited at start (status {proc.returncode})",
                                 hint=f"see {self.state_dir / LOG_FILE}")
            if self.socket.exists():
                try:
                    self._call("GetBgp", b"")
                    break
                except LbctlError:
                    pass
            if time.monotonic() > deadline:
                raise LbctlError(f"gobgpd did not answer on {self.socket} within {START_TIMEOUT:.0f} s",
                                 hint=f"see {self.state_dir / LOG_FILE}")
            time.sleep(0.01)
        self._seen = (proc.pid, start or "")

    def _stop(self) -> int:
        """Stop the managed gobgpd (1 if one ran) and remove its pid file, socket and socket dir."""
        running = self._running()
        self._close()
        if running is not None:
            pid = running[0]
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _proc_start(pid) == running[1] and time.monotonic() < deadline:
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.01)
            if _proc_start(pid) == running[1]:
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        for p in (self.pid_file, self.socket):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        for d in ((self.runtime_dir, RUNTIME_ROOT) if self.runtime_dir != self.state_dir else ()):
            try:
                d.rmdir()  # when empty: another box's socket dir keeps /run/lbctl
            except OSError:
                pass
        self._seen = None
        return 0 if running is None else 1

    # --- gRPC ---------------------------------------------------------------------------------

    def _close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _chan(self) -> Any:
        if self._channel is None:
            self._channel = _grpc().insecure_channel(self.target)
        return self._channel

    def _rpc(self, name: str, request: bytes, stream: bool) -> Any:
        grpc = _grpc()
        for attempt in (0, 1):
            chan = self._chan()
            try:
                if stream:
                    return list(chan.unary_stream(wire.METHODS[name])(request, timeout=CALL_TIMEOUT))
                return chan.unary_unary(wire.METHODS[name])(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAVAILABLE and attempt == 0:
                    self._close()  # a restarted gobgpd: a fresh channel skips the reconnect backoff
                    continue
                where = f"gobgpd at {self.target}"
                if code == grpc.StatusCode.UNAVAILABLE:
                    hint = (f"start it (package {PACKAGE}): systemctl enable --now gobgpd" if not self.managed
                            else "run lbctl apply: it starts lbctl's gobgpd")
                    raise LbctlError(f"{where} is not reachable ({exc.details()})", hint=hint) from exc
                raise LbctlError(f"{where}: {name} failed: {exc.details()}",
                                 hint="check the BGPConfig and BGPPeer resources") from exc
        raise AssertionError("unreachable")

    def _call(self, name: str, request: bytes) -> bytes:
        out: bytes = self._rpc(name, request, False)
        return out

    def _stream(self, name: str, request: bytes) -> list[bytes]:
        out: list[bytes] = self._rpc(name, request, True)
        return out

    # --- reading ------------------------------------------------------------------------------

    def _reachable(self) -> bool:
        """Whether there is a gobgpd to read (a managed one that is not running: none)."""
        if self.managed:
            now = self._running()
            self._observe(now)
            return now is not None
        return True

    def _read_all(self) -> tuple[Live, list[wire.PeerStatus]]:
        state: Live = {kind: {} for kind in self.kinds}
        if not self._reachable():
            if self._configured:
                self._configured = False
            return state, []
        if not self.managed:
            try:
                g = wire.read_global(self._call("GetBgp", b""))
            except LbctlError:
                return state, []  # no system gobgpd: nothing of ours is up
        else:
            g = wire.read_global(self._call("GetBgp", b""))
        if g is None:
            if self._configured:
                self._notices.append("gobgpd lost its configuration (restarted?): peers and announcements "
                                     "are restored")
                self._configured = False
            return state, []
        self._configured = True
        state["bgp-global"][GLOBAL_KEY] = global_record(g)
        statuses = []
        for resp in self._stream("ListPeer", wire.list_peer()):
            conf, status = wire.read_peer(resp)
            state["bgp-peer"][conf.address] = peer_record(conf)
            statuses.append(status)
        for ip6 in (False, True):
            for resp in self._stream("ListPath", wire.list_path(ip6)):
                for p in wire.read_paths(resp):
                    state["announce"][p.prefix] = announcement_record(p)
        return state, statuses

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        return self._read_all()[0]

    def sessions(self) -> dict[str, Any]:
        """Sessions and announcements as plain data (``lbctl get bgp``, metrics).

        ``{"running": bool, "global": {...} | None, "peers": [{address, remote_as, state,
        uptime (UNIX seconds it came up, 0 when down), received, accepted, advertised, flops
        (times it went down)}], "announced": [prefix]}``
        """
        state, statuses = self._read_all()
        g = state["bgp-global"].get(GLOBAL_KEY)
        return {
            "running": g is not None,
            "global": None if not isinstance(g, BgpGlobal) else {
                "asn": g.asn, "router_id": g.router_id, "listen_port": g.listen_port},
            "peers": [dataclasses.asdict(s) for s in sorted(statuses, key=lambda s: s.address)],
            "announced": sorted(state["announce"]),
        }

    def bgp_sessions(self) -> list[BgpSession]:
        """``telemetry.BgpSource`` (``/metrics``): every peer's session state and prefix counts."""
        _, statuses = self._read_all()
        return [BgpSession(peer=s.address, remote_as=s.remote_as, state=str(s.state).lower(),
                           prefixes_announced=s.advertised, prefixes_received=s.received)
                for s in sorted(statuses, key=lambda s: s.address)]

    def notices(self) -> list[str]:
        out, self._notices = self._notices, []
        return out

    # --- applying -----------------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self.managed:
            now = self._running()
            self._observe(now)
            if now is None:
                self._start()

    def apply(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        for c in changes:
            if c.kind not in self.kinds:
                raise ValueError(f"bgp driver: kind {c.kind!r} is not mine")
        self._ensure_running()
        live, _ = self._read_all()
        for c in changes:
            self._apply_one(c, live)

    def _apply_one(self, c: Change, live: Live) -> None:
        bucket = live[c.kind]
        have = bucket.get(c.key)
        if c.after is None:
            if have is None:
                return
            self._remove(c.kind, have, live)
            del bucket[c.key]
            self.writes += 1
            return
        if have == c.after:
            return
        if c.kind == "bgp-global":
            assert isinstance(c.after, BgpGlobal)
            self._set_global(c.after, live)
        else:
            if have is not None:
                self._remove(c.kind, have, live)
            self._add(c.kind, c.after)
        bucket[c.key] = c.after
        self.writes += 1

    def _add(self, kind: str, rec: Record) -> None:
        if kind == "bgp-peer":
            assert isinstance(rec, BgpPeer)
            self._call("AddPeer", wire.add_peer(_peer_conf(rec)))
        elif kind == "announce":
            assert isinstance(rec, Announcement)
            self._call("AddPath", wire.add_path(_path_conf(rec)))
        else:
            assert isinstance(rec, BgpGlobal)
            self._call("StartBgp", wire.start_bgp(_global_conf(rec)))
            self._configured = True

    def _remove(self, kind: str, rec: Record, live: Live) -> None:
        if kind == "bgp-peer":
            assert isinstance(rec, BgpPeer)
            self._call("DeletePeer", wire.delete_peer(rec.address))
        elif kind == "announce":
            assert isinstance(rec, Announcement)
            self._call("DeletePath", wire.delete_path(_path_conf(rec)))
        else:
            self._call("StopBgp", b"")
            self._configured = False
            for k in ("bgp-peer", "announce"):
                live[k].clear()

    def _set_global(self, rec: BgpGlobal, live: Live) -> None:
        """Start BGP, or restart it with new global settings keeping its peers and paths."""
        keep = [(k, r) for k in ("bgp-peer", "announce") for r in live[k].values()]
        if live["bgp-global"]:
            self._call("StopBgp", b"")
        self._add("bgp-global", rec)
        for kind, r in keep:
            self._add(kind, r)
            live[kind][_key(kind, r)] = r

    def down(self) -> int:
        """Withdraw everything and stop BGP; a managed gobgpd is stopped too.  Returns writes."""
        before = self.writes
        if self.managed:
            self.writes += 2 * self._stop()  # stopping BGP and the daemon
        else:
            state, _ = self._read_all()
            if state["bgp-global"]:
                self._call("StopBgp", b"")
                self.writes += 1
        self._configured = False
        return self.writes - before


def _key(kind: str, rec: Record) -> str:
    if isinstance(rec, BgpPeer):
        return rec.address
    if isinstance(rec, Announcement):
        return rec.prefix
    return GLOBAL_KEY

