"""A small cffi ABI-mode binding on libbpf.so.1, and the map layout of ``bpf/lb_shared.h``.

Why this exists: the bpf driver, the packet tests and the benches need libbpf
(open/load/pin objects, map access in batches, tc/XDP attach, BPF_PROG_TEST_RUN)
from Python, on Debian's python3-cffi 1.15 as well as newer cffi, without a C
compiler at run time.  ABI mode checks no layout, so at load we compare every
struct of ``lb_shared.h`` (as cffi sees it) with the object's BTF (as clang laid
it out) and every map's key/value size, and refuse to run on a mismatch
(DESIGN pitfalls 1, 2, 5, 6, 7).  Errors become ``BpfError`` naming the map or
call and the errno.

Longer than 500 lines on purpose: it is one thin wrapper per libbpf call over one
cdef and one process-wide ffi; every part (maps, objects, attach, test runs) is a
few lines of argument marshalling, and splitting them would only spread the cdef.
"""

from __future__ import annotations

import errno as errno_mod
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from reconciler.constants import DATAPATH_HEADER, DATAPATH_OBJECT
from reconciler.drivers.datapath_files import datapath_file
from reconciler.errors import LbctlError

try:
    import cffi
except ImportError:  # pragma: no cover - the core stays importable without cffi
    cffi = None

_PRELUDE = """
typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;
typedef int8_t __s8; typedef int16_t __s16; typedef int32_t __s32; typedef int64_t __s64;
"""

_LIBBPF_CDEF = """
struct bpf_object; struct bpf_map; struct bpf_program; struct btf;
struct btf_type { __u32 name_off; __u32 info; __u32 size; };
struct btf_member { __u32 name_off; __u32 type; __u32 offset; };

struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_map *bpf_object__find_map_by_name(const struct bpf_object *obj, const char *name);
struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map);
struct btf *bpf_object__btf(const struct bpf_object *obj);
const char *bpf_map__name(const struct bpf_map *map);
int bpf_map__fd(const struct bpf_map *map);
__u32 bpf_map__key_size(const struct bpf_map *map);
__u32 bpf_map__value_size(const struct bpf_map *map);
__u32 bpf_map__max_entries(const struct bpf_map *map);
int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries);
int bpf_map__set_pin_path(struct bpf_map *map, const char *path);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj, const char *name);
int bpf_program__fd(const struct bpf_program *prog);
struct bpf_program *bpf_object__next_program(const struct bpf_object *obj, struct bpf_program *prog);
const char *bpf_program__name(const struct bpf_program *prog);
int bpf_program__set_autoload(struct bpf_program *prog, _Bool autoload);
int bpf_program__set_log_buf(struct bpf_program *prog, char *log_buf, size_t log_size);
int bpf_program__set_log_level(struct bpf_program *prog, __u32 log_level);
__s32 btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind);
const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id);
const char *btf__name_by_offset(const struct btf *btf, __u32 offset);

int bpf_obj_get(const char *pathname);
int bpf_prog_get_fd_by_id(__u32 id);
int bpf_map_get_fd_by_id(__u32 id);
int bpf_obj_pin(int fd, const char *pathname);
int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_map_get_next_key(int fd, const void *key, void *next_key);
struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; };
int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys, void *values,
                         __u32 *count, const struct bpf_map_batch_opts *opts);
int bpf_map_update_batch(int fd, const void *keys, const void *values, __u32 *count,
                         const struct bpf_map_batch_opts *opts);
int bpf_map_delete_batch(int fd, const void *keys, __u32 *count, const struct bpf_map_batch_opts *opts);
int libbpf_num_possible_cpus(void);
void *libbpf_set_print(void *fn);

struct bpf_tc_hook { size_t sz; int ifindex; int attach_point; __u32 parent; };
struct bpf_tc_opts { size_t sz; int prog_fd; __u32 flags; __u32 prog_id; __u32 handle; __u32 priority; };
int bpf_tc_hook_create(struct bpf_tc_hook *hook);
int bpf_tc_hook_destroy(struct bpf_tc_hook *hook);
int bpf_tc_attach(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);
int bpf_tc_detach(const struct bpf_tc_hook *hook, const struct bpf_tc_opts *opts);
int bpf_tc_query(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);

struct bpf_xdp_attach_opts { size_t sz; int old_prog_fd; };
int bpf_xdp_attach(int ifindex, int prog_fd, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_detach(int ifindex, __u32 flags, const struct bpf_xdp_attach_opts *opts);
int bpf_xdp_query_id(int ifindex, int flags, __u32 *prog_id);

struct bpf_test_run_opts {
    size_t sz; const void *data_in; void *data_out; __u32 data_size_in; __u32 data_size_out;
    const void *ctx_in; void *ctx_out; __u32 ctx_size_in; __u32 ctx_size_out;
    __u32 retval; int repeat; __u32 duration; __u32 flags; __u32 cpu; __u32 batch_size;
};
int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts);

struct lbctl_prog_info { __u32 type; __u32 id; __u8 tag[8]; __u32 jited_prog_len; __u32 xlated_prog_len;
                         __u64 jited_prog_insns; __u64 xlated_prog_insns; __u64 load_time;
                         __u32 created_by_uid; __u32 nr_map_ids; __u64 map_ids; char name[16]; };
struct lbctl_map_info { __u32 type; __u32 id; __u32 key_size; __u32 value_size; __u32 max_entries;
                        __u32 map_flags; char name[16]; };
int bpf_map__type(const struct bpf_map *map);
__u32 bpf_map__btf_key_type_id(const struct bpf_map *map);
__u32 bpf_map__btf_value_type_id(const struct bpf_map *map);
"""

@dataclass(frozen=True)
class MapSpec:
    key: str
    value: str
    percpu: bool = False


