"""Issues 10 and 13: a datapath of a previous map layout is upgraded live, flows kept.

A previous object is built from the sources kept in ``tests/bpf/layouts/``
(``v2/``: the C files and header of layout v2, conntrack with the source-NAT
side; ``v1/lb_shared.h``: the header of layout v1, built with the v2 C files)
and applied from a child process (one process holds one cffi
view of lb_shared.h); this process then opens the pins with the current object,
which migrates them while a TCP stream runs through the VIP.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.constants import DATAPATH_DIR_ENV
from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_addrset, bpf_migrate
from reconciler.drivers.bpf import BpfDriver
from reconciler.drivers.netns import in_netns
from reconciler.plan import Change, diff
from reconciler.records import Attachment, Backend, EndpointSet, ServiceEntry, ServiceKey
from tests.bpf.harness import Datapath
from tests.testbed import ECHO_PORT, VIP4, Testbed

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]
LAYOUTS = REPO / "tests" / "bpf" / "layouts"
V1_HEADER = LAYOUTS / "v1" / "lb_shared.h"
KEY = ServiceKey(VIP4, "tcp", ECHO_PORT, ECHO_PORT)
CT_SIZE = {"v1": 48, "v2": 72, "v3": 80}  # struct lb_ct of each previous layout


def build_layout(tmp_path_factory: pytest.TempPathFactory, version: str) -> Path:
    """lb_kern.o of a previous layout, built from its kept sources as bpf/Makefile does."""
    include = REPO / "build" / "bpf" / "include"
    assert (include / ".stamp").exists(), "run 'make build' first (it stages the headers the build uses)"
    tmp = tmp_path_factory.mktemp(version)
    src, out = tmp / "bpf", tmp / "out"
    shutil.copytree(REPO / "bpf", src)  # the Makefile and the header staging
    sources = LAYOUTS / version if (LAYOUTS / version / "lb_kern.c").exists() else LAYOUTS / "v2"
    for f in sources.iterdir():
        shutil.copy(f, src / f.name)
    header = LAYOUTS / version / "lb_shared.h"
    shutil.copy(header, src / "lb_shared.h")
    # The Makefile's own rule and flags; -o: the staged include tree is used as it is.
    r = subprocess.run(["make", "-s", "-C", str(src), f"OUT={out}", f"INCLUDE={include}", "PACKAGES=staged",
                        "-o", str(include / ".stamp"), str(out / "lb_kern.o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.copy(header, out / "lb_shared.h")
    return out


@pytest.fixture(scope="module")
def v1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout(tmp_path_factory, "v1")


@pytest.fixture(scope="module", params=["v1", "v2", "v3"])
def old_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, build_layout(tmp_path_factory, request.param)


def changes(tb: Testbed, hook: str) -> list[Change]:
    ch = [Change("attach", i, "create", None, Attachment(i, hook)) for i in tb.lb_interfaces]
    eps = EndpointSet(KEY, tuple(Backend(tb.backend4(i), ECHO_PORT) for i in range(tb.n_backends)))
    ch.append(Change("endpoints", str(KEY), "create", None, eps))
    svc = ServiceEntry(KEY, "echo", "default", "rr", 240, 10800)
    ch.append(Change("service", str(KEY), "create", None, svc))
    return ch


def v3_changed() -> set[str]:
    """Maps a v1 or v2 pin set lacks or holds in another layout: lb_conf, lb_ct, lb_stats, the firewall's."""
    return {"lb_conf", "lb_ct", "lb_stats"} | {n for n in B.MAPS if n.startswith("lb_fw_")}


def v4_changed(version: str = "v1") -> set[str]:
    """Maps a pin set of layout `version` lacks or holds in another layout: v4 adds the TCP
    sequence numbers and the next-hop cache to lb_ct, global counters (lb_stats), the SCTP
    peer VIPs to lb_conf and the maps lb_nh_gen, lb_ct_scratch, lb_frag, lb_sctp and lb_addrset."""
    v4 = {"lb_ct", "lb_stats", "lb_conf", "lb_nh_gen", "lb_ct_scratch", "lb_frag", "lb_sctp", "lb_addrset"}
    return v4 if version == "v3" else v3_changed() | v4


