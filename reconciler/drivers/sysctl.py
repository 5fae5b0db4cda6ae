"""The sysctl driver: kernel settings the datapath needs, taken in charge and given back.

Why this exists: a fresh edge box has forwarding off, and then the datapath's
``bpf_fib_lookup`` refuses every packet it would redirect: ``lbctl apply``
verified and no traffic flowed (issue #8).  Which settings the datapath needs
is decided by the pure compiler (``reconciler.desired.kernel_settings``); this
driver carries them out like any other record kind, so they are planned, shown,
applied, verified and repaired when someone changes them, and ``lbctl down``
puts back exactly the values they had before lbctl touched them.

Ownership: the live state of kind ``sysctl`` is the current value of each
setting lbctl has *taken in charge*.  The value a setting had when lbctl first
took it is kept in the state dir (``kernel-settings.json``, written atomically
*before* the kernel is changed, so a crash never loses an original).  So:

- a setting not in charge yet plans as a create (``+``), also when the kernel
  already has the wanted value (then nothing is written to the kernel);
- a setting in charge whose value someone changed plans as an update (drift);
- a setting no longer needed plans as a delete: its original value is written
  back and it leaves the file.  ``down()`` gives back every setting.

Values are read and written through ``/proc/sys``, opened inside the box's
network namespace (``in_netns``): ``/proc/sys/net`` resolves against the
calling thread's namespace at ``open()`` time.  Only the standard library is
used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import KernelSetting, Record
from reconciler.statefile import read_json_state, replace_file

STORE_NAME = "kernel-settings.json"
STORE_FORMAT = 1


def _where(netns: str | None) -> str:
    return f" in network namespace {netns!r}" if netns else ""


def sysctl_path(name: str) -> str:
    """``net.ipv4.conf.eth0/100.rp_filter`` -> ``/proc/sys/net/ipv4/conf/eth0.100/rp_filter``.

    As in sysctl(8), a ``/`` inside a dotted name stands for a ``.`` in the
    path component (interface names such as VLAN ``eth0.100`` contain dots).
    """
    parts = name.split(".")
    if not all(parts) or any(p in ("/", "//") or p.startswith("/") for p in parts):
        raise ValueError(f"invalid sysctl name {name!r}")
    return "/proc/sys/" + name.translate(str.maketrans("./", "/."))


def read_sysctl(name: str, netns: str | None = None) -> str:
    """Read ``name`` (dotted, e.g. ``net.ipv4.ip_forward``) as seen in ``netns``."""
    with in_netns(netns):
        with open(sysctl_path(name), encoding="ascii") as f:
            return f.read().strip()


def write_sysctl(name: str, value: str, netns: str | None = None) -> bool:
    """Set ``name`` in ``netns``; return True when the value changed.

    Both open() calls happen inside the namespace: /proc/sys/net resolves
    against the calling thread's namespace when the file is opened.
    """
    with in_netns(netns):
        path = sysctl_path(name)
        with open(path, encoding="ascii") as f:
            if f.read().strip() == value:
                return False
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    return True


def _missing_hint(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 5 and parts[2] == "conf" and parts[3] not in ("all", "default"):
        return (f"interface {parts[3].replace('/', '.')!r} does not exist here: create it, or remove it "
                "from the Datapath's interfaces")
    return "this kernel does not have that setting"


class SysctlDriver:
    """Owns record kind ``sysctl``; see the module docstring for what "live" means."""

    kinds = frozenset({"sysctl"})

    def __init__(self, state_dir: str | Path, netns: str | None = None) -> None:
        self.netns = netns
        self.path = Path(state_dir) / STORE_NAME
        self.writes = 0

    # -- the store of original values -------------------------------------------------------

    def saved(self) -> dict[str, str]:
        """Setting name -> the value it had before lbctl took it in charge, in the order taken."""
        saved = read_json_state(
            self.path, STORE_FORMAT, lambda data: {str(k): str(v) for k, v in data["original"].items()},
            what="record of kernel settings",
            hint="restore it from a backup; removing it makes lbctl forget the values to give back on "
                 "'lbctl down'")
        return saved if saved is not None else {}

    def _save(self, original: Mapping[str, str]) -> None:
        if not original:
            self.path.unlink(missing_ok=True)
            return
        data = {"format_version": STORE_FORMAT, "original": dict(original)}
        replace_file(self.path, (json.dumps(data, indent=2) + "\n").encode())

    # -- Driver protocol ------------------------------------------------------------------------

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        live: dict[str, Record] = {}
        for name in self.saved():
            try:
                live[name] = KernelSetting(name, read_sysctl(name, self.netns))
            except FileNotFoundError:
                continue  # the interface went away: nothing live to compare
        return {"sysctl": live}

    def apply(self, changes: Sequence[Change]) -> None:
        original = self.saved()
        for change in changes:
            if change.kind != "sysctl":
                raise ValueError(f"sysctl driver: kind {change.kind!r} is not mine")
            name = change.key
            if change.after is None:
                self._give_back(name, original)
                continue
            assert isinstance(change.after, KernelSetting)
            if name not in original:
                try:
                    original[name] = read_sysctl(name, self.netns)
                except FileNotFoundError:
                    raise LbctlError(f"sysctl {name} does not exist{_where(self.netns)}",
                                     hint=_missing_hint(name)) from None
                self._save(original)  # before the kernel changes: an original is never lost
            self._write(name, change.after.value)

    def down(self) -> list[str]:
        """Give back every setting in charge, last taken first; returns ``name=value`` restored."""
        original = self.saved()
        restored = [f"{name}={original[name]}" for name in reversed(list(original))]
        for name in reversed(list(original)):
            self._give_back(name, original)
        return restored

    # -- helpers --------------------------------------------------------------------------------

    def _write(self, name: str, value: str) -> None:
        try:
            if write_sysctl(name, value, self.netns):
                self.writes += 1
        except FileNotFoundError:
            raise LbctlError(f"sysctl {name} does not exist{_where(self.netns)}",
                             hint=_missing_hint(name)) from None
        except PermissionError:
            raise LbctlError(f"cannot set sysctl {name}{_where(self.netns)}",
                             hint="run lbctl as root") from None

    def _give_back(self, name: str, original: dict[str, str]) -> None:
        value = original.get(name)
        if value is not None:
            try:
                self._write(name, value)
            except LbctlError:
                if self._exists(name):
                    raise
                # the interface is gone, and its settings with it: nothing to give back
        original.pop(name, None)
        self._save(original)

    def _exists(self, name: str) -> bool:
        try:
            read_sysctl(name, self.netns)
        except FileNotFoundError:
            return False
        return True
