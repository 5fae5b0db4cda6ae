"""The netlink driver: VIPs as local routes on lbctl's own interface.

Why this exists: the kernel must treat every VIP as local so that it answers
ARP for IPv4 VIPs and accepts what the datapath passes up (DESIGN pitfall 19).
lbctl does that with one host route of type ``local`` per VIP in the ``local``
table, through an interface of its own (default ``lbctl0``) -- ``ip route add
local VIP/32 dev lbctl0 table local proto lbctl`` -- so it never touches an
operator's interfaces, can read back exactly the routes it manages (protocol
``RTPROT_LBCTL``), and ``lbctl down`` removes them all by deleting one interface.
This is the only module that imports pyroute2.

Why routes, not addresses (what lbctl did first): the kernel treats a local
route exactly as the local route it makes for an address (ARP answered from
every link, TCP accepted; checked on the target kernel), but one address per
VIP on one link grows worse than quadratically -- 10,000 ``/32`` addresses cost
2.6 s of a cold apply, 30,000 cost 21 s of system time, 100,000 several minutes
-- while 10,000 local routes cost 0.05 s and 30,000 more 0.15 s
(``bench/results/reconcile.md``).  A box still holding VIPs as addresses (an
older lbctl) reads back with a fault on each; the next apply deletes every
such address before it adds any route (deleting a link's last IPv4 address
makes the kernel flush every IPv4 route through the link), so during that one
apply a VIP is not local from its address's delete to its route's add --
at most the apply's 1.2 s for 10,000 VIPs on the 2-vCPU VM, nearly all of it the
address deletes (``bench/results/reconcile.md``); established flows do not
notice (the datapath translates them before the kernel routes), and a
neighbour's cached ARP entry covers the gap.

Two paths into the kernel:

- the link (create, check its kind, bring it up, delete) goes through pyroute2:
  a handful of calls per apply;
- the routes go through a small raw ``NETLINK_ROUTE`` socket of our own
  (stdlib ``socket`` + ``struct``), because at 10,000 VIPs one pyroute2 call per
  change cost seconds per cold apply and its dump ~0.4-0.8 s per read.  Adds and
  deletes are sent many messages per ``send`` (each with ``NLM_F_ACK`` and its
  own sequence number), then the acks are read and each error is mapped back to
  its VIP; reads are one ``RTM_GETROUTE`` dump per family of the ``local``
  table and one ``RTM_GETADDR`` dump, filtered by the kernel
  (``NETLINK_GET_STRICT_CHK``) and again here, parsed with ``struct``.

Facts this module relies on (checked on the target kernel and both pyroute2
versions, Debian bookworm's 0.7.2 and 0.9):

- The interface is a ``dummy`` link.  Kernels built without ``CONFIG_DUMMY``
  answer ``EOPNOTSUPP``; then an ``ifb`` link is used instead: it is just as
  inert (it drops anything routed to it and has carrier once up).  Either kind
  found under our name is adopted; anything else under our name is an error,
  never silently reused.
- Linux answers ARP for an IPv4 address that is local by any route (weak host),
  so IPv4 VIPs are reachable from every link.  IPv6 neighbour discovery answers
  only for addresses on the receiving interface: IPv6 VIPs need a route to the
  box (BGP announcement or a static route), or proxy NDP.
- IPv6 refuses a route through a link that is down ("Nexthop device is not
  up"), so the link is brought up before any route is added; IPv6 drops the
  routes of a link that goes down (the next read shows them missing and the
  next apply puts them back).  IPv4 keeps them.
- The kernel accepts a local route to what can never be a VIP (0.0.0.0,
  255.255.255.255, IPv4 multicast and loopback) without a word, so the driver
  refuses those itself; IPv6 refuses multicast and ``::1`` (``EINVAL``, with an
  extended-ack message we pass on).  Only host routes (/32, /128) are added.
- The kernel handles every message of a multi-message ``send`` in order, even
  after one fails, and acks each one separately (one datagram per ack).  So a
  batch keeps delete-before-add order, an error does not stop the rest of its
  batch (the driver stops sending further batches), and the acks of a batch
  must fit the socket's receive buffer: an overflow drops acks (``ENOBUFS``),
  hence bounded batches and a forced large buffer.
- ``RTM_NEWROUTE`` with ``NLM_F_EXCL`` answers ``EEXIST`` for a route already
  there; ``RTM_DELROUTE`` answers ``ESRCH`` for one that is not (and
  ``RTM_DELADDR`` ``EADDRNOTAVAIL``): both mean "already so" (no error, no
  write).  A delete names the type, table and device but not the protocol, so
  it also removes a local route someone else put there for a VIP.
- Kernel settings (forwarding, rp_filter) are not this driver's: they are
  records of their own (``reconciler.drivers.sysctl``).

Size: about 800 lines, over the ~500 the project aims at, because the raw
rtnetlink path (message building, batching, ack-to-VIP mapping, the filtered
dump parsers) is one codec used by this driver alone; its parts share private
message formats and error semantics, and split across modules they would only
export internals to each other.

Each call opens its own sockets inside the namespace (a socket keeps pointing
at the namespace it was created in), so a driver object can be used from any
thread and holds nothing open.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

from reconciler.config.semantic import packed_not_unicast
from reconciler.constants import DEFAULT_VIP_INTERFACE
from reconciler.drivers.netns import in_netns
from reconciler.errors import LbctlError
from reconciler.plan import Change
from reconciler.records import Record, VipAddress

if TYPE_CHECKING:
    from pyroute2.netlink.exceptions import NetlinkError


def _netlink_error() -> type[NetlinkError]:
    """pyroute2's error class; pyroute2 (~0.1 s to import) is imported only when the link is touched."""
    from pyroute2.netlink.exceptions import NetlinkError

    cls: type[NetlinkError] = NetlinkError
    return cls

