"""Maglev consistent hashing: the per-service lookup table the datapath indexes.

Why this exists: with ``selection: maglev`` the datapath maps a flow's 5-tuple
hash onto a prime-sized table of endpoint indexes, so that removing one of N
endpoints moves only about 1/N of the flows (Eisenbud et al., "Maglev", NSDI
2016).  The table is computed here, in pure Python, deterministically (the same
endpoints always give the same bytes, so desired and live state compare equal),
and shipped to the kernel as packed little-endian u16 indexes into the
service's endpoint list (``EndpointSet.maglev``).

Table size: a prime from a few fixed size classes, the smallest class with at
least ``SIZE_FACTOR`` (100) entries per endpoint: 1021 for up to 8 endpoints,
2039 up to 16, 4093 up to 32, 8191 up to 64, 16381 up to 128, 32749 up to 256.
Classes (rather than "next prime >= 100 N") keep M unchanged when an endpoint
comes or goes, which is what Maglev's small disruption relies on: a changed M
reshuffles nearly every flow (this happens once when a set crosses a class
boundary; set ``maglevTableSize`` to pin M).
With M >= 100 N each endpoint owns ~M/N entries and the imbalance between
endpoints stays around 1% (the paper recommends M >> N).  Removing one of N
endpoints moves ~1/N of the flows plus some churn that grows with N/M
(measured: <= 1.1/N for N <= 10 with >= 200 entries per endpoint, ~1.4/N at
N = 20 with 4001, ~2/N at N = 50 with 5003, ~1.28/N at N = 50 with 50021).  A larger M costs
memory (2 bytes per entry) and Python time on every endpoint change.  A
Service's ``maglevTableSize`` overrides it; it must be a prime no larger than
``reconciler.limits.MAGLEV_MAX_TABLE_SIZE`` (indexes are u16) and no smaller
than the number of endpoints.

Weights: each round every endpoint earns ``weight / max_weight`` turns, and
spends a whole turn to claim its next preferred free slot, so slot counts are
proportional to weights.  Endpoints of weight 0 own no slot.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from reconciler.limits import MAGLEV_MAX_TABLE_SIZE

SIZE_FACTOR = 100
# (max endpoints, prime table size): each class has >= 127 entries per endpoint.
SIZE_CLASSES = ((8, 1021), (16, 2039), (32, 4093), (64, 8191), (128, 16381), (256, 32749))


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    i = 3
    while i * i <= n:
        if n % i == 0:
            return False
        i += 2
    return True


def next_prime(n: int) -> int:
    while not is_prime(n):
        n += 1
    return n


def table_size(n_endpoints: int, configured: int | None = None) -> int:
    """The Maglev table size for ``n_endpoints`` (see the module docstring)."""
    if configured is not None:
        if not is_prime(configured):
            raise ValueError(f"maglevTableSize {configured} is not a prime")
        if configured > MAGLEV_MAX_TABLE_SIZE:
            raise ValueError(f"maglevTableSize {configured} exceeds {MAGLEV_MAX_TABLE_SIZE}")
        if configured < n_endpoints:
            raise ValueError(f"maglevTableSize {configured} is smaller than the {n_endpoints} endpoints")
        return configured
    for top, size in SIZE_CLASSES:
        if n_endpoints <= top:
            return size
    want = SIZE_FACTOR * n_endpoints
    return MAGLEV_MAX_TABLE_SIZE if want >= MAGLEV_MAX_TABLE_SIZE else next_prime(want)


def _hashes(name: str) -> tuple[int, int]:
    digest = hashlib.blake2b(name.encode(), digest_size=16, person=b"lbctl-maglev").digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def populate(names: Sequence[str], weights: Sequence[int], size: int) -> list[int]:
    """Maglev population: ``size`` entries, each an index into ``names``.

    ``names`` identify endpoints stably (e.g. ``"10.0.0.1:8080"``); an
    endpoint's permutation depends only on its name, which is what keeps most
    entries in place when another endpoint comes or goes.
    """
    if len(names) != len(weights):
        raise ValueError("names and weights differ in length")
    live = [i for i, w in enumerate(weights) if w > 0]
    if not live:
        return []
    if size < len(live) or not is_prime(size):
        raise ValueError(f"table size {size} must be a prime >= the endpoint count")
    offset: dict[int, int] = {}
    skip: dict[int, int] = {}
    for i in live:
        h1, h2 = _hashes(names[i])
        offset[i] = h1 % size
        skip[i] = h2 % (size - 1) + 1
    nxt = {i: 0 for i in live}
    credit = {i: 0.0 for i in live}
    wmax = max(weights[i] for i in live)
    table = [-1] * size
    filled = 0
    while True:
        for i in live:
            credit[i] += weights[i] / wmax
            while credit[i] >= 1.0:
                credit[i] -= 1.0
                c = (offset[i] + nxt[i] * skip[i]) % size
                while table[c] >= 0:
                    nxt[i] += 1
                    c = (offset[i] + nxt[i] * skip[i]) % size
                table[c] = i
                nxt[i] += 1
                filled += 1
                if filled == size:
                    return table


def pack(table: Sequence[int]) -> bytes:
    """Little-endian u16 per entry: the ``EndpointSet.maglev`` format."""
    return struct.pack(f"<{len(table)}H", *table)


def unpack(data: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(data) // 2}H", data))


def build(names: Sequence[str], weights: Sequence[int], configured_size: int | None = None) -> bytes:
    """The packed table for endpoints ``names`` with ``weights``."""
    if not names:
        return b""
    return pack(populate(names, weights, table_size(len(names), configured_size)))


def table_memory(n_services: int, endpoints_per_service: int, chunk_entries: int = 512) -> int:
    """Bytes of kernel map values for ``n_services`` maglev tables.

    The datapath stores tables in chunks of ``chunk_entries`` u16 (lb_sel map);
    the last chunk of a table is padded.  Hash-map element overhead is not
    included.
    """
    size = table_size(endpoints_per_service)
    chunks = -(-size // chunk_entries)
    return n_services * chunks * chunk_entries * 2


def backend_name(address: str, port: int) -> str:
    """The stable name an endpoint is hashed by."""
    return f"{address}:{port}"


def for_backends(backends: Sequence[tuple[str, int, int]], configured_size: int | None = None) -> bytes:
    """Table for ``(address, port, weight)`` endpoints in ``EndpointSet.backends`` order."""
    return build([backend_name(a, p) for a, p, _ in backends], [w for _, _, w in backends], configured_size)
