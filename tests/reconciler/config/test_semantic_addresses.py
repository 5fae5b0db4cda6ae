"""Which addresses can be a VIP, a secondary VIP, an endpoint or a pool's: the same rule everywhere.

Issue #8: IPv6 endpoints such as ``4ffe::1`` were refused as "a reserved
address" (Python's ``is_reserved`` covers blocks that are merely unassigned,
e.g. 4000::/3, which RFC 4291 counts as global unicast), while a Pool
``4ffe::/120`` was accepted.  Only what cannot be a unicast VIP or backend is
refused: unspecified, loopback, multicast, broadcast, IPv4-mapped, link-local.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.config import load_dir

HEAD = "apiVersion: lbctl.dev/v1alpha1\n"


def service(vip: str, endpoint: str, name: str = "web") -> str:
    return (f"{HEAD}kind: Service\nmetadata: {{name: {name}}}\nspec:\n  vip: \"{vip}\"\n"
            f"  ports: [{{port: 80}}]\n  endpoints: [{{address: \"{endpoint}\"}}]\n")


def pool(cidr: str, name: str = "p") -> str:
    return f"{HEAD}kind: Pool\nmetadata: {{name: {name}}}\nspec: {{addresses: [\"{cidr}\"]}}\n"


def errors(tmp_path: Path, *docs: str) -> list[str]:
    (tmp_path / "c.yaml").write_text("---\n".join(docs))
    return [f"{e.path}: {e.message}" for e in load_dir(tmp_path).errors]


@pytest.mark.parametrize(("vip", "endpoint"), [
    ("2001:db8::10", "4ffe::1"),          # 4000::/3: unassigned global unicast (loxilb's e2e endpoints)
    ("4ffe::10", "4ffe::1"),
    ("2001:db8::10", "100::1"),           # discard-only prefix, still unicast
    ("198.51.100.10", "240.0.0.1"),       # 240.0.0.0/4: Linux routes it as unicast
    ("241.1.1.1", "10.0.0.1"),
    ("198.51.100.10", "100.64.0.1"),      # shared address space (CGNAT)
])
def test_unicast_addresses_are_accepted_in_every_field(tmp_path: Path, vip: str, endpoint: str) -> None:
    assert errors(tmp_path, service(vip, endpoint)) == []


@pytest.mark.parametrize("cidr", ["4ffe::/120", "240.0.0.0/30", "100.64.0.0/30"])
def test_pools_follow_the_same_rule(tmp_path: Path, cidr: str) -> None:
    assert errors(tmp_path, pool(cidr)) == []


@pytest.mark.parametrize(("address", "why"), [
    ("fe80::1", "a link-local address"),
    ("169.254.10.1", "a link-local address"),
    ("::1", "a loopback address"),
    ("::", "the unspecified address"),
    ("ff05::2", "a multicast address"),
    ("255.255.255.255", "the broadcast address"),
])
def test_what_cannot_be_unicast_is_refused_in_every_field(tmp_path: Path, address: str, why: str) -> None:
    v6 = ":" in address
    ok_vip, ok_ep = ("2001:db8::10", "2001:db8:1::1") if v6 else ("198.51.100.10", "10.0.0.1")
    assert errors(tmp_path, service(address, ok_ep)) == [f"spec.vip: VIP {address} is {why}"]
    assert errors(tmp_path, service(ok_vip, address)) == [
        f"spec.endpoints[0].address: endpoint {address} is {why}"]


def test_link_local_has_its_own_hint(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(service("2001:db8::10", "fe80::1"))
    (error,) = load_dir(tmp_path).errors
    assert "one link only" in (error.hint or "")


@pytest.mark.parametrize(("cidr", "what"), [("fe80::/120", "link-local addresses"),
                                            ("169.254.0.0/30", "link-local addresses"),
                                            ("255.255.255.252/30", "the broadcast address")])
def test_pools_refuse_the_same_blocks(tmp_path: Path, cidr: str, what: str) -> None:
    (found,) = errors(tmp_path, pool(cidr))
    assert f"includes {what}" in found


def test_the_canonical_ipv4_fast_path_takes_exactly_what_ipaddress_prints() -> None:
    """inet_pton (glibc) refuses leading zeros, short forms and spaces; the fast path relies on it."""
    import ipaddress

    from reconciler.config.formats import canonical_ipv4
    from reconciler.desired import canonical_ip

    for text in ("1.2.3.4", "0.0.0.0", "255.255.255.255", "10.0.10.100"):
        assert canonical_ipv4(text) == int(ipaddress.IPv4Address(text))
        assert canonical_ip(text) == text
    for text in ("01.2.3.4", "1.2.3.04", "1.2.3.00", "1.2.3", "1", "1.2.3.4.5", "256.1.1.1", " 1.2.3.4",
                 "1.2.3.4 ", "1.2.3.\u0664", "1.2.3.4\x00", "0x1.2.3.4", "::1", "", "1.2.3.4/32"):
        assert canonical_ipv4(text) is None, text
    assert canonical_ip("::ffff:0:1") == str(ipaddress.ip_address("::ffff:0:1"))