# Link kinds lbctl creates, in order of preference; an existing link of any of
# these kinds under lbctl's interface name is adopted.
LINK_KINDS: tuple[str, ...] = ("dummy", "ifb")

IFF_UP = 0x1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_HOST = 254
RT_SCOPE_NOWHERE = 255  # in a delete: "any scope"
RT_TABLE_LOCAL = 255
RTN_LOCAL = 2
RTPROT_KERNEL = 2
# The protocol lbctl's routes carry (``ip route`` shows "proto lbctl" where
# /etc/iproute2/rt_protos.d names it).  Unassigned in linux/rtnetlink.h and in
# iproute2's rt_protos, and clear of the values routing daemons use (bird 12,
# keepalived 18, babel 42, FRR 186-196).
RTPROT_LBCTL = 108
# The fault a VIP held as an address (how lbctl held VIPs before local routes)
# reads back with; apply deletes the address before it adds the route.
ADDRESS_FAULT = "held as an address, not as lbctl's local route: apply converts it"

# -- rtnetlink wire format (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h) --

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_RCVBUFFORCE = 33

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF

RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_TABLE = 15

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct("=HH")  # len, type
ERRNO = struct.Struct("=i")
U32 = struct.Struct("=I")

# Acks of one batch must fit the receive buffer (one skb each, ~1 KiB of
# truesize); we ask for this much and size batches by what we got.
RCVBUF_BYTES = 4 << 20
MAX_BATCH = 512
BATCH_BYTES = 64 << 10
RECV_BYTES = 64 << 10
DUMP_RETRIES = 3
RECV_TIMEOUT_S = 30


class NetlinkDriverError(LbctlError):
    """A netlink operation failed; the message names the operation and errno."""


def _where(netns: str | None) -> str:
    return f" in network namespace {netns!r}" if netns else ""


def _hint(code: int, adding: bool = False) -> str | None:
    if adding and code in (errno.EINVAL, errno.EADDRNOTAVAIL):
        return ("the kernel refuses a local route to this VIP; fix the VIP in the configuration, "
                "then apply again")
    if code == errno.EPERM:
        return "run lbctl as root (it needs CAP_NET_ADMIN)"
    if code == errno.EOPNOTSUPP:
        return "the kernel lacks both dummy and ifb link support"
    if code == errno.ENODEV:
        return "the VIP interface vanished during the apply (deleted concurrently?); apply again"
    if code == errno.EAGAIN:
        return f"the kernel did not answer within {RECV_TIMEOUT_S} s; apply again"
    if code == errno.ENOBUFS:
        return "the kernel dropped netlink acknowledgements; apply again (the next run converges)"
    return None


