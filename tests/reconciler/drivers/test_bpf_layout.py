"""One source of truth for the layout: lb_shared.h, checked against the object's BTF; mismatches refused."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from tests.bpf.harness import Datapath

pytestmark = pytest.mark.root


def test_formats_cover_every_byte_of_their_structs() -> None:
    from reconciler.drivers import bpf_layout as L

    assert L.BE.size == L.sizeof("struct lb_backend")
    assert L.LIST_HDR.size == L.offsetof("struct lb_backend_list", "be")
    assert L.SVC_HDR.size == L.ALLOWED_OFF
    assert L.SVC_HDR.size + L.MAX_ALLOWED * L.CIDR.size == L.NAME_OFF
    assert L.RANGE_KEY.size == L.sizeof("struct lb_range_key")
    assert L.SELECTIONS["maglev"] == L.const("LB_SEL_MAGLEV")
    assert L.CT_STATES[L.const("LB_CT_FIN_WAIT")] == "fin-wait"
    assert L.HOOKS == {"tc": L.const("LB_HOOK_TC"), "xdp": L.const("LB_HOOK_XDP")}


def test_a_struct_format_refuses_a_hole() -> None:
    from reconciler.drivers import _libbpf as B
    from reconciler.drivers import bpf_layout as L

    ffi = B.lib().ffi
    ffi.cdef("struct sp_holey { __u8 a; __u32 b; };")
    with pytest.raises(B.LayoutError, match=r"sp_holey\.b: a hole"):
        L.fmt("struct sp_holey")


def test_a_wrong_map_description_is_refused_naming_the_map_and_field(
        dp: Datapath, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.drivers import _libbpf as B
    from reconciler.drivers.bpf import BpfDriver

    monkeypatch.setitem(B.MAPS, "lb_stats", dataclasses.replace(B.MAPS["lb_stats"], percpu=False))
    monkeypatch.setitem(B.MAPS, "lb_rr", B.MapSpec("__u32", "__u64"))
    for action in ("read", "load"):
        drv = BpfDriver(pin_root=dp.pin_root, netns=dp.ns)
        with pytest.raises(B.LayoutError) as exc:
            drv.read() if action == "read" else drv.load()
        msg = str(exc.value)
        assert "map lb_stats: percpu is True in the object" in msg, msg
        assert "map lb_rr: value type is __u32 in the object, __u64 in _libbpf.MAPS" in msg, msg
        assert "map lb_rr: value size 4 bytes in the object, 8 (__u64)" in msg, msg
        drv.close()


def test_a_map_missing_from_the_description_is_refused(dp: Datapath, monkeypatch: pytest.MonkeyPatch) -> None:
    from reconciler.drivers import _libbpf as B
    from reconciler.drivers.bpf import BpfDriver

    monkeypatch.delitem(B.MAPS, "lb_rr")
    drv = BpfDriver(pin_root=dp.pin_root, netns=dp.ns)
    with pytest.raises(B.LayoutError, match="map lb_rr: in the object but not in _libbpf.MAPS"):
        drv.read()
    drv.close()


def test_a_header_that_disagrees_with_the_object_is_refused(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """cffi reads a header with a field the object was not built with: named with its offset."""
    from reconciler.constants import DATAPATH_HEADER, DATAPATH_OBJECT
    from reconciler.drivers import _libbpf as B
    from reconciler.drivers.datapath_files import datapath_file

    src = Path(datapath_file(DATAPATH_HEADER)).read_text()
    assert "\t__u8 state;" in src
    hdr = tmp_path / "lb_shared.h"
    hdr.write_text(src.replace("\t__u8 state;", "\t__u8 state;\n\t__u32 sp_extra;", 1))
    monkeypatch.setattr(B, "datapath_file", lambda name: str(hdr) if name == DATAPATH_HEADER else name)
    monkeypatch.setattr(B, "_LIB", None)
    obj = B.BpfObject(datapath_file(DATAPATH_OBJECT))
    try:
        with pytest.raises(B.LayoutError) as exc:
            obj.check_layout()
    finally:
        obj.close()
    msg = str(exc.value)
    assert re.search(r"map lb_ct: value size \d+ bytes in the object, \d+ \(struct lb_ct\) in cffi", msg), msg
    assert "struct lb_ct.svc_id: BTF offset 20, cffi 24" in msg, msg
    assert "rebuild the object" in (exc.value.hint or "")


def test_the_map_table_comes_from_the_object() -> None:
    """Nothing about a map is written in Python: names, key and value types and the per-CPU
    flag are read from the compiled object's BTF and map types."""
    from reconciler.constants import DATAPATH_OBJECT
    from reconciler.drivers import _libbpf as B
    from reconciler.drivers.datapath_files import datapath_file

    derived = B.object_maps(datapath_file(DATAPATH_OBJECT))
    assert dict(B.MAPS.items()) == derived
    assert derived["lb_ct"] == B.MapSpec("struct lb_ct_key", "struct lb_ct", percpu=False)
    assert {n for n, spec in derived.items() if spec.percpu} == {"lb_svc_stats", "lb_be_stats", "lb_stats",
                                                                 "lb_fw_stats", "lb_ct_scratch"}
    assert "lb_ct" in B.shared_structs(B.lib().header)
