"""The Debian package, built and used as an edge box would (``make deb-test``).

Why this exists: the package's promises -- lintian-clean, installable on a bare
bookworm, a unit systemd accepts, upgrades that keep flows, a purge that leaves
nothing -- only show on a real build installed into a real Debian root.  The tests
build two versions with ``packaging/deb/build.sh``: the package as ``make deb`` makes
it, and a lower version whose datapath has the previous map layout, so the upgrade
also migrates the pinned maps under traffic.  They make a fresh bookworm root with
``mmdebstrap`` from this machine's apt sources, and use Debian's own tools
(``dpkg``, ``apt-get``, ``systemd-analyze``) and Debian's python3 inside it.
Nothing is installed on this machine itself: the root is a chroot of its own,
entered in a private mount namespace (``/proc``, ``/sys`` with bpffs, ``/dev`` and
``/run/netns`` bound in), so the datapath and the namespace box are this kernel's.

The box test runs the unit's own ``ExecStartPre=`` and ``ExecStart=`` lines (read
from the installed unit) under the unit's capability bounding set and
``NoNewPrivileges``, with a ``NOTIFY_SOCKET`` listener in place of systemd; this
machine's PID 1 is not systemd, so ``systemctl`` itself (the other hardening
options, the restart dpkg's postinst would ask for) is not exercised here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reconciler.drivers.test_bpf_migrate_root import Stream
from tests.testbed import ECHO_PORT, VIP4, Testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
OUT = REPO / "build" / "deb-test"
CHANGELOG = REPO / "packaging" / "deb" / "debian" / "changelog"
# The previous layout's whole datapath source (its C needs its own header).
PREVIOUS = REPO / "tests" / "bpf" / "layouts" / "v2"
UNIT = "/lib/systemd/system/lbctl.service"
# Left out of the "purge leaves nothing" comparison: dpkg's and apt's own records and
# caches, logs, and the API file systems bound in.
VOLATILE = ("proc", "sys", "dev", "run", "tmp", "var/lib/dpkg", "var/lib/apt", "var/cache", "var/log")
TIMEOUT = 600


def sh(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = TIMEOUT,
       check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                       env=None if env is None else {**os.environ, **env})
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))}: exit {r.returncode}\n{r.stdout[-3000:]}\n"
                             f"{r.stderr[-3000:]}")
    return r


# Enter the root: a private mount namespace so the bind mounts vanish with the process.
_ENTER = ('set -e; for d in proc sys dev; do mount --rbind "/$d" "$ROOT/$d"; done; '
          'mkdir -p /run/netns "$ROOT/run/netns"; mount --rbind /run/netns "$ROOT/run/netns"; '
          'exec chroot "$ROOT" "$@"')


def chroot_argv(root: Path, *argv: str) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "env", f"ROOT={root}",
            "sh", "-c", _ENTER, "sh", "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "LC_ALL=C.UTF-8", *argv]


# Every lbctl the root runs (the package's prerm runs `lbctl down`) acts on a box of the
# test's own, never on this host's network namespace or its default pin root.
SCRATCH = "lbdb" + uuid.uuid4().hex[:6] + "-scratch"
SCRATCH_ENV = {"LBCTL_NETNS": SCRATCH, "LBCTL_PIN_ROOT": f"/sys/fs/bpf/{SCRATCH}"}


def in_root(root: Path, *argv: str, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    assigned = [f"{k}={v}" for k, v in (env or SCRATCH_ENV).items()]
    return sh(*chroot_argv(root, *assigned, *argv), check=check)


def version() -> str:
    return sh("dpkg-parsechangelog", "-l", CHANGELOG, "-S", "Version").stdout.strip()


@dataclass(frozen=True)
class Debs:
    old: Path
    new: Path
    old_version: str
    new_version: str


@pytest.fixture(scope="module")
def debs() -> Debs:
    """The package as `make deb` builds it (new), and a lower version built with the
    datapath's previous map layout (old; tests/bpf/layouts/v2), so that the upgrade from
    old to new migrates the pinned maps, conntrack included."""
    new_v = version()
    old_v = f"{new_v}~lbctltest1"
    overlay = OUT / "layout-previous"
    shutil.rmtree(overlay, ignore_errors=True)
    (overlay / "bpf").mkdir(parents=True)
    for f in PREVIOUS.iterdir():
        shutil.copy(f, overlay / "bpf" / f.name)
    built = []
    for v, extra, env in ((old_v, [old_v], {"DEB_SOURCE_OVERLAY": str(overlay)}), (new_v, [], {})):
        out = OUT / v
        shutil.rmtree(out, ignore_errors=True)
        r = sh(REPO / "packaging" / "deb" / "build.sh", out, *extra, env=env)
        assert "make deb: lintian: no errors, no warnings" in r.stdout, r.stdout + r.stderr
        [deb] = out.glob(f"lbctl_{v}_*.deb")
        built.append(deb)
    return Debs(built[0], built[1], old_v, new_v)


def sources() -> list[str]:
    """This machine's enabled apt sources (one-line and deb822 files)."""
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    return [str(f) for f in files if f.is_file() and f.suffix in (".list", ".sources") and f.stat().st_size]


