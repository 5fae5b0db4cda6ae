"""The netlink driver: VIP addresses on lbctl's own interface, through pyroute2.

Why this exists: the kernel must own every VIP as a local address so that it
answers ARP for IPv4 VIPs and accepts what the datapath passes up (DESIGN
pitfall 19).  lbctl keeps those addresses on an interface of its own (default
``lbctl0``) so it never touches an operator's interfaces, can read back exactly
the addresses it manages, and ``lbctl down`` removes them all by deleting one
interface.  This is the only module that imports pyroute2.

Facts this module relies on (checked on the target kernel and both pyroute2
versions, Debian bookworm's 0.7.2 and 0.9):

- The interface is a ``dummy`` link.  Kernels built without ``CONFIG_DUMMY``
  answer ``EOPNOTSUPP``; then an ``ifb`` link is used instead: it is just as
  inert (it drops anything routed to it, has carrier once up, and holds
  addresses the same way).  Either kind found under our name is adopted;
  anything else under our name is an error, never silently reused.
- Linux answers ARP for an IPv4 address held on any interface (weak host), so
  IPv4 VIPs on ``lbctl0`` are reachable from every link.  IPv6 neighbour
  discovery answers only for addresses on the receiving interface: IPv6 VIPs
  need a route to the box (BGP announcement or a static route), or proxy NDP.
- IPv6 VIPs are added with ``IFA_F_NODAD`` so they are usable at once.
- ``/proc/sys/net/...`` resolves to the network namespace of the *calling
  thread* at ``open()`` time (and the open file keeps pointing there), so
  ``ensure_forwarding`` opens the sysctl files inside ``in_netns``.  By
  contrast ``/proc/self/net`` and ``/proc/net`` follow the process's main
  thread and only ``/proc/thread-self/net`` follows the calling thread.

Each call opens its own netlink socket inside the namespace (about 1-2 ms),
so a driver object can be used from any thread and holds nothing open.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import Record, VipAddress

DEFAULT_IFNAME = "lbctl0"
# Link kinds lbctl creates, in order of preference; an existing link of any of
# these kinds under lbctl's interface name is adopted.
LINK_KINDS: tuple[str, ...] = ("dummy", "ifb")

IFF_UP = 0x1
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0


class NetlinkDriverError(LbctlError):
    """A netlink operation failed; the message names the operation and errno."""


def _where(netns: str | None) -> str:
    return f" in network namespace {netns!r}" if netns else ""


def _hint(code: int) -> str | None:
    if code == errno.EPERM:
        return "run lbctl as root (it needs CAP_NET_ADMIN)"
    if code == errno.EOPNOTSUPP:
        return "the kernel lacks both dummy and ifb link support"
    return None


class NetlinkDriver:
    """Owns record kind ``vip``: the addresses on lbctl's VIP interface.

    ``read()`` never changes anything (it does not create the interface);
    ``apply()`` creates the interface and brings it up when it first needs
    it.  ``writes`` counts kernel changes actually made (link created or set
    up, address added or removed, link deleted); an add of an address that is
    already there or a delete of one that is gone is not an error and counts
    nothing.
    """

    kinds: frozenset[str] = frozenset({"vip"})

    def __init__(self, ifname: str = DEFAULT_IFNAME, netns: str | None = None) -> None:
        if not ifname or len(ifname) > 15 or "/" in ifname or any(c.isspace() for c in ifname):
            raise ValueError(f"invalid interface name {ifname!r}")
        self.ifname = ifname
        self.netns = netns
        self.writes = 0

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _socket(self) -> Iterator[Any]:
        """A fresh rtnetlink socket opened inside the driver's namespace."""
        with in_netns(self.netns):
            ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    def _fail(self, what: str, exc: NetlinkError) -> NetlinkDriverError:
        code = int(exc.code)
        return NetlinkDriverError(
            f"netlink: {what}{_where(self.netns)} failed: {os.strerror(code)} (errno {code})",
            hint=_hint(code),
        )

    def _link(self, ipr: Any, ifname: str) -> Any | None:
        """The link message of ``ifname``, or None when there is no such link."""
        indexes = ipr.link_lookup(ifname=ifname)
        if not indexes:
            return None
        links = ipr.get_links(indexes[0])
        return links[0] if links else None

    @staticmethod
    def _kind(link: Any) -> str | None:
        info = link.get_attr("IFLA_LINKINFO")
        return None if info is None else info.get_attr("IFLA_INFO_KIND")

    def _ensure_link(self, ipr: Any, ifname: str) -> int:
        """Create ``ifname`` if missing, check it is ours, bring it up; return its index."""
        link = self._link(ipr, ifname)
        if link is None:
            last: NetlinkError | None = None
            for kind in LINK_KINDS:
                try:
                    ipr.link("add", ifname=ifname, kind=kind)
                except NetlinkError as exc:
                    if exc.code == errno.EEXIST:  # created concurrently: adopt it below
                        break
                    if exc.code == errno.EOPNOTSUPP:  # kernel without this link kind
                        last = exc
                        continue
                    raise self._fail(f"create {kind} interface {ifname}", exc) from None
                else:
                    self.writes += 1
                    break
            else:
                assert last is not None
                raise self._fail(f"create interface {ifname} (tried {', '.join(LINK_KINDS)})", last)
            link = self._link(ipr, ifname)
            if link is None:
                raise NetlinkDriverError(f"netlink: interface {ifname}{_where(self.netns)} vanished "
                                         "right after it was created")
        found = self._kind(link)
        if found not in LINK_KINDS:
            raise NetlinkDriverError(
                f"interface {ifname}{_where(self.netns)} exists but is a {found or 'plain'} link, "
                f"not lbctl's {'/'.join(LINK_KINDS)} VIP interface",
                hint="remove it, or set spec.vipInterface of the Datapath resource to a free name",
            )
        index = int(link["index"])
        if not link["flags"] & IFF_UP:
            try:
                ipr.link("set", index=index, state="up")
            except NetlinkError as exc:
                raise self._fail(f"set {ifname} up", exc) from None
            self.writes += 1
        return index

    # -- Driver protocol ----------------------------------------------------

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        """The global-scope addresses on the VIP interface (none if it is missing)."""
        vips: dict[str, Record] = {}
        with self._socket() as ipr:
            try:
                link = self._link(ipr, self.ifname)
                if link is not None:
                    for msg in ipr.get_addr(index=int(link["index"])):
                        if msg["scope"] != RT_SCOPE_UNIVERSE:  # e.g. the IPv6 link-local
                            continue
                        address = str(ipaddress.ip_address(msg.get_attr("IFA_ADDRESS")))
                        vips[address] = VipAddress(address, int(msg["prefixlen"]), self.ifname)
            except NetlinkError as exc:
                raise self._fail(f"read addresses of {self.ifname}", exc) from None
        return {"vip": dict(sorted(vips.items()))}

    def read_keys(self, kind: str, keys: Collection[str]) -> Mapping[str, Record]:
        """Live records of just ``keys`` (for the daemon's incremental verify).

        Netlink has no lookup of one address, so this filters one dump of the
        VIP interface's addresses; it is called only when VIP keys were touched.
        """
        if kind != "vip":
            raise ValueError(f"netlink driver does not own record kind {kind!r}")
        live = self.read()["vip"]
        return {key: live[key] for key in keys if key in live}

    def apply(self, changes: Sequence[Change]) -> None:
        """Carry out ``vip`` changes in order; each is idempotent."""
        for change in changes:
            if change.kind != "vip":
                raise ValueError(f"netlink driver got a {change.kind!r} change; it only owns 'vip'")
            for record in (change.before, change.after):
                if record is not None and not isinstance(record, VipAddress):
                    raise ValueError(f"vip change {change.key} carries a {type(record).__name__}")
        if not changes:
            return
        with self._socket() as ipr:
            indexes: dict[str, int] = {}
            for change in changes:
                before, after = change.before, change.after
                assert before is None or isinstance(before, VipAddress)
                assert after is None or isinstance(after, VipAddress)
                if before is not None and before != after and change.action != "create":
                    self._del_addr(ipr, before)
                if after is not None and change.action != "delete":
                    if after.ifname not in indexes:
                        indexes[after.ifname] = self._ensure_link(ipr, after.ifname)
                    self._add_addr(ipr, indexes[after.ifname], after)

    def down(self) -> None:
        """Remove the VIP interface and with it every VIP address (idempotent)."""
        with self._socket() as ipr:
            link = self._link(ipr, self.ifname)
            if link is None:
                return
            if self._kind(link) not in LINK_KINDS:
                raise NetlinkDriverError(
                    f"interface {self.ifname}{_where(self.netns)} is not lbctl's VIP interface; "
                    "leaving it alone")
            try:
                ipr.link("del", index=int(link["index"]))
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise self._fail(f"delete interface {self.ifname}", exc) from None
            else:
                self.writes += 1

    def interface_kind(self) -> str | None:
        """The link kind of the VIP interface (``dummy``/``ifb``), None if missing."""
        with self._socket() as ipr:
            link = self._link(ipr, self.ifname)
            return None if link is None else self._kind(link)

    # -- addresses ----------------------------------------------------------

    def _add_addr(self, ipr: Any, index: int, vip: VipAddress) -> None:
        ip = ipaddress.ip_address(vip.address)
        flags = IFA_F_NODAD if ip.version == 6 else 0
        try:
            ipr.addr("add", index=index, address=str(ip), prefixlen=vip.prefixlen, flags=flags)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return
            raise self._fail(f"add {ip}/{vip.prefixlen} to {vip.ifname}", exc) from None
        self.writes += 1

    def _del_addr(self, ipr: Any, vip: VipAddress) -> None:
        ip = ipaddress.ip_address(vip.address)
        indexes = ipr.link_lookup(ifname=vip.ifname)
        if not indexes:  # interface gone, address gone with it
            return
        try:
            ipr.addr("del", index=indexes[0], address=str(ip), prefixlen=vip.prefixlen)
        except NetlinkError as exc:
            if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return
            raise self._fail(f"delete {ip}/{vip.prefixlen} from {vip.ifname}", exc) from None
        self.writes += 1