_APPLY_V1 = textwrap.dedent("""
    import pickle, sys
    from reconciler.drivers.bpf import BpfDriver
    with BpfDriver(pin_root=sys.argv[1], netns=sys.argv[2]) as d:
        d.apply(pickle.loads(bytes.fromhex(sys.argv[3])))
""")


def apply_v1(v1: Path, pin_root: str, netns: str, ch: list[Change]) -> None:
    import pickle

    env = dict(os.environ, **{DATAPATH_DIR_ENV: str(v1)})
    r = subprocess.run([sys.executable, "-c", _APPLY_V1, pin_root, netns, pickle.dumps(ch).hex()],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


class Stream:
    """Numbered lines sent continuously through the VIP; every echo is checked in order."""

    def __init__(self, tb: Testbed) -> None:
        with in_netns(tb.client):
            self.sock = socket.create_connection((VIP4, ECHO_PORT), timeout=10)
        self.stop = threading.Event()
        self.sent = 0
        self.received = 0
        self.errors: list[str] = []
        self.backend = ""
        self.cond = threading.Condition()
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer.start()
        self.reader.start()

    def _write(self) -> None:
        try:
            while not self.stop.is_set():
                self.sock.sendall(b"".join(b"%d\n" % i for i in range(self.sent, self.sent + 16)))
                self.sent += 16
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.errors.append(f"send: {exc!r}")

    def _read(self) -> None:
        f = self.sock.makefile("rb")
        try:
            for line in f:
                name, _, num = line.decode().rstrip("\n").partition(": ")
                self.backend = self.backend or name
                if name != self.backend or num != str(self.received):
                    self.errors.append(f"line {self.received}: got {line!r}")
                    return
                with self.cond:
                    self.received += 1
                    self.cond.notify_all()
        except OSError as exc:
            self.errors.append(f"receive: {exc!r}")
        finally:
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.received >= n or self.errors or not self.reader.is_alive(),
                                      timeout=60)
        assert not self.errors, self.errors
        assert self.received >= n

    def finish(self) -> None:
        self.stop.set()
        self.writer.join(60)
        self.reader.join(60)
        self.sock.close()
        assert not self.errors, self.errors
        assert self.received == self.sent, f"sent {self.sent} lines, {self.received} came back"


@pytest.fixture(params=["tc", "xdp"])
def bed(request: pytest.FixtureRequest) -> Iterator[tuple[Testbed, str, str]]:
    tb = Testbed(n_backends=2).setup()
    pin_root = f"/sys/fs/bpf/lbctl-mig-{uuid.uuid4().hex[:8]}"
    try:
        if request.param == "xdp":
            tb.xdp_workarounds()
        yield tb, pin_root, request.param
    finally:
        try:
            BpfDriver(pin_root=pin_root, netns=tb.lb).down()
        finally:
            tb.teardown()


