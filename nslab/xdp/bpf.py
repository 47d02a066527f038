"""The bpf(2) system call from Python (ctypes), only the commands the kit
needs: get a pinned object, run a program on a packet (BPF_PROG_TEST_RUN),
read and write maps, create small maps and load tiny hand-assembled programs.

Why raw syscalls and not libbpf through ctypes: the grader runs test packets
from its own process with nothing between it and the kernel; libbpf's
`bpf_object` API needs option structs whose layout changes between releases,
and its AF_XDP ring helpers are static inline (not callable through ctypes).
The attr layouts below are the kernel's stable UAPI (linux/bpf.h).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
from dataclasses import dataclass

from nslab.errors import NslabError

_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280}.get(platform.machine(), 321)
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

MAP_CREATE, MAP_LOOKUP, MAP_UPDATE, MAP_DELETE, MAP_NEXT_KEY, PROG_LOAD = 0, 1, 2, 3, 4, 5
OBJ_GET, PROG_TEST_RUN, OBJ_GET_INFO_BY_FD = 7, 10, 15
PROG_TYPE_XDP = 6
MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_DEVMAP, MAP_XSKMAP = 2, 6, 14, 17
PERCPU_TYPES = {5, 6, 10}  # percpu hash, percpu array, lru percpu hash
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
VERDICTS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
ATTR_SIZE = 128


class BpfError(NslabError):
    def __init__(self, what: str, err: int, log: str = ""):
        self.errno, self.log = err, log
        super().__init__(f"{what}: {os.strerror(err)}" + (f"\n{log}" if log else ""))


def _ptr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def sys_bpf(cmd: int, attr: bytes | bytearray, what: str) -> tuple[int, bytearray]:
    """bpf(cmd, attr): returns (result, attr as the kernel left it)."""
    buf = ctypes.create_string_buffer(bytes(attr).ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    r = _libc.syscall(_NR_BPF, cmd, buf, ATTR_SIZE)
    if r < 0:
        raise BpfError(what, ctypes.get_errno())
    return r, bytearray(buf.raw)


def obj_get(path: str) -> int:
    """An fd for a program or map pinned in a bpffs at `path`."""
    p = ctypes.create_string_buffer(path.encode())
    fd, _ = sys_bpf(OBJ_GET, struct.pack("=QII", _ptr(p), 0, 0), f"open pinned {path}")
    return fd


@dataclass
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(80)
    sys_bpf(OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, 80, _ptr(info)), "map info")
    t, i, ks, vs, me, _fl = struct.unpack_from("=6I", info.raw)
    name = info.raw[24:40].split(b"\0")[0].decode()
    return MapInfo(t, i, ks, vs, me, name)


def prog_id(fd: int) -> int:
    info = ctypes.create_string_buffer(256)
    sys_bpf(OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, 256, _ptr(info)), "program info")
    return struct.unpack_from("=I", info.raw, 4)[0]


def possible_cpus() -> int:
    """How many slots a per-CPU map value has (the kernel's possible CPUs)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


class Map:
    """A BPF map by fd: `get(key)`, `set(key, value)`, `delete(key)`, `keys()`.
    Keys and values are bytes; a per-CPU map's value is a list of bytes, one per CPU."""

    def __init__(self, fd: int, name: str = ""):
        self.fd = fd
        self.info = map_info(fd)
        self.name = name or self.info.name
        self.percpu = self.info.type in PERCPU_TYPES
        self._vslot = (self.info.value_size + 7) // 8 * 8
        self._ncpu = possible_cpus() if self.percpu else 1

    def _vbuf(self) -> ctypes.Array:
        return ctypes.create_string_buffer(
            self._vslot * self._ncpu if self.percpu else self.info.value_size
        )

    def _key(self, key: bytes) -> ctypes.Array:
        if len(key) != self.info.key_size:
            raise NslabError(
                f"map {self.name}: keys are {self.info.key_size} bytes, got {len(key)}"
            )
        return ctypes.create_string_buffer(key, len(key))

    def get(self, key: bytes) -> bytes | list[bytes] | None:
        k, v = self._key(key), self._vbuf()
        try:
            sys_bpf(MAP_LOOKUP, struct.pack("=IIQQQ", self.fd, 0, _ptr(k), _ptr(v), 0), "lookup")
        except BpfError as exc:
            if exc.errno == 2:  # ENOENT
                return None
            raise
        if self.percpu:
            vs = self.info.value_size
            return [v.raw[i * self._vslot : i * self._vslot + vs] for i in range(self._ncpu)]
        return v.raw

    def set(self, key: bytes, value: bytes, flags: int = 0) -> None:
        k = self._key(key)
        if self.percpu:
            value = b"".join(value.ljust(self._vslot, b"\0") for _ in range(self._ncpu))
        elif len(value) != self.info.value_size:
            raise NslabError(
                f"map {self.name}: values are {self.info.value_size} bytes, got {len(value)}"
            )
        v = ctypes.create_string_buffer(value, len(value))
        sys_bpf(
            MAP_UPDATE,
            struct.pack("=IIQQQ", self.fd, 0, _ptr(k), _ptr(v), flags),
            f"update map {self.name}",
        )

    def delete(self, key: bytes) -> None:
        k = self._key(key)
        sys_bpf(MAP_DELETE, struct.pack("=IIQQQ", self.fd, 0, _ptr(k), 0, 0), "delete")

    def keys(self, limit: int = 1 << 20) -> list[bytes]:
        out: list[bytes] = []
        cur: ctypes.Array | None = None
        nxt = ctypes.create_string_buffer(self.info.key_size)
        while len(out) < limit:
            try:
                sys_bpf(
                    MAP_NEXT_KEY,
                    struct.pack("=IIQQQ", self.fd, 0, _ptr(cur), _ptr(nxt), 0),
                    "next key",
                )
            except BpfError as exc:
                if exc.errno == 2:
                    break
                raise
            out.append(nxt.raw)
            cur = ctypes.create_string_buffer(nxt.raw, self.info.key_size)
        return out

    def items(self) -> list[tuple[bytes, bytes | list[bytes] | None]]:
        return [(k, self.get(k)) for k in self.keys()]

    def u64_sum(self, key: bytes) -> int:
        """A counter's value: a per-CPU map's slots summed (the first 8 bytes)."""
        v = self.get(key)
        if v is None:
            return 0
        vals = v if isinstance(v, list) else [v]
        return sum(int.from_bytes(x[:8], "little") for x in vals)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class RunResult:
    verdict: int
    data: bytes
    duration_ns: int

    @property
    def name(self) -> str:
        return VERDICTS.get(self.verdict, f"unknown verdict {self.verdict}")


def test_run(prog_fd: int, packet: bytes, repeat: int = 1) -> RunResult:
    """BPF_PROG_TEST_RUN: the program's verdict on `packet` and the packet as
    the program left it (rewrites, head/tail adjustments)."""
    din = ctypes.create_string_buffer(bytes(packet), len(packet))
    dout = ctypes.create_string_buffer(len(packet) + 512)
    attr = struct.pack(
        "=IIIIQQII", prog_fd, 0, len(packet), len(dout), _ptr(din), _ptr(dout), repeat, 0
    )
    _, out = sys_bpf(PROG_TEST_RUN, attr, "BPF_PROG_TEST_RUN")
    retval, _, size_out = struct.unpack_from("=III", out, 4)
    duration = struct.unpack_from("=I", out, 36)[0]
    return RunResult(retval, dout.raw[:size_out], duration)


def map_create(map_type: int, key_size: int, value_size: int, entries: int, name: str) -> int:
    attr = struct.pack("=6I", map_type, key_size, value_size, entries, 0, 0)
    attr += struct.pack("=I", 0) + name.encode()[:15].ljust(16, b"\0")
    fd, _ = sys_bpf(MAP_CREATE, attr, f"create map {name}")
    return fd


# -- tiny programs, assembled by hand (no compiler needed at run time) -------
def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("=BBhi", code, (src << 4) | dst, off, imm)


def _ld_map_fd(dst: int, fd: int) -> bytes:
    return _insn(0x18, dst, 1, 0, fd) + _insn(0, 0, 0, 0, 0)  # BPF_PSEUDO_MAP_FD


def insns_return(verdict: int) -> bytes:
    """r0 = verdict; exit."""
    return _insn(0xB7, 0, imm=verdict) + _insn(0x95)


def insns_redirect(ifindex: int) -> bytes:
    """return bpf_redirect(ifindex, 0)."""
    return _insn(0xB7, 1, imm=ifindex) + _insn(0xB7, 2, imm=0) + _insn(0x85, imm=23) + _insn(0x95)


def insns_to_xsk(xskmap_fd: int) -> bytes:
    """return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS): frames
    of a queue without a socket go on to the kernel."""
    return (
        _insn(0x61, 2, 1, 16)  # r2 = ctx->rx_queue_index
        + _ld_map_fd(1, xskmap_fd)
        + _insn(0xB7, 3, imm=XDP_PASS)
        + _insn(0x85, imm=51)  # bpf_redirect_map
        + _insn(0x95)
    )


def prog_load(insns: bytes, name: str, prog_type: int = PROG_TYPE_XDP) -> int:
    prog = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = struct.pack(
        "=IIQQIIQII",
        prog_type,
        len(insns) // 8,
        _ptr(prog),
        _ptr(lic),
        1,
        len(log),
        _ptr(log),
        0,
        0,
    )
    attr += name.encode()[:15].ljust(16, b"\0")
    try:
        fd, _ = sys_bpf(PROG_LOAD, attr, f"load program {name}")
    except BpfError as exc:
        raise BpfError(
            f"load program {name}", exc.errno, log.value.decode(errors="replace")
        ) from None
    return fd
