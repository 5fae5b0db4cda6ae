"""Export (pure): applied configuration and live records -> documents that load back to the same state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from reconciler.commands.export import box_name
from reconciler.desired import compile_state
from reconciler.documents import to_document
from reconciler.export import Exported, dns_label, from_applied, from_live
from reconciler.ipam import allocate
from reconciler.model import DEFAULT_VIP_INTERFACE, Endpoint, Resource, ServicePort
from reconciler.records import Attachment, Backend, EndpointSet, Record, ServiceEntry, ServiceKey, State
from tests.reconciler.export_cases import EVERYTHING, fill_secrets, write
from tests.reconciler.fakes import datapath, fake_table, firewall, service

config = pytest.importorskip("reconciler.config")

LIVE_KINDS = ("service", "endpoints", "attach", "firewall", "vip")  # what the bpf and netlink drivers read
MutableState = dict[str, dict[str, Record]]


def load(directory: Path) -> tuple[Resource, ...]:
    loaded = config.load_dir(directory)
    assert not loaded.errors, "\n".join(map(str, loaded.errors))
    return tuple(loaded.resources)


def box(resources: Sequence[Resource], kinds: Sequence[str] = LIVE_KINDS
        ) -> tuple[MutableState, dict[str, str]]:
    """The live state a box shows after applying ``resources``, and the pool VIPs."""
    vips = allocate(resources).vips
    full = compile_state(resources, vips, table_builder=fake_table)
    return {k: dict(full[k]) for k in kinds}, vips


def reload(exported: Exported, tmp: Path) -> tuple[Resource, ...]:
    """Write the export, put the secret in (as the operator does), load it: must be valid."""
    text = yaml.safe_dump_all(list(exported.documents), sort_keys=False)
    if exported.secrets:
        text = fill_secrets(text)
    return load(write(tmp, text, "export.yaml"))


def as_live(resources: Sequence[Resource], kinds: Sequence[str] = LIVE_KINDS) -> MutableState:
    return box(resources, kinds)[0]


@pytest.fixture()
def everything(tmp_path: Path) -> tuple[Resource, ...]:
    return load(write(tmp_path / "applied"))


# --- from the applied configuration --------------------------------------------------------------


def test_an_unchanged_box_exports_the_applied_configuration_exactly(everything: tuple[Resource, ...],
                                                                    tmp_path: Path) -> None:
    live, vips = box(everything)
    out = from_applied(everything, live, vips, table_builder=fake_table)
    assert out.notes == ()
    assert list(out.documents) == [to_document(r) for r in everything]
    assert out.secrets == ("BGPPeer/upstream-a",)
    again = reload(out, tmp_path / "out")
    assert [(r.kind, r.metadata, r.spec) for r in again] == [(r.kind, r.metadata, r.spec) for r in everything]


def test_endpoints_out_of_selection_by_health_are_still_exported(everything: tuple[Resource, ...]) -> None:
    """An endpoint the daemon's probes took down (not live, yet configured) is no drift."""
    health = {("dns", "10.0.3.53"): False, ("tls", "10.0.5.10"): False, ("tls", "10.0.5.11"): False}
    vips = allocate(everything).vips
    full = compile_state(everything, vips, table_builder=fake_table, health=health)
    live = {k: dict(full[k]) for k in LIVE_KINDS}
    tls = live["endpoints"]["tcp/198.51.100.12:443"]
    assert isinstance(tls, EndpointSet) and [b.address for b in tls.backends if b.weight] == ["10.0.5.12"]
    out = from_applied(everything, live, vips, table_builder=fake_table, health=health)
    assert out.notes == ()
    assert list(out.documents) == [to_document(r) for r in everything]
    assert from_applied(everything, live, vips, table_builder=fake_table).notes  # without it: drift


def test_kinds_export_does_not_know_are_ignored(everything: tuple[Resource, ...]) -> None:
    live, vips = box(everything)
    stranger = ServiceEntry(ServiceKey("192.0.2.9", "tcp", 1, 1), "x", "default", "rr", 1, 1)
    live["sysctl"] = {"net.ipv4.ip_forward": stranger}  # any record, under a kind export does not know
    out = from_applied(everything, live, vips, table_builder=fake_table)
    assert out.notes == () and list(out.documents) == [to_document(r) for r in everything]


