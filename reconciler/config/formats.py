"""Address formats the schemas name: ``ip-address``, ``ipv4-address``, ``cidr``, ``ip-pool-range``.

Why this exists: jsonschema's own format checks are optional extras (and
differ between 4.10 and newer), so lbctl checks its formats itself with
``ipaddress`` and produces one clear message per mistake.  The same helpers
serve the semantic checks, which need parsed addresses anyway.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class FormatProblem(ValueError):
    """A string that is not the address it should be; the message says why."""


def ip_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        if "/" in text:
            raise FormatProblem(f'"{text}" is a CIDR, not a single IP address') from None
        raise FormatProblem(f'"{text}" is not a valid IP address') from None


def canonical_ipv4(text: str) -> int | None:
    """The value of a dotted-quad IPv4 address written as ``ipaddress`` would print it, else ``None``.

    A fast path for the common case (``ipaddress`` needs ~6 us per address,
    100,000 endpoints are common): anything else (IPv6, leading zeros,
    garbage) returns ``None`` and the caller asks ``ipaddress``, which is
    the authority on what is valid.
    """
    # glibc's inet_pton takes exactly four decimal octets without leading zeros: the canonical form
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError, UnicodeError):
        return None


def _check_ip_address(text: str) -> object:
    """``ip_address`` for validity only: canonical IPv4 skips ``ipaddress``."""
    if canonical_ipv4(text) is not None:
        return text
    return ip_address(text)


def ipv4_address(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise FormatProblem(f'"{text}" is not an IPv4 address '
                            "(a router ID is written like 192.0.2.1)") from None


def cidr(text: str) -> IPNetwork:
    if "/" not in text:
        raise FormatProblem(f'"{text}" is not a CIDR (write it as address/prefix, e.g. {text}/32)')
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            raise FormatProblem(f'"{text}" has host bits set (did you mean {fixed}?)') from None
        raise FormatProblem(f'"{text}" is not a valid CIDR') from None


def pool_range(text: str) -> tuple[int, int, int]:
    """``(version, first, last)`` of a CIDR or an inclusive ``first-last`` range."""
    if "-" in text and "/" not in text:
        first_text, _, last_text = text.partition("-")
        first, last = ip_address(first_text.strip()), ip_address(last_text.strip())
        if first.version != last.version:
            raise FormatProblem(f'range "{text}" mixes IPv4 and IPv6')
        if int(last) < int(first):
            raise FormatProblem(f'range "{text}" ends before it starts')
        return first.version, int(first), int(last)
    if "/" in text:
        net = cidr(text)  # its own message: host bits set, bad prefix
    else:
        raise FormatProblem(f'"{text}" is neither a CIDR nor a first-last address range '
                            "(write e.g. 198.51.100.0/28 or 198.51.100.10-198.51.100.20)")
    return net.version, int(net.network_address), int(net.broadcast_address)


def _guard(check: Any) -> Any:
    def run(instance: object) -> bool:
        if isinstance(instance, str):
            check(instance)
        return True
    return run


PARSERS = {  # validity checks for the fast schema predicate (raise ValueError when invalid)
    "ip-address": _check_ip_address,
    "ipv4-address": ipv4_address,
    "cidr": cidr,
    "ip-pool-range": pool_range,
}

CHECKS = {
    "ip-address": _guard(ip_address),
    "ipv4-address": _guard(ipv4_address),
    "cidr": _guard(cidr),
    "ip-pool-range": _guard(pool_range),
}
