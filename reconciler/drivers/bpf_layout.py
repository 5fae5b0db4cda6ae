"""The map layout the bpf driver packs and unpacks, derived from ``lb_shared.h``.

Why this exists: the layout must have one source of truth.  Every struct format,
size, field offset, enum value and limit the driver uses is computed here, at
import, from cffi's reading of ``lb_shared.h``; ``_libbpf.BpfObject.check_layout``
compares that reading with the object's BTF (sizes and every member offset) and
``_libbpf.MAPS`` with the object's maps (types, key/value types, per-CPU flag)
before any map is touched.  A field added to a struct needs no edit here.

The ``struct.Struct`` formats (faster than a cffi object per entry on the 10k
service paths) are generated field by field: nested structs are flattened,
arrays are ``Ns`` bytes, arrays named ``pad`` are skipped (``x``: written as
zero, not read), and any hole between fields is an error (lb_shared.h has none).
"""

from __future__ import annotations

import struct
from typing import Any

from reconciler.drivers import _libbpf as B

_INT_CHARS = {(1, False): "B", (2, False): "H", (4, False): "I", (8, False): "Q",
              (1, True): "b", (2, True): "h", (4, True): "i", (8, True): "q"}


def _ffi() -> Any:
    return B.lib().ffi


def _fields(ctype: Any, base: int, out: list[str], where: str) -> int:
    """Append the format characters of ``ctype``'s fields to ``out``; the end offset."""
    ffi = _ffi()
    pos = base
    for name, f in ctype.fields:
        if base + f.offset != pos:
            raise B.LayoutError(f"{where}.{name}: a hole before it (lb_shared.h keeps explicit pad fields)")
        pos = _field(f.type, name, pos, out, f"{where}.{name}")
    if pos - base != ffi.sizeof(ctype):
        raise B.LayoutError(f"{where}: trailing padding (lb_shared.h keeps explicit pad fields)")
    return pos


def _field(t: Any, name: str, pos: int, out: list[str], where: str) -> int:
    ffi = _ffi()
    size = ffi.sizeof(t)
    if t.kind == "struct":
        return _fields(t, pos, out, where)
    if t.kind == "array":
        out.append(f"{size}x" if name == "pad" else f"{size}s")
    elif t.kind in ("primitive", "enum"):
        signed = t.kind == "primitive" and t.cname.startswith(("int", "signed", "long", "short"))
        out.append(_INT_CHARS[(size, signed)] if t.cname != "char" else "c")
    else:
        raise B.LayoutError(f"{where}: {t.cname} has no struct format")
    return int(pos + size)


def fmt(cname: str, start: str | None = None, stop: str | None = None) -> struct.Struct:
    """The little-endian ``struct.Struct`` of ``cname``'s fields from ``start`` up to (not
    including) ``stop``, both top-level field names (None: from the first / to the end)."""
    ffi = _ffi()
    t = ffi.typeof(cname)
    names = [n for n, _ in t.fields]
    lo = names.index(start) if start else 0
    hi = names.index(stop) if stop else len(names)
    out: list[str] = []
    pos = ffi.offsetof(cname, names[lo]) if lo < len(names) else ffi.sizeof(t)
    for name, f in t.fields[lo:hi]:
        if f.offset != pos:
            raise B.LayoutError(f"{cname}.{name}: a hole before it (lb_shared.h keeps explicit pad fields)")
        pos = _field(f.type, name, pos, out, f"{cname}.{name}")
    return struct.Struct("<" + "".join(out))


def sizeof(cname: str) -> int:
    return int(_ffi().sizeof(cname))


def offsetof(cname: str, field: str) -> int:
    return int(_ffi().offsetof(cname, field))


def enum(cname: str, prefix: str) -> dict[str, int]:
    """``enum cname`` as {lowercase name without ``prefix``, ``_`` as ``-``: value}."""
    rel: dict[str, int] = _ffi().typeof(cname).relements
    return {n[len(prefix):].lower().replace("_", "-"): int(v) for n, v in rel.items()
            if n.startswith(prefix) and not n.endswith("_MAX")}


const = B.const