def test_drifted_service_is_exported_from_live_keeping_what_live_cannot_show(
        everything: tuple[Resource, ...], tmp_path: Path) -> None:
    live, vips = box(everything)
    key = "tcp/198.51.100.10:80"
    ep = live["endpoints"][key]
    assert isinstance(ep, EndpointSet)
    live["endpoints"][key] = replace(ep, backends=ep.backends[:2], maglev=fake_table(ep.backends[:2], 1021))
    # port 80 now has other endpoints than 443: web can only be written as one Service per port
    api_key = f"tcp/{vips['api']}:8443"
    api = live["endpoints"][api_key]
    assert isinstance(api, EndpointSet)
    live["endpoints"][api_key] = replace(api, backends=api.backends[:1])
    out = from_applied(everything, live, vips, table_builder=fake_table)
    notes = "\n".join(out.notes)
    assert "Service/api: exported from the live state" in notes and f"endpoints {api_key} differs" in notes
    docs = {d["metadata"]["name"]: d for d in out.documents}
    assert [n for n in docs if n.startswith("web")] == ["web-tcp-80", "web-tcp-443", "web-udp-30000"]
    assert all(docs[n]["metadata"]["labels"]["tier"] == "frontend" for n in docs if n.startswith("web"))
    assert docs["api"]["spec"]["pool"] == "edge-v4" and "vip" not in docs["api"]["spec"]
    assert docs["api"]["spec"]["endpoints"] == [{"address": "10.0.2.10"}]
    assert "Service/web: its live records cannot be written as one Service" in notes
    again = as_live(reload(out, tmp_path / "out"))
    renamed = {k: replace(e, name="web") if e.name.startswith("web-") else e  # type: ignore[union-attr]
               for k, e in again["service"].items()}
    assert {**again, "service": renamed} == live


def test_live_wins_labels_probe_and_port_names_are_kept(everything: tuple[Resource, ...],
                                                        tmp_path: Path) -> None:
    live, vips = box(everything)
    for key in [k for k in live["service"] if k.startswith(("tcp/198.51.100.10:", "udp/198.51.100.10:"))]:
        entry = live["service"][key]
        assert isinstance(entry, ServiceEntry)
        live["service"][key] = replace(entry, session_timeout=77)
    out = from_applied(everything, live, vips, table_builder=fake_table)
    web = next(d for d in out.documents if d["metadata"]["name"] == "web")
    assert web["spec"]["sessionTimeout"] == 77
    assert web["metadata"]["labels"] == {"app.kubernetes.io/name": "web", "tier": "frontend"}
    assert web["spec"]["probe"]["request"] == "/healthz" and web["spec"]["bgp"] is True
    assert [p.get("name") for p in web["spec"]["ports"]] == ["http", "https", None]
    assert any("Service/web: exported from the live state" in n and "differs" in n for n in out.notes)
    assert as_live(reload(out, tmp_path / "out")) == live


def test_missing_and_extra_services_and_interfaces(everything: tuple[Resource, ...], tmp_path: Path) -> None:
    live, vips = box(everything)
    for kind in ("service", "endpoints"):
        del live[kind]["icmp/198.51.100.11:0"]
    del live["vip"]["198.51.100.11"]
    extra = as_live([datapath("eth0", vip_interface="vips0"),
                     service("stray", vip="198.51.100.200", ports=[ServicePort(9000, "UDP", target_port=9)])])
    for kind in ("service", "endpoints", "vip"):
        live[kind].update(extra[kind])
    live["vip"]["198.51.100.201"] = replace(next(iter(extra["vip"].values())), address="198.51.100.201")
    live["attach"]["eth2"] = Attachment("eth2", "xdp")
    out = from_applied(everything, live, vips, table_builder=fake_table)
    notes = "\n".join(out.notes)
    assert "Service/ping: applied but not live; left out" in notes
    assert "Service/stray: live but not in the applied configuration" in notes
    assert "vip 198.51.100.201: live but in no resource" in notes
    assert "Datapath/edge-box: interfaces taken from the live state" in notes
    dp = next(d for d in out.documents if d["kind"] == "Datapath")
    assert dp["spec"] == {"interfaces": ["eth0", {"name": "eth1", "hook": "xdp"},
                                         {"name": "eth2", "hook": "xdp"}], "vipInterface": "vips0"}
    again = as_live(reload(out, tmp_path / "out"))
    del live["vip"]["198.51.100.201"]  # a VIP no service uses cannot be written down: an apply removes it
    assert again == live


# --- from the live state alone -------------------------------------------------------------------


@pytest.mark.parametrize("name, label", [("ex_Lb.1", "ex-lb-1"), ("Web01.Example.COM", "web01-example-com"),
                                         ("__", "box"), ("a" * 70, "a" * 63), ("x-" * 40, ("x-" * 32)[:63])])
def test_dns_label(name: str, label: str) -> None:
    assert dns_label(name) == label.strip("-")


def test_box_name_without_netns_is_the_hosts_first_label() -> None:
    assert box_name(None, "Web01.Example.COM") == "web01"
    assert box_name(None, "EDGE_box") == "edge-box"
    assert box_name("ex_Lb.1", "ignored") == "ex-lb-1"


