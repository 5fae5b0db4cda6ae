"""Pure tests of the Maglev table (no root): size, determinism, balance, weights, disruption."""

from __future__ import annotations

import random

import pytest

from reconciler import maglev
from reconciler.limits import MAGLEV_MAX_TABLE_SIZE


def names(n: int) -> list[str]:
    return [maglev.backend_name(f"10.0.{i // 250}.{i % 250 + 1}", 8080) for i in range(n)]


def test_default_size_is_prime_and_scales() -> None:
    for n in (1, 2, 3, 10, 100, 256):
        size = maglev.table_size(n)
        assert maglev.is_prime(size)
        assert size >= min(maglev.SIZE_FACTOR * n, MAGLEV_MAX_TABLE_SIZE - 1)
        assert size <= MAGLEV_MAX_TABLE_SIZE
    assert maglev.table_size(5) == maglev.table_size(4) == maglev.table_size(8)


def test_configured_size() -> None:
    assert maglev.table_size(3, 65521) == 65521
    with pytest.raises(ValueError):
        maglev.table_size(3, 1000)  # not prime
    with pytest.raises(ValueError):
        maglev.table_size(300, 251)  # fewer slots than endpoints


def test_deterministic_packed_u16_le() -> None:
    a = maglev.build(names(5), [1] * 5)
    assert a == maglev.build(names(5), [1] * 5)
    assert len(a) == 2 * maglev.table_size(5)
    assert int.from_bytes(a[:2], "little") == maglev.unpack(a)[0]
    assert max(maglev.unpack(a)) == 4


def test_balanced() -> None:
    n = 7
    table = maglev.populate(names(n), [1] * n, maglev.table_size(n))
    counts = [table.count(i) for i in range(n)]
    assert max(counts) - min(counts) <= 0.02 * len(table) / n + 2


def test_weights_honoured_within_5_percent() -> None:
    weights = [1, 2, 3, 4]
    size = maglev.table_size(len(weights))
    table = maglev.populate(names(4), weights, size)
    for i, w in enumerate(weights):
        share = table.count(i) / size
        assert abs(share - w / sum(weights)) <= 0.05 * w / sum(weights)


def test_zero_weight_owns_nothing() -> None:
    table = maglev.populate(names(3), [1, 0, 1], maglev.table_size(3))
    assert 1 not in table and set(table) == {0, 2}


# Maglev's extra churn grows with N/M: the default size classes keep it under
# 1.2/N for small sets; larger sets need a larger maglevTableSize.
# (Measured beyond this: N=10 moves ~1.17-1.21/N, N=50 with 65521 entries ~1.28/N.)
@pytest.mark.parametrize("n,size", [(3, None), (5, None), (8, None)])
def test_removing_one_endpoint_moves_at_most_1_2_over_n(n: int, size: int | None) -> None:
    before_names = names(n)
    t1 = maglev.populate(before_names, [1] * n, maglev.table_size(n, size))
    gone = n // 2
    after_names = before_names[:gone] + before_names[gone + 1 :]
    # Same table size: the size is config, not recomputed mid-life, for this comparison.
    assert maglev.table_size(n - 1, size) == maglev.table_size(n, size)  # M stays put
    t2 = maglev.populate(after_names, [1] * (n - 1), maglev.table_size(n - 1, size))
    rng = random.Random(1)
    moved = 0
    flows = 10_000
    for _ in range(flows):
        h = rng.getrandbits(32)
        a = before_names[t1[h % len(t1)]]
        b = after_names[t2[h % len(t2)]]
        moved += a != b
    assert moved / flows <= 1.2 / n


def test_memory_at_10000_services() -> None:
    mem = maglev.table_memory(10_000, 10)
    assert mem == 10_000 * 4 * 512 * 2  # 2039 entries -> 4 chunks of 512 u16
