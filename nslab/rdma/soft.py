"""The "soft" provider: a userspace RoCEv2 RC transport over a UDP socket.

It speaks real RoCEv2 (UDP port 4791, BTH/RETH/AETH/ImmDt, ICRC) so tshark and
Wireshark decode its packets, and it runs in any network namespace. The object
model follows pyverbs (Context, PD, MR, CQ, QP, SendWR, RecvWR, SGE, WC).

Threads: each Context owns one background thread (the "NIC"): it receives every
packet, runs the responder side (one-sided READ/WRITE are served there, never
in an application thread), turns ACKs/NAKs/read responses into completions and
fires retransmission timers. Application threads post work requests (which
transmit right away, like ringing a doorbell) and poll CQs. One lock per
Context serialises all transport state.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import random
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable

from nslab.errors import NslabError
from nslab.rdma import enums as e
from nslab.rdma import wire as w

_IP_MTU_DISCOVER = 10
_IP_PMTUDISC_DO = 2
_SO_RCVBUFFORCE = 33
_SO_SNDBUFFORCE = 32
_SOL_UDP = 17
_UDP_SEGMENT = 103

ACK_EVERY = 32  # request an ACK at least every N packets of a long message
MAX_INFLIGHT = 512  # requester window in packets (send/write), a UDP-buffer-sized bound
READ_INFLIGHT_BYTES = 2 << 20  # bytes of outstanding READ responses (receive buffer bound)
RNR_DELAY_S = 0.001
IDLE_WAKE_S = 0.05  # the NIC thread looks at its timers at least this often
BUSY_WAKE_S = 0.002  # ... and this often while an application thread busy-polls
# After it handled packets, the NIC thread keeps polling the socket without
# sleeping for this long: a request/response peer's next packet usually comes
# within a round trip, and catching it here saves the wake-up from poll()
# (like a NIC driver's adaptive/busy polling).
# NSLAB_RDMA_SPIN_US sets it in microseconds (0 turns it off).
RX_SPIN_US_DEFAULT = 200.0


def _rx_spin_s() -> float:
    raw = os.environ.get("NSLAB_RDMA_SPIN_US", "")
    if not raw:
        return RX_SPIN_US_DEFAULT / 1e6
    try:
        us = float(raw)
    except ValueError:
        us = -1.0
    if not 0 <= us <= 1e6:
        raise NslabError(
            f"NSLAB_RDMA_SPIN_US={raw!r}: expected microseconds between 0 and 1000000 "
            f"(0 turns the NIC thread's polling window off; unset = {RX_SPIN_US_DEFAULT:g})"
        )
    return us / 1e6


class VerbsError(NslabError):
    """A verbs call failed (like pyverbs' PyverbsRDMAError): carries an errno."""

    def __init__(self, msg: str, error: int = errno.EINVAL):
        self.error = error
        super().__init__(f"{msg} ({errno.errorcode.get(error, error)})")


# --------------------------------------------------------------------------- objects


class GlobalRoute:
    """Where the peer is (pyverbs' GlobalRoute): dgid as an IPv4-mapped GID
    ('::ffff:10.0.0.2') or a plain IPv4 address."""

    def __init__(self, dgid: str = "", sgid_index: int = 0, hop_limit: int = 64):
        self.dgid, self.sgid_index, self.hop_limit = str(dgid), sgid_index, hop_limit


class AHAttr:
    def __init__(self, gr: GlobalRoute | None = None, is_global: int = 1, port_num: int = 1):
        self.gr, self.is_global, self.port_num = gr, is_global, port_num


class QPCap:
    def __init__(self, max_send_wr: int = 128, max_recv_wr: int = 128, max_send_sge: int = 4, max_recv_sge: int = 4, max_inline_data: int = 0):  # fmt: skip
        self.max_send_wr, self.max_recv_wr = max_send_wr, max_recv_wr
        self.max_send_sge, self.max_recv_sge = max_send_sge, max_recv_sge
        self.max_inline_data = max_inline_data


class QPInitAttr:
    def __init__(self, qp_type: int = e.IBV_QPT_RC, scq: CQ | None = None, rcq: CQ | None = None, cap: QPCap | None = None, sq_sig_all: int = 1, srq=None, qp_context=None):  # fmt: skip
        if qp_type != e.IBV_QPT_RC:
            raise VerbsError(
                "the soft provider implements RC QPs only (IBV_QPT_RC)", errno.EOPNOTSUPP
            )
        self.qp_type, self.scq, self.rcq = qp_type, scq, rcq
        self.cap = cap or QPCap()
        self.sq_sig_all = sq_sig_all


class QPAttr:
    """Attributes for QP.modify/to_init/to_rtr/to_rts (pyverbs' QPAttr). The soft
    provider also reads `dest_port` (peer's UDP port, 4791 unless the peer had
    to take another one) and accepts the peer's IPv4 address as ah_attr.gr.dgid."""

    def __init__(self, qp_state: int = e.IBV_QPS_RESET, cur_qp_state: int = e.IBV_QPS_RESET, path_mtu: int = e.IBV_MTU_1024, qp_access_flags: int = 0, dest_qp_num: int = 0, rq_psn: int = 0, sq_psn: int = 0, timeout: int = 14, retry_cnt: int = 7, rnr_retry: int = 7, min_rnr_timer: int = 12, max_rd_atomic: int = 4, max_dest_rd_atomic: int = 4, ah_attr: AHAttr | None = None, dest_port: int = w.ROCEV2_PORT, port_num: int = 1, pkey_index: int = 0):  # fmt: skip
        self.qp_state, self.cur_qp_state, self.path_mtu = qp_state, cur_qp_state, path_mtu
        self.qp_access_flags, self.dest_qp_num = qp_access_flags, dest_qp_num
        self.rq_psn, self.sq_psn = rq_psn, sq_psn
        self.timeout, self.retry_cnt, self.rnr_retry = timeout, retry_cnt, rnr_retry
        self.min_rnr_timer = min_rnr_timer
        self.max_rd_atomic, self.max_dest_rd_atomic = max_rd_atomic, max_dest_rd_atomic
        self.ah_attr, self.dest_port = ah_attr, dest_port
        self.port_num, self.pkey_index = port_num, pkey_index


class SGE:
    def __init__(self, addr: int, length: int, lkey: int):
        self.addr, self.length, self.lkey = addr, length, lkey


class SendWR:
    def __init__(self, wr_id: int = 0, opcode: int = e.IBV_WR_SEND, num_sge: int = 0, imm_data: int = 0, sg: list[SGE] | None = None, send_flags: int = e.IBV_SEND_SIGNALED):  # fmt: skip
        self.wr_id, self.opcode, self.imm_data = wr_id, opcode, imm_data
        self.sg = list(sg or [])
        self.num_sge = num_sge or len(self.sg)
        self.send_flags = send_flags
        self.remote_addr = 0
        self.rkey = 0

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        self.rkey, self.remote_addr = rkey, addr


class RecvWR:
    def __init__(self, wr_id: int = 0, num_sge: int = 0, sg: list[SGE] | None = None):
        self.wr_id = wr_id
        self.sg = list(sg or [])
        self.num_sge = num_sge or len(self.sg)


class WC:
    """A work completion (pyverbs' WC)."""

    __slots__ = ("wr_id", "status", "opcode", "byte_len", "imm_data", "qp_num", "src_qp", "wc_flags", "vendor_err")  # fmt: skip

    def __init__(self, wr_id=0, status=0, opcode=0, byte_len=0, imm_data=0, qp_num=0, src_qp=0, wc_flags=0):  # fmt: skip
        self.wr_id, self.status, self.opcode, self.byte_len = wr_id, status, opcode, byte_len
        self.imm_data, self.qp_num, self.src_qp, self.wc_flags = imm_data, qp_num, src_qp, wc_flags
        self.vendor_err = 0

    def __repr__(self) -> str:
        return (
            f"WC(wr_id={self.wr_id}, status={e.wc_status_str(self.status)}, opcode={self.opcode}, "
            f"byte_len={self.byte_len}, imm_data={self.imm_data})"
        )


# --------------------------------------------------------------------------- context


# The native data path (nslab.rdma.native) registers its classes here when it is
# imported, which `import nslab.rdma` does: this reference provider never imports it.
ACCELERATED: dict[str, type] = {}
_accel_wanted: list[Callable[[bool | None], bool]] = []


def register_accelerated(wanted: Callable[[bool | None], bool], **classes: type) -> None:
    """Called by nslab.rdma.native: its Context, PD, MR, CQ and QP, and whether a
    new Context should get them."""
    ACCELERATED.update(classes)
    _accel_wanted[:] = [wanted]


def _native_wanted(native: bool | None) -> bool:
    if _accel_wanted:
        return _accel_wanted[0](native)
    if native:
        raise VerbsError(
            "the native RDMA data path is not loaded (import nslab.rdma)", errno.ENOENT
        )
    return False


def _is_native(ctx) -> bool:
    return getattr(ctx, "datapath", "python") == "native"


def open_socket(addr: str, port: int, rcvbuf: int) -> socket.socket:
    """The device's UDP socket: port 4791 when free (else an ephemeral one),
    DF on and unconnected (Linux then sends IP ID 0, which the ICRC covers),
    buffers as large as allowed, non-blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, rcvbuf)
        except OSError:  # not root: as much as rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, plain, rcvbuf)
    try:
        sock.bind((addr, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port != w.ROCEV2_PORT:
            sock.close()
            raise VerbsError(
                f"cannot bind UDP {addr}:{port}: {exc.strerror}", exc.errno or 0
            ) from exc
        sock.bind((addr, 0))
    sock.setblocking(False)
    return sock


class Context:
    """A soft RDMA device: one UDP socket (port 4791 when free) and one thread.

    `addr` binds to one local IPv4 address (default: all). If port 4791 is taken
    (another Context in the same namespace), an ephemeral port is used and must
    be told to the peer (the connection helpers do that)."""

    def __new__(cls, *args, native: bool | None = None, **kw):
        # The native data path (nslab.rdma.native) is the default where it
        # built; native=False or NSLAB_RDMA_NATIVE=0 picks this Python one.
        if cls is Context and _native_wanted(native):
            return object.__new__(ACCELERATED["Context"])
        return object.__new__(cls)

    def __init__(self, name: str = "soft0", addr: str = "0.0.0.0", port: int = w.ROCEV2_PORT, rcvbuf: int = 8 << 20, native: bool | None = None):  # fmt: skip
        self.name = name
        self.provider = "soft"
        self.datapath = "python"
        self.rx_spin_s = _rx_spin_s()  # before any resource: a bad value leaks nothing
        self.lock = threading.RLock()
        self.sock = open_socket(addr, port, rcvbuf)
        self.addr = addr
        self.port = self.sock.getsockname()[1]
        self.qps: dict[int, QP] = {}
        self.mrs_l: dict[int, MR] = {}
        self.mrs_r: dict[int, MR] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        # Test hook (there is no netem here): called with each outgoing packet
        # and its address; returns the (packet, address) pairs to really send,
        # so a test can drop, duplicate or reorder. None = send as is.
        self.tx_hook: Callable[[bytes, tuple], Iterable[tuple[bytes, tuple]]] | None = None
        self._closed = False
        self.busy_pollers = 0  # application threads in a busy poll (they drive receive)
        self.gso = os.environ.get("NSLAB_RDMA_GSO", "1") != "0"
        self._sleep_until = float("inf")  # until when the NIC thread sleeps (0: awake)
        self._rxbuf = bytearray(65536)
        self._rxmv = memoryview(self._rxbuf)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._thread = threading.Thread(target=self._run, name=f"rdma-{name}", daemon=True)
        self._thread.start()

    # pyverbs-style lifetime
    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(timeout=2)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def query_port(self, port_num: int = 1) -> dict:
        return {"state": "ACTIVE", "udp_port": self.port, "addr": self.addr}

    # ---- the "NIC" thread
    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        quiet = select.poll()  # while an application thread busy-polls, it receives
        quiet.register(self._wake_r, select.POLLIN)
        wake = self._wake_r
        while not self._closed:
            delay = min(self._next_deadline(), IDLE_WAKE_S)
            if self.busy_pollers:
                delay = min(delay, BUSY_WAKE_S)
            self._sleep_until = time.monotonic() + delay
            events = (quiet if self.busy_pollers else poller).poll(max(0.0, delay) * 1000.0 + 0.5)
            self._sleep_until = 0.0
            if self._closed:
                break
            if any(fd == wake for fd, _ in events):
                try:
                    os.read(wake, 4096)
                except BlockingIOError:
                    pass
            with self.lock:
                got = self._drain()
                self._timers()
            if got and self.rx_spin_s > 0 and not self.busy_pollers:
                self._spin_rx()

    def _spin_rx(self) -> None:
        """Poll the socket without sleeping for rx_spin_s (lock taken per try,
        so application threads can post in between)."""
        now, lock, drain = time.monotonic, self.lock, self._drain
        end = now() + self.rx_spin_s
        while not self._closed and not self.busy_pollers and now() < end:
            with lock:
                drain()

    def _drain(self) -> int:
        """Receive and process what is queued on the socket (caller holds the lock)."""
        buf, mv = self._rxbuf, self._rxmv
        recv = self.sock.recvfrom_into
        count = 0
        for _ in range(256):
            try:
                n, addr = recv(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # closed under us
            count += 1
            try:
                self._on_packet(mv[:n], addr)
            except Exception as exc:  # never let one bad packet kill the NIC
                self.stats["rx_errors"] += 1
                self.last_error = repr(exc)
        return count

    def progress(self) -> int:
        """Drive the transport from the calling thread when the NIC thread is
        not busy (busy polling does this, like a userspace driver's poll_cq:
        it saves a thread hand-off per completion). Returns packets handled."""
        if not self.lock.acquire(blocking=False):
            return 0
        try:
            return self._drain()
        finally:
            self.lock.release()

    def _kick(self) -> None:
        """Wake the NIC thread (a new timer may be due earlier than it thinks)."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _next_deadline(self) -> float:
        # Read without the lock: a stale value only makes one sleep shorter or longer.
        dl = [d for qp in list(self.qps.values()) if (d := qp._deadline) is not None]
        return (min(dl) - time.monotonic()) if dl else IDLE_WAKE_S

    def _timers(self) -> None:
        now = time.monotonic()
        for qp in list(self.qps.values()):
            if qp._deadline is not None and now >= qp._deadline:
                qp._on_timer(now)

    def _on_packet(self, pkt: memoryview, addr: tuple) -> None:
        self.stats["rx_packets"] += 1
        if len(pkt) < 16:
            self.stats["rx_dropped_short"] += 1
            return
        dqpn = ((pkt[5] << 16) | (pkt[6] << 8) | pkt[7]) & 0xFFFFFF
        qp = self.qps.get(dqpn)
        if qp is None:
            self.stats["rx_dropped_no_qp"] += 1
            return
        n = len(pkt)
        # The seed depends on (sender, length): most packets repeat the last one.
        if n == qp._rx_last_n and addr == qp._rx_last_addr:
            seed = qp._rx_last_seed
        else:
            seed = qp._rx_last_seed = qp._rx_seed(addr, n)
            qp._rx_last_addr, qp._rx_last_n = addr, n
        crc = w.icrc(seed, pkt[: n - 4])
        got = w.ICRC.unpack_from(pkt, n - 4)[0]
        if crc != got and (crc ^ got) not in w.id_deltas(n):
            self.stats["rx_dropped_icrc"] += 1
            return
        if pkt[0] == w.READ_RESP_MIDDLE and qp._read_middle(pkt):
            return
        qp._on_packet(pkt, addr)

    def _send_gso(self, pkts: list, seglen: int, addr: tuple) -> bool:
        """Send equal-sized packets (given as header, payload, ICRC parts) in one
        system call (UDP GSO: the kernel
        cuts the buffer into datagrams and numbers their IP IDs 0, 1, ...).
        False when GSO is unavailable (the caller sends one by one)."""
        if not self.gso or self.tx_hook is not None:
            return False
        try:
            self.sock.sendmsg([b"".join(pkts)], [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", seglen))], 0, addr)  # fmt: skip
        except BlockingIOError:
            self.stats["tx_dropped_full"] += len(pkts) // 3
            return True
        except OSError:
            self.gso = False  # an old kernel, or a device without it
            return False
        self.stats["tx_packets"] += len(pkts) // 3
        self.stats["tx_gso_batches"] += 1
        return True

    def _send(self, parts: list, addr: tuple) -> None:
        self.stats["tx_packets"] += 1
        if self.tx_hook is not None:
            for data, a in self.tx_hook(b"".join(bytes(p) for p in parts), addr):
                self.sock.sendto(data, a)
            return
        try:
            self.sock.sendmsg(parts, (), 0, addr)
        except BlockingIOError:
            self.stats["tx_dropped_full"] += 1  # like a full NIC queue: retransmission recovers
        except OSError as exc:
            self.stats["tx_errors"] += 1
            self.last_error = repr(exc)


class PD:
    def __new__(cls, *args, **kw):
        owner = args[0] if args else kw.get("ctx")
        if cls is PD and owner is not None and _is_native(owner):  # the native context's objects
            return object.__new__(ACCELERATED["PD"])
        return object.__new__(cls)

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def __enter__(self) -> PD:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass


def _new_key(taken: dict) -> int:
    while True:
        k = random.getrandbits(32)
        if k and k not in taken:
            return k


class MR:
    """A registered memory region: a buffer with an lkey (local use) and an rkey
    (remote access, checked against `access` by the responder)."""

    def __new__(cls, *args, **kw):
        owner = args[0] if args else kw.get("pd")
        if (
            cls is MR and owner is not None and _is_native(owner.ctx)
        ):  # the native context's objects
            return object.__new__(ACCELERATED["MR"])
        return object.__new__(cls)

    def __init__(self, pd: PD, length: int, access: int = e.IBV_ACCESS_LOCAL_WRITE):
        if length <= 0:
            raise VerbsError(f"MR length must be positive, got {length}")
        self.pd, self.ctx, self.length, self.access = pd, pd.ctx, length, access
        self._buf = bytearray(length)
        self.mv = memoryview(self._buf)  # zero-copy view (soft provider extension)
        self.buf = ctypes.addressof((ctypes.c_char * length).from_buffer(self._buf))
        with self.ctx.lock:
            self.lkey = _new_key(self.ctx.mrs_l)
            self.rkey = _new_key(self.ctx.mrs_r)
            self.ctx.mrs_l[self.lkey] = self
            self.ctx.mrs_r[self.rkey] = self

    def read(self, length: int, offset: int = 0) -> bytes:
        if offset < 0 or offset + length > self.length:
            raise VerbsError(f"MR read [{offset}, {offset + length}) outside [0, {self.length})")
        return bytes(self._buf[offset : offset + length])

    def write(self, data: bytes, length: int | None = None, offset: int = 0) -> None:
        n = len(data) if length is None else length
        if offset < 0 or offset + n > self.length:
            raise VerbsError(f"MR write [{offset}, {offset + n}) outside [0, {self.length})")
        self._buf[offset : offset + n] = data[:n]

    def __enter__(self) -> MR:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self.ctx.lock:
            self.ctx.mrs_l.pop(self.lkey, None)
            self.ctx.mrs_r.pop(self.rkey, None)


class CQ:
    """A completion queue. poll() never blocks (like ibv_poll_cq); poll_wait()
    is a convenience that waits up to `timeout` seconds for `n` completions."""

    def __new__(cls, *args, **kw):
        owner = args[0] if args else kw.get("ctx")
        if cls is CQ and owner is not None and _is_native(owner):  # the native context's objects
            return object.__new__(ACCELERATED["CQ"])
        return object.__new__(cls)

    def __init__(self, ctx: Context, cqe: int = 256, cq_context=None, channel=None, comp_vector: int = 0):  # fmt: skip
        self.ctx, self.cqe = ctx, cqe
        self._q: collections.deque[WC] = collections.deque()
        self._cv = threading.Condition(threading.Lock())

    def _push(self, wc: WC) -> None:
        with self._cv:
            self._q.append(wc)
            self._cv.notify()

    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        q = self._q
        out = []
        while q and len(out) < num_entries:
            out.append(q.popleft())
        return len(out), out

    def poll_wait(self, num_entries: int = 1, timeout: float = 5.0, busy: bool = False) -> list[WC]:
        """Wait until `num_entries` completions are there (or the timeout), and
        return what arrived. busy=True spins (lowest latency, burns a core)."""
        out: list[WC] = []
        end = time.monotonic() + timeout
        q = self._q
        if q and len(q) >= num_entries:
            return [q.popleft() for _ in range(num_entries)]
        if busy:
            self.ctx.busy_pollers += 1
            try:
                return self._spin(out, num_entries, end)
            finally:
                self.ctx.busy_pollers -= 1
        while len(out) < num_entries:
            while q and len(out) < num_entries:
                out.append(q.popleft())
            if len(out) >= num_entries:
                break
            left = end - time.monotonic()
            if left <= 0:
                break
            with self._cv:
                if not q:
                    self._cv.wait(min(left, 0.05))
        return out

    def _spin(self, out: list[WC], num_entries: int, end: float) -> list[WC]:
        q, progress, now = self._q, self.ctx.progress, time.monotonic
        n = 0
        while True:
            while q and len(out) < num_entries:
                out.append(q.popleft())
            if len(out) >= num_entries:
                return out
            if not progress():
                n += 1
                if n & 63 == 0:
                    if now() > end:
                        return out
                    time.sleep(0)  # let other threads (the NIC's timers) run now and then

    def __enter__(self) -> CQ:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass


_VALID = {
    (e.IBV_QPS_RESET, e.IBV_QPS_INIT),
    (e.IBV_QPS_INIT, e.IBV_QPS_INIT),
    (e.IBV_QPS_INIT, e.IBV_QPS_RTR),
    (e.IBV_QPS_RTR, e.IBV_QPS_RTS),
    (e.IBV_QPS_RTS, e.IBV_QPS_RTS),
}


class _SendWQE:
    __slots__ = ("wr_id", "op", "signaled", "data", "length", "raddr", "rkey", "imm", "first_psn", "npkts", "sges", "got", "done")  # fmt: skip


class _RecvWQE:
    __slots__ = ("wr_id", "sges", "cap")


class QP:
    """A Reliable Connected queue pair."""

    def __new__(cls, *args, **kw):
        owner = args[0] if args else kw.get("pd")
        if (
            cls is QP and owner is not None and _is_native(owner.ctx)
        ):  # the native context's objects
            return object.__new__(ACCELERATED["QP"])
        return object.__new__(cls)

    def _take_init_attr(self, pd: PD, init_attr: QPInitAttr) -> None:
        """What every QP keeps of its creation (the native one too)."""
        if init_attr.scq is None or init_attr.rcq is None:
            raise VerbsError("QPInitAttr needs scq and rcq (completion queues)")
        self.pd, self.ctx = pd, pd.ctx
        self.qp_type = init_attr.qp_type
        self.scq, self.rcq = init_attr.scq, init_attr.rcq
        self.cap = init_attr.cap
        self.sq_sig_all = init_attr.sq_sig_all

    def __init__(self, pd: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None):
        self._take_init_attr(pd, init_attr)
        self.qp_state = e.IBV_QPS_RESET
        self.access = 0
        self.mtu = 1024
        self.dest_qp_num = 0
        self.remote: tuple[str, int] | None = None
        self._seeds: dict = {}
        self._rxseeds: dict = {}
        self._rx_last_addr: tuple | None = None
        self._rx_last_n = -1
        self._rx_last_seed = 0
        self._deadline: float | None = None
        self._reset_transport()
        with self.ctx.lock:
            while True:
                qpn = random.randint(0x11, 0xFFFFFF)
                if qpn not in self.ctx.qps:
                    break
            self.qp_num = qpn
            self.ctx.qps[qpn] = self
        if qp_attr is not None:
            self.to_init(qp_attr)

    def _reset_transport(self) -> None:
        # requester
        self._sq: list[_SendWQE] = []
        self.snd_nxt = 0  # next PSN to transmit
        self.snd_una = 0  # oldest PSN not yet acknowledged
        self.next_psn = 0  # PSN the next posted WR gets
        self.retry_cnt = 7
        self.rnr_retry = 7
        self._retries_left = 7
        self._rnr_left = 7
        self.timeout_s = 0.067
        self._read_retry_psn: int | None = None
        self.max_rd_atomic = 4
        # responder
        self._rq: collections.deque[_RecvWQE] = collections.deque()
        self.epsn = 0
        self.msn = 0
        self._nak_sent = False
        self._cur_recv: _RecvWQE | None = None
        self._cur_recv_off = 0
        self._cur_write: tuple[MR, int, int] | None = None  # (mr, offset, bytes left)

    def __enter__(self) -> QP:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self.ctx.lock:
            self.ctx.qps.pop(self.qp_num, None)
            self._deadline = None

    # ---- state machine
    def modify(self, attr: QPAttr, attr_mask: int = 0) -> None:
        with self.ctx.lock:
            new, cur = attr.qp_state, self.qp_state
            if new == e.IBV_QPS_ERR:
                self._to_error()
                return
            if new == e.IBV_QPS_RESET:
                self.qp_state = e.IBV_QPS_RESET
                self._deadline = None
                self._reset_transport()
                return
            if (cur, new) not in _VALID:
                raise VerbsError(
                    f"QP {self.qp_num:#x}: illegal transition {e.QP_STATE_NAMES.get(cur)} -> "
                    f"{e.QP_STATE_NAMES.get(new)} (RESET->INIT->RTR->RTS, or ->ERR/RESET)"
                )
            if new == e.IBV_QPS_INIT:
                self.access = attr.qp_access_flags
            elif new == e.IBV_QPS_RTR:
                if attr.path_mtu not in e.MTU_BYTES:
                    raise VerbsError(f"path_mtu {attr.path_mtu} is not an IBV_MTU_* value")
                self.mtu = e.MTU_BYTES[attr.path_mtu]
                self.dest_qp_num = attr.dest_qp_num & 0xFFFFFF
                self.epsn = attr.rq_psn & w.PSN_MASK
                dst = _dest_ip(attr)
                if not dst:
                    raise VerbsError("to_rtr needs the peer's address: QPAttr.ah_attr.gr.dgid")
                self.remote = (dst, int(attr.dest_port))
                self._local_ip = _source_ip(self.ctx, dst, self.remote[1])
                self._seeds.clear()
                self._rxseeds.clear()
                self._rx_last_addr, self._rx_last_n = None, -1
                if attr.qp_access_flags:
                    self.access = attr.qp_access_flags
            elif new == e.IBV_QPS_RTS and cur == e.IBV_QPS_RTR:
                psn = attr.sq_psn & w.PSN_MASK
                self.snd_nxt = self.snd_una = self.next_psn = psn
                self.retry_cnt = self._retries_left = attr.retry_cnt
                self.rnr_retry = self._rnr_left = attr.rnr_retry
                # IB: timeout = 4.096 us * 2^timeout (0 means infinite; we cap it).
                t = attr.timeout
                self.timeout_s = 4.096e-6 * (1 << t) if 0 < t < 31 else 2.0
                self.max_rd_atomic = max(1, attr.max_rd_atomic)
            self.qp_state = new

    def to_init(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_INIT
        self.modify(attr)

    def to_rtr(self, attr: QPAttr) -> None:
        attr.qp_state = e.IBV_QPS_RTR
        self.modify(attr)

    def to_rts(self, attr: QPAttr) -> None:
        if self.qp_state == e.IBV_QPS_INIT:
            self.to_rtr(attr)
        attr.qp_state = e.IBV_QPS_RTS
        self.modify(attr)

    def query(self) -> dict:
        return {"qp_state": self.qp_state, "qp_num": self.qp_num, "dest_qp_num": self.dest_qp_num, "path_mtu": self.mtu, "sq_psn": self.next_psn, "rq_psn": self.epsn}  # fmt: skip

    def _to_error(self) -> None:
        """Move to ERR and flush every outstanding work request."""
        self.qp_state = e.IBV_QPS_ERR
        self._deadline = None
        for wqe in self._sq:
            self._complete_send(wqe, e.IBV_WC_WR_FLUSH_ERR, force=True)
        self._sq.clear()
        rq = list(self._rq)
        if self._cur_recv is not None:
            rq.insert(0, self._cur_recv)
            self._cur_recv = None
        self._rq.clear()
        for r in rq:
            self.rcq._push(WC(r.wr_id, e.IBV_WC_WR_FLUSH_ERR, e.IBV_WC_RECV, 0, 0, self.qp_num, self.dest_qp_num))  # fmt: skip

    # ---- posting
    def _gather(self, sges: list[SGE], need_write: bool) -> list[tuple[MR, int, int]] | None:
        out = []
        for s in sges:
            mr = self.ctx.mrs_l.get(s.lkey)
            if mr is None or mr.pd is not self.pd:
                return None
            off = s.addr - mr.buf
            if off < 0 or off + s.length > mr.length:
                return None
            if need_write and not (mr.access & e.IBV_ACCESS_LOCAL_WRITE):
                return None
            out.append((mr, off, s.length))
        return out

    def post_send(self, wr: SendWR | list[SendWR], bad_wr=None) -> None:
        wrs = wr if isinstance(wr, list) else [wr]
        with self.ctx.lock:
            st = self.qp_state
            if st not in (e.IBV_QPS_RTS, e.IBV_QPS_ERR):
                raise VerbsError(f"post_send on QP {self.qp_num:#x} in state {e.QP_STATE_NAMES[st]} (needs RTS)")  # fmt: skip
            if len(self._sq) + len(wrs) > self.cap.max_send_wr:
                raise VerbsError(f"send queue full ({self.cap.max_send_wr} WRs outstanding)", errno.ENOMEM)  # fmt: skip
            for r in wrs:
                self._post_one(r)
            self._pump()

    def _post_one(self, r: SendWR) -> None:
        q = _SendWQE()
        q.wr_id, q.op, q.imm, q.done, q.got = r.wr_id, r.opcode, r.imm_data, False, 0
        q.signaled = bool(self.sq_sig_all or (r.send_flags & e.IBV_SEND_SIGNALED))
        q.raddr, q.rkey = r.remote_addr, r.rkey
        sges = r.sg[: r.num_sge] if r.num_sge else r.sg
        if len(sges) > self.cap.max_send_sge:
            raise VerbsError(f"{len(sges)} SGEs > max_send_sge {self.cap.max_send_sge}")
        is_read = r.opcode == e.IBV_WR_RDMA_READ
        if r.opcode not in (e.IBV_WR_SEND, e.IBV_WR_SEND_WITH_IMM, e.IBV_WR_RDMA_WRITE, e.IBV_WR_RDMA_WRITE_WITH_IMM, e.IBV_WR_RDMA_READ):  # fmt: skip
            raise VerbsError(f"opcode {r.opcode} is not supported by the soft provider", errno.EOPNOTSUPP)  # fmt: skip
        g = self._gather(sges, need_write=is_read)
        q.first_psn, q.npkts = self.next_psn, 1
        if self.qp_state == e.IBV_QPS_ERR or g is None:
            q.length, q.sges, q.data = 0, [], b""
            status = (
                e.IBV_WC_WR_FLUSH_ERR if self.qp_state == e.IBV_QPS_ERR else e.IBV_WC_LOC_PROT_ERR
            )
            self._complete_send(q, status, force=True)
            if status != e.IBV_WC_WR_FLUSH_ERR:
                self._to_error()
            return
        q.length = sum(n for _, _, n in g)
        q.sges = g
        if is_read:
            q.data = b""
        elif len(g) == 1:
            mr, off, n = g[0]
            q.data = mr.mv[off : off + n]  # read at transmit time, like a NIC's DMA
        else:
            q.data = memoryview(b"".join(mr.mv[off : off + n] for mr, off, n in g))
        q.npkts = max(1, -(-q.length // self.mtu))
        self.next_psn = w.psn_add(self.next_psn, q.npkts)
        self._sq.append(q)

    def post_recv(self, wr: RecvWR | list[RecvWR], bad_wr=None) -> None:
        wrs = wr if isinstance(wr, list) else [wr]
        with self.ctx.lock:
            if self.qp_state == e.IBV_QPS_RESET:
                raise VerbsError(
                    f"post_recv on QP {self.qp_num:#x} in RESET (move it to INIT first)"
                )
            if len(self._rq) + len(wrs) > self.cap.max_recv_wr:
                raise VerbsError(f"receive queue full ({self.cap.max_recv_wr} WRs)", errno.ENOMEM)
            for r in wrs:
                q = _RecvWQE()
                q.wr_id = r.wr_id
                sges = r.sg[: r.num_sge] if r.num_sge else r.sg
                g = self._gather(sges, need_write=True)
                if self.qp_state == e.IBV_QPS_ERR or g is None:
                    st = e.IBV_WC_WR_FLUSH_ERR if g is not None else e.IBV_WC_LOC_PROT_ERR
                    self.rcq._push(
                        WC(r.wr_id, st, e.IBV_WC_RECV, 0, 0, self.qp_num, self.dest_qp_num)
                    )
                    continue
                q.sges, q.cap = g, sum(n for _, _, n in g)
                self._rq.append(q)

    # ---- requester: transmit
    def _seed(self, roce_len: int, ip_id: int = 0) -> int:
        key = (roce_len, ip_id)
        s = self._seeds.get(key)
        if s is None:
            s = w.icrc_seed(
                socket.inet_aton(self._local_ip), socket.inet_aton(self.remote[0]),
                self.ctx.port, self.remote[1], roce_len, ip_id,
            )  # fmt: skip
            self._seeds[key] = s
        return s

    def _rx_seed(self, addr: tuple, n: int) -> int:
        key = (addr, n)
        s = self._rxseeds.get(key)
        if s is None:
            local = getattr(self, "_local_ip", None) or "0.0.0.0"
            s = w.icrc_seed(socket.inet_aton(addr[0]), socket.inet_aton(local), addr[1], self.ctx.port, n)  # fmt: skip
            if len(self._rxseeds) > 4096:
                self._rxseeds.clear()
            self._rxseeds[key] = s
        return s

    def _xmit(self, hdr: bytes, payload=b"") -> None:
        # Snapshot the payload: the CRC and the bytes sent must be the same even
        # if the application writes the memory meanwhile (sendmsg drops the GIL).
        payload = bytes(payload)
        pad = -len(payload) & 3
        if pad:
            hdr = hdr[:1] + bytes([hdr[1] | (pad << 4)]) + hdr[2:]
            payload = bytes(payload) + b"\0" * pad
        seed = self._seed(len(hdr) + len(payload) + 4)
        crc = w.icrc(seed, hdr)
        if payload:
            crc = zlib.crc32(payload, crc)
        self.ctx._send([hdr, payload, w.ICRC.pack(crc)], self.remote)

    def _find(self, psn: int) -> int:
        for i, q in enumerate(self._sq):
            d = w.psn_diff(psn, q.first_psn)
            if 0 <= d < q.npkts:
                return i
        return -1

    def _pump(self) -> None:
        """Transmit from snd_nxt while the window allows."""
        if self.qp_state != e.IBV_QPS_RTS:
            return
        i = self._find(self.snd_nxt)
        if i < 0:
            self._arm()
            return
        sq, mtu, dqpn = self._sq, self.mtu, self.dest_qp_num
        read_bytes = sum(q.length - q.got for q in sq[:i] if q.op == e.IBV_WR_RDMA_READ)
        reads = sum(1 for q in sq[:i] if q.op == e.IBV_WR_RDMA_READ)
        while i < len(sq):
            q = sq[i]
            k = w.psn_diff(self.snd_nxt, q.first_psn)
            if q.op == e.IBV_WR_RDMA_READ:
                if (reads >= self.max_rd_atomic or read_bytes >= READ_INFLIGHT_BYTES) and i > 0:
                    break
                off = k * mtu
                hdr = w.pack_bth(w.READ_REQUEST, dqpn, self.snd_nxt, True) + w.RETH.pack(
                    q.raddr + off, q.rkey, q.length - off
                )
                self._xmit(hdr)
                reads += 1
                read_bytes += q.length - off
                self.snd_nxt = w.psn_add(q.first_psn, q.npkts)
                i += 1
                continue
            room = MAX_INFLIGHT - w.psn_diff(self.snd_nxt, self.snd_una)
            if room <= 0:
                break
            m = min(room, q.npkts - 1 - k, w.GSO_MAX_SEGS, w.GSO_MAX_BYTES // (self.mtu + 16))
            if k > 0 and m >= 2 and self._xmit_middles(q, k, m):
                self.snd_nxt = w.psn_add(self.snd_nxt, m)
                continue
            self._xmit_data(q, k)
            self.snd_nxt = w.psn_add(self.snd_nxt, 1)
            if k + 1 >= q.npkts:
                i += 1
        self._arm()

    def _xmit_middles(self, q: _SendWQE, k: int, m: int) -> bool:
        """MIDDLE packets k..k+m-1 of a SEND/WRITE in one GSO send."""
        mtu, dq = self.mtu, self.dest_qp_num
        op = w.SEND_MIDDLE if q.op in (e.IBV_WR_SEND, e.IBV_WR_SEND_WITH_IMM) else w.WRITE_MIDDLE
        seglen = 12 + mtu + 4
        parts = []
        crc32, pack = zlib.crc32, w.ICRC.pack
        for i in range(m):
            j = k + i
            hdr = w.pack_bth(op, dq, w.psn_add(q.first_psn, j), j % ACK_EVERY == ACK_EVERY - 1)
            data = bytes(q.data[j * mtu : (j + 1) * mtu])
            parts.append(hdr)
            parts.append(data)
            parts.append(pack(crc32(data, w.icrc(self._seed(seglen, i), hdr))))
        return self.ctx._send_gso(parts, seglen, self.remote)

    def _xmit_data(self, q: _SendWQE, k: int) -> None:
        mtu, n = self.mtu, q.npkts
        off = k * mtu
        chunk = q.data[off : off + mtu]
        psn = w.psn_add(q.first_psn, k)
        last = k == n - 1
        send = q.op in (e.IBV_WR_SEND, e.IBV_WR_SEND_WITH_IMM)
        imm = q.op in (e.IBV_WR_SEND_WITH_IMM, e.IBV_WR_RDMA_WRITE_WITH_IMM)
        if n == 1:
            if send:
                op = w.SEND_ONLY_IMM if imm else w.SEND_ONLY
            else:
                op = w.WRITE_ONLY_IMM if imm else w.WRITE_ONLY
        elif k == 0:
            op = w.SEND_FIRST if send else w.WRITE_FIRST
        elif last:
            if send:
                op = w.SEND_LAST_IMM if imm else w.SEND_LAST
            else:
                op = w.WRITE_LAST_IMM if imm else w.WRITE_LAST
        else:
            op = w.SEND_MIDDLE if send else w.WRITE_MIDDLE
        hdr = w.pack_bth(op, self.dest_qp_num, psn, last or (k % ACK_EVERY == ACK_EVERY - 1))
        if op in w.HAS_RETH:
            hdr += w.RETH.pack(q.raddr, q.rkey, q.length)
        if op in w.HAS_IMM:
            hdr += w.IMM.pack(q.imm & 0xFFFFFFFF)
        self._xmit(hdr, chunk)

    def _arm(self) -> None:
        if self._sq and self.qp_state == e.IBV_QPS_RTS:
            if self._deadline is None:
                self._deadline = time.monotonic() + self.timeout_s
                # Wake the NIC thread only if it sleeps past the new deadline
                # (a pipe write per post would cost a thread wake-up each time).
                if self._deadline < self.ctx._sleep_until:
                    self.ctx._kick()
        else:
            self._deadline = None

    def _progress(self) -> None:
        """Forward progress: reset the retry budget and restart the timer."""
        self._retries_left = self.retry_cnt
        self._rnr_left = self.rnr_retry
        self._deadline = None
        self._arm()

    def _go_back(self, psn: int) -> None:
        self.ctx.stats["retransmits"] += 1
        self.snd_nxt = psn
        self._read_retry_psn = None
        self._pump()

    def _on_timer(self, now: float) -> None:
        self._deadline = None
        if not self._sq or self.qp_state != e.IBV_QPS_RTS:
            return
        if getattr(self, "_rnr_wait", False):
            self._rnr_wait = False
            self._go_back(self.snd_una)
            return
        if self._retries_left <= 0:
            q = self._sq.pop(0)
            self._complete_send(q, e.IBV_WC_RETRY_EXC_ERR, force=True)
            self._to_error()
            return
        self._retries_left -= 1
        self.ctx.stats["timeouts"] += 1
        self._go_back(self.snd_una)

    def _complete_send(self, q: _SendWQE, status: int, force: bool = False) -> None:
        q.done = True
        if q.signaled or force or status != e.IBV_WC_SUCCESS:
            op = _WC_OP[q.op]
            self.scq._push(WC(q.wr_id, status, op, q.length if status == 0 else 0, 0, self.qp_num, self.dest_qp_num))  # fmt: skip

    def _ack_upto(self, psn: int, include_reads: bool = False) -> None:
        """Complete WQEs whose last PSN is <= psn (READs only when their data is in)."""
        sq = self._sq
        n = 0
        while n < len(sq):
            q = sq[n]
            lastp = w.psn_add(q.first_psn, q.npkts - 1)
            if w.psn_diff(psn, lastp) < 0:
                break
            if q.op == e.IBV_WR_RDMA_READ and not include_reads:
                break
            self._complete_send(q, e.IBV_WC_SUCCESS)
            n += 1
        if n:
            del sq[:n]
        nxt = w.psn_add(psn, 1)
        if sq and sq[0].op == e.IBV_WR_RDMA_READ:
            lim = w.psn_add(sq[0].first_psn, sq[0].got // self.mtu)
            if w.psn_diff(nxt, lim) > 0:
                nxt = lim
        if w.psn_diff(nxt, self.snd_una) > 0:
            self.snd_una = nxt
        if w.psn_diff(self.snd_nxt, self.snd_una) < 0:
            self.snd_nxt = self.snd_una

    # ---- packets in
    def _on_packet(self, pkt: memoryview, addr: tuple) -> None:
        st = self.qp_state
        if st not in (e.IBV_QPS_RTR, e.IBV_QPS_RTS):
            self.ctx.stats["rx_dropped_state"] += 1
            return
        op = pkt[0]
        pad = (pkt[1] >> 4) & 3
        psn = ((pkt[9] << 16) | (pkt[10] << 8) | pkt[11]) & w.PSN_MASK
        if op == w.ACK or w.READ_RESP_FIRST <= op <= w.READ_RESP_ONLY:
            if st == e.IBV_QPS_RTS:
                self._on_response(op, psn, pkt, pad)
            return
        if op > w.READ_REQUEST:
            self._nak(psn, w.SYN_NAK_INV_REQ)
            return
        self._on_request(op, psn, pkt, pad, bool(pkt[8] & 0x80))

    def _read_middle(self, pkt: memoryview) -> bool:
        """Fast path for the bulk of a READ: the in-order MIDDLE response of the
        READ at the head of the send queue, landing in one SGE. Does what
        _on_response does for it; False (nothing done) for anything else."""
        sq = self._sq
        if not sq or self.qp_state != e.IBV_QPS_RTS:
            return False
        q = sq[0]
        if q.op != e.IBV_WR_RDMA_READ or len(q.sges) != 1 or not q.length:
            return False
        psn = ((pkt[9] << 16) | (pkt[10] << 8) | pkt[11]) & w.PSN_MASK
        k = (psn - q.first_psn) & w.PSN_MASK
        got = q.got
        if k != got // self.mtu or k >= q.npkts:
            return False
        data = pkt[12 : len(pkt) - 4 - ((pkt[1] >> 4) & 3)]
        mr, off, n = q.sges[0]
        end = got + len(data)
        if end > n:
            return False
        mr.mv[off + got : off + end] = data
        q.got = end
        self.snd_una = (psn + 1) & w.PSN_MASK
        if k % ACK_EVERY == 0:
            self._progress()
        return True

    # requester side of responses
    def _on_response(self, op: int, psn: int, pkt: memoryview, pad: int) -> None:
        (aeth,) = w.AETH.unpack_from(pkt, 12) if op != w.READ_RESP_MIDDLE else (0,)
        syn = aeth >> 24
        if op == w.ACK:
            if syn >> 5 == 0:  # ACK (coalesced: covers every PSN up to psn)
                if w.psn_diff(psn, self.snd_una) >= 0:
                    self._ack_upto(psn)
                    self._progress()
                    self._pump()
                return
            if syn >> 5 == 1:  # RNR NAK: the responder had no receive posted; retry later
                self._ack_upto(w.psn_add(psn, -1))
                if self.rnr_retry != 7:
                    self._rnr_left -= 1
                    if self._rnr_left < 0:
                        i = self._find(psn)
                        if i >= 0:
                            self._complete_send(self._sq.pop(i), e.IBV_WC_RNR_RETRY_EXC_ERR, force=True)  # fmt: skip
                        self._to_error()
                        return
                self.ctx.stats["rnr_naks"] += 1
                self.snd_nxt = psn  # snd_una: _ack_upto, which keeps it at an earlier READ's hole
                self._rnr_wait = True
                self._deadline = time.monotonic() + RNR_DELAY_S
                return
            # NAK
            self._ack_upto(w.psn_add(psn, -1))
            if syn == w.SYN_NAK_PSN_SEQ:
                self.ctx.stats["seq_naks"] += 1
                self._progress()  # (snd_una stays at a READ's hole below psn: _ack_upto)
                self._go_back(psn)
                return
            status = {
                w.SYN_NAK_REM_ACCESS: e.IBV_WC_REM_ACCESS_ERR,
                w.SYN_NAK_INV_REQ: e.IBV_WC_REM_INV_REQ_ERR,
            }.get(syn, e.IBV_WC_REM_OP_ERR)
            self.ctx.stats["error_naks"] += 1
            i = self._find(psn)
            if i >= 0:
                self._complete_send(self._sq.pop(i), status, force=True)
            self._to_error()
            return
        # READ response (it implicitly acknowledges everything before it)
        sq = self._sq
        if not sq or sq[0].op != e.IBV_WR_RDMA_READ or op != w.READ_RESP_MIDDLE:
            self._ack_upto(w.psn_add(psn, -1))
            if not sq:
                return
        q = sq[0]
        if q.op != e.IBV_WR_RDMA_READ:
            return
        k = w.psn_diff(psn, q.first_psn)
        expect = q.got // self.mtu if q.length else 0
        if k < expect or k >= q.npkts:
            return  # duplicate
        if k > expect:  # a response was lost: ask again from the missing one, once
            if self._read_retry_psn != w.psn_add(q.first_psn, expect):
                self._read_retry_psn = w.psn_add(q.first_psn, expect)
                self.snd_una = self._read_retry_psn
                self.ctx.stats["read_gaps"] += 1
                self._go_back(self._read_retry_psn)
                self._read_retry_psn = w.psn_add(q.first_psn, expect)
            return
        hl = 16 if op != w.READ_RESP_MIDDLE else 12
        data = pkt[hl : len(pkt) - 4 - pad]
        _scatter(q.sges, q.got, data)
        q.got += len(data)
        self.snd_una = w.psn_add(psn, 1)
        if op in (w.READ_RESP_LAST, w.READ_RESP_ONLY):
            if q.got != q.length:
                self._sq.pop(0)
                self._complete_send(q, e.IBV_WC_BAD_RESP_ERR, force=True)
                self._to_error()
                return
            self._sq.pop(0)
            self._complete_send(q, e.IBV_WC_SUCCESS)
            self._read_retry_psn = None
            self._progress()
            self._pump()
        elif k % ACK_EVERY == 0:
            self._progress()

    # responder side
    def _ack(self, psn: int, syn: int = w.SYN_ACK) -> None:
        self._xmit(w.pack_bth(w.ACK, self.dest_qp_num, psn) + w.AETH.pack((syn << 24) | self.msn))

    def _nak(self, psn: int, syn: int) -> None:
        self.ctx.stats["naks_sent"] += 1
        self._ack(psn, syn)

    def _fatal(self, psn: int, syn: int) -> None:
        """A remote access or invalid request error: NAK it, and the QP goes to ERR."""
        self._nak(psn, syn)
        self._to_error()

    def _check_rkey(self, rkey: int, va: int, length: int, need: int) -> tuple[MR, int] | None:
        mr = self.ctx.mrs_r.get(rkey)
        if mr is None or mr.pd is not self.pd:
            self.ctx.stats["bad_rkey"] += 1
            return None
        off = va - mr.buf
        if off < 0 or off + length > mr.length:
            self.ctx.stats["out_of_bounds"] += 1
            return None
        if not (mr.access & need) or not (self.access & need):
            self.ctx.stats["no_permission"] += 1
            return None
        return mr, off

    def _on_request(self, op: int, psn: int, pkt: memoryview, pad: int, ackreq: bool) -> None:
        d = w.psn_diff(psn, self.epsn)
        if d > 0:  # a gap: NAK once with the PSN we expect (go-back-N)
            self.ctx.stats["rx_out_of_order"] += 1
            if not self._nak_sent:
                self._nak_sent = True
                self._nak(self.epsn, w.SYN_NAK_PSN_SEQ)
            return
        if d < 0:  # duplicate: re-ACK, and re-execute READs (they are idempotent)
            self.ctx.stats["rx_duplicates"] += 1
            if op == w.READ_REQUEST:
                va, rkey, ln = w.RETH.unpack_from(pkt, 12)
                ok = self._check_rkey(rkey, va, ln, e.IBV_ACCESS_REMOTE_READ)
                if ok is not None:
                    self._send_read(psn, ok[0], ok[1], ln)
            elif ackreq:
                self._ack(w.psn_add(self.epsn, -1))
            return
        self._nak_sent = False
        n = len(pkt) - 4 - pad
        if op == w.READ_REQUEST:
            va, rkey, ln = w.RETH.unpack_from(pkt, 12)
            ok = self._check_rkey(rkey, va, ln, e.IBV_ACCESS_REMOTE_READ)
            if ok is None:
                self._fatal(psn, w.SYN_NAK_REM_ACCESS)
                return
            npk = max(1, -(-ln // self.mtu))
            self.epsn = w.psn_add(psn, npk)
            self.msn = (self.msn + 1) & 0xFFFFFF
            self.ctx.stats["one_sided_read"] += 1
            self.ctx.stats["one_sided_read_bytes"] += ln
            self._send_read(psn, ok[0], ok[1], ln)
            return
        if op <= w.SEND_ONLY_IMM:
            self._on_send(op, psn, pkt, n)
        else:
            self._on_write(op, psn, pkt, n)
        if self.qp_state == e.IBV_QPS_ERR or w.psn_diff(self.epsn, psn) <= 0:
            return  # error already NAKed, or RNR: nothing consumed
        if ackreq:
            self._ack(psn)

    def _take_recv(self, psn: int) -> _RecvWQE | None:
        if not self._rq:
            self.ctx.stats["rnr_naks_sent"] += 1
            self._ack(psn, w.SYN_RNR_NAK | 1)
            return None
        return self._rq.popleft()

    def _on_send(self, op: int, psn: int, pkt: memoryview, n: int) -> None:
        first = op in (w.SEND_FIRST, w.SEND_ONLY, w.SEND_ONLY_IMM)
        last = op != w.SEND_FIRST and op != w.SEND_MIDDLE
        hl = 16 if op in w.HAS_IMM else 12
        if first:
            if self._cur_recv is not None:
                self._fatal(psn, w.SYN_NAK_INV_REQ)  # a new message inside a message
                return
            r = self._take_recv(psn)
            if r is None:
                return
            self._cur_recv, self._cur_recv_off = r, 0
        r = self._cur_recv
        if r is None:
            self._fatal(psn, w.SYN_NAK_INV_REQ)  # MIDDLE/LAST without FIRST
            return
        data = pkt[hl:n]
        if (not last and len(data) != self.mtu) or self._cur_recv_off + len(data) > r.cap:
            self._cur_recv = None
            self.rcq._push(WC(r.wr_id, e.IBV_WC_LOC_LEN_ERR, e.IBV_WC_RECV, 0, 0, self.qp_num, self.dest_qp_num))  # fmt: skip
            self._fatal(psn, w.SYN_NAK_INV_REQ)
            return
        _scatter(r.sges, self._cur_recv_off, data)
        self._cur_recv_off += len(data)
        self.epsn = w.psn_add(psn, 1)
        if last:
            imm = w.IMM.unpack_from(pkt, 12)[0] if hl == 16 else 0
            self._cur_recv = None
            self.msn = (self.msn + 1) & 0xFFFFFF
            self.ctx.stats["two_sided_recv"] += 1
            self.rcq._push(WC(r.wr_id, 0, e.IBV_WC_RECV, self._cur_recv_off, imm, self.qp_num, self.dest_qp_num, e.IBV_WC_WITH_IMM if hl == 16 else 0))  # fmt: skip

    def _on_write(self, op: int, psn: int, pkt: memoryview, n: int) -> None:
        hl = 12
        if op in w.HAS_RETH:
            if self._cur_write is not None:
                self._fatal(psn, w.SYN_NAK_INV_REQ)
                return
            va, rkey, ln = w.RETH.unpack_from(pkt, 12)
            hl = 28
            ok = self._check_rkey(rkey, va, ln, e.IBV_ACCESS_REMOTE_WRITE)
            if ok is None:
                self._fatal(psn, w.SYN_NAK_REM_ACCESS)
                return
            self._cur_write = (ok[0], ok[1], ln)
        elif self._cur_write is None:
            self._fatal(psn, w.SYN_NAK_INV_REQ)  # MIDDLE/LAST without FIRST
            return
        imm = op in w.HAS_IMM
        r = None
        if imm:  # WRITE with immediate consumes a receive (and tells the app)
            r = self._take_recv(psn)
            if r is None:
                if op == w.WRITE_ONLY_IMM:
                    self._cur_write = None
                return
        mr, off, left = self._cur_write
        data = pkt[hl + (4 if imm else 0) : n]
        last = op in (w.WRITE_LAST, w.WRITE_LAST_IMM, w.WRITE_ONLY, w.WRITE_ONLY_IMM)
        if len(data) > left or (not last and len(data) != self.mtu) or (last and len(data) != left):
            self._cur_write = None
            self._fatal(psn, w.SYN_NAK_INV_REQ)
            return
        mr.mv[off : off + len(data)] = data
        self.epsn = w.psn_add(psn, 1)
        if last:
            self._cur_write = None
            self.msn = (self.msn + 1) & 0xFFFFFF
            if imm:
                (iv,) = w.IMM.unpack_from(pkt, hl)
                self.ctx.stats["two_sided_recv"] += 1
                self.rcq._push(WC(r.wr_id, 0, e.IBV_WC_RECV_RDMA_WITH_IMM, 0, iv, self.qp_num, self.dest_qp_num, e.IBV_WC_WITH_IMM))  # fmt: skip
            else:
                self.ctx.stats["one_sided_write"] += 1
        else:
            self._cur_write = (mr, off + len(data), left - len(data))

    def _send_read(self, psn: int, mr: MR, off: int, ln: int) -> None:
        mtu, dq = self.mtu, self.dest_qp_num
        npk = max(1, -(-ln // mtu))
        aeth = w.AETH.pack((w.SYN_ACK << 24) | self.msn)
        mv = mr.mv
        if npk == 1:
            self._xmit(w.pack_bth(w.READ_RESP_ONLY, dq, psn) + aeth, mv[off : off + ln])
            return
        self._xmit(w.pack_bth(w.READ_RESP_FIRST, dq, psn) + aeth, mv[off : off + mtu])
        k = 1
        while k < npk - 1:  # MIDDLE packets are all the same size: batch them
            m = min(w.GSO_MAX_SEGS, (w.GSO_MAX_BYTES // (mtu + 16)), npk - 1 - k)
            if m >= 2 and self._send_middles(psn, k, m, mv, off):
                k += m
                continue
            a = off + k * mtu
            self._xmit(w.pack_bth(w.READ_RESP_MIDDLE, dq, w.psn_add(psn, k)), mv[a : a + mtu])
            k += 1
        a = off + (npk - 1) * mtu
        self._xmit(
            w.pack_bth(w.READ_RESP_LAST, dq, w.psn_add(psn, npk - 1)) + aeth, mv[a : off + ln]
        )

    def _send_middles(self, psn: int, k: int, m: int, mv: memoryview, off: int) -> bool:
        """READ_RESP_MIDDLE packets k..k+m-1 in one GSO send."""
        mtu, dq = self.mtu, self.dest_qp_num
        seglen = 12 + mtu + 4
        pkts = []
        crc32, pack = zlib.crc32, w.ICRC.pack
        for i in range(m):
            p = w.psn_add(psn, k + i)
            hdr = w.pack_bth(w.READ_RESP_MIDDLE, dq, p)
            a = off + (k + i) * mtu
            data = bytes(mv[a : a + mtu])  # a snapshot: the application may be writing
            crc = crc32(data, w.icrc(self._seed(seglen, i), hdr))
            pkts.append(hdr)
            pkts.append(data)
            pkts.append(pack(crc))
        return self.ctx._send_gso(pkts, seglen, self.remote)


_WC_OP = {
    e.IBV_WR_SEND: e.IBV_WC_SEND,
    e.IBV_WR_SEND_WITH_IMM: e.IBV_WC_SEND,
    e.IBV_WR_RDMA_WRITE: e.IBV_WC_RDMA_WRITE,
    e.IBV_WR_RDMA_WRITE_WITH_IMM: e.IBV_WC_RDMA_WRITE,
    e.IBV_WR_RDMA_READ: e.IBV_WC_RDMA_READ,
}


def _scatter(sges: list[tuple[MR, int, int]], pos: int, data: memoryview) -> None:
    """Copy data into a scatter list at byte position `pos`."""
    for mr, off, n in sges:
        if pos >= n:
            pos -= n
            continue
        take = min(n - pos, len(data))
        mr.mv[off + pos : off + pos + take] = data[:take]
        data = data[take:]
        pos = 0
        if not data:
            return


def _dest_ip(attr: QPAttr) -> str:
    gr = attr.ah_attr.gr if attr.ah_attr is not None else None
    g = str(gr.dgid) if gr is not None else ""
    if g.lower().startswith("::ffff:"):
        g = g[7:]
    return g


def _source_ip(ctx: Context, dst: str, dport: int) -> str:
    """The local address packets to dst leave from (what the peer's ICRC sees)."""
    if ctx.addr not in ("", "0.0.0.0"):
        return ctx.addr
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((dst, dport))
        return s.getsockname()[0]
    except OSError as exc:
        raise VerbsError(f"no route to {dst}: {exc.strerror}", exc.errno or 0) from exc
    finally:
        s.close()