@pytest.mark.parametrize("host", ["Web01.Example.COM", "ex_Lb.1", "lb"])
def test_live_only_export_is_valid_and_exact(everything: tuple[Resource, ...], tmp_path: Path,
                                             host: str) -> None:
    live, _ = box(everything)
    out = from_live(live, box_name(None, host), "vips0")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in out.documents}
    assert docs[("Datapath", box_name(None, host))]["spec"]["vipInterface"] == "vips0"
    assert docs[("Service", "ping")]["spec"]["ports"] == [{"protocol": "ICMP"}]
    assert [p["port"] for p in docs[("Service", "web")]["spec"]["ports"]] == [80, 443, 30000]
    assert docs[("Service", "sig")]["spec"]["secondaryVips"] == ["198.51.100.81", "198.51.100.82"]
    services = sorted(r.name for r in everything if r.kind == "Service")
    assert sorted(n for k, n in docs if k == "Service") == services
    assert as_live(reload(out, tmp_path / "out")) == live


def test_live_only_target_ports_are_reconstructed_exactly(tmp_path: Path) -> None:
    live = as_live([
        datapath("eth0"),
        # per-port targets plus an endpoint override
        service("a", vip="198.51.100.1", ports=[ServicePort(80, target_port=8080), ServicePort(443)],
                endpoints=[Endpoint("10.0.0.1", target_port=9000), "10.0.0.2", Endpoint("10.0.0.3", 3)]),
        # every endpoint overrides: the most common port becomes the ports' target
        service("b", vip="198.51.100.2", ports=[80, 81],
                endpoints=[Endpoint("10.0.0.1", target_port=9000), Endpoint("10.0.0.2", target_port=9001),
                           Endpoint("10.0.0.3", target_port=9000)]),
        service("m", vip="198.51.100.3", selection="maglev", maglev_table_size=1009),
        service("r", vip="198.51.100.4", ports=[ServicePort(1000, "UDP", end_port=2000)], endpoints=[]),
        service("s", vip="198.51.100.5", ports=[ServicePort(80, "UDP"), ServicePort(80)], session_timeout=99),
        firewall("fw", 5, "192.0.2.0/24"),
    ])
    out = from_live(live, "box")
    assert out.notes == ()
    names = [d["metadata"]["name"] for d in out.documents]
    assert names == ["box", "fw", "a", "b", "m", "r", "s"]
    assert as_live(reload(out, tmp_path)) == live


def test_inconsistent_groups_are_split_exactly(tmp_path: Path) -> None:
    k1, k2 = ServiceKey("198.51.100.1", "tcp", 80, 80), ServiceKey("198.51.100.1", "tcp", 443, 443)
    vip = as_live([service("x", vip="198.51.100.1")])["vip"]
    live: State = {
        "service": {str(k1): ServiceEntry(k1, "odd", "default", "rr", 240, 10800),
                    str(k2): ServiceEntry(k2, "odd", "fullnat", "hash", 240, 10800)},
        "endpoints": {str(k1): EndpointSet(k1, (Backend("10.0.0.1", 0),)),
                      str(k2): EndpointSet(k2, (Backend("10.0.0.2", 8443),))},
        "vip": vip,
    }
    out = from_live(live, "box")
    assert [d["metadata"]["name"] for d in out.documents] == ["odd-tcp-80", "odd-tcp-443"]
    assert out.notes == ("Service/odd: its live records cannot be written as one Service (ports or VIPs "
                         "differ in endpoints or settings); exported as 2 Services, one per port, which an "
                         "apply of this export renames",)
    again = as_live(reload(out, tmp_path), ("endpoints", "vip"))
    assert again == {"endpoints": live["endpoints"], "vip": vip}


def test_vips_missing_from_the_interface_read_are_noted(everything: tuple[Resource, ...]) -> None:
    live, _ = box(everything)
    live["vip"] = {}  # read from lbctl0, while the box keeps them on vips0
    out = from_live(live, "box")
    assert len(out.notes) == 1 and "are not on lbctl0" in out.notes[0] and "--vip-interface" in out.notes[0]


def test_unused_vip_is_noted_not_exported() -> None:
    live = as_live([service("x", vip="198.51.100.1")])
    live["vip"]["198.51.100.2"] = replace(live["vip"]["198.51.100.1"], address="198.51.100.2")  # type: ignore[arg-type]
    out = from_live(live, "box", DEFAULT_VIP_INTERFACE)
    assert out.notes == ("VIP address 198.51.100.2 on lbctl0 is used by no service: not exported "
                         "(an apply removes it)",)


def test_example_configs_round_trip(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "configs"
    resources = load(examples)
    live, vips = box(resources)
    out = from_applied(resources, live, vips, table_builder=fake_table)
    assert out.notes == ()
    assert as_live(reload(out, tmp_path / "a")) == live
    assert as_live(reload(from_live(live, "box"), tmp_path / "b")) == live
    assert EVERYTHING  # the README's kinds are covered by EVERYTHING; the examples by this test
