"""AF_XDP sockets in pure Python over the kernel's UAPI (linux/if_xdp.h).

One socket per interface (queue 0), a UMEM split in two halves (receive
frames, which cycle through the fill ring, and transmit frames, which cycle
through the completion ring), and a tiny XDP program that redirects every
frame of the queue to the socket (`bpf_redirect_map` on an XSKMAP). Rings are
the kernel's mmap'ed producer/consumer arrays; this module reads and writes
them through a memoryview.

Why not libxdp/libbpf through ctypes: their ring operations
(`xsk_ring_prod__reserve`, `xsk_ring_cons__peek`, ...) are static inline in
the headers, so ctypes cannot call them, and the exported half would still
need the other half rewritten. Memory ordering: the ring protocol needs
loads of the producer index before loads of descriptors and stores of
descriptors before the producer store; on x86-64 (total store order) plain
loads and stores give exactly that. On weakly ordered CPUs (arm64) this
module refuses to run rather than risk torn rings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import platform
import resource
import socket
import struct
import time

from nslab.errors import NslabError
from nslab.xdp import bpf, netlink

AF_XDP = 44
SOL_XDP = 283
XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG = 1, 2, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING = 5, 6
XDP_COPY, XDP_ZEROCOPY = 2, 4
PGOFF_RX, PGOFF_TX, PGOFF_FILL, PGOFF_COMP = 0, 0x80000000, 0x100000000, 0x180000000
MSG_DONTWAIT = 0x40

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _NoMemlock(Exception):
    pass


class _Ring:
    """One mmap'ed ring: producer and consumer indices and `size` entries,
    seen as 32-bit words (`w`: indices) and 64-bit words (`q`: entries; a
    16-byte descriptor is q[2i] = address, q[2i+1] = length)."""

    def __init__(self, fd: int, pgoff: int, offs: tuple[int, int, int, int], size: int, esz: int):
        prod, cons, desc, _flags = offs
        self.mm = mmap.mmap(
            fd,
            desc + size * esz,
            mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
            mmap.PROT_READ | mmap.PROT_WRITE,
            offset=pgoff,
        )
        self.raw = memoryview(self.mm)
        self.w = self.raw[:desc].cast("I")
        self.q = self.raw[desc:].cast("Q")
        self.prod, self.cons = prod // 4, cons // 4
        self.mask = size - 1

    def close(self) -> None:
        for v in (self.w, self.q, self.raw):
            v.release()
        self.mm.close()


class XskSocket:
    """An AF_XDP socket on `ifname` with the AF_PACKET RawSocket's interface:
    `recv_batch()`, `send_batch(frames)`, `fd` (poll it for POLLIN), `close()`.

    mode: the XDP attach mode of the redirect program (native, generic, or
    auto: native where the driver has it). bind_flags: XDP_COPY (works on any
    device, veth included) or XDP_ZEROCOPY (drivers with AF_XDP support)."""

    FRAME = 2048

    def __init__(
        self,
        ifname: str,
        batch: int = 64,
        frames: int | None = None,
        ring: int | None = None,
        mode: str = "auto",
        zerocopy: bool = False,
        promisc: bool = True,  # XDP sees every frame the device receives
    ):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise NslabError(
                "the AF_XDP backend runs on x86-64 only (its rings rely on x86 memory "
                "ordering); use the AF_PACKET backend (--io afpacket) here"
            )
        self.ifname, self.batch = ifname, batch
        self.ifindex = socket.if_nametoindex(ifname)
        from nslab.nf.rawsock import mac_of

        self.mac = mac_of(ifname)
        # UMEM is pinned memory, charged to RLIMIT_MEMLOCK (8 MiB for most
        # users, unlimited with CAP_IPC_LOCK): 8 MiB and 2048-entry rings where
        # allowed, else 2 MiB and 512 entries (enough for bursts of 64)
        soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
        roomy = os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= 64 << 20
        sizes = [(4096, 2048)] if roomy else [(1024, 512), (256, 128)]
        if frames:
            sizes = [(frames, ring or frames // 2)]
        for i, (nf, nr) in enumerate(sizes):
            self._closers: list = []
            try:
                self._open(nf, nr, mode, zerocopy)
                break
            except _NoMemlock:
                self.close()
                if i == len(sizes) - 1:
                    raise NslabError(
                        f"AF_XDP on {ifname}: cannot pin {nf * self.FRAME >> 10} KiB of UMEM "
                        "(RLIMIT_MEMLOCK too low: raise `ulimit -l`, or use fewer frames)"
                    ) from None
            except BaseException:
                self.close()
                raise

    def _open(self, frames: int, ring: int, mode: str, zerocopy: bool) -> None:
        try:
            self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        except PermissionError:
            raise NslabError(
                "AF_XDP sockets need CAP_NET_RAW (and CAP_BPF + CAP_NET_ADMIN for the "
                "redirect program): run as root, or grant the capabilities"
            ) from None
        self._closers.append(self.sock.close)
        self.fd = fd = self.sock.fileno()
        self.umem = mmap.mmap(-1, frames * self.FRAME)
        self._closers.append(self.umem.close)
        self.umv = memoryview(self.umem)
        self._closers.insert(0, self.umv.release)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.umem))
        reg = struct.pack("=QQII", addr, frames * self.FRAME, self.FRAME, 0)
        try:
            self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG, reg)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            raise _NoMemlock() from None
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING):
            self.sock.setsockopt(SOL_XDP, opt, ring)
        raw = self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, 128)
        o = struct.unpack("=16Q", raw)
        rx, tx, fr, cr = o[0:4], o[4:8], o[8:12], o[12:16]
        self.rx = _Ring(fd, PGOFF_RX, rx, ring, 16)
        self.tx = _Ring(fd, PGOFF_TX, tx, ring, 16)
        self.fill = _Ring(fd, PGOFF_FILL, fr, ring, 8)
        self.comp = _Ring(fd, PGOFF_COMP, cr, ring, 8)
        for r in (self.rx, self.tx, self.fill, self.comp):
            self._closers.insert(0, r.close)
        half = frames // 2
        # receive frames: the first half, handed to the kernel through the fill ring
        n = min(half, ring)
        for i in range(n):
            self.fill.q[i] = i * self.FRAME
        self.fill.w[self.fill.prod] = n
        self._fill_prod = n
        self._rx_cons = 0
        self._tx_free = [(half + i) * self.FRAME for i in range(frames - half)]
        self._tx_prod = self._comp_cons = 0
        self._bind(zerocopy)
        self._attach(mode)

    def _bind(self, zerocopy: bool) -> None:
        flags = XDP_ZEROCOPY if zerocopy else XDP_COPY
        sa = ctypes.create_string_buffer(struct.pack("=HHIII", AF_XDP, flags, self.ifindex, 0, 0))
        for _ in range(20):
            if _libc.bind(self.fd, sa, 16) == 0:
                return
            err = ctypes.get_errno()
            if err != errno.EBUSY:
                break
            time.sleep(0.05)  # the previous socket of this queue is still being torn down
        what = "zero-copy" if zerocopy else "copy"
        raise NslabError(
            f"cannot bind an AF_XDP socket to {self.ifname} queue 0 in {what} mode: "
            f"{os.strerror(err)}"
            + (" (this driver has no AF_XDP zero-copy; use copy mode)" if zerocopy else "")
        )

    def _attach(self, mode: str) -> None:
        self.xsks = bpf.map_create(bpf.MAP_XSKMAP, 4, 4, 64, "nslab_xsks")
        self._closers.append(lambda: os.close(self.xsks))
        m = bpf.Map(self.xsks)
        m.set(struct.pack("=I", 0), struct.pack("=I", self.fd))
        self.prog = bpf.prog_load(bpf.insns_to_xsk(self.xsks), "nslab_to_xsk")
        self._closers.append(lambda: os.close(self.prog))
        modes = ["native", "generic"] if mode == "auto" else [mode]
        last: Exception | None = None
        for md in modes:
            try:
                netlink.set_xdp(self.ifname, self.prog, md)
                self.mode = md
                self._closers.insert(0, lambda md=md: self._detach(md))
                return
            except NslabError as exc:
                last = exc
        raise NslabError(f"{last} (is another XDP program attached to {self.ifname}?)")

    def _detach(self, mode: str) -> None:
        try:
            netlink.set_xdp(self.ifname, -1, mode)
        except NslabError:
            pass  # the interface is gone with its namespace

    # -- receive ---------------------------------------------------------
    def recv_batch(self) -> list[bytearray]:
        rx, fill = self.rx, self.fill
        cons = self._rx_cons
        n = (rx.w[rx.prod] - cons) & 0xFFFFFFFF
        if n == 0:
            return []
        if n > self.batch:
            n = self.batch
        out = []
        q, fq, umv, fp = rx.q, fill.q, self.umv, self._fill_prod
        rmask, fmask, base_mask = rx.mask, fill.mask, ~(self.FRAME - 1)
        for i in range(n):
            j = ((cons + i) & rmask) * 2
            addr = q[j]
            out.append(bytearray(umv[addr : addr + (q[j + 1] & 0xFFFFFFFF)]))
            # the frame goes straight back to the kernel (its chunk's base address)
            fq[(fp + i) & fmask] = addr & base_mask
        self._fill_prod = (fp + n) & 0xFFFFFFFF
        fill.w[fill.prod] = self._fill_prod
        self._rx_cons = (cons + n) & 0xFFFFFFFF
        rx.w[rx.cons] = self._rx_cons
        return out

    # -- send ------------------------------------------------------------
    def _reclaim(self) -> None:
        c = self.comp
        prod = c.w[c.prod]
        cons = self._comp_cons
        free, q, mask = self._tx_free, c.q, c.mask
        while cons != prod:
            free.append(q[cons & mask])
            cons = (cons + 1) & 0xFFFFFFFF
        self._comp_cons = cons
        c.w[c.cons] = cons

    def send_batch(self, frames: list) -> int:
        """Queue frames on the TX ring and kick the kernel; returns how many it
        took (the rest are dropped, as with a full AF_PACKET socket buffer)."""
        self._reclaim()
        tx, free, umv = self.tx, self._tx_free, self.umv
        room = tx.mask + 1 - ((self._tx_prod - tx.w[tx.cons]) & 0xFFFFFFFF)
        n = min(len(frames), len(free), room)
        prod, q, mask, size = self._tx_prod, tx.q, tx.mask, self.FRAME
        for i in range(n):
            f = frames[i]
            ln = len(f)
            if ln > size:
                ln, f = size, f[:size]
            addr = free.pop()
            umv[addr : addr + ln] = f
            j = ((prod + i) & mask) * 2
            q[j] = addr
            q[j + 1] = ln
        if n:
            self._tx_prod = (prod + n) & 0xFFFFFFFF
            tx.w[tx.prod] = self._tx_prod
            # copy mode sends at most 32 frames per kick: kick until the ring is drained
            for _ in range(n // 32 + 2):
                try:
                    self.sock.send(b"", MSG_DONTWAIT)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EBUSY, errno.ENOBUFS, errno.ENETDOWN):
                        raise
                if tx.w[tx.cons] == self._tx_prod:
                    break
        return n

    def close(self) -> None:
        for c in self._closers:
            try:
                c()
            except (OSError, BufferError, ValueError):
                pass
        self._closers = []
