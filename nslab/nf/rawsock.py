"""AF_PACKET raw sockets with batched receive and send (recvmmsg/sendmmsg via ctypes).

One system call moves up to `batch` frames, which is what lets a Python NF
forward 100k+ packets per second. Falls back to one recv/send per frame where
libc lacks the batched calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct

from nslab.errors import NslabError

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20; not exported by Python's socket module
PACKET_OUTGOING = 4
MSG_DONTWAIT = 0x40
SOCKADDR_LL_SIZE = 20
SIOCGIFHWADDR = 0x8927
PKTTYPE_OFFSET = 10  # sockaddr_ll.sll_pkttype


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_IOVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
_LEN_OFFSET = _MMsgHdr.len.offset


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.recvmmsg.restype = ctypes.c_int
        libc.sendmmsg.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()


def mac_of(ifname: str) -> bytes:
    """The interface's MAC address as 6 bytes. Asks the kernel (SIOCGIFHWADDR)
    rather than /sys, which shows the namespace it was mounted in: processes
    entered into a namespace with nsenter/mnexec still see the root's /sys."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError as exc:
            raise NslabError(
                f"interface {ifname!r} not found in this network namespace "
                f"(check the name with `ip link`)"
            ) from exc
    return res[18:24]


class RawSocket:
    """A promiscuous AF_PACKET socket on one interface that ignores the frames
    it (or anyone on this host) sends out of that interface."""

    def __init__(self, ifname: str, batch: int = 64, snaplen: int = 65536, promisc: bool = True):
        self.ifname = ifname
        self.batch = batch
        self.snaplen = snaplen
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError as exc:
            raise NslabError(
                "raw sockets need root or CAP_NET_RAW (run with sudo; a sandboxed NF needs the "
                "capability granted, e.g. as an ambient capability)"
            ) from exc
        try:
            self.sock.bind((ifname, ETH_P_ALL))
        except OSError as exc:
            self.sock.close()
            raise NslabError(
                f"cannot open interface {ifname!r}: {exc.strerror} (check the name with `ip link`)"
            ) from exc
        self.ifindex = socket.if_nametoindex(ifname)
        self.mac = mac_of(ifname)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass  # older kernel: outgoing frames are filtered by sll_pkttype below
        if promisc:
            mreq = self.ifindex.to_bytes(4, "little") + PACKET_MR_PROMISC.to_bytes(2, "little")
            mreq += b"\x00" * 10
            self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        self._batched = _LIBC is not None
        if self._batched:
            self._setup_rx()
            self._setup_tx()

    # -- receive ---------------------------------------------------------
    def _setup_rx(self) -> None:
        n = self.batch
        self._rxbuf = ctypes.create_string_buffer(n * self.snaplen)
        self._rxmv = memoryview(self._rxbuf).cast("B")
        self._rxnames = ctypes.create_string_buffer(n * SOCKADDR_LL_SIZE)
        self._rxnamemv = memoryview(self._rxnames).cast("B")
        self._rxiov = (_IOVec * n)()
        self._rxmsgs = (_MMsgHdr * n)()
        base = ctypes.addressof(self._rxbuf)
        nbase = ctypes.addressof(self._rxnames)
        for i in range(n):
            self._rxiov[i].base = base + i * self.snaplen
            self._rxiov[i].len = self.snaplen
            h = self._rxmsgs[i].hdr
            h.name = nbase + i * SOCKADDR_LL_SIZE
            h.namelen = SOCKADDR_LL_SIZE
            h.iov = ctypes.pointer(self._rxiov[i])
            h.iovlen = 1
        self._rxmsgmv = memoryview(self._rxmsgs).cast("B")

    def recv_batch(self) -> list[bytearray]:
        """Up to `batch` frames that are waiting (never blocks); outgoing frames skipped."""
        if not self._batched:
            return self._recv_slow()
        # msg_namelen shrinks to 18 after a call (no sll_addr padding); still covers
        # sll_pkttype at offset 10, so it need not be reset each time.
        got = _LIBC.recvmmsg(self.fd, self._rxmsgs, self.batch, MSG_DONTWAIT, None)
        if got <= 0:
            if got < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return []
        out = []
        mv, names, msgs, snap = self._rxmv, self._rxnamemv, self._rxmsgmv, self.snaplen
        for i in range(got):
            if names[i * SOCKADDR_LL_SIZE + PKTTYPE_OFFSET] == PACKET_OUTGOING:
                continue
            off = i * _MMSG_SIZE + _LEN_OFFSET
            ln = int.from_bytes(msgs[off : off + 4], "little")
            start = i * snap
            out.append(bytearray(mv[start : start + ln]))
        return out

    def _recv_slow(self) -> list[bytearray]:
        out = []
        for _ in range(self.batch):
            try:
                data, addr = self.sock.recvfrom(self.snaplen)
            except BlockingIOError:
                break
            if addr[2] != PACKET_OUTGOING:
                out.append(bytearray(data))
        return out

    # -- send ------------------------------------------------------------
    def _setup_tx(self) -> None:
        n = self.batch
        self._txsize = 65536
        self._txbuf = ctypes.create_string_buffer(n * self._txsize)
        self._txmv = memoryview(self._txbuf).cast("B")
        self._txiov = (_IOVec * n)()
        self._txmsgs = (_MMsgHdr * n)()
        base = ctypes.addressof(self._txbuf)
        for i in range(n):
            self._txiov[i].base = base + i * self._txsize
            h = self._txmsgs[i].hdr
            h.iov = ctypes.pointer(self._txiov[i])
            h.iovlen = 1

    def send_batch(self, frames: list) -> int:
        """Send frames; returns how many the kernel accepted (the rest are dropped)."""
        if not self._batched:
            return self._send_slow(frames)
        sent = 0
        size, mv, iov = self._txsize, self._txmv, self._txiov
        for start in range(0, len(frames), self.batch):
            chunk = frames[start : start + self.batch]
            for i, f in enumerate(chunk):
                ln = len(f)
                if ln > size:
                    ln = size
                    f = f[:size]
                off = i * size
                mv[off : off + ln] = f
                iov[i].len = ln
            got = _LIBC.sendmmsg(self.fd, self._txmsgs, len(chunk), 0)
            if got < 0:
                got = 0
            sent += got
        return sent

    def _send_slow(self, frames: list) -> int:
        sent = 0
        for f in frames:
            try:
                self.sock.send(f)
                sent += 1
            except OSError:
                pass
        return sent

    def close(self) -> None:
        self.sock.close()