class _ObjectMaps(MutableMapping[str, MapSpec]):
    """Every map of the datapath object with its key and value types (C names) and per-CPU
    flag, read from the object's own BTF on first use: nothing about a map is written down
    in Python.  Mutable only so tests can describe a map wrongly and see it refused."""

    def __init__(self) -> None:
        self._maps: dict[str, MapSpec] | None = None

    def _all(self) -> dict[str, MapSpec]:
        if self._maps is None:
            self._maps = object_maps(datapath_file(DATAPATH_OBJECT))
        return self._maps

    def __getitem__(self, name: str) -> MapSpec:
        return self._all()[name]

    def __setitem__(self, name: str, spec: MapSpec) -> None:
        self._all()[name] = spec

    def __delitem__(self, name: str) -> None:
        del self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


MAPS: MutableMapping[str, MapSpec] = _ObjectMaps()


def shared_structs(header: str) -> tuple[str, ...]:
    """The structs ``lb_shared.h`` declares (each is checked against the object's BTF)."""
    with open(header, encoding="utf-8") as fh:
        return tuple(re.findall(r"^struct (lb_\w+) \{", fh.read(), re.M))


BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_TC_INGRESS = 1
BPF_TC_F_REPLACE = 1
XDP_FLAGS_UPDATE_IF_NOEXIST = 1
XDP_FLAGS_SKB_MODE = 2
XDP_FLAGS_DRV_MODE = 4
XDP_FLAGS_REPLACE = 16
BTF_KIND_STRUCT = 4
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
BTF_KIND_TYPEDEF = 8
# BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH, _PERCPU_CGROUP_STORAGE: the kernel
# reads and writes one value per possible CPU (8-byte aligned) for these.
PERCPU_MAP_TYPES = frozenset({5, 6, 10, 21})


class BpfError(LbctlError):
    """A libbpf or bpf(2) call failed; names what failed and the errno."""

    def __init__(self, what: str, err: int, hint: str | None = None) -> None:
        self.errno = abs(err)
        name = errno_mod.errorcode.get(self.errno, "?")
        super().__init__(f"{what}: {os.strerror(self.errno)} (errno {self.errno} {name})", hint)


class LayoutError(LbctlError):
    """lb_shared.h as cffi reads it does not match the object clang built."""


