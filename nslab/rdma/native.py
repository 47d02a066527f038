"""The soft provider with its data path in native code (nslab/rdma/_softnic.c).

Same verbs names and behaviour as nslab.rdma.soft (which stays the readable
reference of the transport); here Python keeps the control path (QP state
changes, memory registration, the CM) and the C engine runs the data path in
a thread of its own, outside the GIL. Completions land in a ring in memory
that `CQ.poll` reads without a system call.

Which data path a Context gets: `Context(..., native=True|False)`, else
NSLAB_RDMA_NATIVE=1|0, else native where the extension built. `info()` says
which and why (for `nslab doctor`).
"""

from __future__ import annotations

import collections
import errno
import importlib
import os
import random
import socket
import struct
import threading
import time

from nslab.rdma import enums as e
from nslab.rdma import soft
from nslab.rdma import wire as w
from nslab.rdma.soft import (  # noqa: F401  (the verbs names of this provider)
    SGE,
    WC,
    AHAttr,
    GlobalRoute,
    QPAttr,
    QPCap,
    QPInitAttr,
    RecvWR,
    SendWR,
    VerbsError,
)

try:  # the compiled extension, by name: it may not have been built
    _softnic = importlib.import_module("nslab.rdma._softnic")

    BUILD_ERROR = ""
except ImportError as exc:  # not built: no compiler at install time, or a Python mismatch
    _softnic = None
    BUILD_ERROR = f"{type(exc).__name__}: {exc}"

_ENTRY = struct.Struct("<Q7I")
SPIN_S = 0.005  # poll_wait(busy=True) spins this long, then blocks
_U64 = struct.Struct("<Q")
_OPS = (e.IBV_WR_SEND, e.IBV_WR_SEND_WITH_IMM, e.IBV_WR_RDMA_WRITE, e.IBV_WR_RDMA_WRITE_WITH_IMM, e.IBV_WR_RDMA_READ)  # fmt: skip


def available() -> bool:
    return _softnic is not None


def wanted(arg: bool | None = None) -> bool:
    """Whether a new Context gets the native data path."""
    raw = os.environ.get("NSLAB_RDMA_NATIVE", "").strip()
    if arg is None and raw:
        if raw not in ("0", "1"):
            raise VerbsError(f"NSLAB_RDMA_NATIVE={raw!r}: expected 1 (native data path) or 0 (the Python one)")  # fmt: skip
        arg = raw == "1"
    if arg and not available():
        raise VerbsError(
            f"the native RDMA data path was asked for but is not built ({BUILD_ERROR}); "
            "reinstall with gcc and python3-dev present (`pip install -e .`), or set NSLAB_RDMA_NATIVE=0",
            errno.ENOENT,
        )
    return available() if arg is None else bool(arg)


def info() -> dict:
    """{"datapath": "native"|"python", "detail": why} for `nslab doctor`."""
    try:
        nat = wanted()
    except VerbsError as exc:
        return {"datapath": "python", "detail": str(exc)}
    if nat:
        return {"datapath": "native", "detail": "C data path (nslab/rdma/_softnic.c) in its own thread per context; NSLAB_RDMA_NATIVE=0 selects the Python one"}  # fmt: skip
    if not available():
        return {"datapath": "python", "detail": f"the C extension is not built ({BUILD_ERROR}): install gcc and python3-dev, then `pip install -e .`"}  # fmt: skip
    return {"datapath": "python", "detail": "NSLAB_RDMA_NATIVE=0: the Python reference data path"}


def _ip_int(ip: str) -> int:
    return int.from_bytes(socket.inet_aton(ip), "little")  # network order in memory