def test_a_long_tcp_stream_survives_the_upgrade_from_a_previous_layout(
        bed: tuple[Testbed, str, str], old_dir: tuple[str, Path]) -> None:
    tb, pin_root, hook = bed
    version, built = old_dir
    ch = changes(tb, hook)
    apply_v1(built, pin_root, tb.lb, ch)
    fd = B.obj_get(os.path.join(pin_root, "lb_ct"))
    try:
        assert B.map_info(fd)[2] == CT_SIZE[version]
    finally:
        os.close(fd)

    stream = Stream(tb)
    stream.wait_for(2000)
    drv = BpfDriver(pin_root=pin_root, netns=tb.lb)
    try:
        live = drv.read()  # opens the pins: the migration runs here
        mig = drv.migration
        # v3: lb_ct.mode, lb_service.snat_addr, more global counters (lb_stats), the firewall maps;
        # v4: lb_ct's next-hop cache, lb_nh_gen, lb_ct_scratch.
        assert mig is not None and set(mig.changed) == v4_changed(version), mig
        assert sorted((i, h) for i, h, _ in mig.hooks) == sorted((i, hook) for i in tb.lb_interfaces)
        assert mig.maps["lb_ct"] >= 2  # the stream's forward and reply entries
        # The address set the old layout lacked is armed by the migration, with every VIP and
        # endpoint (the stream below runs through the armed early exit).
        addrset = drv.map("lb_addrset")
        assert bpf_addrset.armed(addrset)
        for a in (VIP4, *(tb.backend4(i) for i in range(tb.n_backends))):
            h = bpf_addrset.bit(socket.inet_aton(a) + bytes(12))
            word = addrset.lookup_raw(struct.pack("<I", h >> 6)) or bytes(8)
            assert (int.from_bytes(word, "little") >> (h & 63)) & 1, a
        at_swap = stream.received
        stream.wait_for(at_swap + 2000)  # the stream goes on through the new program
        # The stream's conntrack entries were converted: same fields, the new ones zero.
        backends = {tb.backend4(i) for i in range(tb.n_backends)}
        flows = [f for f in drv.conntrack() if f.vip_port == ECHO_PORT and f.backend in backends]
        assert flows and all(f.state == "established" for f in flows), flows
        cts = [v for _k, v in drv.map("lb_ct").items() if v.state == 2]
        assert cts and all((list(v.snat_addr), v.snat_port, v.mode) == ([0, 0, 0, 0], 0, 0) for v in cts)
        # v4's sequence numbers: unknown in a converted entry until its next packet notes them
        assert all(int(v.seq_known) in (0, 3) for v in cts) and any(int(v.seq_known) == 3 for v in cts)
        stream.finish()

        desired = {"service": {}, "endpoints": {}, "attach": {}} | {
            k: {c.key: c.after for c in ch if c.kind == k} for k in ("service", "endpoints", "attach")}
        assert diff(desired, live).empty, diff(desired, live).to_json()
        assert diff(desired, drv.read()).empty
        # The pins are the new layout's, nothing else is left.
        assert sorted(os.listdir(pin_root)) == sorted([*B.MAPS, "prog_tc", "prog_xdp"])
        assert B.map_info(drv.map("lb_ct").fd)[2] == B.lib().ffi.sizeof("struct lb_ct") == 144
    finally:
        drv.close()


def test_an_impossible_conversion_is_refused_and_touches_nothing(bed: tuple[Testbed, str, str],
                                                                 v1_dir: Path) -> None:
    tb, pin_root, hook = bed
    apply_v1(v1_dir, pin_root, tb.lb, changes(tb, hook))
    # lb_be_conns pinned as a per-CPU array (lb_stats): a changed map type cannot be converted.
    os.unlink(os.path.join(pin_root, "lb_be_conns"))
    fd = B.obj_get(os.path.join(pin_root, "lb_stats"))
    try:
        B.obj_pin(fd, os.path.join(pin_root, "lb_be_conns"))
    finally:
        os.close(fd)

    def snapshot() -> tuple[object, ...]:
        pins = tuple(sorted((n, os.stat(os.path.join(pin_root, n)).st_ino) for n in os.listdir(pin_root)))
        with in_netns(tb.lb):
            progs = tuple(B.tc_query(socket.if_nametoindex(i)) if hook == "tc"
                          else B.xdp_query(socket.if_nametoindex(i)) for i in tb.lb_interfaces)
        return pins, progs

    before = snapshot()
    drv = BpfDriver(pin_root=pin_root, netns=tb.lb)
    try:
        for action in (drv.read, drv.load):
            with pytest.raises(B.LayoutError) as exc:
                action()
            msg = str(exc.value)
            assert "lb_be_conns: the map type changed" in msg and "nothing was changed" in msg, msg
            assert exc.value.hint is not None and "lbctl down" in exc.value.hint
            assert snapshot() == before
            assert not os.path.exists(os.path.join(pin_root, bpf_migrate.STAGING))
    finally:
        drv.close()