def _header_cdef(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        lines = [ln for ln in fh.read().splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


class _Lib:
    """The loaded ffi + library, created once per process."""

    def __init__(self) -> None:
        if cffi is None:
            raise LbctlError("python cffi is not installed",
                             "install python3-cffi (Debian) or pip install cffi")
        self.ffi = cffi.FFI()
        self.header = datapath_file(DATAPATH_HEADER)  # the lb_shared.h shipped with the object
        self.ffi.cdef(_PRELUDE + _LIBBPF_CDEF + _header_cdef(self.header))
        try:
            self.lib: Any = self.ffi.dlopen("libbpf.so.1")
        except OSError as exc:
            raise LbctlError(f"cannot load libbpf.so.1: {exc}",
                             "install libbpf1 (Debian: apt-get install libbpf1)") from exc
        # libbpf's print callback takes a va_list, which cffi cannot (pitfall 5): silence
        # it; failures surface as BpfError and verifier logs through the log buffer.
        self.lib.libbpf_set_print(self.ffi.NULL)
        self.ncpus = int(self.lib.libbpf_num_possible_cpus())
        if self.ncpus <= 0:
            raise BpfError("libbpf_num_possible_cpus", self.ncpus)


_LIB: _Lib | None = None


def lib() -> _Lib:
    global _LIB
    if _LIB is None:
        _LIB = _Lib()
    return _LIB


def const(name: str) -> int:
    """An enum constant of lb_shared.h (e.g. ``LB_MAX_SERVICES``)."""
    return int(getattr(lib().lib, name))


def _check(rc: int, what: str, hint: str | None = None) -> int:
    if rc < 0:
        raise BpfError(what, rc, hint)
    return rc


class Map:
    """One BPF map by fd, with typed cffi keys/values (per-CPU aware)."""

    def __init__(self, name: str, fd: int, spec: MapSpec) -> None:
        L = lib()
        self.name = name
        self.fd = fd
        self.spec = spec
        self.ffi = L.ffi
        self.key_size = L.ffi.sizeof(spec.key)
        self.value_size = L.ffi.sizeof(spec.value)
        self.stride = (self.value_size + 7) // 8 * 8 if spec.percpu else self.value_size
        self.ncpus = L.ncpus if spec.percpu else 1
        self.buf_size = self.stride * self.ncpus
        self.writes = 0
        self._raw_buf: Any = None

    def key(self, **fields: Any) -> Any:
        k = self.ffi.new(self.spec.key + " *")
        for name, val in fields.items():
            setattr(k, name, val)
        return k

    def value(self) -> Any:
        return self.ffi.new(self.spec.value + " *")

    def _kptr(self, key: Any) -> Any:
        if isinstance(key, int):
            k = self.ffi.new(self.spec.key + " *", key)
            return k
        return key

    def lookup(self, key: Any) -> Any | None:
        """The value, or None.  Per-CPU maps return a list of values, one per CPU."""
        buf = self.ffi.new("char[]", self.buf_size)
        rc = lib().lib.bpf_map_lookup_elem(self.fd, self._kptr(key), buf)
        if rc == -errno_mod.ENOENT:
            return None
        _check(rc, f"lookup in map {self.name}")
        return self._decode(buf, 0)

    def _decode(self, buf: Any, off: int) -> Any:
        if not self.spec.percpu:
            v = self.ffi.new(self.spec.value + " *")
            self.ffi.memmove(v, buf + off, self.value_size)
            return v[0] if self.spec.value.startswith("__u") else v
        out = []
        for cpu in range(self.ncpus):
            v = self.ffi.new(self.spec.value + " *")
            self.ffi.memmove(v, buf + off + cpu * self.stride, self.value_size)
            out.append(v[0] if self.spec.value.startswith("__u") else v)
        return out

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        if isinstance(value, int):
            value = self.ffi.new(self.spec.value + " *", value)
        if self.spec.percpu:
            buf = self.ffi.new("char[]", self.buf_size)
            for cpu in range(self.ncpus):
                self.ffi.memmove(buf + cpu * self.stride, value, self.value_size)
            value = buf
        _check(lib().lib.bpf_map_update_elem(self.fd, self._kptr(key), value, flags),
               f"update of map {self.name}")
        self.writes += 1

    def delete(self, key: Any) -> bool:
        rc = lib().lib.bpf_map_delete_elem(self.fd, self._kptr(key))
        if rc == -errno_mod.ENOENT:
            return False
        _check(rc, f"delete from map {self.name}")
        self.writes += 1
        return True

    def items(self, chunk: int = 4096) -> Iterator[tuple[Any, Any]]:
        """All entries with BPF_MAP_LOOKUP_BATCH (pitfall 7: the last chunk comes with ENOENT)."""
        L = lib()
        ffi = self.ffi
        keys = ffi.new("char[]", self.key_size * chunk)
        vals = ffi.new("char[]", self.buf_size * chunk)
        batch_size = max(self.key_size, 8)
        in_b = ffi.new("char[]", batch_size)
        out_b = ffi.new("char[]", batch_size)
        first = True
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        while True:
            count = ffi.new("__u32 *", chunk)
            start = ffi.NULL if first else in_b
            rc = L.lib.bpf_map_lookup_batch(self.fd, start, out_b, keys, vals, count, opts)
            if rc < 0 and rc != -errno_mod.ENOENT:
                _check(rc, f"lookup_batch of map {self.name}")
            for i in range(count[0]):
                k = ffi.new(self.spec.key + " *")
                ffi.memmove(k, keys + i * self.key_size, self.key_size)
                yield (k[0] if self.spec.key.startswith("__u") else k), self._decode(vals, i * self.buf_size)
            if rc == -errno_mod.ENOENT:
                return
            ffi.memmove(in_b, out_b, batch_size)
            first = False

    def update_batch(self, keys: list[Any], values: list[Any]) -> None:
        """Write many entries in one BPF_MAP_UPDATE_BATCH call."""
        if not keys:
            return
        ffi = self.ffi
        n = len(keys)
        kbuf = ffi.new("char[]", self.key_size * n)
        vbuf = ffi.new("char[]", self.buf_size * n)
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            ffi.memmove(kbuf + i * self.key_size, self._kptr(k), self.key_size)
            if isinstance(v, int):
                v = ffi.new(self.spec.value + " *", v)
            for cpu in range(self.ncpus):
                ffi.memmove(vbuf + i * self.buf_size + cpu * self.stride, v, self.value_size)
        count = ffi.new("__u32 *", n)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        rc = lib().lib.bpf_map_update_batch(self.fd, kbuf, vbuf, count, opts)
        _check(rc, f"update_batch of map {self.name}")
        self.writes += n

    # Raw-bytes variants: no cffi object per entry (the driver's hot paths at 10k services).

    def lookup_raw(self, key: bytes) -> bytes | None:
        """The value bytes (per-CPU maps: all CPUs, ``stride`` apart), or None."""
        buf = self._raw_buf
        if buf is None:
            buf = self._raw_buf = self.ffi.new("char[]", self.buf_size)
        rc = lib().lib.bpf_map_lookup_elem(self.fd, key, buf)
        if rc == -errno_mod.ENOENT:
            return None
        _check(rc, f"lookup in map {self.name}")
        out: bytes = self.ffi.buffer(buf, self.buf_size)[:]
        return out

    def items_raw(self, chunk: int = 1024) -> Iterator[tuple[bytes, bytes]]:
        """All (key bytes, value bytes) pairs, one BPF_MAP_LOOKUP_BATCH per chunk (pitfall 7)."""
        ffi = self.ffi
        keys = ffi.new("char[]", self.key_size * chunk)
        vals = ffi.new("char[]", self.buf_size * chunk)
        batch_size = max(self.key_size, 8)
        in_b = ffi.new("char[]", batch_size)
        out_b = ffi.new("char[]", batch_size)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        count = ffi.new("__u32 *")
        start = ffi.NULL
        ks, vs = self.key_size, self.buf_size
        while True:
            count[0] = chunk
            rc = lib().lib.bpf_map_lookup_batch(self.fd, start, out_b, keys, vals, count, opts)
            if rc < 0 and rc != -errno_mod.ENOENT:
                _check(rc, f"lookup_batch of map {self.name}")
            n = int(count[0])
            kb = ffi.buffer(keys, ks * n)[:]
            vb = ffi.buffer(vals, vs * n)[:]
            for i in range(n):
                yield kb[i * ks : (i + 1) * ks], vb[i * vs : (i + 1) * vs]
            if rc == -errno_mod.ENOENT:
                return
            ffi.memmove(in_b, out_b, batch_size)
            start = in_b

    def chunks_raw(self, chunk: int = 1024) -> Iterator[tuple[int, memoryview, memoryview]]:
        """(n, keys, values) per BPF_MAP_LOOKUP_BATCH call: views of this call's buffers, valid
        until the next item (no copy per entry: the scrape's path over whole maps)."""
        ffi = self.ffi
        keys = ffi.new("char[]", self.key_size * chunk)
        vals = ffi.new("char[]", self.buf_size * chunk)
        kview, vview = memoryview(ffi.buffer(keys)), memoryview(ffi.buffer(vals))
        batch_size = max(self.key_size, 8)
        in_b = ffi.new("char[]", batch_size)
        out_b = ffi.new("char[]", batch_size)
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        count = ffi.new("__u32 *")
        start = ffi.NULL
        while True:
            count[0] = chunk
            rc = lib().lib.bpf_map_lookup_batch(self.fd, start, out_b, keys, vals, count, opts)
            if rc < 0 and rc != -errno_mod.ENOENT:
                _check(rc, f"lookup_batch of map {self.name}")
            n = int(count[0])
            if n:
                yield n, kview[: self.key_size * n], vview[: self.buf_size * n]
            if rc == -errno_mod.ENOENT:
                return
            ffi.memmove(in_b, out_b, batch_size)
            start = in_b

    def update_batch_raw(self, items: list[tuple[bytes, bytes]], per_call: int = 4096) -> None:
        """Write many (key bytes, value bytes) with BPF_MAP_UPDATE_BATCH, in order.

        Values are ``value_size`` bytes; per-CPU maps get the same value on every CPU.
        Later entries win over earlier ones with the same key (the kernel applies them
        one by one, in order).
        """
        if not items:
            return
        ffi = self.ffi
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        pad = b"\0" * (self.stride - self.value_size)
        for lo in range(0, len(items), per_call):
            part = items[lo : lo + per_call]
            n = len(part)
            kbuf = b"".join(k for k, _ in part)
            if self.ncpus == 1:
                vbuf = b"".join(v for _, v in part)
            else:
                vbuf = b"".join((v + pad) * self.ncpus for _, v in part)
            count = ffi.new("__u32 *", n)
            rc = lib().lib.bpf_map_update_batch(self.fd, kbuf, vbuf, count, opts)
            if rc < 0:
                self.writes += int(count[0])
                _check(rc, f"update_batch of map {self.name}")
            self.writes += n

    def update_raw(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        """Write one entry from bytes (maps without batch updates, e.g. LPM tries)."""
        if self.spec.percpu:
            pad = bytes(self.stride - self.value_size)
            value = (value + pad) * self.ncpus
        _check(lib().lib.bpf_map_update_elem(self.fd, key, value, flags), f"update of map {self.name}")
        self.writes += 1

    def keys_raw(self) -> list[bytes]:
        """Every key, by BPF_MAP_GET_NEXT_KEY (maps without batch lookups, e.g. LPM tries)."""
        ffi = self.ffi
        cur = ffi.new("char[]", self.key_size)
        nxt = ffi.new("char[]", self.key_size)
        out: list[bytes] = []
        rc = lib().lib.bpf_map_get_next_key(self.fd, ffi.NULL, nxt)
        while rc == 0:
            out.append(bytes(ffi.buffer(nxt, self.key_size)))
            ffi.memmove(cur, nxt, self.key_size)
            rc = lib().lib.bpf_map_get_next_key(self.fd, cur, nxt)
        if rc != -errno_mod.ENOENT:
            _check(rc, f"get_next_key of map {self.name}")
        return out

    def delete_raw(self, key: bytes) -> bool:
        rc = lib().lib.bpf_map_delete_elem(self.fd, key)
        if rc == -errno_mod.ENOENT:
            return False
        _check(rc, f"delete from map {self.name}")
        self.writes += 1
        return True

    def delete_batch_raw(self, keys: list[bytes], per_call: int = 4096) -> int:
        """Delete many keys with BPF_MAP_DELETE_BATCH; keys already gone are skipped.  The count deleted."""
        ffi = self.ffi
        opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
        count = ffi.new("__u32 *")
        done = lo = 0
        while lo < len(keys):
            part = keys[lo : lo + per_call]
            count[0] = len(part)
            rc = lib().lib.bpf_map_delete_batch(self.fd, b"".join(part), count, opts)
            n = int(count[0])
            done += n
            if rc == -errno_mod.ENOENT and n < len(part):  # gone meanwhile (LRU, the datapath)
                lo += n + 1
                continue
            _check(rc, f"delete_batch of map {self.name}")
            lo += len(part)
        self.writes += done
        return done

    def delete_many(self, keys: list[Any]) -> int:
        n = 0
        for k in keys:
            n += self.delete(k)
        return n


def obj_get(path: str) -> int:
    fd = lib().lib.bpf_obj_get(path.encode())
    return _check(fd, f"open pinned object {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().lib.bpf_obj_pin(fd, path.encode()), f"pin {path}")


@dataclass(frozen=True)
class ProgInfo:
    """Who a loaded program is: the kernel's id, its tag (a hash of its instructions with
    map references blanked, so equal for every load of the same code), name and maps."""

    id: int
    type: int
    tag: str
    name: str
    map_ids: frozenset[int]

    def same_code_and_maps(self, other: ProgInfo) -> bool:
        """Same code on the same maps; each load has its own read-only data (``.rodata``), not compared."""
        if (self.type, self.tag, self.name) != (other.type, other.tag, other.name):
            return False
        return self.shared_map_ids() == other.shared_map_ids()

    def shared_map_ids(self) -> frozenset[int]:
        """Its maps without libbpf's per-load read-only data."""
        return frozenset(m for m in self.map_ids if not internal_map(m))


_MAX_PROG_MAPS = 64


def prog_info(fd: int) -> ProgInfo:
    ffi = lib().ffi
    ids = ffi.new("__u32[]", _MAX_PROG_MAPS)
    info = ffi.new("struct lbctl_prog_info *")
    info.nr_map_ids = _MAX_PROG_MAPS
    info.map_ids = int(ffi.cast("uintptr_t", ids))
    ln = ffi.new("__u32 *", ffi.sizeof("struct lbctl_prog_info"))
    _check(lib().lib.bpf_obj_get_info_by_fd(fd, info, ln), "bpf_obj_get_info_by_fd(prog)")
    n = min(int(info.nr_map_ids), _MAX_PROG_MAPS)
    return ProgInfo(int(info.id), int(info.type), bytes(ffi.buffer(info.tag, 8)).hex(),
                    ffi.string(info.name).decode(errors="replace"), frozenset(int(ids[i]) for i in range(n)))


def prog_info_by_id(pid: int) -> ProgInfo | None:
    """The program with kernel id ``pid``, or None when it is gone."""
    fd = lib().lib.bpf_prog_get_fd_by_id(pid)
    if fd == -errno_mod.ENOENT:
        return None
    _check(fd, f"prog fd of id {pid}")
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


def prog_id(fd: int) -> int:
    return prog_info(fd).id


def prog_name(pid: int) -> str:
    """The name of program ``pid`` (its entry point, cut to 15 bytes); "" if it is gone."""
    info = prog_info_by_id(pid)
    return info.name if info is not None else ""


def _map_info(fd: int) -> Any:
    ffi = lib().ffi
    info = ffi.new("struct lbctl_map_info *")
    ln = ffi.new("__u32 *", ffi.sizeof("struct lbctl_map_info"))
    _check(lib().lib.bpf_obj_get_info_by_fd(fd, info, ln), "bpf_obj_get_info_by_fd(map)")
    return info


def map_info(fd: int) -> tuple[int, int, int, int]:
    """(type, key_size, value_size, max_entries) of the map behind ``fd``."""
    info = _map_info(fd)
    return int(info.type), int(info.key_size), int(info.value_size), int(info.max_entries)


def internal_map(mid: int) -> bool:
    """Map ``mid`` is libbpf's read-only data of an object (``<obj>.rodata``: the datapath's
    constant tables), which a program holds besides the pinned maps."""
    fd = lib().lib.bpf_map_get_fd_by_id(mid)
    if fd < 0:
        return False
    try:
        name: bytes = lib().ffi.string(_map_info(fd).name)
        return name.endswith(b".rodata")
    finally:
        os.close(fd)


def map_id(fd: int) -> int:
    """The kernel's id of the map behind ``fd``."""
    return int(_map_info(fd).id)


PIN_MISMATCH_HINT = ("the pins come from an lbctl whose datapath layout differs: run 'lbctl down' "
                     "(detaches the datapath and drops its flows and counters), then apply again")


def check_pinned_map(name: str, path: str, fd: int, want: tuple[int, int, int, int]) -> None:
    """Refuse a pinned map whose (type, key size, value size, max entries) is not ``want``."""
    got = map_info(fd)
    if got != want:
        fields = ("type", "key size", "value size", "max entries")
        diff = ", ".join(f"{f} {g} (this lbctl: {w})" for f, g, w in zip(fields, got, want, strict=True)
                         if g != w)
        raise LayoutError(f"pinned map {path} does not fit this lbctl's {name}: {diff}", PIN_MISMATCH_HINT)


def _btf_type_name(btf: Any, tid: int) -> str:
    """The C name of BTF type ``tid`` as cffi spells it ("struct x", "__u32"); "" if unnamed."""
    L = lib()
    t = L.lib.btf__type_by_id(btf, tid)
    if t == L.ffi.NULL:
        return ""
    name = L.ffi.string(L.lib.btf__name_by_offset(btf, t.name_off)).decode()
    kind = (t.info >> 24) & 0x1F
    return f"struct {name}" if kind == BTF_KIND_STRUCT and name else name


def _map_problems(name: str, spec: MapSpec, m: Any, btf: Any) -> list[str]:
    """How ``spec`` (the Python description of map ``name``) differs from the object's map ``m``."""
    L = lib()
    ffi, c = L.ffi, L.lib
    out = []
    for field_, want, tid, size in (
        ("key", spec.key, c.bpf_map__btf_key_type_id(m), c.bpf_map__key_size(m)),
        ("value", spec.value, c.bpf_map__btf_value_type_id(m), c.bpf_map__value_size(m)),
    ):
        got = _btf_type_name(btf, int(tid)) if tid else ""
        if got and got != want:
            out.append(f"map {name}: {field_} type is {got} in the object, {want} in _libbpf.MAPS")
        if int(size) != ffi.sizeof(want):
            out.append(f"map {name}: {field_} size {int(size)} bytes in the object, "
                       f"{ffi.sizeof(want)} ({want}) in cffi")
    mtype = int(c.bpf_map__type(m))
    if (mtype in PERCPU_MAP_TYPES) != spec.percpu:
        out.append(f"map {name}: percpu is {mtype in PERCPU_MAP_TYPES} in the object (map type {mtype}), "
                   f"{spec.percpu} in _libbpf.MAPS")
    return out


def object_maps(path: str) -> dict[str, MapSpec]:
    """The maps of the object at ``path``, described from its BTF and map types."""
    L = lib()
    obj = BpfObject(path)
    try:
        btf = L.lib.bpf_object__btf(obj.obj)
        if btf == L.ffi.NULL:
            raise LayoutError(f"{path} has no BTF; build it with clang -g")
        out = {}
        for name in obj.map_names():
            m = obj.map_ptr(name)
            key = _btf_type_name(btf, int(L.lib.bpf_map__btf_key_type_id(m)))
            value = _btf_type_name(btf, int(L.lib.bpf_map__btf_value_type_id(m)))
            if not key or not value:
                raise LayoutError(f"map {name} of {path} has no BTF key or value type",
                                  "declare it with __type(key, ...) and __type(value, ...)")
            out[name] = MapSpec(key, value, int(L.lib.bpf_map__type(m)) in PERCPU_MAP_TYPES)
        return out
    finally:
        obj.close()


class BpfObject:
    """An opened (and, after ``load()``, loaded) BPF object file."""

    def __init__(self, path: str) -> None:
        L = lib()
        self.path = path
        if not os.path.exists(path):
            raise LbctlError(f"BPF object {path} not found", "build it with 'make build' (make -C bpf)")
        self.obj = L.lib.bpf_object__open_file(path.encode(), L.ffi.NULL)
        if self.obj == L.ffi.NULL:
            raise BpfError(f"bpf_object__open_file({path})", L.ffi.errno or errno_mod.EINVAL)
        self.loaded = False
        self._log_bufs: list[Any] = []

    def map_ptr(self, name: str) -> Any:
        L = lib()
        m = L.lib.bpf_object__find_map_by_name(self.obj, name.encode())
        if m == L.ffi.NULL:
            raise LbctlError(f"map {name} not found in {self.path}")
        return m

    def check_layout(
        self, maps: Mapping[str, MapSpec] | None = None, structs: tuple[str, ...] | None = None
    ) -> None:
        """Refuse to run when cffi's view of lb_shared.h or ``MAPS`` differs from the object's BTF.

        Per map: the key and value types (as BTF names them), their sizes, and the per-CPU
        flag (from the map type: a per-CPU map read into a one-value buffer would overrun it);
        every map of the object must be in ``MAPS`` and the reverse.
        """
        L = lib()
        ffi, c = L.ffi, L.lib
        maps = MAPS if maps is None else maps
        structs = shared_structs(lib().header) if structs is None else structs
        problems: list[str] = []
        btf = c.bpf_object__btf(self.obj)
        if btf == ffi.NULL:
            raise LayoutError(f"{self.path} has no BTF; build it with clang -g")
        for name, spec in maps.items():
            m = self.map_ptr(name)
            problems += _map_problems(name, spec, m, btf)
        problems += [f"map {n}: in the object but not in _libbpf.MAPS" for n in self.map_names()
                     if n not in maps]
        for sname in structs:
            tid = c.btf__find_by_name_kind(btf, sname.encode(), BTF_KIND_STRUCT)
            if tid < 0:
                problems.append(f"struct {sname}: not in the object's BTF")
                continue
            t = c.btf__type_by_id(btf, tid)
            if t.size != ffi.sizeof("struct " + sname):
                problems.append(f"struct {sname}: BTF size {t.size}, cffi {ffi.sizeof('struct ' + sname)}")
            vlen = t.info & 0xFFFF
            kflag = t.info >> 31
            members = ffi.cast("struct btf_member *", t + 1)
            for i in range(vlen):
                mem = members[i]
                mname = ffi.string(c.btf__name_by_offset(btf, mem.name_off)).decode()
                bits = mem.offset & 0xFFFFFF if kflag else mem.offset
                try:
                    off = ffi.offsetof("struct " + sname, mname)
                except (KeyError, TypeError):
                    problems.append(f"struct {sname}: member {mname} unknown to cffi")
                    continue
                if bits != off * 8:
                    problems.append(f"struct {sname}.{mname}: BTF offset {bits // 8}, cffi {off}")
        if problems:
            raise LayoutError(
                f"{L.header} and {self.path} disagree: " + "; ".join(problems),
                "rebuild the object (make build) from the same source tree",
            )

    def map_names(self) -> list[str]:
        """The object's own maps (not libbpf's internal .data/.rodata/.bss/.kconfig maps)."""
        L = lib()
        out = []
        m = L.lib.bpf_object__next_map(self.obj, L.ffi.NULL)
        while m != L.ffi.NULL:
            name = L.ffi.string(L.lib.bpf_map__name(m)).decode()
            if "." not in name:
                out.append(name)
            m = L.lib.bpf_object__next_map(self.obj, m)
        return out

    def map_def(self, name: str) -> tuple[int, int, int, int]:
        """(type, key_size, value_size, max_entries) the object declares for map ``name``."""
        c = lib().lib
        m = self.map_ptr(name)
        return (int(c.bpf_map__type(m)), int(c.bpf_map__key_size(m)), int(c.bpf_map__value_size(m)),
                int(c.bpf_map__max_entries(m)))

    def set_max_entries(self, sizes: Mapping[str, int]) -> None:
        """Size maps before ``load`` (the Datapath's capacities): map name -> max_entries."""
        for name, n in sizes.items():
            _check(lib().lib.bpf_map__set_max_entries(self.map_ptr(name), n),
                   f"set_max_entries of map {name}")

    def set_pin_root(self, root: str, names: list[str] | None = None) -> None:
        for name in names or list(MAPS):
            _check(lib().lib.bpf_map__set_pin_path(self.map_ptr(name), os.path.join(root, name).encode()),
                   f"set_pin_path of map {name}")

    def load(self, programs: tuple[str, ...] = (), only: bool = False) -> None:
        """Load the object; ``programs`` get a verifier log buffer (shown on failure).
        ``only``: load just those programs (the verifier's time is per program: ~1 s
        each for lb_tc and lb_xdp on a 2-vCPU VM)."""
        L = lib()
        if only:
            p = L.lib.bpf_object__next_program(self.obj, L.ffi.NULL)
            while p != L.ffi.NULL:
                name = L.ffi.string(L.lib.bpf_program__name(p)).decode()
                _check(L.lib.bpf_program__set_autoload(p, name in programs), f"set_autoload of {name}")
                p = L.lib.bpf_object__next_program(self.obj, p)
        bufs = {}
        for name in programs:
            p = L.lib.bpf_object__find_program_by_name(self.obj, name.encode())
            if p != L.ffi.NULL:
                buf = L.ffi.new("char[]", 1 << 20)
                L.lib.bpf_program__set_log_buf(p, buf, 1 << 20)
                bufs[name] = buf
        self._log_bufs = list(bufs.values())
        rc = L.lib.bpf_object__load(self.obj)
        if rc < 0:
            logs = "".join(
                f"\n--- verifier log of {n} ---\n" + L.ffi.string(b).decode(errors="replace")[-3000:]
                for n, b in bufs.items() if b[0] != b"\0"
            )
            raise BpfError(
                f"loading {self.path}" + logs, rc,
                "a pinned map with an incompatible layout makes this fail: remove the pins (lbctl down)",
            )
        self.loaded = True

    def map_fd(self, name: str) -> int:
        return _check(lib().lib.bpf_map__fd(self.map_ptr(name)), f"fd of map {name}")

    def prog_fd(self, name: str) -> int:
        L = lib()
        p = L.lib.bpf_object__find_program_by_name(self.obj, name.encode())
        if p == L.ffi.NULL:
            raise LbctlError(f"program {name} not found in {self.path}")
        return _check(L.lib.bpf_program__fd(p), f"fd of program {name}")

    def close(self) -> None:
        if self.obj is not None:
            lib().lib.bpf_object__close(self.obj)
            self.obj = None


@dataclass
class TestRun:
    retval: int
    data: bytes
    duration_ns: int
    ctx: bytes = b""  # the context after the run (ctx_size bytes), when asked for


def test_run(prog_fd: int, data: bytes, repeat: int = 1, out_size: int = 4096,
             ingress: tuple[str, int] | None = None, ctx_size: int = 0) -> TestRun:
    """BPF_PROG_TEST_RUN: run a program on one packet (pitfall 12: it writes live maps).

    ``ingress``: (hook, ifindex) of the interface the packet arrives on (default: loopback);
    a ``struct __sk_buff`` with ``ifindex`` (tc) or ``struct xdp_md`` with ``ingress_ifindex``.
    ``ctx_size``: return that many bytes of the context after the run (e.g. skb->mark).
    """
    L = lib()
    ffi = L.ffi
    ctx = None
    if ingress is not None:
        hook, ifindex = ingress
        # __sk_buff: ifindex at byte 40; xdp_md: data, data_end, data_meta, ingress_ifindex.
        raw = (bytes(40) + ifindex.to_bytes(4, "little") if hook == "tc"
               else b"".join(v.to_bytes(4, "little") for v in (0, len(data), 0, ifindex)))
        ctx = ffi.new("char[]", raw)
    din = ffi.new("char[]", data)
    dout = ffi.new("char[]", max(out_size, len(data) + 256))
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    opts.data_in = din
    opts.data_size_in = len(data)
    opts.data_out = dout
    opts.data_size_out = len(dout)
    opts.repeat = repeat
    if ctx is not None:
        opts.ctx_in = ctx
        opts.ctx_size_in = len(ctx) - 1  # cffi adds a NUL to char[] from bytes
    cout = ffi.new("char[]", ctx_size) if ctx_size else ffi.NULL
    if ctx_size:
        opts.ctx_out = cout
        opts.ctx_size_out = ctx_size
    _check(L.lib.bpf_prog_test_run_opts(prog_fd, opts), "bpf_prog_test_run_opts")
    ctx_out = bytes(ffi.buffer(cout, opts.ctx_size_out)) if ctx_size else b""
    return TestRun(int(opts.retval), bytes(ffi.buffer(dout, opts.data_size_out)), int(opts.duration), ctx_out)


def run_syscall(prog_fd: int, ctx: Any) -> int:
    """Run a BPF_PROG_TYPE_SYSCALL program on ``ctx`` (a cffi struct pointer, updated in place)."""
    L = lib()
    ffi = L.ffi
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    opts.ctx_in = ctx
    opts.ctx_size_in = ffi.sizeof(ctx[0])
    _check(L.lib.bpf_prog_test_run_opts(prog_fd, opts), "bpf_prog_test_run_opts")
    return int(opts.retval)


def _tc_hook(ifindex: int) -> Any:
    ffi = lib().ffi
    h = ffi.new("struct bpf_tc_hook *")
    h.sz = ffi.sizeof("struct bpf_tc_hook")
    h.ifindex = ifindex
    h.attach_point = BPF_TC_INGRESS
    return h


def _tc_opts(prog_fd: int = 0, flags: int = 0) -> Any:
    ffi = lib().ffi
    o = ffi.new("struct bpf_tc_opts *")
    o.sz = ffi.sizeof("struct bpf_tc_opts")
    o.prog_fd = prog_fd
    o.flags = flags
    o.handle = 1
    o.priority = 1
    return o


def tc_attach(ifindex: int, ifname: str, prog_fd: int) -> int:
    """clsact qdisc (if missing) + our ingress filter, replaced in place when present."""
    L = lib()
    h = _tc_hook(ifindex)
    rc = L.lib.bpf_tc_hook_create(h)
    if rc < 0 and rc != -errno_mod.EEXIST:
        _check(rc, f"create clsact qdisc on {ifname}")
    o = _tc_opts(prog_fd, BPF_TC_F_REPLACE)
    _check(L.lib.bpf_tc_attach(h, o), f"tc attach on {ifname}")
    return int(o.prog_id)


def tc_query(ifindex: int) -> int:
    """Program id of our tc filter on ifindex, 0 if none."""
    L = lib()
    o = _tc_opts()
    rc = L.lib.bpf_tc_query(_tc_hook(ifindex), o)
    if rc < 0:
        return 0
    return int(o.prog_id)


def tc_detach(ifindex: int, ifname: str) -> None:
    L = lib()
    rc = L.lib.bpf_tc_detach(_tc_hook(ifindex), _tc_opts())
    if rc < 0 and rc not in (-errno_mod.ENOENT, -errno_mod.EINVAL, -errno_mod.ENODEV):
        _check(rc, f"tc detach on {ifname}")


def xdp_attach(ifindex: int, ifname: str, prog_fd: int, old_prog_fd: int = -1, flags: int = 0) -> None:
    """Attach (netlink, survives the process); atomic replacement with XDP_FLAGS_REPLACE."""
    L = lib()
    ffi = L.ffi
    o = ffi.new("struct bpf_xdp_attach_opts *")
    o.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
    o.old_prog_fd = old_prog_fd if old_prog_fd >= 0 else 0
    if old_prog_fd >= 0:
        flags |= XDP_FLAGS_REPLACE
    _check(L.lib.bpf_xdp_attach(ifindex, prog_fd, flags, o if old_prog_fd >= 0 else ffi.NULL),
           f"xdp attach on {ifname}")


def xdp_query(ifindex: int) -> int:
    L = lib()
    pid = L.ffi.new("__u32 *")
    rc = L.lib.bpf_xdp_query_id(ifindex, 0, pid)
    if rc < 0:
        return 0
    return int(pid[0])


def xdp_detach(ifindex: int, ifname: str) -> None:
    L = lib()
    rc = L.lib.bpf_xdp_detach(ifindex, 0, L.ffi.NULL)
    if rc < 0 and rc not in (-errno_mod.ENOENT, -errno_mod.ENODEV):
        _check(rc, f"xdp detach on {ifname}")


def prog_fd_by_id(pid: int) -> int:
    return _check(lib().lib.bpf_prog_get_fd_by_id(pid), f"prog fd of id {pid}")


# ------------------------------------------------------------- layout migration
#
# What reconciler/drivers/bpf_migrate.py needs: the BTF the kernel keeps for each
# pinned map (so the layout of pins made by another lbctl can be read from the
# pins themselves), the BTF type of each map of an object, and raw access to
# maps whose layout cffi does not know (byte arrays of the sizes the kernel gives).

_LIBBPF_CDEF += """
struct btf_array { __u32 type; __u32 index_type; __u32 nelems; };
struct lbctl_map_info_btf { __u32 type; __u32 id; __u32 key_size; __u32 value_size; __u32 max_entries;
                            __u32 map_flags; char name[16]; __u32 ifindex; __u32 btf_vmlinux_value_type_id;
                            __u64 netns_dev; __u64 netns_ino; __u32 btf_id; __u32 btf_key_type_id;
                            __u32 btf_value_type_id; __u32 pad; __u64 map_extra; };
struct btf *btf__load_from_kernel_by_id(__u32 id);
void btf__free(struct btf *btf);
"""  # bpf_map__btf_key_type_id / _value_type_id are declared with the layout checks above

_BTF_INT, _BTF_ARRAY, _BTF_STRUCT, _BTF_UNION, _BTF_ENUM = 1, 3, 4, 5, 6
_BTF_MODIFIERS = frozenset({8, 9, 10, 11, 18})  # typedef, volatile, const, restrict, type tag

# A type as the converter compares it: ("int", size) | ("array", size, elem, n) |
# ("struct", size, ((member, byte offset, shape), ...)) | ("other", kind, size) | ("unknown", size).
Shape = tuple[Any, ...]


@dataclass(frozen=True)
class MapLayout:
    """What a map is: its definition and the shapes of its key and value."""

    type: int
    key_size: int
    value_size: int
    max_entries: int
    key: Shape
    value: Shape


def _btf_shape(btf: Any, tid: int, size_if_void: int) -> Shape:
    L = lib()
    ffi, c = L.ffi, L.lib
    if tid == 0:
        return ("unknown", size_if_void)
    t = c.btf__type_by_id(btf, tid)
    kind = (t.info >> 24) & 0x1F
    if kind in _BTF_MODIFIERS:
        return _btf_shape(btf, int(t.size), size_if_void)  # t.size is the union's 'type'
    if kind in (_BTF_INT, _BTF_ENUM):
        return ("int", int(t.size))
    if kind == _BTF_ARRAY:
        arr = ffi.cast("struct btf_array *", t + 1)
        elem = _btf_shape(btf, int(arr.type), 0)
        return ("array", elem[1] * int(arr.nelems), elem, int(arr.nelems))
    if kind in (_BTF_STRUCT, _BTF_UNION):
        kflag = t.info >> 31
        members = ffi.cast("struct btf_member *", t + 1)
        out = []
        for i in range(t.info & 0xFFFF):
            mem = members[i]
            name = ffi.string(c.btf__name_by_offset(btf, mem.name_off)).decode()
            bits = mem.offset & 0xFFFFFF if kflag else mem.offset
            out.append((name, int(bits) // 8, _btf_shape(btf, int(mem.type), 0)))
        return ("struct" if kind == _BTF_STRUCT else "union", int(t.size), tuple(out))
    return ("other", kind, int(t.size))


def pinned_map_layout(fd: int) -> MapLayout:
    """The layout of the map behind ``fd``, read from the BTF the kernel keeps for it."""
    L = lib()
    ffi, c = L.ffi, L.lib
    info = ffi.new("struct lbctl_map_info_btf *")
    ln = ffi.new("__u32 *", ffi.sizeof("struct lbctl_map_info_btf"))
    _check(c.bpf_obj_get_info_by_fd(fd, info, ln), "bpf_obj_get_info_by_fd(map)")
    ks, vs = int(info.key_size), int(info.value_size)
    key: Shape = ("unknown", ks)
    value: Shape = ("unknown", vs)
    if info.btf_id:
        btf = c.btf__load_from_kernel_by_id(info.btf_id)
        if btf == ffi.NULL:
            raise BpfError(f"BTF {int(info.btf_id)} of map id {int(info.id)}", ffi.errno or errno_mod.ENOENT)
        try:
            key = _btf_shape(btf, int(info.btf_key_type_id), ks)
            value = _btf_shape(btf, int(info.btf_value_type_id), vs)
        finally:
            c.btf__free(btf)
    return MapLayout(int(info.type), ks, vs, int(info.max_entries), key, value)


def object_map_layout(obj: BpfObject, name: str) -> MapLayout:
    """The layout the opened (not necessarily loaded) object declares for map ``name``."""
    L = lib()
    c = L.lib
    m = obj.map_ptr(name)
    typ, ks, vs, n = obj.map_def(name)
    btf = c.bpf_object__btf(obj.obj)
    if btf == L.ffi.NULL:
        raise LayoutError(f"{obj.path} has no BTF; build it with clang -g")
    return MapLayout(typ, ks, vs, n, _btf_shape(btf, int(c.bpf_map__btf_key_type_id(m)), ks),
                     _btf_shape(btf, int(c.bpf_map__btf_value_type_id(m)), vs))


def raw_map(name: str, fd: int, key_size: int, value_size: int, percpu: bool) -> Map:
    """A ``Map`` of plain bytes, for maps of a layout cffi does not know (use the *_raw calls)."""
    return Map(name, fd, MapSpec(f"__u8[{key_size}]", f"__u8[{value_size}]", percpu))


def write_raw_all_cpus(m: Map, items: list[tuple[bytes, bytes]], per_call: int = 4096) -> None:
    """Write (key, value) pairs whose values already hold every CPU (``buf_size`` bytes each)
    with BPF_MAP_UPDATE_BATCH."""
    ffi = m.ffi
    opts = ffi.new("struct bpf_map_batch_opts *", {"sz": ffi.sizeof("struct bpf_map_batch_opts")})
    for lo in range(0, len(items), per_call):
        part = items[lo : lo + per_call]
        count = ffi.new("__u32 *", len(part))
        rc = lib().lib.bpf_map_update_batch(m.fd, b"".join(k for k, _ in part), b"".join(v for _, v in part),
                                             count, opts)
        m.writes += int(count[0]) if rc < 0 else len(part)
        _check(rc, f"update_batch of map {m.name}")


def update_raw_all_cpus(m: Map, key: bytes, value: bytes, flags: int) -> bool:
    """Write one entry (``value`` holds every CPU) with ``flags``; False when BPF_NOEXIST found
    the key present or BPF_EXIST found it absent."""
    rc = lib().lib.bpf_map_update_elem(m.fd, key, value, flags)
    if flags != BPF_ANY and rc in (-errno_mod.EEXIST, -errno_mod.ENOENT):
        return False
    _check(rc, f"update of map {m.name}")
    m.writes += 1
    return True