@pytest.fixture(scope="module")
def root(debs: Debs) -> Iterator[Path]:
    """A fresh bookworm root (apt, systemd for systemd-analyze, man-db for its man: check)."""
    sh("ip", "netns", "add", SCRATCH)
    try:
        yield make_root(debs)
    finally:
        shutil.rmtree(SCRATCH_ENV["LBCTL_PIN_ROOT"], ignore_errors=True)
        sh("ip", "netns", "del", SCRATCH, check=False)


def make_root(debs: Debs) -> Path:
    path = OUT / "root"
    shutil.rmtree(path, ignore_errors=True)
    sh("mmdebstrap", "--quiet", "--variant=apt", "--include=systemd,man-db", "bookworm", path, *sources())
    for deb in (debs.old, debs.new):
        shutil.copy(deb, path / "tmp" / deb.name)
    shutil.copy("/etc/resolv.conf", path / "etc" / "resolv.conf")
    # lbctl's dependencies from the package's own Depends, so that a purge can be checked
    # against the root as it was just before lbctl came.
    depends = sh("dpkg-deb", "-f", debs.old, "Depends").stdout.strip()
    in_root(path, "apt-get", "update", "-qq")
    in_root(path, "apt-get", "satisfy", "-y", "-qq", "--no-install-recommends", depends)
    return path


def files(root: Path) -> set[str]:
    """Every path in ``root`` outside VOLATILE, with its type and mode."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel, d)) not in VOLATILE]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            seen.add(f"{os.path.relpath(p, root)} {st.st_mode:o}")
    return seen


def test_lintian_reports_no_error_and_no_warning(debs: Debs) -> None:
    for deb in (debs.old, debs.new):
        r = sh("lintian", "--fail-on", "error,warning", deb)
        assert not re.search(r"^[EW]: ", r.stdout, re.M), r.stdout
    fields = sh("dpkg-deb", "-f", debs.old, "Architecture", "Depends", "Recommends", "Suggests").stdout
    assert f"Architecture: {sh('dpkg', '--print-architecture').stdout.strip()}" in fields, fields
    for dep in ("python3-yaml (>= 6.0)", "python3-jsonschema (>= 4.10)", "python3-watchdog (>= 2.2)",
                "python3-pyroute2 (>= 0.7.2)", "python3-cffi (>= 1.15)", "python3-rich (>= 13.3)",
                "libbpf1", "Recommends: gobgpd", "Suggests: prometheus"):
        assert dep in fields, fields


def test_installs_on_fresh_bookworm_and_debian_python_runs_it(root: Path, debs: Debs) -> None:
    before = files(root)
    in_root(root, "dpkg", "-i", f"/tmp/{debs.new.name}")
    try:
        r = in_root(root, "lbctl", "--version")
        assert r.stdout.strip() == f"lbctl {re.split('[+~-]', debs.new_version)[0]}"
        assert "/usr/bin/python3" in in_root(root, "head", "-1", "/usr/bin/lbctl").stdout  # Debian's python3
        r = in_root(root, "lbctl", "validate", "/usr/share/doc/lbctl/examples")
        assert r.returncode == 0
        r = in_root(root, "systemd-analyze", "verify", UNIT, check=False)
        assert r.returncode == 0 and "lbctl" not in r.stderr, r.stderr
        assert (root / "usr/lib/lbctl/lb_kern.o").is_file() and (root / "usr/lib/lbctl/lb_shared.h").is_file()
        assert sorted(os.listdir(root / "etc/lbctl/conf.d")) == ["README"]
        assert (root / "var/lib/lbctl").is_dir()
        assert (root / "usr/share/man/man8/lbctl.8.gz").is_file()
        assert (root / "usr/share/bash-completion/completions/lbctl").is_file()
        # `ip route` names the protocol of lbctl's VIP routes
        assert "108\tlbctl" in (root / "etc/iproute2/rt_protos.d/lbctl.conf").read_text()
    finally:
        in_root(root, "dpkg", "--purge", "lbctl")
    assert files(root) == before


# --- the box: install, start, upgrade under traffic, purge ---------------------------------------------

class Notify:
    """systemd's side of Type=notify: a datagram socket inside the root."""

    def __init__(self, root: Path) -> None:
        self.host_path = root / "run" / "lbctl-test-notify"
        self.path = "/run/lbctl-test-notify"
        self.host_path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.host_path))
        self.sock.settimeout(120)
        self.messages: list[dict[str, str]] = []

    def wait(self, key: str, proc: subprocess.Popen[str]) -> dict[str, str]:
        """The next message carrying ``key`` (120 s only keep a dead daemon from hanging the run)."""
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                raise AssertionError(f"no {key} from the daemon; exit {proc.poll()}; "
                                     f"messages: {self.messages}") from None
            msg = dict(line.split("=", 1) for line in data.split("\n") if "=" in line)
            self.messages.append(msg)
            if key in msg:
                return msg

    def close(self) -> None:
        self.sock.close()
        self.host_path.unlink(missing_ok=True)