def test_the_second_pass_copies_what_the_old_program_wrote_during_the_copy(dp: Datapath) -> None:
    """Entries created or changed in the old map after pass 1 reach the new map, unless
    the new program wrote them since (its entry is newer)."""
    new_root = dp.pin_root + "-new"
    other = BpfDriver(pin_root=new_root, netns=dp.ns)
    try:
        other.load()
        old_ct, new_ct = dp.driver.map("lb_ct"), other.map("lb_ct")
        layout = B.pinned_map_layout(old_ct.fd)
        conv = bpf_migrate.conversion("lb_ct", layout, layout)
        old = B.raw_map("lb_ct", old_ct.fd, old_ct.key_size, old_ct.value_size, False)
        new = B.raw_map("lb_ct", new_ct.fd, new_ct.key_size, new_ct.value_size, False)
        ks, vs = old.key_size, old.value_size

        def key(i: int) -> bytes:
            return bytes([i]) * ks

        def val(i: int) -> bytes:
            return bytes([i]) * vs

        # pass 1 copied keys 1, 2, 3 with value 1
        before = {key(i): val(1) for i in (1, 2, 3)}
        old.update_batch_raw([(key(1), val(1)), (key(2), val(2)), (key(3), val(3)), (key(4), val(4)),
                              (key(5), val(5))])
        new.update_batch_raw([(key(1), val(1)), (key(2), val(1)), (key(3), val(9)), (key(5), val(9))])
        # old program: 1 unchanged, 2 and 3 changed, 4 and 5 created; new program: wrote 3 and 5
        assert bpf_migrate._second_pass(conv, old, new, before) == 2
        assert {k[0]: v[0] for k, v in new.items_raw()} == {1: 1, 2: 2, 3: 9, 4: 4, 5: 9}
    finally:
        other.down()


def test_down_removes_the_staging_pins_of_a_migration_that_died(dp: Datapath) -> None:
    staging = os.path.join(dp.pin_root, bpf_migrate.STAGING)
    os.makedirs(staging)
    B.obj_pin(dp.driver.map("lb_ct").fd, os.path.join(staging, "lb_ct"))
    dp.driver.down()
    assert not os.path.exists(dp.pin_root)


def test_commands_that_only_look_report_an_old_layout_and_change_nothing(
        bed: tuple[Testbed, str, str], v1_dir: Path) -> None:
    """plan, get, export and down build the driver with migrate=False: a layout-v1 box is
    reported (apply migrates it), and its pins and programs stay exactly as they were."""
    tb, pin_root, hook = bed
    apply_v1(v1_dir, pin_root, tb.lb, changes(tb, hook))
    before = sorted((n, os.stat(os.path.join(pin_root, n)).st_ino) for n in os.listdir(pin_root))
    looker = BpfDriver(pin_root=pin_root, netns=tb.lb, migrate=False)
    try:
        with pytest.raises(B.LayoutError) as exc:
            looker.read()
        assert all(n in str(exc.value) for n in v4_changed()) and "changes nothing" in str(exc.value)
        assert exc.value.hint is not None and "lbctl apply" in exc.value.hint
        assert looker.migration is None
    finally:
        looker.close()
    assert sorted((n, os.stat(os.path.join(pin_root, n)).st_ino) for n in os.listdir(pin_root)) == before
    drv = BpfDriver(pin_root=pin_root, netns=tb.lb)  # what apply and the daemon build
    try:
        drv.read()
        assert drv.migration is not None and set(drv.migration.changed) == v4_changed()
        (notice,) = drv.notices()  # apply prints it, the daemon logs it: once
        assert "migrated the pinned datapath to layout v4 live: maps " in notice, notice
        assert all(n in notice for n in v4_changed()), notice
        assert drv.notices() == []
    finally:
        drv.close()
