"""The hand-written gobgpd messages: round trips, and field numbers checked against Debian's protos.

Why this exists: ``bgp_wire`` encodes gobgp's API messages without generated
code, so a wrong field number would only show as gobgpd ignoring a setting.
These tests decode what the encoder writes, and read the field numbers the
encoder relies on out of the .proto files of golang-github-osrg-gobgp-dev.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.driver import DriverSet
from reconciler.drivers import bgp_wire as w
from reconciler.drivers.bgp import announcement_record, global_record, peer_record
from reconciler.drivers.registry import SPECS
from reconciler.errors import LbctlError
from reconciler.records import Announcement, BgpGlobal, BgpPeer
from tests.reconciler.fakes import bgp_config

PROTOS = Path("/usr/share/gocode/src/github.com/osrg/gobgp/api")


def test_varints_and_fields_round_trip() -> None:
    data = w.uint(1, 300) + w.blob(2, "abc") + w.uint(3, 0) + w.uint(4, (1 << 64) - 1)
    f = w.parse(data)
    assert w.get_int(f, 1) == 300 and w.get_str(f, 2) == "abc" and 3 not in f
    assert w.get_int(f, 4) == (1 << 64) - 1


def test_a_peer_reads_back_as_written() -> None:
    conf = w.PeerConf("192.0.2.254", 65000, 1179, 9, 3, 2, "s3cret", "upstream")
    peer = w.peer(conf)
    # gobgpd answers ListPeer with the same Peer message (plus state): decode what we send.
    read, status = w.read_peer(w.blob(1, peer))
    assert read == conf
    assert status.state == "unknown" and status.uptime == 0
    assert peer_record(read) == BgpPeer("192.0.2.254", 65000, 1179, 9, 3, 2, "s3cret", "upstream")


def test_paths_and_global_read_back() -> None:
    pc = w.PathConf("198.51.100.10/32", (w.community_value("65001:100"),), 200, 5)
    dest = w.blob(1, w.blob(1, "198.51.100.10/32") + w.blob(2, w.path(pc)))
    assert w.read_paths(dest) == [pc]
    assert announcement_record(pc) == Announcement("198.51.100.10/32", "self", ("65001:100",), 200, 5)
    learned = w.path(pc) + w.blob(15, "192.0.2.254")  # a path from a peer is not ours
    assert w.read_paths(w.blob(1, w.blob(2, learned))) == []
    v6 = w.PathConf("2001:db8::10/128")
    assert w.read_paths(w.blob(1, w.blob(2, w.path(v6)))) == [v6]
    g = w.GlobalConf(65001, "192.0.2.1", 179, ("0.0.0.0", "::"))
    got = w.read_global(w.start_bgp(g))  # StartBgpRequest and GetBgpResponse are both {global = 1}
    assert got == g and global_record(got) == BgpGlobal(65001, "192.0.2.1", 179, ())
    assert w.read_global(b"") is None


def _fields(proto: str, message: str) -> dict[str, int]:
    m = re.search(r"\nmessage " + message + r" \{(.*?)\n\}", proto, re.S)
    assert m, message
    return {name: int(num) for name, num in re.findall(r"(\w+) = (\d+);", m.group(1))}


USED = {  # message -> the fields bgp_wire writes or reads, with the numbers it uses
    "Global": {"asn": 1, "router_id": 2, "listen_port": 3, "listen_addresses": 4},
    "Peer": {"conf": 2, "ebgp_multihop": 3, "state": 5, "timers": 6, "transport": 7, "afi_safis": 10},
    "PeerConf": {"auth_password": 1, "description": 2, "neighbor_address": 4, "peer_asn": 5},
    "PeerState": {"neighbor_address": 5, "session_state": 13, "flops": 17},
    "EbgpMultihop": {"enabled": 1, "multihop_ttl": 2},
    "TimersConfig": {"connect_retry": 1, "hold_time": 2, "keepalive_interval": 3},
    "TimersState": {"uptime": 6},
    "Transport": {"remote_port": 6},
    "AfiSafi": {"config": 2, "state": 3},
    "AfiSafiConfig": {"family": 1, "enabled": 2},
    "AfiSafiState": {"received": 3, "accepted": 4, "advertised": 5},
    "ListPeerRequest": {"address": 1, "enableAdvertised": 2},
    "AddPathRequest": {"table_type": 1, "path": 3},
    "DeletePathRequest": {"family": 3, "path": 4},
    "ListPathRequest": {"table_type": 1, "family": 3},
    "Destination": {"prefix": 1, "paths": 2},
    "Path": {"nlri": 1, "pattrs": 2, "is_withdraw": 5, "family": 9, "neighbor_ip": 15},
    "Family": {"afi": 1, "safi": 2},
}
ATTRS = {
    "IPAddressPrefix": {"prefix_len": 1, "prefix": 2},
    "NextHopAttribute": {"next_hop": 1},
    "MpReachNLRIAttribute": {"family": 1, "next_hops": 2, "nlris": 3},
    "CommunitiesAttribute": {"communities": 1},
    "LocalPrefAttribute": {"local_pref": 1},
    "MultiExitDiscAttribute": {"med": 1},
}


@pytest.mark.skipif(not PROTOS.is_dir(), reason="golang-github-osrg-gobgp-dev is not installed")
def test_field_numbers_match_debians_protos() -> None:
    gobgp = (PROTOS / "gobgp.proto").read_text()
    attrs = (PROTOS / "attribute.proto").read_text()
    for source, table in ((gobgp, USED), (attrs, ATTRS)):
        for message, fields in table.items():
            declared = _fields(source, message)
            assert {k: declared.get(k) for k in fields} == fields, message
    assert "package apipb;" in gobgp and "service GobgpApi" in gobgp
    for method in w.METHODS:
        assert f"rpc {method}(" in gobgp


def test_gobgpd_missing_is_an_error_naming_the_package_only_with_a_bgpconfig(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from reconciler.cli import Context
    from reconciler.drivers import bgp

    monkeypatch.setattr(bgp.shutil, "which", lambda name: None)
    ctx = Context(netns="lbctl-test-none", state_dir=tmp_path, pin_root=tmp_path, output="text",
                  verbose=False)
    monkeypatch.setattr("reconciler.drivers.registry.check_netns", lambda ctx: None)
    spec = next(s for s in SPECS if s.name == "bgp")
    drivers = DriverSet([spec], ctx)
    (drv,) = drivers.every()  # no BGPConfig: built, reads empty (nothing of it can be up)
    assert drv.read() == {"bgp-global": {}, "bgp-peer": {}, "announce": {}}
    assert drivers.select([]).active == ()
    with pytest.raises(LbctlError) as err:
        DriverSet([spec], ctx).select([bgp_config()])
    assert "gobgpd is not installed" in str(err.value) and "apt-get install gobgpd" in (err.value.hint or "")


def test_an_unreachable_system_gobgpd_reads_empty_and_an_apply_says_how_to_start_it(tmp_path: Path) -> None:
    from reconciler.drivers.bgp import BgpDriver
    from reconciler.plan import Change

    drv = BgpDriver(tmp_path, None, api=f"unix://{tmp_path}/no-such.sock")  # a real box, no gobgpd
    assert drv.read() == {"bgp-global": {}, "bgp-peer": {}, "announce": {}}
    rec = BgpGlobal(65001, "192.0.2.1", 179)
    with pytest.raises(LbctlError) as err:
        drv.apply([Change("bgp-global", "global", "create", None, rec)])
    assert "is not reachable" in str(err.value) and drv.writes == 0
