"""The bpf driver's attachments: programs on tc/XDP hooks and the ``lb_attach`` bookkeeping.

Why this exists: attaching, detaching and reading back which program runs on
each hook (by kernel identity: the pinned program, or the same code on the same
maps) is its own concern, used by both the live read and apply.
"""

from __future__ import annotations

import os
import socket

from reconciler.drivers import _libbpf as B
from reconciler.drivers.bpf_codec import _zero_from
from reconciler.drivers.bpf_layout import (
    ATTACH,
    HOOKS,
    IFNAME_LEN,
)
from reconciler.drivers.bpf_pins import PROGS, BpfPins
from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import (
    Attachment,
    Record,
)

_HOOK_NAMES = {v: k for k, v in HOOKS.items()}
_PROG_TYPES = {"tc": B.BPF_PROG_TYPE_SCHED_CLS, "xdp": B.BPF_PROG_TYPE_XDP}


class BpfAttach(BpfPins):
    """Attach, detach and read back lbctl's programs on interfaces."""

    # ------------------------------------------------------------ attachments

    def _our_map_ids(self) -> frozenset[int]:
        if self._map_ids is None:
            self._map_ids = frozenset(B.map_id(m.fd) for m in self._maps.values())
        return self._map_ids

    def _pinned_prog(self, hook: str) -> tuple[int, B.ProgInfo] | str:
        """An fd of lbctl's pinned program for ``hook`` (the caller closes it) and who it is;
        or why there is none: the pin is missing, or holds a program that is not lbctl's
        ``lb_tc``/``lb_xdp`` on this pin root's maps."""
        path = os.path.join(self.pin_root, f"prog_{hook}")
        try:
            fd = B.obj_get(path)
        except B.BpfError as exc:
            return f"lbctl's pinned program {path} cannot be opened ({os.strerror(exc.errno)})"
        try:
            info = B.prog_info(fd)
        except B.BpfError:
            os.close(fd)
            return f"{path} is not a program"
        if (info.type, info.name) != (_PROG_TYPES[hook], PROGS[hook]) or not info.map_ids \
                or not info.map_ids & self._our_map_ids() \
                or not all(B.internal_map(m) for m in info.map_ids - self._our_map_ids()):
            os.close(fd)
            return (f"{path} holds {info.name or 'a program'} (id {info.id}), not lbctl's {PROGS[hook]} "
                    "on its maps")
        return fd, info

    @staticmethod
    def _program_fault(hook: str, attached: int, ref: B.ProgInfo | str) -> str | None:
        """Why the program ``attached`` on ``hook`` is not lbctl's, or None when it is.

        lbctl's program is the pinned one; another load of the same code on the same
        maps (same tag, name and map ids: an older lbctl attach) counts as lbctl's.
        """
        if isinstance(ref, str):
            return ref
        if attached == ref.id:
            return None
        info = B.prog_info_by_id(attached)
        if info is not None and info.same_code_and_maps(ref):
            return None
        if info is None:
            what = f"program id {attached}, which is gone"
        elif (info.name, info.tag) == (ref.name, ref.tag):
            what = f"a {info.name} (id {info.id}) on other maps than lbctl's pins"
        else:
            what = f"{info.name or 'a program without a name'} (id {info.id}, tag {info.tag})"
        return f"the {hook} hook runs {what}, not lbctl's {ref.name} (id {ref.id}, tag {ref.tag})"

    def _read_attach(self) -> dict[str, Record]:
        """Attachments recorded in lb_attach whose hook holds a program, with their faults."""
        out: dict[str, Record] = {}
        refs: dict[str, B.ProgInfo | str] = {}
        for kb, vb in self._maps["lb_attach"].items_raw():
            rec = self._attachment(kb.split(b"\0", 1)[0].decode(errors="replace"), kb, vb, refs)
            if rec is not None:
                out[rec.ifname] = rec
        return out

    def _attachment(self, ifname: str, kb: bytes, vb: bytes,
                    refs: dict[str, B.ProgInfo | str] | None = None) -> Attachment | None:
        """The live attachment of one lb_attach entry: None when its hook holds no program;
        faults when the hook runs another program or the entry disagrees with the hook.
        ``refs`` caches lbctl's pinned programs across calls."""
        ifindex, hook_n, prog_id, pad = ATTACH.unpack(vb)
        faults = []
        with in_netns(self.netns):
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                return None
            hook = _HOOK_NAMES.get(hook_n)
            if hook is None:
                faults.append(f"lb_attach: unknown hook {hook_n}")
                hook = "tc" if B.tc_query(idx) else "xdp"
            attached = B.tc_query(idx) if hook == "tc" else B.xdp_query(idx)
        if not attached:
            return None
        if ifindex != idx:
            faults.append(f"lb_attach: records ifindex {ifindex}, {ifname} is {idx}")
        if prog_id != attached:
            faults.append(f"lb_attach: records program id {prog_id}, the hook runs {attached}")
        name_len = len(ifname.encode())
        if pad or not _zero_from(kb, name_len):
            faults.append("lb_attach: padding is not zero")
        refs = {} if refs is None else refs
        if hook not in refs:
            got = self._pinned_prog(hook)
            if isinstance(got, str):
                refs[hook] = got
            else:
                os.close(got[0])
                refs[hook] = got[1]
        bad = self._program_fault(hook, attached, refs[hook])
        if bad is not None:
            faults.append(bad)
        return Attachment(ifname, hook, tuple(faults))

    def _attached_prog(self, ifname: str, hook: str) -> int:
        with in_netns(self.netns):
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                return 0
            return B.tc_query(idx) if hook == "tc" else B.xdp_query(idx)

    # ------------------------------------------------------------------ attach

    def _apply_attach(self, ch: Change) -> None:
        before, after = ch.before, ch.after
        ifname = ch.key
        if len(ifname.encode()) >= B.const("LB_IFNAME_LEN"):
            raise LbctlError(f"interface name {ifname!r} too long")
        kb = ifname.encode().ljust(IFNAME_LEN, b"\0")
        cur = self._maps["lb_attach"].lookup_raw(kb)
        cur_hook = _HOOK_NAMES.get(ATTACH.unpack(cur)[1], "") if cur is not None else ""
        if before is not None:
            assert isinstance(before, Attachment)
            cur_hook = cur_hook or before.hook
        if ch.action == "delete" or after is None:
            self._detach(ifname, cur_hook or "tc")
            self._detach(ifname, "xdp" if cur_hook == "tc" else "tc", quiet=True)
            if cur is not None:
                self._maps["lb_attach"].delete_raw(kb)
            return
        assert isinstance(after, Attachment)
        if after.hook not in HOOKS:
            raise LbctlError(f"unknown hook {after.hook!r} for {ifname}")
        if cur is not None and self._attachment(ifname, kb, cur) == Attachment(ifname, after.hook):
            return  # already live, lbctl's program, bookkeeping right: idempotent
        if cur_hook and cur_hook != after.hook:
            self._detach(ifname, cur_hook, quiet=True)
        fd, owned = self._attach_fd(after.hook)
        try:
            with in_netns(self.netns):
                try:
                    idx = socket.if_nametoindex(ifname)
                except OSError:
                    where = f" in netns {self.netns}" if self.netns else ""
                    raise LbctlError(f"interface {ifname} not found{where}",
                                     "check the Datapath resource's interfaces") from None
                if after.hook == "tc":
                    pid = B.tc_attach(idx, ifname, fd)
                else:
                    old = B.xdp_query(idx)
                    old_fd = B.prog_fd_by_id(old) if old else -1
                    try:
                        B.xdp_attach(idx, ifname, fd, old_fd)
                    finally:
                        if old_fd >= 0:
                            os.close(old_fd)
                    pid = B.xdp_query(idx)
        finally:
            if owned:
                os.close(fd)
        self._count_write()
        # Fetched only now: loading the object (_attach_fd) replaces the map handles.
        am = self._maps["lb_attach"]
        ak = am.key()
        ak.ifname = ifname.encode()
        v = am.value()
        v.ifindex, v.hook, v.prog_id = idx, HOOKS[after.hook], pid
        am.update(ak, v)

    def _attach_fd(self, hook: str) -> tuple[int, bool]:
        """An fd of lbctl's program for ``hook``, and whether the caller closes it.

        The pinned program when it is lbctl's (nothing is loaded, and every
        interface runs the same program); else this process's loaded object,
        whose programs are pinned again (the pins are what reads compare hooks
        with); else the object is loaded now (reusing the pinned maps) and pinned.
        """
        got = self._pinned_prog(hook)
        if not isinstance(got, str):
            return got[0], True
        loaded = self._obj is not None
        fd = self._prog(PROGS[hook])
        if loaded:
            self._pin_progs()
        return fd, False

    def _detach(self, ifname: str, hook: str, quiet: bool = False) -> None:
        with in_netns(self.netns):
            try:
                idx = socket.if_nametoindex(ifname)
            except OSError:
                return
            try:
                if hook == "tc":
                    if B.tc_query(idx):
                        B.tc_detach(idx, ifname)
                        self._count_write()
                elif B.xdp_query(idx):
                    B.xdp_detach(idx, ifname)
                    self._count_write()
            except B.BpfError:
                if not quiet:
                    raise