# Formats of the hot paths.
U32 = struct.Struct("<I")  # __u32 keys and values (service id, stat id)
BE_KEY = fmt("struct lb_be_key")
SEL_KEY = fmt("struct lb_sel_key")
SVC_KEY_TAIL = fmt("struct lb_svc_key", start="port")  # after addr[4]
LIST_HDR = fmt("struct lb_backend_list", stop="be")
BE = fmt("struct lb_backend")
SVC_HDR = fmt("struct lb_service", stop="allowed")
CIDR = fmt("struct lb_cidr")
RANGE_HDR = fmt("struct lb_range_list", stop="r")
RANGE = fmt("struct lb_range")
ATTACH = fmt("struct lb_attach")
RANGE_KEY = fmt("struct lb_range_key")

# Sizes and offsets.
SVC_KEY_SIZE = sizeof("struct lb_svc_key")  # also the first bytes of struct lb_service
LIST_SIZE = sizeof("struct lb_backend_list")
CONF_SIZE = sizeof("struct lb_service")
SEL_BYTES = sizeof("struct lb_sel_chunk")
ALLOWED_OFF = offsetof("struct lb_service", "allowed")
NAME_OFF = offsetof("struct lb_service", "name")
CT_SVC_OFF = offsetof("struct lb_ct", "svc_id")
CT_STAT_OFF = offsetof("struct lb_ct", "stat_id")
PERSIST_SVC_OFF = offsetof("struct lb_persist_key", "svc_id")
PERSIST_STAT_OFF = offsetof("struct lb_persist", "be") + offsetof("struct lb_backend", "stat_id")
ZERO_COUNTERS = bytes(sizeof("struct lb_counters"))
ZERO_CONNS = bytes(B.lib().ffi.sizeof(B.MAPS["lb_be_conns"].value))
ZERO_RR = bytes(B.lib().ffi.sizeof(B.MAPS["lb_rr"].value))

# Limits.
MAX_ENDPOINTS = const("LB_MAX_ENDPOINTS")
MAX_ALLOWED = const("LB_MAX_ALLOWED_SOURCES")
NAME_LEN = const("LB_NAME_LEN")
SEL_CHUNK = const("LB_SEL_CHUNK")
MAX_RANGES = const("LB_MAX_RANGES")
MAX_SEL_LEN = const("LB_MAGLEV_MAX")  # no selection table is longer
IFNAME_LEN = const("LB_IFNAME_LEN")
CT_CLOSING_TIMEOUT = const("LB_CT_CLOSING_TIMEOUT")

# Enums (names as the configuration spells them).
SELECTIONS = enum("enum lb_selection", "LB_SEL_")
MODES = enum("enum lb_mode", "LB_MODE_")
# Layout v3 (an older header, as the migration tests drive, has none: reject is all it does).
NO_BACKEND = enum("enum lb_no_backend", "LB_NB_") if hasattr(B.lib().lib, "LB_NB_DROP") else {"reject": 0}
HOOKS = enum("enum lb_hook", "LB_HOOK_")
CT_STATES = {v: k for k, v in enum("enum lb_ct_state", "LB_CT_").items()}
STATS = enum("enum lb_stat", "LB_STAT_")
F_HAS_SERVICE = const("LB_F_HAS_SERVICE")
F_HAS_ENDPOINTS = const("LB_F_HAS_ENDPOINTS")
SELTAB_WEIGHTED = const("LB_SELTAB_WEIGHTED")
SELTAB_MAGLEV = const("LB_SELTAB_MAGLEV")
CT_FORWARD = const("LB_CT_FORWARD")
CT_FIN_WAIT = const("LB_CT_FIN_WAIT")


def ct_closing(state: int) -> bool:
    """A closing conntrack state (TCP after FIN/RST, SCTP from SHUTDOWN on): short timeout, not open."""
    if hasattr(B.lib().lib, "LB_CT_CLOSING_STATES"):
        return bool((const("LB_CT_CLOSING_STATES") >> (state & 31)) & 1)
    return state >= CT_FIN_WAIT  # layout v3 and older (the migration tests drive them)