def _rta(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (-length & 3)


class _Op(NamedTuple):
    """One message: what it is for and its encoded body (after nlmsghdr)."""

    kind: int  # RTM_NEWROUTE, RTM_DELROUTE or RTM_DELADDR
    vip: VipAddress
    body: bytes


class _Ack(NamedTuple):
    code: int  # 0 or a positive errno
    message: str  # the kernel's extended-ack text, "" if none


def _pack_addr(vip: VipAddress, adding: bool) -> tuple[int, bytes]:
    """(family, packed address) of a VIP; ValueError names a bad one.

    What is added must be a host route to a unicast address (the kernel would
    take 0.0.0.0, broadcast, multicast and loopback as local routes without a
    word); a delete takes whatever a read can return.
    """
    for family, maxlen in ((socket.AF_INET, 32), (socket.AF_INET6, 128)):
        try:
            packed = socket.inet_pton(family, vip.address)
        except OSError:
            continue
        if not 0 <= vip.prefixlen <= maxlen:
            raise ValueError(f"vip {vip.address}: prefix length {vip.prefixlen} out of range 0-{maxlen}")
        if adding:
            if vip.prefixlen != maxlen:
                raise ValueError(f"vip {vip.address}/{vip.prefixlen}: a VIP is one address (/{maxlen})")
            if why := packed_not_unicast(packed):
                raise ValueError(f"vip {vip.address}: {why} cannot be a VIP")
        return family, packed
    raise ValueError(f"vip {vip.address!r} is not an IP address")


def _route_body(kind: int, vip: VipAddress, index: int) -> bytes:
    """An RTM_NEWROUTE/RTM_DELROUTE body for the local route of ``vip`` through link ``index``.

    A delete leaves protocol and scope open, so it matches the route whoever
    added it (a read shows such a route with a fault, and apply replaces it).
    """
    family, packed = _pack_addr(vip, adding=kind == RTM_NEWROUTE)
    proto, scope = (RTPROT_LBCTL, RT_SCOPE_HOST) if kind == RTM_NEWROUTE else (0, RT_SCOPE_NOWHERE)
    head = RTMSG.pack(family, vip.prefixlen, 0, 0, RT_TABLE_LOCAL, proto, scope, RTN_LOCAL, 0)
    return head + _rta(RTA_DST, packed) + _rta(RTA_OIF, U32.pack(index))


def _addr_delete_body(vip: VipAddress, index: int) -> bytes:
    """An RTM_DELADDR body for a VIP held as an address (converted to a route)."""
    family, packed = _pack_addr(vip, adding=False)
    body = IFADDRMSG.pack(family, vip.prefixlen, 0, RT_SCOPE_UNIVERSE, index) + _rta(IFA_ADDRESS, packed)
    return body + _rta(IFA_LOCAL, packed) if family == socket.AF_INET else body


def _v6_text(packed: bytes) -> str:
    # ipaddress, not inet_ntop: the same spelling as the desired state's keys
    # (they differ for IPv4-mapped/compatible addresses).
    return str(ipaddress.IPv6Address(packed))


class _RtnlSocket:
    """A raw ``NETLINK_ROUTE`` socket opened inside a network namespace."""

    def __init__(self, netns: str | None) -> None:
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                      NETLINK_ROUTE)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
            except OSError:  # no CAP_NET_ADMIN: capped by net.core.rmem_max
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
                try:
                    self.sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:  # older kernels: fewer niceties, same results
                    pass
            # A guard, not a timing: a blocking recv that the kernel never answers.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 struct.pack("@ll", RECV_TIMEOUT_S, 0))
            self.sock.bind((0, 0))
            rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sndbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except BaseException:
            self.sock.close()
            raise
        # The kernel reports (and charges) twice the set size; keep a margin.
        self.batch = max(8, min(MAX_BATCH, rcvbuf // 4096))
        self.batch_bytes = max(4096, min(BATCH_BYTES, sndbuf // 2 - 64))
        self.buf = bytearray(RECV_BYTES)
        self.seq = int.from_bytes(os.urandom(4), "little") & 0x3FFFFFFF

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> memoryview:
        """One datagram, whole (the buffer grows to fit)."""
        size = self.sock.recv_into(self.buf, 0, socket.MSG_PEEK | socket.MSG_TRUNC)
        if size > len(self.buf):
            self.buf = bytearray(size)
        n = self.sock.recv_into(self.buf, 0, socket.MSG_TRUNC)
        if n > len(self.buf):  # cannot happen after the peek; never parse a cut message
            raise OSError(errno.EMSGSIZE, "netlink message truncated")
        return memoryview(self.buf)[:n]

    @staticmethod
    def _error(data: memoryview, off: int, length: int, flags: int) -> _Ack:
        """Decode an NLMSG_ERROR message at ``off``."""
        (code,) = ERRNO.unpack_from(data, off + NLMSGHDR.size)
        message = ""
        if code and flags & NLM_F_ACK_TLVS:
            inner = off + NLMSGHDR.size + ERRNO.size
            (inner_len,) = U32.unpack_from(data, inner)
            pos = inner + (NLMSGHDR.size if flags & NLM_F_CAPPED else (inner_len + 3) & ~3)
            end = off + length
            while pos + RTATTR.size <= end:
                alen, atype = RTATTR.unpack_from(data, pos)
                if alen < RTATTR.size:
                    break
                if atype & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG:
                    message = bytes(data[pos + RTATTR.size:pos + alen]).split(b"\0", 1)[0].decode(
                        "utf-8", "replace")
                pos += (alen + 3) & ~3
        return _Ack(-code, message)

    def exchange(self, msgs: Sequence[tuple[int, int, bytes]]) -> list[_Ack]:
        """Send (type, flags, body) messages, each with an ack requested; their acks, in order.

        The caller keeps ``msgs`` within ``self.batch`` messages, so that all
        acks fit the receive buffer.  Messages are packed into as few sends as
        the send buffer allows.
        """
        base = self.seq
        self.seq = (self.seq + len(msgs)) & 0xFFFFFFFF
        out = bytearray()
        for k, (kind, flags, body) in enumerate(msgs):
            if out and len(out) + NLMSGHDR.size + len(body) > self.batch_bytes:
                self.sock.send(out)
                out = bytearray()
            out += NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK,
                                 (base + k) & 0xFFFFFFFF, 0)
            out += body
        if out:
            self.sock.send(out)
        acks: list[_Ack | None] = [None] * len(msgs)
        pending = len(msgs)
        while pending:
            data = self._recv()
            off = 0
            while off + NLMSGHDR.size <= len(data):
                length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, off)
                if length < NLMSGHDR.size:
                    break
                k = (seq - base) & 0xFFFFFFFF
                if kind == NLMSG_ERROR and k < len(msgs) and acks[k] is None:
                    acks[k] = self._error(data, off, length, flags)
                    pending -= 1
                off += (length + 3) & ~3
        return [a for a in acks if a is not None]

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        """The messages of one ``NLM_F_DUMP`` request, each as bytes (nlmsghdr included).

        Restarts (a few times) when the kernel flags the dump as interrupted
        by a concurrent change; raises ``OSError`` with the kernel's errno.
        """
        for attempt in range(DUMP_RETRIES + 1):
            seq = self.seq
            self.seq = (self.seq + 1) & 0xFFFFFFFF
            self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP,
                                         seq, 0) + body)
            out: list[bytes] = []
            interrupted = False
            done = False
            while not done:
                data = self._recv()
                off = 0
                while off + NLMSGHDR.size <= len(data):
                    length, mtype, flags, mseq, _pid = NLMSGHDR.unpack_from(data, off)
                    if length < NLMSGHDR.size:
                        break
                    if mseq == seq:
                        interrupted |= bool(flags & NLM_F_DUMP_INTR)
                        if mtype == NLMSG_DONE:
                            done = True
                            break
                        if mtype == NLMSG_ERROR:
                            ack = self._error(data, off, length, flags)
                            if ack.code:
                                raise OSError(ack.code, ack.message or os.strerror(ack.code))
                            done = True
                            break
                        out.append(bytes(data[off:off + length]))
                        if not flags & NLM_F_MULTI:  # a single answer, no NLMSG_DONE follows
                            done = True
                            break
                    off += (length + 3) & ~3
            if not interrupted or attempt == DUMP_RETRIES:
                return out
        raise AssertionError("unreachable")