def unit_settings(root: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (root / UNIT.lstrip("/")).read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def as_unit(root: Path, line: str, env: dict[str, str]) -> list[str]:
    """A unit's Exec line as the unit runs it: its capability bounding set, no new privileges."""
    caps = unit_settings(root)["CapabilityBoundingSet"][0].split()
    bounding = ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in caps])
    return chroot_argv(root, *[f"{k}={v}" for k, v in env.items()], "setpriv", f"--bounding-set={bounding}",
                       "--no-new-privs", "--", *shlex.split(line))


def config(tb: Testbed) -> str:
    backends = ", ".join(f"{{address: {tb.backend4(i)}}}" for i in range(tb.n_backends))
    return (f"apiVersion: lbctl.dev/v1alpha1\nkind: Datapath\nmetadata: {{name: box}}\n"
            f"spec: {{hook: tc, interfaces: [{', '.join(tb.lb_interfaces)}]}}\n---\n"
            f"apiVersion: lbctl.dev/v1alpha1\nkind: Service\nmetadata: {{name: echo}}\n"
            f"spec:\n  vip: {VIP4}\n  ports: [{{port: {ECHO_PORT}, protocol: TCP}}]\n"
            f"  endpoints: [{backends}]\n")


class Daemon:
    """The unit's ExecStartPre= then ExecStart=, in the root, for the namespace box."""

    def __init__(self, root: Path, env: dict[str, str], notify: Notify, log: Path) -> None:
        unit = unit_settings(root)
        for pre in unit["ExecStartPre"]:
            sh(*as_unit(root, pre, env))
        self.log = log.open("a")
        # The status endpoint on a free port: other tests and daemons share this host's loopback.
        start = unit["ExecStart"][0] + " --listen 127.0.0.1:0"
        self.proc = subprocess.Popen(as_unit(root, start, env), stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log, text=True, start_new_session=True)
        self.ready = notify.wait("READY", self.proc)
        self.notify = notify

    def stop(self) -> dict[str, str]:
        self.proc.send_signal(signal.SIGTERM)  # what `systemctl stop` sends to the main process
        assert self.proc.wait(60) == 0
        self.log.close()
        return self.notify.wait("STOPPING", self.proc)


def wait_for_log(log: Path, text: str) -> None:
    """Until the daemon logged ``text`` (60 s only keep a dead daemon from hanging the run)."""
    deadline = time.monotonic() + 60
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log.read_text()[-2000:]}"
        time.sleep(0.05)