class Context(soft.Context):
    """A soft RDMA device whose data path is the C engine."""

    def __init__(self, name: str = "soft0", addr: str = "0.0.0.0", port: int = w.ROCEV2_PORT, rcvbuf: int = 8 << 20, native: bool | None = None):  # fmt: skip
        self.name, self.provider, self.datapath = name, "soft", "native"
        self.rx_spin_s = soft._rx_spin_s()
        self._closed = False
        self.sock = soft.open_socket(addr, port, rcvbuf)
        self.addr = addr
        self.port = self.sock.getsockname()[1]
        self.lock = threading.RLock()  # the control path's (keys, QPNs); the data path has its own
        self.qps: dict[int, QP] = {}
        self.mrs_l: dict[int, MR] = {}
        self.mrs_r: dict[int, MR] = {}
        self._pds = 0
        gso = os.environ.get("NSLAB_RDMA_GSO", "1") != "0"
        try:
            self.engine = _softnic.Engine(self.sock.fileno(), self.port, self.rx_spin_s * 1e6, gso)
        except Exception:
            self.sock.close()
            raise

    @property
    def stats(self) -> collections.Counter:
        """The data path's counters (a snapshot), with the Python provider's names."""
        d = self.engine.stats()
        d.pop("_offloads", None)
        return collections.Counter(d)

    def offloads(self) -> dict:
        """Whether UDP GSO (send) and GRO (receive) are in use on this socket."""
        return self.engine.stats()["_offloads"]

    @property
    def tx_hook(self):
        return None

    @tx_hook.setter
    def tx_hook(self, value) -> None:
        if value is not None:
            raise VerbsError("tx_hook is a test hook of the Python data path: use Context(native=False)")  # fmt: skip

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.engine.close()
        self.sock.close()

    def progress(self) -> int:
        return self.engine.progress()


class PD(soft.PD):
    def __init__(self, ctx: Context):
        self.ctx = ctx
        with ctx.lock:
            ctx._pds += 1
            self.handle = ctx._pds


class MR(soft.MR):
    """A registered memory region: a bytearray the C engine reads and writes
    directly (READ responses come straight from it)."""

    def __init__(self, pd: PD, length: int, access: int = e.IBV_ACCESS_LOCAL_WRITE):
        if length <= 0:
            raise VerbsError(f"MR length must be positive, got {length}")
        self.pd, self.ctx, self.length, self.access = pd, pd.ctx, length, access
        self._buf = bytearray(length)
        self.mv = memoryview(self._buf)
        with self.ctx.lock:
            self.lkey = soft._new_key(self.ctx.mrs_l)
            self.rkey = soft._new_key(self.ctx.mrs_r)
            self.buf = self.ctx.engine.reg_mr(self._buf, self.lkey, self.rkey, access, pd.handle)
            self.ctx.mrs_l[self.lkey] = self
            self.ctx.mrs_r[self.rkey] = self
        self._open = True

    def close(self) -> None:
        if not getattr(self, "_open", False):
            return
        self._open = False
        with self.ctx.lock:
            self.ctx.mrs_l.pop(self.lkey, None)
            self.ctx.mrs_r.pop(self.rkey, None)
        if not self.ctx._closed:
            self.ctx.engine.dereg_mr(self.lkey)


