"""gobgpd's API messages as protobuf wire bytes, written and read by hand.

Why this exists: the BGP driver talks to gobgpd over gRPC (``reconciler.drivers.bgp``
holds the grpc import).  The messages are defined in Debian's
golang-github-osrg-gobgp-dev (``/usr/share/gocode/src/github.com/osrg/gobgp/api/
gobgp.proto`` and ``attribute.proto``, package ``apipb``).  The driver needs a
dozen of them and few fields of each, so instead of generating Python code with
protoc (another build step and the protobuf runtime, whose versions must match
the generated code) this module encodes those fields itself: protobuf's wire
format is varints and length-delimited fields.  Field numbers below are those of
gobgp 3.10's protos (the version bookworm ships); ``tests/reconciler/drivers/
test_bgp_wire.py`` checks them against the .proto files when they are installed.

Pure: no I/O, no grpc.  Decoding keeps unknown fields out of the way: a message
is read into ``{field number: [values]}`` and only the fields named here are used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

SERVICE = "/apipb.GobgpApi/"
TYPE_PREFIX = "type.googleapis.com/apipb."

# Family enum values (gobgp.proto: Family.Afi / Family.Safi).
AFI_IP, AFI_IP6, SAFI_UNICAST = 1, 2, 1
# PeerState.SessionState
SESSION_STATES = ("unknown", "idle", "connect", "active", "opensent", "openconfirm", "established")

Fields = dict[int, list[int | bytes]]


# --- encoding ----------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def uint(field: int, value: int) -> bytes:
    """A varint field (uint32, uint64, int32, bool, enum); zero is the default and is left out."""
    if not value:
        return b""
    return _varint(field << 3) + _varint(int(value))


def blob(field: int, value: bytes | str, *, keep_empty: bool = False) -> bytes:
    """A length-delimited field (string, bytes, embedded message)."""
    data = value.encode() if isinstance(value, str) else value
    if not data and not keep_empty:
        return b""
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def anymsg(type_name: str, body: bytes) -> bytes:
    """A ``google.protobuf.Any`` holding the apipb message ``type_name``."""
    return blob(1, TYPE_PREFIX + type_name) + blob(2, body, keep_empty=True)


# --- decoding ----------------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def parse(data: bytes) -> Fields:
    """A message's fields: number -> values (ints for varints and fixed ints, bytes otherwise)."""
    out: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + n], pos + n
        elif wire == 1:
            value, pos = int.from_bytes(data[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(data[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.setdefault(field, []).append(value)
    return out


def get_int(f: Fields, n: int) -> int:
    v = f.get(n, [0])[-1]
    return v if isinstance(v, int) else 0


def get_bytes(f: Fields, n: int) -> bytes:
    v = f.get(n, [b""])[-1]
    return v if isinstance(v, bytes) else b""


def get_str(f: Fields, n: int) -> str:
    return get_bytes(f, n).decode(errors="replace")


def get_msg(f: Fields, n: int) -> Fields:
    return parse(get_bytes(f, n))


def get_msgs(f: Fields, n: int) -> list[Fields]:
    return [parse(v) for v in f.get(n, []) if isinstance(v, bytes)]


def get_any(f: Fields, n: int) -> list[tuple[str, Fields]]:
    """Repeated/singular ``Any`` field ``n``: (apipb type name, its fields)."""
    out = []
    for a in get_msgs(f, n):
        url = get_str(a, 1)
        out.append((url.rsplit(".", 1)[-1], parse(get_bytes(a, 2))))
    return out


# --- gobgp messages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalConf:
    asn: int
    router_id: str
    listen_port: int
    listen_addresses: tuple[str, ...]


@dataclass(frozen=True)
class PeerConf:
    address: str
    remote_as: int
    port: int
    hold_time: int
    keepalive: int
    multihop: int
    password: str | None
    description: str | None = None


@dataclass(frozen=True)
class PeerStatus:
    """What a session is doing (not configuration: never part of a record)."""

    address: str
    remote_as: int
    state: str  # one of SESSION_STATES
    uptime: int  # UNIX seconds the session came up (0: not established)
    received: int  # prefixes received
    accepted: int
    advertised: int  # prefixes sent
    flops: int = 0  # times the session left established


def family(ip6: bool) -> bytes:
    return uint(1, AFI_IP6 if ip6 else AFI_IP) + uint(2, SAFI_UNICAST)


def start_bgp(g: GlobalConf) -> bytes:
    """StartBgpRequest{global: Global{asn=1, router_id=2, listen_port=3, listen_addresses=4}}."""
    body = uint(1, g.asn) + blob(2, g.router_id) + uint(3, g.listen_port)
    body += b"".join(blob(4, a) for a in g.listen_addresses)
    return blob(1, body, keep_empty=True)


def read_global(resp: bytes) -> GlobalConf | None:
    """GetBgpResponse -> the running global config (None: BGP not started, AS 0)."""
    g = get_msg(parse(resp), 1)
    asn = get_int(g, 1)
    if not asn:
        return None
    port = get_int(g, 3)
    if port >= 1 << 31:  # int32 sent as a 64-bit varint
        port -= 1 << 64
    addrs = tuple(v.decode() for v in g.get(4, []) if isinstance(v, bytes))
    return GlobalConf(asn, get_str(g, 2), port, addrs)


# Timers the driver sets on every session besides hold/keepalive: gobgp retries a connection
# every connect_retry seconds; 5 instead of the RFC's 120 so a restarted peer is back soon.
CONNECT_RETRY = 5


def peer(p: PeerConf) -> bytes:
    """A ``Peer``: conf=2 {auth_password=1, description=2, neighbor_address=4, peer_asn=5},
    ebgp_multihop=3 {enabled=1, multihop_ttl=2}, timers=6 {config=1 {connect_retry=1,
    hold_time=2, keepalive_interval=3}}, transport=7 {remote_port=6}, afi_safis=10 (one
    unicast family, the peer's)."""
    conf = (blob(1, p.password or "") + blob(2, p.description or "") + blob(4, p.address)
            + uint(5, p.remote_as))
    multihop = uint(1, 1 if p.multihop else 0) + uint(2, p.multihop)
    timers = blob(1, uint(1, CONNECT_RETRY) + uint(2, p.hold_time) + uint(3, p.keepalive), keep_empty=True)
    transport = uint(6, p.port)
    ip6 = ":" in p.address
    afi = blob(2, blob(1, family(ip6)) + uint(2, 1))
    return (blob(2, conf) + blob(3, multihop) + blob(6, timers, keep_empty=True)
            + blob(7, transport) + blob(10, afi))


def add_peer(p: PeerConf) -> bytes:
    return blob(1, peer(p), keep_empty=True)


def delete_peer(address: str) -> bytes:
    return blob(1, address)


def list_peer(address: str = "") -> bytes:
    """ListPeerRequest{address=1, enableAdvertised=2}: advertised counts are wanted."""
    return blob(1, address) + uint(2, 1)


def read_peer(resp: bytes) -> tuple[PeerConf, PeerStatus]:
    """One ListPeerResponse{peer=1}: its configuration and its session (PeerState: session_state=13,
    flops=17; TimersState: uptime=6, a Timestamp{seconds=1}; AfiSafiState: received=3, accepted=4,
    advertised=5)."""
    p = get_msg(parse(resp), 1)
    conf, state = get_msg(p, 2), get_msg(p, 5)
    multihop = get_msg(p, 3)
    timers = get_msg(get_msg(p, 6), 1)
    tstate = get_msg(get_msg(p, 6), 2)
    transport = get_msg(p, 7)
    address = get_str(conf, 4) or get_str(state, 5)
    password = get_str(conf, 1) or None
    cfg = PeerConf(
        address=str(ipaddress.ip_address(address)), remote_as=get_int(conf, 5),
        port=get_int(transport, 6) or 179, hold_time=get_int(timers, 2), keepalive=get_int(timers, 3),
        multihop=get_int(multihop, 2) if get_int(multihop, 1) else 0, password=password,
        description=get_str(conf, 2) or None)
    received = accepted = advertised = 0
    for afi in get_msgs(p, 10):
        st = get_msg(afi, 3)
        received += get_int(st, 3)
        accepted += get_int(st, 4)
        advertised += get_int(st, 5)
    session = get_int(state, 13)
    uptime = get_int(get_msg(tstate, 6), 1) if session == 6 else 0
    status = PeerStatus(cfg.address, cfg.remote_as,
                        SESSION_STATES[session] if session < len(SESSION_STATES) else str(session),
                        uptime, received, accepted, advertised, get_int(state, 17))
    return cfg, status


@dataclass(frozen=True)
class PathConf:
    """One announced prefix and its optional attributes."""

    prefix: str  # VIP/32 or VIP/128
    communities: tuple[int, ...] = ()  # each (AS << 16) | value
    local_pref: int | None = None
    med: int | None = None


def path(pc: PathConf) -> bytes:
    """A ``Path``: nlri=1 (IPAddressPrefix{prefix_len=1, prefix=2}), pattrs=2 (origin IGP,
    next hop self: 0.0.0.0 for IPv4, MpReachNLRI with :: for IPv6; communities, local
    pref, MED when set), family=9."""
    net = ipaddress.ip_network(pc.prefix)
    ip6 = net.version == 6
    nlri = anymsg("IPAddressPrefix", uint(1, net.prefixlen) + blob(2, str(net.network_address)))
    attrs = [anymsg("OriginAttribute", b"")]
    if ip6:
        attrs.append(anymsg("MpReachNLRIAttribute", blob(1, family(True)) + blob(2, "::") + blob(3, nlri)))
    else:
        attrs.append(anymsg("NextHopAttribute", blob(1, "0.0.0.0")))
    if pc.communities:
        packed = b"".join(_varint(c) for c in pc.communities)
        attrs.append(anymsg("CommunitiesAttribute", blob(1, packed)))
    if pc.local_pref is not None:
        attrs.append(anymsg("LocalPrefAttribute", uint(1, pc.local_pref)))
    if pc.med is not None:
        attrs.append(anymsg("MultiExitDiscAttribute", uint(1, pc.med)))
    return blob(1, nlri) + b"".join(blob(2, a) for a in attrs) + blob(9, family(ip6))


def add_path(pc: PathConf) -> bytes:
    """AddPathRequest{table_type=1 (GLOBAL: 0), path=3}."""
    return blob(3, path(pc))


def delete_path(pc: PathConf) -> bytes:
    """DeletePathRequest{table_type=1, family=3, path=4}."""
    net = ipaddress.ip_network(pc.prefix)
    return blob(3, family(net.version == 6)) + blob(4, path(pc))


def list_path(ip6: bool) -> bytes:
    """ListPathRequest{table_type=1 (GLOBAL), family=3}."""
    return blob(3, family(ip6))


def read_paths(resp: bytes) -> list[PathConf]:
    """The paths of one ListPathResponse{destination=1} that this box originated.

    Paths learned from a peer name it (``neighbor_ip``, field 15); gobgpd lists the
    paths added through the API with ``<nil>`` there (gobgp 3.10 does not return the
    uuid, field 16, in listings).  Withdrawn paths (``is_withdraw``, 5) are skipped.
    """
    dest = get_msg(parse(resp), 1)
    out = []
    for p in get_msgs(dest, 2):
        if get_str(p, 15) not in ("", "<nil>") or get_int(p, 5):
            continue
        prefix = ""
        comms: tuple[int, ...] = ()
        local_pref: int | None = None
        med: int | None = None
        for name, body in get_any(p, 1):
            if name == "IPAddressPrefix":
                prefix = f"{get_str(body, 2)}/{get_int(body, 1)}"
        for name, body in get_any(p, 2):
            if name == "CommunitiesAttribute":
                comms = tuple(_unpack_varints(body.get(1, [])))
            elif name == "LocalPrefAttribute":
                local_pref = get_int(body, 1)
            elif name == "MultiExitDiscAttribute":
                med = get_int(body, 1)
        if prefix:
            out.append(PathConf(str(ipaddress.ip_network(prefix)), comms, local_pref, med))
    return out


def _unpack_varints(values: Iterable[int | bytes]) -> list[int]:
    out: list[int] = []
    for v in values:
        if isinstance(v, int):
            out.append(v)
            continue
        pos = 0
        while pos < len(v):
            n, pos = _read_varint(v, pos)
            out.append(n)
    return out


def community_value(text: str) -> int:
    """``AS:VALUE`` (each 0-65535) as the 32-bit community."""
    high, low = text.split(":")
    return int(high) << 16 | int(low)


def community_text(value: int) -> str:
    return f"{value >> 16}:{value & 0xFFFF}"


METHODS: Mapping[str, str] = {name: SERVICE + name for name in (
    "StartBgp", "StopBgp", "GetBgp", "AddPeer", "DeletePeer", "ListPeer", "AddPath", "DeletePath",
    "ListPath")}
