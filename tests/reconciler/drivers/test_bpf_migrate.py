"""Which layout changes the migration converts, and how (pure: shapes written by hand)."""

from __future__ import annotations

import struct

import pytest

from reconciler.drivers._libbpf import MapLayout
from reconciler.drivers.bpf_migrate import Refused, conversion

U16, U32, U64 = ("int", 2), ("int", 4), ("int", 8)
HASH, PERCPU_ARRAY = 1, 6


def arr(elem: tuple[object, ...], n: int) -> tuple[object, ...]:
    return ("array", int(elem[1]) * n, elem, n)  # type: ignore[call-overload]


KEY = ("struct", 8, (("a", 0, U32), ("b", 4, U32)))
CT_V1 = ("struct", 24, (("nat_addr", 0, arr(U32, 4)), ("nat_port", 16, U16), ("pad", 18, U16),
                        ("svc_id", 20, U32)))
CT_V2 = ("struct", 48, (("nat_addr", 0, arr(U32, 4)), ("nat_port", 16, U16), ("pad", 18, U16),
                        ("svc_id", 20, U32), ("snat_addr", 24, arr(U32, 4)), ("snat_port", 40, U16),
                        ("pad2", 42, arr(U16, 3))))


def layout(value: tuple[object, ...], *, typ: int = HASH, key: tuple[object, ...] = KEY,
           entries: int = 100) -> MapLayout:
    return MapLayout(typ, int(key[1]), int(value[1]), entries, key, value)  # type: ignore[call-overload]


def test_added_fields_are_zero_and_old_fields_keep_their_bytes() -> None:
    conv = conversion("lb_ct", layout(CT_V1), layout(CT_V2))
    old = struct.pack("<4IHHI", 1, 2, 3, 4, 80, 0, 7)
    new = conv.value(old)
    assert len(new) == 48
    assert new[:24] == old and new[24:] == bytes(24)
    assert conv.copies == ((0, 0, 24),)  # adjacent fields merged into one copy


def test_a_field_that_moved_is_copied_to_its_new_place() -> None:
    old = ("struct", 8, (("x", 0, U32), ("y", 4, U32)))
    new = ("struct", 12, (("z", 0, U32), ("y", 4, U32), ("x", 8, U32)))
    conv = conversion("m", layout(old), layout(new))
    assert conv.value(struct.pack("<II", 5, 6)) == struct.pack("<III", 0, 6, 5)


def test_per_cpu_values_are_converted_cpu_by_cpu_at_their_stride() -> None:
    old = ("struct", 4, (("n", 0, U32),))
    new = ("struct", 12, (("n", 0, U32), ("m", 4, U64)))
    conv = conversion("stats", layout(old, typ=PERCPU_ARRAY), layout(new, typ=PERCPU_ARRAY))
    two_cpus = struct.pack("<I4xI4x", 1, 2)  # 4-byte values at an 8-byte stride
    assert conv.value(two_cpus) == struct.pack("<IQ4xIQ4x", 1, 0, 2, 0)


def test_an_identical_layout_is_copied_as_it_is() -> None:
    conv = conversion("m", layout(CT_V2), layout(CT_V2, entries=200))
    assert conv.value(b"x" * 48) == b"x" * 48


@pytest.mark.parametrize(("old", "new", "why"), [
    (layout(CT_V2), layout(CT_V1), "lb_ct value.snat_addr: the field is gone"),
    (layout(("struct", 4, (("n", 0, U32),))), layout(("struct", 8, (("n", 0, U64),))),
     "lb_ct value.n: a 4-byte integer became 8 bytes"),
    (layout(("struct", 8, (("a", 0, arr(U32, 2)),))), layout(("struct", 4, (("a", 0, arr(U32, 1)),))),
     "lb_ct value.a: the array shrank from 2 to 1 elements"),
    (layout(("struct", 4, (("n", 0, U32),))), layout(("struct", 4, (("n", 0, ("struct", 4, ())),))),
     "lb_ct value.n: int became struct"),
    (layout(CT_V1), layout(CT_V1, typ=PERCPU_ARRAY), "lb_ct: the map type changed (1 -> 6)"),
    (layout(CT_V1), layout(CT_V1, entries=50), "lb_ct: holds 50 entries, the pinned map 100"),
    (layout(CT_V1), layout(CT_V1, key=("struct", 8, (("a", 0, U32), ("c", 4, U32)))),
     "lb_ct: the key changed"),
    (layout(("unknown", 24)), layout(CT_V2), "the pinned or the new layout is not known"),
])
def test_what_cannot_be_converted_is_refused_naming_the_map_and_field(
        old: MapLayout, new: MapLayout, why: str) -> None:
    with pytest.raises(Refused) as exc:
        conversion("lb_ct", old, new)
    assert why in str(exc.value)