class CQ(soft.CQ):
    """A completion queue: a ring the engine fills (producer index at byte 0)
    and poll() drains (consumer index at byte 8): no system call, no lock of
    the engine's."""

    def __init__(self, ctx: Context, cqe: int = 256, cq_context=None, channel=None, comp_vector: int = 0):  # fmt: skip
        self.ctx, self.cqe = ctx, cqe
        self.depth = max(256, 2 * cqe)
        self._ring = bytearray(_softnic.CQ_HDR + self.depth * _softnic.CQE_SIZE)
        # The consumer index is published with one 8-byte store: struct's
        # pack_into zeroes its target before writing, and the engine thread,
        # reading 0 meanwhile, took the ring for full and dropped a completion.
        self._u64 = memoryview(self._ring).cast("Q")
        self.idx = ctx.engine.cq_create(self._ring)
        self._cons = 0
        self._lock = threading.Lock()  # application threads that poll the same CQ

    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        ring = self._ring
        prod = _U64.unpack_from(ring, 0)[0]
        if prod == self._cons:
            return 0, []
        with self._lock:
            cons, out = self._cons, []
            end = min(prod, cons + num_entries)
            hdr, size, depth = _softnic.CQ_HDR, _softnic.CQE_SIZE, self.depth
            while cons < end:
                f = _ENTRY.unpack_from(ring, hdr + (cons % depth) * size)
                out.append(WC(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]))
                cons += 1
            self._cons = cons
            self._u64[1] = cons
        return len(out), out

    def poll_wait(self, num_entries: int = 1, timeout: float = 5.0, busy: bool = False) -> list[WC]:
        """Wait for completions. busy=True spins (in C, without the GIL,
        receiving in this thread: no wake-up on the way) for up to SPIN_S,
        then blocks like busy=False does (a bounded spin: on a shared
        machine a long spin takes the CPU the peer needs)."""
        out: list[WC] = []
        end = time.monotonic() + timeout
        eng = self.ctx.engine
        spin = busy
        while True:
            out += self.poll(num_entries - len(out))[1]
            if len(out) >= num_entries:
                return out
            left = end - time.monotonic()
            if left <= 0:
                return out
            if spin:
                spin = eng.cq_spin(self.idx, self._cons, min(left, SPIN_S))
                continue
            eng.cq_wait(self.idx, self._cons, min(left, 0.05))  # sleeps until the ring passes _cons

    def close(self) -> None:
        if not self.ctx._closed and getattr(self, "idx", None) is not None:
            self.ctx.engine.cq_destroy(self.idx)
            self.idx = None