def _attrs(msg: bytes, pos: int) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of the rtattrs of ``msg`` from ``pos`` on."""
    while pos + RTATTR.size <= len(msg):
        alen, atype = RTATTR.unpack_from(msg, pos)
        if alen < RTATTR.size:
            return
        yield atype & NLA_TYPE_MASK, msg[pos + RTATTR.size:pos + alen]
        pos += (alen + 3) & ~3


def _text(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw) if family == socket.AF_INET else _v6_text(raw)


_SIZES = {socket.AF_INET: 4, socket.AF_INET6: 16}


def _parse_addrs(msgs: Sequence[bytes], index: int | None, ifname: str) -> dict[str, VipAddress]:
    """The addresses of link ``index`` (None: of every link) from RTM_NEWADDR dump messages,
    but IPv6 link-local ones.

    On lbctl's interface an address is a VIP an older lbctl added: it carries
    ``ADDRESS_FAULT``, so the plan shows it and apply converts it.
    """
    vips: dict[str, VipAddress] = {}
    header = NLMSGHDR.size + IFADDRMSG.size
    faults = (ADDRESS_FAULT,) if ifname else ()
    for msg in msgs:
        _len, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(msg, 0)
        if mtype != RTM_NEWADDR or len(msg) < header:
            continue
        family, prefixlen, _ifa_flags, _scope, ifindex = IFADDRMSG.unpack_from(msg, NLMSGHDR.size)
        size = _SIZES.get(family)
        if size is None or (index is not None and ifindex != index):
            continue
        # IFA_LOCAL is the address itself; IFA_ADDRESS is the peer when there is
        # one (an IPv6 address without a peer has only IFA_ADDRESS).
        local = address = None
        for atype, payload in _attrs(msg, header):
            if len(payload) != size:
                continue
            if atype == IFA_LOCAL:
                local = payload
                break
            if atype == IFA_ADDRESS:
                address = payload
        raw = local if local is not None else address
        if raw is None:
            continue
        if family == socket.AF_INET6 and raw[0] == 0xFE and raw[1] & 0xC0 == 0x80:
            continue  # the kernel's IPv6 link-local address, not lbctl's
        text = _text(family, raw)
        vips[text] = VipAddress(text, prefixlen, ifname, faults)
    return vips


def _parse_routes(msgs: Sequence[bytes], index: int, ifname: str) -> dict[str, VipAddress]:
    """The local routes through link ``index`` in the local table, from RTM_NEWROUTE dump messages.

    The kernel's own (protocol ``kernel``: those of the link's addresses) are
    left to ``_parse_addrs``.  A route lbctl would not add (another protocol,
    a prefix rather than one address) carries a fault, so apply replaces it.
    """
    vips: dict[str, VipAddress] = {}
    header = NLMSGHDR.size + RTMSG.size
    for msg in msgs:
        _len, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(msg, 0)
        if mtype != RTM_NEWROUTE or len(msg) < header:
            continue
        family, dst_len, _src, _tos, table, proto, _scope, rtype, _fl = RTMSG.unpack_from(msg, NLMSGHDR.size)
        size = _SIZES.get(family)
        if size is None or rtype != RTN_LOCAL or proto == RTPROT_KERNEL:
            continue
        dst = None
        oif = 0
        for atype, payload in _attrs(msg, header):
            if atype == RTA_DST and len(payload) == size:
                dst = payload
            elif atype == RTA_OIF and len(payload) == 4:
                (oif,) = U32.unpack(payload)
            elif atype == RTA_TABLE and len(payload) == 4:
                (table,) = U32.unpack(payload)
        if dst is None or oif != index or table != RT_TABLE_LOCAL:
            continue
        faults: list[str] = []
        if proto != RTPROT_LBCTL:
            faults.append(f"a local route of protocol {proto}, not lbctl's ({RTPROT_LBCTL})")
        if dst_len != size * 8:
            faults.append(f"a local route to /{dst_len}, not to one address")
        text = _text(family, dst)
        seen = vips.get(text)
        if seen is None or seen.faults:  # lbctl's route wins over another one to the same VIP
            vips[text] = VipAddress(text, dst_len, ifname, tuple(faults))
    return vips


class NetlinkDriver:
    """Owns record kind ``vip``: the local routes (and leftover addresses) on lbctl's VIP interface.

    ``read()`` never changes anything (it does not create the interface);
    ``apply()`` creates the interface and brings it up when it first needs
    it.  ``writes`` counts kernel changes actually made (link created or set
    up, route added or removed, address removed, link deleted); an add of a
    route that is already there or a delete of one that is gone is not an
    error and counts nothing.
    """

    kinds: frozenset[str] = frozenset({"vip"})

    def __init__(self, ifname: str = DEFAULT_VIP_INTERFACE, netns: str | None = None) -> None:
        if not ifname or len(ifname) > 15 or "/" in ifname or any(c.isspace() for c in ifname):
            raise ValueError(f"invalid interface name {ifname!r}")
        self.ifname = ifname
        self.netns = netns
        self.writes = 0

    # -- plumbing ---------------------------------------------------------

    @contextmanager
    def _socket(self) -> Iterator[Any]:
        """A fresh pyroute2 rtnetlink socket opened inside the driver's namespace."""
        from pyroute2 import IPRoute

        with in_netns(self.netns):
            ipr = IPRoute()
        try:
            yield ipr
        finally:
            ipr.close()

    @contextmanager
    def _raw(self) -> Iterator[_RtnlSocket]:
        """A fresh raw rtnetlink socket opened inside the driver's namespace."""
        sock = _RtnlSocket(self.netns)
        try:
            yield sock
        finally:
            sock.close()

    def _index(self, ifname: str) -> int | None:
        """The ifindex of ``ifname`` in the driver's namespace, None if there is no such link."""
        with in_netns(self.netns):
            try:
                return socket.if_nametoindex(ifname)
            except OSError:
                return None

    def _fail(self, what: str, exc: NetlinkError) -> NetlinkDriverError:
        return self._fail_code(what, int(exc.code))

    def _fail_code(self, what: str, code: int, detail: str = "", adding: bool = False) -> NetlinkDriverError:
        said = f": kernel says {detail!r}" if detail else ""
        return NetlinkDriverError(
            f"netlink: {what}{_where(self.netns)} failed: {os.strerror(code)} (errno {code}){said}",
            hint=_hint(code, adding),
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

    def _ensure_link(self, ipr: Any, ifname: str) -> tuple[int, bool]:
        """Create ``ifname`` if missing and check it is ours; return (its index, whether it is up).

        A new link is down; ``apply`` brings it up before adding routes.
        """
        link = self._link(ipr, ifname)
        if link is None:
            last: NetlinkError | None = None
            for kind in LINK_KINDS:
                try:
                    ipr.link("add", ifname=ifname, kind=kind)
                except _netlink_error() as exc:
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
        return int(link["index"]), bool(link["flags"] & IFF_UP)

    def _set_up(self, ipr: Any, ifname: str, index: int) -> None:
        try:
            ipr.link("set", index=index, state="up")
        except _netlink_error() as exc:
            raise self._fail(f"set {ifname} up", exc) from None
        self.writes += 1

    # -- Driver protocol ----------------------------------------------------

    def read(self) -> Mapping[str, Mapping[str, Record]]:
        """The VIPs on the VIP interface: its local routes and its addresses (none if it is missing)."""
        index = self._index(self.ifname)
        if index is None:
            return {"vip": {}}
        try:
            with self._raw() as nl:
                routes = [msg for family in (socket.AF_INET, socket.AF_INET6)
                          for msg in nl.dump(RTM_GETROUTE, _route_dump(family, index))]
                addrs = nl.dump(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, index))
        except OSError as exc:
            if exc.errno == errno.ENODEV:  # the link went away after the lookup
                return {"vip": {}}
            code = exc.errno or errno.EIO
            raise self._fail_code(f"read the VIPs of {self.ifname}", code, exc.strerror or "") from None
        vips = _parse_routes(routes, index, self.ifname)
        vips.update(_parse_addrs(addrs, index, self.ifname))  # an address must go before its route can come
        return {"vip": dict(sorted(vips.items()))}

    def box_addresses(self) -> frozenset[str]:
        """Every address local to the box: assigned on any interface (IPv6 link-local ones left
        out), and the VIPs on lbctl's interface."""
        request = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        try:
            with self._raw() as nl:
                msgs = nl.dump(RTM_GETADDR, request)
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise self._fail_code("read the box's addresses", code, exc.strerror or "") from None
        return frozenset(_parse_addrs(msgs, None, "")) | frozenset(self.read()["vip"])

    def read_keys(self, kind: str, keys: Collection[str]) -> Mapping[str, Record]:
        """Live records of just ``keys`` (for the daemon's incremental verify).

        Netlink has no lookup of one route by type and device, so this filters
        one read of the VIP interface (a few ms per 1,000 VIPs); it is called
        only when VIP keys were touched.
        """
        if kind != "vip":
            raise ValueError(f"netlink driver does not own record kind {kind!r}")
        live = self.read()["vip"]
        return {key: live[key] for key in keys if key in live}

    def apply(self, changes: Sequence[Change]) -> None:
        """Carry out ``vip`` changes in order, batched; each is idempotent.

        An update or replace deletes the old route (or the address an older
        lbctl left), then adds the new route.  Everything is checked and
        encoded before the kernel is touched.  On a kernel error the rest of
        that batch has still been carried out (the kernel does not stop), later
        batches are not sent, and the error names the first failed VIP; every
        step moves toward the desired state, so the next apply converges.
        """
        steps: list[tuple[int, VipAddress]] = []
        for change in changes:
            if change.kind != "vip":
                raise ValueError(f"netlink driver got a {change.kind!r} change; it only owns 'vip'")
            before, after = change.before, change.after
            for record in (before, after):
                if record is not None and not isinstance(record, VipAddress):
                    raise ValueError(f"vip change {change.key} carries a {type(record).__name__}")
            assert before is None or isinstance(before, VipAddress)
            assert after is None or isinstance(after, VipAddress)
            if before is not None and before != after and change.action != "create":
                steps.append((RTM_DELADDR if ADDRESS_FAULT in before.faults else RTM_DELROUTE, before))
            if after is not None and change.action != "delete":
                steps.append((RTM_NEWROUTE, after))
        for kind, vip in steps:
            _pack_addr(vip, adding=kind == RTM_NEWROUTE)  # a bad record: ValueError before anything changes
        if not steps:
            return
        indexes: dict[str, int | None] = {}
        add_links = list(dict.fromkeys(vip.ifname for kind, vip in steps if kind == RTM_NEWROUTE))
        with self._socket() if add_links else nullcontext() as ipr:
            for ifname in add_links:
                link_index, up = self._ensure_link(ipr, ifname)
                indexes[ifname] = link_index
                if not up:  # IPv6 refuses a route through a link that is down
                    self._set_up(ipr, ifname, link_index)
        ops: list[_Op] = []
        for kind, vip in steps:
            if vip.ifname not in indexes:
                indexes[vip.ifname] = self._index(vip.ifname)
            index = indexes[vip.ifname]
            if index is None:  # only deletes get here: interface gone, its routes gone with it
                continue
            body = _addr_delete_body(vip, index) if kind == RTM_DELADDR else _route_body(kind, vip, index)
            ops.append(_Op(kind, vip, body))
        deladdr = [op for op in ops if op.kind == RTM_DELADDR]
        rest = [op for op in ops if op.kind != RTM_DELADDR]
        if deladdr:
            # Deleting a link's last IPv4 address makes the kernel flush every
            # IPv4 route through the link: the addresses go first, and lbctl's
            # routes there are read before and put back after (an add of one
            # that survived is "already there").
            links = {op.vip.ifname: indexes[op.vip.ifname] for op in deladdr}
            held = [v for ifname, link in links.items() if link is not None
                    for v in self._own_v4_routes(link, ifname)]
            self._send(deladdr)
            deleted = {(op.vip.ifname, op.vip.address) for op in rest if op.kind == RTM_DELROUTE}
            rest = [_Op(RTM_NEWROUTE, v, _route_body(RTM_NEWROUTE, v, index))
                    for v in held if (v.ifname, v.address) not in deleted
                    and (index := indexes[v.ifname]) is not None] + rest
        if rest:
            self._send(rest)

    def _own_v4_routes(self, index: int, ifname: str) -> list[VipAddress]:
        """lbctl's IPv4 local routes through link ``index`` (those a flush would take)."""
        try:
            with self._raw() as nl:
                msgs = nl.dump(RTM_GETROUTE, _route_dump(socket.AF_INET, index))
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise self._fail_code(f"read the VIPs of {ifname}", code, exc.strerror or "") from None
        return [v for v in _parse_routes(msgs, index, ifname).values() if not v.faults]

    def _send(self, ops: Sequence[_Op]) -> None:
        """Send route/address messages in batches; count what changed; raise on the first real error."""
        with self._raw() as nl:
            for start in range(0, len(ops), nl.batch):
                chunk = ops[start:start + nl.batch]
                # NLM_F_CREATE without NLM_F_EXCL: the same route again is EEXIST, but a
                # local route to the VIP through another link (an address an operator
                # put on eth0) does not stop lbctl's from being added beside it.
                msgs = [(op.kind, NLM_F_CREATE if op.kind == RTM_NEWROUTE else 0, op.body) for op in chunk]
                try:
                    acks = nl.exchange(msgs)
                except OSError as exc:
                    code = exc.errno or errno.EIO
                    raise self._fail_code(
                        f"change {len(chunk)} VIPs of {self.ifname} (from {_describe(chunk[0])})",
                        code) from None
                failed: list[tuple[_Op, _Ack]] = []
                for op, ack in zip(chunk, acks, strict=True):
                    adding = op.kind == RTM_NEWROUTE
                    if ack.code == 0:
                        self.writes += 1
                    elif not adding and ack.code in (errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV,
                                                     errno.ENOENT):
                        continue  # already gone
                    elif adding and ack.code == errno.EEXIST:
                        continue  # already there
                    else:
                        failed.append((op, ack))
                if failed:
                    op, ack = failed[0]
                    err = self._fail_code(_describe(op), ack.code, ack.message,
                                          adding=op.kind == RTM_NEWROUTE)
                    if len(ops) > 1:
                        more = f"{len(failed) - 1} more failed too; " if len(failed) > 1 else ""
                        err.args = (f"{err.args[0]}; {more}{start + len(chunk)} of {len(ops)} VIP "
                                    "changes were sent, the rest were not",)
                    raise err

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
            except _netlink_error() as exc:
                if exc.code != errno.ENODEV:
                    raise self._fail(f"delete interface {self.ifname}", exc) from None
            else:
                self.writes += 1

    def interface_kind(self) -> str | None:
        """The link kind of the VIP interface (``dummy``/``ifb``), None if missing."""
        with self._socket() as ipr:
            link = self._link(ipr, self.ifname)
            return None if link is None else self._kind(link)


def _route_dump(family: int, index: int) -> bytes:
    """An RTM_GETROUTE dump request for the local routes of link ``index`` in the local table."""
    return RTMSG.pack(family, 0, 0, 0, RT_TABLE_LOCAL, 0, 0, RTN_LOCAL, 0) + _rta(RTA_OIF, U32.pack(index))


def _describe(op: _Op) -> str:
    vip = op.vip
    if op.kind == RTM_DELADDR:
        return f"delete address {vip.address}/{vip.prefixlen} from {vip.ifname}"
    if op.kind == RTM_DELROUTE:
        return f"delete local route {vip.address}/{vip.prefixlen} via {vip.ifname}"
    return f"add local route {vip.address}/{vip.prefixlen} via {vip.ifname}"