# -- sysctls ------------------------------------------------------------------


def _sysctl_path(name: str) -> str:
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
        with open(_sysctl_path(name), encoding="ascii") as f:
            return f.read().strip()


def write_sysctl(name: str, value: str, netns: str | None = None) -> bool:
    """Set ``name`` in ``netns``; return True when the value changed.

    Both open() calls happen inside the namespace: /proc/sys/net resolves
    against the calling thread's namespace when the file is opened.
    """
    with in_netns(netns):
        path = _sysctl_path(name)
        with open(path, encoding="ascii") as f:
            if f.read().strip() == value:
                return False
        with open(path, "w", encoding="ascii") as f:
            f.write(value)
    return True


def forwarding_sysctls(interfaces: Sequence[str] = (), ipv6: bool = True) -> dict[str, str]:
    """The sysctls the datapath's fallback paths need (DESIGN pitfalls 11, 19).

    ``bpf_fib_lookup`` and packets passed to the kernel need IPv4 forwarding;
    replies and redirected flows must not meet reverse-path filtering, whose
    effective value per interface is max(all, interface), hence both.
    Note for operators: IPv6 forwarding makes the kernel ignore router
    advertisements on interfaces with ``accept_ra=1``.
    """
    wanted = {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
    }
    for ifname in interfaces:
        if not ifname or ifname in (".", "..") or "/" in ifname or any(c.isspace() for c in ifname):
            raise ValueError(f"invalid interface name {ifname!r}")
        wanted[f"net.ipv4.conf.{ifname.replace('.', '/')}.rp_filter"] = "0"
    if ipv6:
        wanted["net.ipv6.conf.all.forwarding"] = "1"
    return wanted


def ensure_forwarding(netns: str | None = None, interfaces: Sequence[str] = (),
                      ipv6: bool = True) -> list[str]:
    """Enable forwarding and disable rp_filter in ``netns``; return what changed.

    Interfaces that do not exist (yet) are skipped: their rp_filter is set
    when they are attached and this is called again.
    """
    changed: list[str] = []
    for name, value in forwarding_sysctls(interfaces, ipv6).items():
        try:
            if write_sysctl(name, value, netns):
                changed.append(f"{name}={value}")
        except FileNotFoundError:
            if name.startswith("net.ipv4.conf.") and name.split(".")[3] not in ("all", "default"):
                continue
            raise LbctlError(f"sysctl {name} does not exist{_where(netns)}") from None
        except PermissionError:
            raise LbctlError(f"cannot set sysctl {name}{_where(netns)}",
                             hint="run lbctl as root") from None
    return changed
