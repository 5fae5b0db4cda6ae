"""The bpf driver's teardown: ``lbctl down`` detaches lbctl's programs and removes its pins.

Why this exists: teardown must work whatever layout the pins have (they may come
from another lbctl), so it uses neither the object nor the maps' layout.
"""

from __future__ import annotations

import os
import socket

from reconciler.drivers import _libbpf as B
from reconciler.drivers import bpf_migrate
from reconciler.drivers.bpf_pins import PROGS, BpfPins
from reconciler.drivers.netns import in_netns


class BpfTeardown(BpfPins):
    """down(): detach and unpin."""

    # -------------------------------------------------------------------- down

    def down(self) -> None:
        """Detach lbctl's programs and remove lbctl's pins under this pin root, whatever their layout.

        Neither the object file nor the pinned maps' layout is consulted (pins of an lbctl with
        another layout must still come off): every interface of the namespace is asked which
        program sits in lbctl's tc slot and on its XDP hook, and one of lbctl's (a pinned
        program, or one named after an entry point) is detached.
        """
        self.close()
        ours: set[int] = set()
        for hook in PROGS:
            path = os.path.join(self.pin_root, f"prog_{hook}")
            if not os.path.exists(path):
                continue
            try:
                fd = B.obj_get(path)
            except B.BpfError:
                continue  # not a program: nothing of ours to recognise by id
            try:
                ours.add(B.prog_id(fd))
            finally:
                os.close(fd)

        def is_ours(pid: int) -> bool:
            return pid in ours or B.prog_name(pid) in PROGS.values()

        with in_netns(self.netns):
            for ifindex, ifname in socket.if_nameindex():
                if (pid := B.tc_query(ifindex)) and is_ours(pid):
                    B.tc_detach(ifindex, ifname)
                    self._count_write()
                if (pid := B.xdp_query(ifindex)) and is_ours(pid):
                    B.xdp_detach(ifindex, ifname)
                    self._count_write()
        if os.path.isdir(self.pin_root):
            bpf_migrate.clear_staging(self.pin_root)  # left by a migration that died
            for name in os.listdir(self.pin_root):
                path = os.path.join(self.pin_root, name)
                # lbctl's names, of this layout or another; directories are other boxes' pin roots
                if name.startswith(("lb_", "prog_")) and not os.path.isdir(path):
                    os.unlink(path)
            try:
                os.rmdir(self.pin_root)
            except OSError:
                pass  # other boxes' subdirectories live here