class QP(soft.QP):
    """A Reliable Connected queue pair whose transport runs in the engine."""

    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None):
        self._take_init_attr(pd, init_attr)
        self._state = e.IBV_QPS_RESET
        self.mtu, self.dest_qp_num, self.remote = 1024, 0, None
        with self.ctx.lock:
            while True:
                qpn = random.randint(0x11, 0xFFFFFF)
                if qpn not in self.ctx.qps:
                    break
            self.qp_num = qpn
            self.ctx.engine.qp_create(qpn, pd.handle, self.scq.idx, self.rcq.idx, self.cap.max_send_wr, self.cap.max_recv_wr, int(bool(self.sq_sig_all)))  # fmt: skip
            self.ctx.qps[qpn] = self
        if qp_attr is not None:
            self.to_init(qp_attr)

    @property
    def qp_state(self) -> int:
        return self.ctx.engine.qp_query(self.qp_num)["qp_state"]

    # the requester's timer settings (tests re-arm them after the CM set-up)
    @property
    def timeout_s(self) -> float:
        return self.ctx.engine.qp_query(self.qp_num)["timeout_ns"] / 1e9

    @timeout_s.setter
    def timeout_s(self, s: float) -> None:
        self.ctx.engine.qp_set(self.qp_num, max(1, int(s * 1e9)), -1)

    @property
    def retry_cnt(self) -> int:
        return self.ctx.engine.qp_query(self.qp_num)["retry_cnt"]

    @retry_cnt.setter
    def retry_cnt(self, n: int) -> None:
        self.ctx.engine.qp_set(self.qp_num, 0, int(n))

    _retries_left = retry_cnt

    def close(self) -> None:
        with self.ctx.lock:
            if self.ctx.qps.pop(self.qp_num, None) is not None and not self.ctx._closed:
                self.ctx.engine.qp_destroy(self.qp_num)

    def modify(self, attr: QPAttr, attr_mask: int = 0) -> None:
        eng, qpn = self.ctx.engine, self.qp_num
        new, cur = attr.qp_state, self.qp_state
        if new in (e.IBV_QPS_ERR, e.IBV_QPS_RESET):
            eng.qp_modify(qpn, new)
            return
        if (cur, new) not in soft._VALID:
            raise VerbsError(
                f"QP {qpn:#x}: illegal transition {e.QP_STATE_NAMES.get(cur)} -> "
                f"{e.QP_STATE_NAMES.get(new)} (RESET->INIT->RTR->RTS, or ->ERR/RESET)"
            )
        if new == e.IBV_QPS_INIT:
            eng.qp_modify(qpn, new, access=attr.qp_access_flags)
        elif new == e.IBV_QPS_RTR:
            if attr.path_mtu not in e.MTU_BYTES:
                raise VerbsError(f"path_mtu {attr.path_mtu} is not an IBV_MTU_* value")
            dst = soft._dest_ip(attr)
            if not dst:
                raise VerbsError("to_rtr needs the peer's address: QPAttr.ah_attr.gr.dgid")
            self.mtu = e.MTU_BYTES[attr.path_mtu]
            self.dest_qp_num = attr.dest_qp_num & 0xFFFFFF
            self.remote = (dst, int(attr.dest_port))
            local = soft._source_ip(self.ctx, dst, self.remote[1])
            eng.qp_modify(qpn, new, access=attr.qp_access_flags, mtu=self.mtu, dqpn=self.dest_qp_num, rq_psn=attr.rq_psn & w.PSN_MASK, remote_ip=_ip_int(dst), remote_port=self.remote[1], local_ip=_ip_int(local))  # fmt: skip
        elif new == e.IBV_QPS_RTS:
            t = attr.timeout  # IB: 4.096 us * 2^timeout (0 means infinite; we cap it)
            tmo = 4.096e-6 * (1 << t) if 0 < t < 31 else 2.0
            eng.qp_modify(qpn, new, sq_psn=attr.sq_psn & w.PSN_MASK, timeout_ns=int(tmo * 1e9), retry_cnt=attr.retry_cnt, rnr_retry=attr.rnr_retry, max_rd_atomic=max(1, attr.max_rd_atomic))  # fmt: skip

    def query(self) -> dict:
        q = self.ctx.engine.qp_query(self.qp_num)
        return {"qp_state": q["qp_state"], "qp_num": self.qp_num, "dest_qp_num": self.dest_qp_num, "path_mtu": self.mtu, "sq_psn": q["sq_psn"], "rq_psn": q["rq_psn"]}  # fmt: skip

    def post_send(self, wr: SendWR | list[SendWR], bad_wr=None) -> None:
        wrs = wr if isinstance(wr, list) else [wr]
        out = []
        for r in wrs:
            if r.opcode not in _OPS:
                raise VerbsError(f"opcode {r.opcode} is not supported by the soft provider", errno.EOPNOTSUPP)  # fmt: skip
            sges = r.sg[: r.num_sge] if r.num_sge else r.sg
            if len(sges) > self.cap.max_send_sge:
                raise VerbsError(f"{len(sges)} SGEs > max_send_sge {self.cap.max_send_sge}")
            out.append((r.wr_id, r.opcode, int(bool(r.send_flags & e.IBV_SEND_SIGNALED)), r.imm_data & 0xFFFFFFFF, r.remote_addr, r.rkey & 0xFFFFFFFF, [(s.addr, s.length, s.lkey) for s in sges]))  # fmt: skip
        try:
            self.ctx.engine.post_send(self.qp_num, out)
        except MemoryError:
            raise VerbsError(f"send queue full ({self.cap.max_send_wr} WRs outstanding)", errno.ENOMEM) from None  # fmt: skip
        except ValueError as exc:
            st = e.QP_STATE_NAMES.get(self.qp_state)
            raise VerbsError(f"post_send on QP {self.qp_num:#x} in state {st}: {exc}") from None

    def post_recv(self, wr: RecvWR | list[RecvWR], bad_wr=None) -> None:
        wrs = wr if isinstance(wr, list) else [wr]
        if self.qp_state == e.IBV_QPS_RESET:
            raise VerbsError(f"post_recv on QP {self.qp_num:#x} in RESET (move it to INIT first)")
        out = []
        for r in wrs:
            sges = r.sg[: r.num_sge] if r.num_sge else r.sg
            out.append((r.wr_id, [(s.addr, s.length, s.lkey) for s in sges]))
        try:
            self.ctx.engine.post_recv(self.qp_num, out)
        except MemoryError:
            raise VerbsError(f"receive queue full ({self.cap.max_recv_wr} WRs)", errno.ENOMEM) from None  # fmt: skip


soft.register_accelerated(wanted, Context=Context, PD=PD, MR=MR, CQ=CQ, QP=QP)