@pytest.fixture
def box(root: Path) -> Iterator[tuple[Testbed, dict[str, str]]]:
    tb = Testbed(n_backends=2, prefix="lbdb" + uuid.uuid4().hex[:6], forwarding=False).setup()
    env = {"LBCTL_NETNS": tb.lb, "LBCTL_PIN_ROOT": f"/sys/fs/bpf/{tb.prefix}"}
    try:
        yield tb, env
    finally:
        try:
            shutil.rmtree(env["LBCTL_PIN_ROOT"], ignore_errors=True)  # a failed run's pins
        finally:
            tb.teardown()


def test_install_start_upgrade_under_traffic_then_purge_leaves_nothing(
        root: Path, debs: Debs, box: tuple[Testbed, dict[str, str]]) -> None:
    tb, env = box
    before = files(root)
    notify = Notify(root)
    log = OUT / "daemon.log"
    log.unlink(missing_ok=True)
    daemon = None
    try:
        in_root(root, "dpkg", "-i", f"/tmp/{debs.old.name}")
        (root / "etc/lbctl/conf.d/box.yaml").write_text(config(tb))
        daemon = Daemon(root, {**env, "NOTIFY_SOCKET": notify.path}, notify, log)
        ready = daemon.ready
        assert ready["READY"] == "1" and ready["STATUS"].startswith("applied digest "), ready

        stream = Stream(tb)
        stream.wait_for(2000)
        # `systemctl reload`: the unit's ExecReload= lines (validate, then SIGHUP the main process).
        for line in unit_settings(root)["ExecReload"]:
            sh(*as_unit(root, line.replace("${MAINPID}", str(daemon.proc.pid)), env))
        wait_for_log(log, "event=sighup")
        # The upgrade: dpkg unpacks the new version while the old daemon runs; the unit is
        # restarted after it (dpkg's postinst asks systemd to; here the test does).
        in_root(root, "dpkg", "-i", f"/tmp/{debs.new.name}")
        assert in_root(root, "dpkg-query", "-W", "-f=${Version}", "lbctl").stdout == debs.new_version
        stopping = daemon.stop()
        assert "keeps forwarding" in stopping["STATUS"]
        at_stop = stream.received
        stream.wait_for(at_stop + 2000)  # no daemon at all: the pinned datapath forwards
        daemon = Daemon(root, {**env, "NOTIFY_SOCKET": notify.path}, notify, log)
        assert daemon.ready["READY"] == "1"
        text = log.read_text()  # the new daemon migrated the pinned maps (lb_ct among them: v2 -> current)
        assert re.search(r'event=driver-notice detail="migrated the pinned datapath [^"]* maps [^"]*lb_ct',
                         text)
        stream.wait_for(stream.received + 2000)
        # A plain restart of the same version adopts the datapath as it is.
        daemon.stop()
        daemon = Daemon(root, {**env, "NOTIFY_SOCKET": notify.path}, notify, log)
        stream.wait_for(stream.received + 2000)
        stream.finish()  # every line sent came back, in order, from the same backend
        assert (root / "etc/lbctl/conf.d/box.yaml").read_text() == config(tb)  # conf.d kept
        assert (root / "var/lib/lbctl" / tb.lb / "applied.yaml").is_file()  # state dir kept

        daemon.stop()
        daemon = None
        # Purge: prerm runs `lbctl down` for the box (LBCTL_* reach maintainer scripts as they
        # reach every lbctl), then everything the package made goes.
        (root / "etc/lbctl/conf.d/box.yaml").unlink()
        in_root(root, "dpkg", "--purge", "lbctl", env=env)
        assert not os.path.exists(env["LBCTL_PIN_ROOT"])
        links = sh("ip", "-n", tb.lb, "-o", "link", "show").stdout
        assert "lbctl0" not in links, links
        for ifname in tb.lb_interfaces:
            assert sh("tc", "-n", tb.lb, "filter", "show", "dev", ifname, "ingress").stdout == ""
        forwarding = sh("ip", "netns", "exec", tb.lb, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
        assert forwarding == "0"  # the kernel setting lbctl took in charge was given back
        assert files(root) == before
    finally:
        if daemon is not None:
            daemon.proc.kill()
            daemon.proc.wait(30)
        notify.close()
        in_root(root, "dpkg", "--purge", "lbctl", env=env, check=False)
